#!/usr/bin/env bash
# The live benchmarks on the NVIDIA machine (after prepare.sh --audio's two lines): the synth's
# per-block cost, latency at several render budgets, and soaks on the GPU backend through a
# JACK dummy server; RESULTS.md goes to $OUT. SOAK_MINUTES=0 skips the soaks; LATENCY_BLOCK sets
# the ring design's block (e.g. 64: only the last block of a period waits for the GPU).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=$(mktemp -d)
[ -f bench/RESULTS.md ] || printf '# Benchmark results\n' > bench/RESULTS.md
[ -n "${SYNTH_BLOCK-1}" ] && python3 bench/synth_block.py --backend gpu 2>&1 | tee "$OUT/synth_block.log"
for ahead in ${AHEADS:-128 96 64}; do
  python3 bench/latency.py --notes 200 --backend gpu --ahead "$ahead" ${LATENCY_BLOCK:+--block "$LATENCY_BLOCK"} 2>&1 | tee -a "$OUT/latency.log"
done
if [ "${SOAK_MINUTES:-3}" != 0 ]; then
  for readback in ${READBACKS:-spin}; do
    python3 bench/soak.py --minutes "${SOAK_MINUTES:-3}" --polyphony 32 --backend gpu \
      --ahead "${SOAK_AHEAD:-96}" --readback "$readback" 2>&1 | tee -a "$OUT/soak.log"
  done
fi
cp bench/RESULTS.md "$OUT/RESULTS.md"
