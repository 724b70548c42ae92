# Sourced by run.sh and test.sh after setup.sh: the environment the engine runs in.
# wgpu's Vulkan/EGL loaders print errors unless XDG_RUNTIME_DIR is a private dir we own.
xdg_ok() { [[ -n "${1:-}" && -d "$1" && ! -L "$1" && -O "$1" && "$(stat -c %a "$1")" == 700 ]]; }
if ! xdg_ok "${XDG_RUNTIME_DIR:-}"; then
    XDG_RUNTIME_DIR="/tmp/neirosynth-runtime-$(id -u)"
    mkdir -m 0700 "$XDG_RUNTIME_DIR" 2>/dev/null || true
    xdg_ok "$XDG_RUNTIME_DIR" || XDG_RUNTIME_DIR="$(mktemp -d /tmp/neirosynth-runtime-XXXXXX)"
fi
export XDG_RUNTIME_DIR
