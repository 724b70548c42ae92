#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite: bash scripts/test.sh [pytest args...]
# Runs from the repo root, so relative paths in the arguments are relative to it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

bash scripts/setup.sh

source scripts/env.sh

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if (( rc == 5 )); then
    echo "neirosynth test: FAILED: pytest collected no tests (exit 5). Check tests/ and your -k/path arguments." >&2
    exit 1
fi
exit "$rc"
