#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite: bash scripts/test.sh [pytest args...]
# Runs from the repo root, so relative paths in the arguments are relative to it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

bash scripts/setup.sh

# wgpu's Vulkan/EGL loaders print errors unless XDG_RUNTIME_DIR is a private dir we own.
xdg_ok() { [[ -n "${1:-}" && -d "$1" && ! -L "$1" && -O "$1" && "$(stat -c %a "$1")" == 700 ]]; }
if ! xdg_ok "${XDG_RUNTIME_DIR:-}"; then
    XDG_RUNTIME_DIR="/tmp/neirosynth-runtime-$(id -u)"
    mkdir -m 0700 "$XDG_RUNTIME_DIR" 2>/dev/null || true
    xdg_ok "$XDG_RUNTIME_DIR" || XDG_RUNTIME_DIR="$(mktemp -d /tmp/neirosynth-runtime-XXXXXX)"
fi
export XDG_RUNTIME_DIR

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if (( rc == 5 )); then
    echo "neirosynth test: FAILED: pytest collected no tests (exit 5). Check tests/ and your -k/path arguments." >&2
    exit 1
fi
exit "$rc"
