#!/usr/bin/env bash
# The live benchmarks on the NVIDIA machine (after prepare.sh --audio's two lines): latency and
# a soak on the GPU backend through a JACK dummy server; RESULTS.md goes to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=$(mktemp -d)
printf '# Benchmark results\n' > bench/RESULTS.md
python3 bench/latency.py --notes 200 --backend gpu --ahead 1 2>&1 | tee "$OUT/latency.log"
python3 bench/latency.py --notes 200 --backend gpu --ahead 2 2>&1 | tee -a "$OUT/latency.log"
python3 bench/soak.py --minutes "${SOAK_MINUTES:-3}" --polyphony 32 --backend gpu 2>&1 | tee "$OUT/soak.log"
cp bench/RESULTS.md "$OUT/RESULTS.md"
