#!/usr/bin/env bash
# Set up neirosynth on Debian 12: system packages, then .venv with the project
# installed editable (pip install -e '.[test]'). Safe to run again and again:
# a machine that has everything does no apt work and no pip work.
#
# Environment:
#   NEIROSYNTH_PYTHON=/path/to/python3  interpreter for .venv (default: python3, must be >= 3.11)
#   NEIROSYNTH_SETUP_DRY_RUN=1          print apt/venv/pip commands instead of running them
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.neirosynth-pyproject.sha256"
PY="${NEIROSYNTH_PYTHON:-python3}"
DRY_RUN="${NEIROSYNTH_SETUP_DRY_RUN:-0}"
[[ "$DRY_RUN" == 0 || -z "$DRY_RUN" ]] && DRY_RUN=0 || DRY_RUN=1

# Debian packages, and why:
#   mesa-vulkan-drivers  Mesa's lavapipe, a CPU Vulkan adapter, so wgpu runs without a GPU
#   libvulkan1           the Vulkan loader wgpu talks to
#   libsndfile1          soundfile (WAV output)
#   libportaudio2        sounddevice (live audio, later)
#   jackd2               JACK server for audio tests (later)
PACKAGES=(mesa-vulkan-drivers libvulkan1 libsndfile1 libportaudio2 jackd2)

log() { printf 'neirosynth setup: %s\n' "$*"; }
die() { printf 'neirosynth setup: ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command, or only show it in dry-run mode.
run() {
    if (( DRY_RUN )); then
        printf 'neirosynth setup: [dry-run] would run: %s\n' "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}

# Serialise concurrent runs (e.g. test.sh and run.sh started together on a fresh clone).
if command -v flock >/dev/null 2>&1; then
    LOCK="${TMPDIR:-/tmp}/neirosynth-setup.$(id -u).$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).lock"
    exec 9>"$LOCK"
    if ! flock -n 9; then
        log "waiting for another setup run in this checkout to finish..."
        flock 9
    fi
fi

is_installed() {  # dpkg -s succeeds for removed-but-configured packages too, so check Status
    local status
    status="$(dpkg -s "$1" 2>/dev/null)" || return 1
    [[ "$status" == *$'\nStatus: install ok installed'* || "$status" == 'Status: install ok installed'* ]]
}

python_ok() {  # $1: interpreter; true if it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

check_python_version() {
    if ! command -v "$PY" >/dev/null 2>&1; then
        return 1
    fi
    if ! python_ok "$PY"; then
        local ver
        ver="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo unknown)"
        die "Python >= 3.11 is required, but $PY is $ver ($(command -v "$PY")). Install Python 3.11+ (Debian 12 ships 3.11) or point NEIROSYNTH_PYTHON at one."
    fi
}

venv_ok() {  # .venv exists, its python runs and is >= 3.11, and it has pip
    [[ -x "$VENV/bin/python" && -x "$VENV/bin/pip" ]] && python_ok "$VENV/bin/python"
}

venv_module_works() {  # the real test: can $PY create a venv with pip in it?
    command -v "$PY" >/dev/null 2>&1 || return 1
    local probe rc=0
    probe="$(mktemp -d)"
    "$PY" -m venv "$probe/venv" >/dev/null 2>&1 || rc=$?
    rm -rf "$probe"
    return "$rc"
}

# --- 1. Python version (fail early, before any apt work) -------------------
check_python_version || true   # python3 may be missing on a bare machine: python3-venv brings it

# --- 2. Debian packages -----------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if ! venv_ok && ! venv_module_works; then
    missing+=(python3-venv)
fi

if (( ${#missing[@]} )); then
    log "installing Debian packages: ${missing[*]}"
    if [[ "$(id -u)" == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    elif (( DRY_RUN )); then
        SUDO=(sudo)   # only shown
    else
        die "need root or sudo to install: ${missing[*]} (or install them yourself: apt-get install ${missing[*]})"
    fi
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    if [[ " ${missing[*]} " == *" jackd2 "* ]]; then
        # jackd2 otherwise asks whether to enable realtime scheduling limits.
        if (( DRY_RUN )); then
            log "[dry-run] would run: echo 'jackd2 jackd/tweak_rt_limits boolean false' | ${SUDO[*]:+${SUDO[*]} }debconf-set-selections"
        else
            echo "jackd2 jackd/tweak_rt_limits boolean false" | "${SUDO[@]}" debconf-set-selections
        fi
    fi
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}"
    hash -r
else
    log "Debian packages present (no apt work)"
fi

# --- 3. Python (again: apt may just have installed it) ----------------------
if ! command -v "$PY" >/dev/null 2>&1; then
    (( DRY_RUN )) || die "$PY not found. Install Python >= 3.11 (apt-get install python3 python3-venv) or set NEIROSYNTH_PYTHON."
fi
check_python_version || true

# --- 4. .venv ---------------------------------------------------------------
if ! venv_ok; then
    if [[ -e "$VENV" ]]; then
        log ".venv is broken or uses Python < 3.11: recreating it"
        run rm -rf "$VENV"
    fi
    log "creating .venv with $PY ($(command -v "$PY" 2>/dev/null || echo missing))"
    run "$PY" -m venv "$VENV"
fi

# --- 5. pip install -e '.[test]' (skipped while pyproject.toml is unchanged) --
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
editable_here() {  # the editable install points at this checkout (not a moved/copied one)
    "$VENV/bin/python" -I -c '
import importlib.util, os, sys
s = importlib.util.find_spec("engine")
root = os.path.realpath(sys.argv[1]) + os.sep
sys.exit(0 if s and s.origin and os.path.realpath(s.origin).startswith(root) else 1)
' "$ROOT" >/dev/null 2>&1
}
if [[ "$want" == "$have" ]] && editable_here; then
    log ".venv up to date with pyproject.toml (no pip work)"
else
    log "installing the project and its dependencies into .venv (pip install -e '.[test]')"
    run "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[test]'
    if (( DRY_RUN )); then
        log "[dry-run] would record $want in $STAMP"
    else
        printf '%s\n' "$want" > "$STAMP"
    fi
fi

if (( DRY_RUN )); then log "dry run: nothing was changed"; else log "ready ($VENV)"; fi
