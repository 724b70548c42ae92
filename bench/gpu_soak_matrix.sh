#!/usr/bin/env bash
# Soaks of the GPU backend through a JACK dummy server in several live settings, one after the
# other on the NVIDIA machine (after prepare.sh --audio's two lines), to see which setting keeps
# every deadline. CONFIGS is a list of BLOCK:AHEAD:RT_PRIORITY:JACK (RT_PRIORITY '-' = normal
# scheduling, JACK 'rt' = jackd --realtime); SOAK_MINUTES each, SOAK_ARGS passed on (--profile,
# --idle). Logs and RESULTS.md go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=$(mktemp -d)
[ -f bench/RESULTS.md ] || printf '# Benchmark results\n' > bench/RESULTS.md
for cfg in ${CONFIGS:-128:96:-:- 64:96:-:- 32:96:-:- 32:64:-:-}; do
  IFS=: read -r block ahead prio jack <<< "$cfg"
  extra=()
  [ "$prio" != - ] && extra+=(--rt-priority "$prio")
  [ "$jack" = rt ] && extra+=(--jack-realtime)
  echo "=== block $block ahead $ahead rt-priority $prio jack $jack"
  python3 bench/soak.py --minutes "${SOAK_MINUTES:-1}" --polyphony 32 --backend gpu \
    --block "$block" --ahead "$ahead" "${extra[@]}" ${SOAK_ARGS:-} 2>&1 | grep -v '^  warn\|DeprecationWarning' \
    | tee -a "$OUT/soak.log"
done
cp bench/RESULTS.md "$OUT/RESULTS.md"
