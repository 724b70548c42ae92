"""The wgpu adapter, device and shaders: choosing a GPU and loading ``shaders/*.wgsl``.

Adapter choice (:func:`choose_adapter`): an adapter named by the caller or by the
``NEIROSYNTH_ADAPTER`` environment variable (a case-insensitive substring of its summary,
e.g. ``"H100"`` or ``"llvmpipe"``); otherwise the first real GPU (discrete, then
integrated); otherwise a CPU Vulkan adapter such as Mesa's lavapipe, with a log line saying
so. No adapter at all raises :class:`NoAdapterError`, naming the Debian package that
provides one.

Shaders live in ``shaders/<name>.wgsl`` beside this package. :func:`load_shader` substitutes
the module constants the engine sets at pipeline-build time (``const NAME: u32 = ...;``).

Public API: ``NoAdapterError``, ``choose_adapter``, ``create_device``, ``load_shader``,
``SHADER_DIR``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import wgpu

__all__ = ["NoAdapterError", "choose_adapter", "create_device", "load_shader", "SHADER_DIR"]

log = logging.getLogger(__name__)

SHADER_DIR = Path(__file__).resolve().parent.parent / "shaders"

#: Environment variable naming the adapter to use (substring of its summary).
ADAPTER_ENV = "NEIROSYNTH_ADAPTER"

_TYPE_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3, "Unknown": 4}


class NoAdapterError(RuntimeError):
    """No usable wgpu adapter on this machine (or none matching the requested name)."""


def _ensure_runtime_dir() -> None:
    # Vulkan/EGL loaders print errors when XDG_RUNTIME_DIR is unset (headless machines, CI).
    path = os.environ.get("XDG_RUNTIME_DIR")
    if path and os.path.isdir(path):
        return
    fallback = Path("/tmp") / f"neirosynth-runtime-{os.getuid()}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(fallback)


def _is_vulkan_or_metal_or_dx(adapter: wgpu.GPUAdapter) -> bool:
    return adapter.info.get("backend_type", "") in ("Vulkan", "Metal", "D3D12")


_instance_configured = False


def _configure_instance() -> None:
    # Leave OpenGL out of the wgpu instance: the engine never uses it, and probing it costs
    # ~0.5 s on a headless machine. Must happen before the instance exists; later calls
    # (the instance already made elsewhere in the process) keep whatever was set.
    global _instance_configured
    if _instance_configured:
        return
    _instance_configured = True
    try:
        from wgpu.backends.wgpu_native.extras import set_instance_extras

        set_instance_extras(backends=["Vulkan", "Metal", "DX12"])
    except Exception as exc:  # noqa: BLE001 - an optional speed-up, never fatal
        log.debug("could not restrict wgpu backends: %s", exc)


def choose_adapter(name: str | None = None) -> wgpu.GPUAdapter:
    """Pick the adapter to simulate on.

    Arguments:
        name: case-insensitive substring of the adapter summary; ``None`` reads
            ``NEIROSYNTH_ADAPTER``, and if that is unset picks the best one available.

    Raises:
        NoAdapterError: no adapter, or none whose summary contains ``name``.
    """
    _ensure_runtime_dir()
    _configure_instance()
    if name is None:
        name = os.environ.get(ADAPTER_ENV) or None
    adapters = [a for a in wgpu.gpu.enumerate_adapters_sync() if _is_vulkan_or_metal_or_dx(a)]
    if not adapters:
        raise NoAdapterError(
            "no Vulkan/Metal/D3D12 adapter found. On Debian/Ubuntu install a GPU driver, or "
            "Mesa's CPU Vulkan driver for a slow software adapter: "
            "`sudo apt-get install mesa-vulkan-drivers` (lavapipe)."
        )
    if name:
        matching = [a for a in adapters if name.lower() in a.summary.lower()]
        if not matching:
            found = "; ".join(a.summary for a in adapters)
            raise NoAdapterError(
                f"no adapter matches {name!r} (from the argument or {ADAPTER_ENV}); found: {found}"
            )
        adapter = matching[0]
        log.info("wgpu adapter %s (asked for %r)", adapter.summary, name)
        return adapter
    adapters.sort(key=lambda a: _TYPE_RANK.get(a.info.get("adapter_type", "Unknown"), 4))
    adapter = adapters[0]
    if adapter.info.get("adapter_type") == "CPU":
        log.info("no GPU adapter found; the CPU Vulkan adapter %s is the only one", adapter.summary)
    else:
        log.info("wgpu adapter %s", adapter.summary)
    return adapter


def create_device(
    adapter: wgpu.GPUAdapter,
    *,
    workgroup_storage_bytes: int,
    storage_buffer_bytes: int,
    invocations_per_workgroup: int = 256,
    features: tuple[str, ...] = (),
) -> wgpu.GPUDevice:
    """A device with the workgroup memory and buffer sizes the engine needs (and ``features``,
    which the caller checked the adapter has).

    Raises:
        NoAdapterError: the adapter's limits are too small, with the numbers.
    """
    limits = adapter.limits
    have_wg = limits["max-compute-workgroup-storage-size"]
    have_buf = limits["max-storage-buffer-binding-size"]
    have_inv = min(
        limits["max-compute-invocations-per-workgroup"], limits["max-compute-workgroup-size-x"]
    )
    if (
        workgroup_storage_bytes > have_wg
        or storage_buffer_bytes > have_buf
        or invocations_per_workgroup > have_inv
    ):
        raise NoAdapterError(
            f"adapter {adapter.summary} allows {have_wg} bytes of workgroup memory, "
            f"{have_buf}-byte storage buffers and {have_inv} invocations a workgroup; the engine "
            f"needs {workgroup_storage_bytes}, {storage_buffer_bytes} and "
            f"{invocations_per_workgroup}. Use a smaller grid or fewer voices."
        )
    return adapter.request_device_sync(
        required_features=list(features),
        required_limits={
            "max-compute-workgroup-storage-size": workgroup_storage_bytes,
            "max-storage-buffer-binding-size": storage_buffer_bytes,
            "max-compute-invocations-per-workgroup": invocations_per_workgroup,
            "max-compute-workgroup-size-x": invocations_per_workgroup,
            "max-buffer-size": min(limits["max-buffer-size"], max(storage_buffer_bytes, 1 << 28)),
        }
    )


def load_shader(name: str, **constants: int) -> str:
    """Source of ``shaders/<name>.wgsl`` with its ``const NAME: u32 = ...;`` values replaced.

    Raises:
        FileNotFoundError: no such shader.
        KeyError: a constant the shader does not declare.
    """
    path = SHADER_DIR / f"{name}.wgsl"
    source = path.read_text()
    for const, value in constants.items():
        pattern = re.compile(rf"^const {const}: u32 = \d+u;$", re.MULTILINE)
        source, count = pattern.subn(f"const {const}: u32 = {int(value)}u;", source)
        if count != 1:
            raise KeyError(f"shader {path} declares no `const {const}: u32 = ...u;`")
    return source
