"""Choosing the simulation backend: the wgpu kernel on a GPU, numba on a CPU.

``auto`` (the default) takes the GPU backend (:class:`engine.fdtd.GpuFdtd`) when wgpu finds a
real GPU, and the numba backend (:class:`engine.cpu.CpuFdtd`) when the only adapter is a CPU
one such as Mesa's lavapipe, which runs this kernel 10–25× slower than numba on the same
cores. ``gpu`` and ``cpu`` force one; so does the ``NEIROSYNTH_BACKEND`` environment
variable. The log line says which backend runs and why.

Public API: ``open_backend``, ``BackendKind``, ``BACKEND_ENV``.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from .block import FdtdBackend

__all__ = ["open_backend", "BackendKind", "BACKEND_ENV"]

log = logging.getLogger(__name__)

BackendKind = Literal["auto", "gpu", "cpu"]
#: Environment variable that chooses the backend when the caller passes ``None``.
BACKEND_ENV = "NEIROSYNTH_BACKEND"


def open_backend(
    kind: BackendKind | None = None,
    *,
    grid_n: int = 64,
    max_voices: int = 64,
    block_frames: int = 256,
    adapter: str | None = None,
    gpu_block_frames: int | None = None,
) -> FdtdBackend:
    """Create the backend ``kind`` (``None``: ``$NEIROSYNTH_BACKEND`` or ``auto``).

    Arguments:
        kind: ``"auto"``, ``"gpu"`` or ``"cpu"``.
        grid_n, max_voices, block_frames: sizes of the simulation.
        adapter: wgpu adapter name (see :func:`engine.gpu.choose_adapter`); naming one
            implies the GPU backend under ``auto``.
        gpu_block_frames: the block if the GPU backend is chosen (default ``block_frames``);
            live play renders half-period blocks on a GPU (:func:`engine.audio.live_block_frames`).

    Raises:
        ValueError: an unknown kind.
        NoAdapterError: ``gpu`` asked for, and no adapter.
    """
    if kind is None:
        kind = os.environ.get(BACKEND_ENV, "auto")  # type: ignore[assignment]
    if kind not in ("auto", "gpu", "cpu"):
        raise ValueError(f"backend {kind!r}; choose 'auto', 'gpu' or 'cpu' (from {BACKEND_ENV} or --backend)")
    sizes = {"grid_n": grid_n, "max_voices": max_voices, "block_frames": block_frames}
    if kind == "cpu":
        return _cpu(sizes, "asked for")
    from .fdtd import GpuFdtd
    from .gpu import NoAdapterError, choose_adapter

    try:
        chosen = choose_adapter(adapter)
    except NoAdapterError:
        if kind == "gpu":
            raise
        return _cpu(sizes, "no wgpu adapter")
    if kind == "auto" and adapter is None and chosen.info.get("adapter_type") == "CPU":
        return _cpu(sizes, f"the only wgpu adapter is the CPU one ({chosen.summary})")
    if gpu_block_frames is not None:
        sizes["block_frames"] = gpu_block_frames
    backend = GpuFdtd(adapter=chosen, **sizes)
    log.info("backend: GPU kernel on %s", backend.adapter_summary)
    return backend


def _cpu(sizes: dict, why: str) -> FdtdBackend:
    from .cpu import CpuFdtd

    log.info("backend: numba on the CPU (%s)", why)
    return CpuFdtd(**sizes)
