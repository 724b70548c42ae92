#!/usr/bin/env bash
# What one session on the NVIDIA machine runs (after ../shared/gpu/prepare.sh's line):
# the GPU tests on the real card, then bench/fdtd.py; logs and RESULTS.md go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=$(mktemp -d)
nvidia-smi -L
python3 -c "import wgpu; [print(a.summary, a.info['adapter_type']) for a in wgpu.gpu.enumerate_adapters_sync()]"
python3 -m pytest -q -p no:cacheprovider tests/test_fdtd.py tests/test_tuning.py tests/test_render.py 2>&1 | tee "$OUT/tests.log"
python3 bench/fdtd.py --voices 1 8 64 512 1024 2048 "$@" 2>&1 | tee "$OUT/bench.log"
cp bench/RESULTS.md "$OUT/RESULTS.md"
