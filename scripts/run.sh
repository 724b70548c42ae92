#!/usr/bin/env bash
# Set up (scripts/setup.sh) and render the demo: examples/minuet_in_g.mid -> out/minuet.wav
# Extra arguments go to `neirosynth render`. Runs from the repo root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

bash scripts/setup.sh

source scripts/env.sh

mkdir -p out
exec .venv/bin/neirosynth render examples/minuet_in_g.mid --preset plate -o out/minuet.wav "$@"
