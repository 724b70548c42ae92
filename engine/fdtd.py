"""The GPU backend: every active voice advances a whole block in one wgpu dispatch.

The kernel is ``shaders/fdtd.wgsl``; its float64 twin is :class:`engine.reference.ReferenceFdtd`
(the scheme is in the docstring of :mod:`engine.reference`). One block is:

1. ``queue.write_buffer`` of the block's headers, records, events and force
   (:class:`~engine.block.BlockPlan`, a few KiB);
2. one compute pass with one workgroup per voice, running ``n_samples × steps_per_sample``
   steps each, then a copy of the used part of the pickup buffer into a staging buffer;
3. one map of that staging buffer (the calling thread polls the device until it resolves,
   :meth:`GpuFdtd._map_read`), copied into a preallocated numpy array.

Every GPU buffer is created in ``__init__`` for the largest block (``max_voices``,
``block_frames``, ``max_steps_per_sample``); a block creates none (``queue.read_buffer`` would
create and destroy one per call, so it is not used). Material maps stay resident in
``n_map_slots`` slots; voices pick two and a morph weight per record, so morphing never
re-uploads a map. Voice fields persist in ``fields`` between blocks and can be read back for a
live view (:meth:`GpuFdtd.read_fields`).

Public API: ``GpuFdtd``.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import wgpu

from .block import (
    EVENT_DTYPE,
    HEADER_DTYPE,
    RECORD_DTYPE,
    RECORD_RESET,
    BlockPlan,
    check_fields,
    check_map,
)
from .gpu import choose_adapter, create_device, load_shader

__all__ = ["GpuFdtd", "READBACK_MODES"]

#: How :meth:`GpuFdtd.run` may wait for a block's pickups (see :meth:`GpuFdtd._map_read`).
READBACK_MODES = ("spin", "nap", "thread")

log = logging.getLogger(__name__)

_STORAGE_IN = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST
#: Blocks that may be submitted and not yet collected (one rendering while one is read).
_IN_FLIGHT = 2
#: A spinning readback gives up after this long (a lost or hung device) instead of forever.
_READBACK_TIMEOUT_S = 2.0
#: Cells each invocation owns (``CELLS`` in shaders/fdtd.wgsl).
_CELLS = 4
#: llvmpipe (Mesa's lavapipe) gives each shader invocation one budget of loop iterations for
#: all its loops together and silently leaves every loop once it is spent (gallivm's
#: LP_MAX_TGSI_LOOP_ITERATIONS), so a dispatch must stay under it.
_LAVAPIPE_LOOP_BUDGET = 65_535


def _fit_lavapipe_loop_budget(block_frames: int, max_steps_per_sample: int, max_events: int) -> int:
    """The largest steps per sample a lavapipe dispatch can run correctly (≤ the asked).

    Loop passes an invocation makes in one dispatch: the state loops (4·CELLS), per output
    sample the sample loop and at least one pass of the event loop, one more pass per event,
    and one substep-loop pass per FDTD step.
    """
    fixed = 4 * _CELLS + 2 * block_frames + max_events
    fits = (_LAVAPIPE_LOOP_BUDGET - fixed) // block_frames
    if fits < 1:
        raise ValueError(
            f"a {block_frames}-frame block does not fit lavapipe's {_LAVAPIPE_LOOP_BUDGET} loop "
            f"iterations per invocation; use smaller blocks"
        )
    if fits < max_steps_per_sample:
        log.warning(
            "lavapipe: at most %d FDTD steps per sample with %d-frame blocks (asked %d); "
            "higher notes are refused. Use the numba backend or a GPU for the full range.",
            fits,
            block_frames,
            max_steps_per_sample,
        )
        return fits
    return max_steps_per_sample


class _ReadMap:
    """Maps one ``MAP_READ`` buffer and polls the device on the calling thread until the map
    resolves, without waking wgpu-py's poll thread.

    ``GPUBuffer.map_async`` hands each map to wgpu-py's per-device poll thread, which then
    polls too, blocking, until the map is done: a second thread that wakes every block and
    needs the GIL — which the audio callback needs at the same moments — and a new cffi
    callback object each time. This calls ``wgpuBufferMapAsync`` itself with one callback made
    here, and sets the buffer's map state as ``map_async`` would, so ``read_mapped`` and
    ``unmap`` work unchanged. It uses wgpu-py 0.32's internals (``_api.libf``, ``new_struct``,
    the buffer's ``_map_state``/``_mapped_status``; wgpu is pinned below 0.33);
    :meth:`create` returns ``None`` where they are missing, and the caller falls back to
    ``map_async``.
    """

    def __init__(self, api, device: wgpu.GPUDevice, buffer: wgpu.GPUBuffer) -> None:
        ffi, lib = api.ffi, api.lib
        self._libf = api.libf
        self._device = device
        self._buffer = buffer
        self._state = [0]  # 0: pending, 1: mapped, 2: failed
        self._message = [""]
        ok = lib.WGPUMapAsyncStatus_Success
        state, message = self._state, self._message

        @ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
        def done(status, c_message, _userdata1, _userdata2):
            if status == ok:
                state[0] = 1
            else:
                message[0] = api.from_c_string_view(c_message)
                state[0] = 2

        self._callback = done  # keeps it alive as long as this object
        self._info = api.new_struct(
            "WGPUBufferMapCallbackInfo",
            mode=lib.WGPUCallbackMode_AllowProcessEvents,
            callback=done,
        )
        self._read = lib.WGPUMapMode_Read
        self._pending = api.enums.BufferMapState.pending
        self._mapped = api.enums.BufferMapState.mapped
        self._unmapped = api.enums.BufferMapState.unmapped
        self._mode = int(api.flags.MapMode.READ)

    @classmethod
    def create(cls, device: wgpu.GPUDevice, buffer: wgpu.GPUBuffer) -> _ReadMap | None:
        try:
            from wgpu.backends.wgpu_native import _api

            mapper = cls(_api, device, buffer)
            for name in ("_internal", "_map_state", "_mapped_status", "_mapped_memoryviews"):
                getattr(buffer, name)
            device._poll  # noqa: B018 - must exist
            return mapper
        except (ImportError, AttributeError) as exc:
            log.info("GPU readback through map_async (wgpu-py internals differ: %s)", exc)
            return None

    def map(self, nbytes: int, give_up_ns: int, what: str) -> None:
        """Map bytes ``[0, nbytes)`` for reading; polls until done or ``give_up_ns``
        (perf_counter) passes.

        Raises:
            RuntimeError: the map failed, or did not resolve in time (``what`` names the GPU).
        """
        buf = self._buffer
        if buf._map_state != self._unmapped:
            raise RuntimeError(f"buffer {buf.label!r} is {buf._map_state}, not unmapped")
        self._state[0] = 0
        buf._map_state = self._pending
        self._libf.wgpuBufferMapAsync(buf._internal, self._read, 0, nbytes, self._info)
        poll = self._device._poll
        state = self._state
        while state[0] == 0:
            poll(False)
            if state[0] == 0 and time.perf_counter_ns() > give_up_ns:
                raise RuntimeError(
                    f"the GPU ({what}) did not return a block's pickups within "
                    f"{_READBACK_TIMEOUT_S:g} s; the device may be lost: restart NeiroSynth, "
                    "or play on the CPU backend (--backend cpu)"
                )
        if state[0] != 1:
            buf._map_state = self._unmapped
            raise RuntimeError(f"could not map {buf.label!r} for reading: {self._message[0]}")
        buf._map_state = self._mapped
        buf._mapped_status = (0, nbytes, self._mode)
        buf._mapped_memoryviews = []


class GpuFdtd:
    """Fused multi-voice FDTD on a wgpu adapter. Implements :class:`~engine.block.FdtdBackend`.

    Arguments:
        grid_n: cells per side (64 for playing, 32 for coarse training).
        max_voices: voices (field slots) kept on the GPU; also the most voices per block.
        block_frames: output samples per block.
        n_map_slots: resident material maps.
        max_steps_per_sample: largest oversampling factor of a voice.
        max_events_per_voice: most parameter events a voice may have in one block.
        adapter: a ``wgpu.GPUAdapter``, or a name for :func:`engine.gpu.choose_adapter`.
        readback: how a block waits for its pickups: ``"spin"`` (polling on the calling
            thread, the default), ``"nap"`` (sleeping through most of the GPU time the block
            should take, then polling) or ``"thread"`` (wgpu-py's poll thread); see
            :meth:`_map_read`.
        profile: time each :meth:`run`'s phases into :attr:`last_timing_ns` (host clock:
            start, uploaded, submitted, mapped, copied) and, where the adapter has the
            ``timestamp-query`` feature, the compute pass on the GPU's own clock into
            :attr:`last_kernel_ns` (for ``bench/``; costs a few µs a block).

    Each voice runs as one workgroup of ``grid_n² / 4`` invocations (1024 at 64×64).

    Raises:
        NoAdapterError: no adapter, or its limits are too small (with the numbers).
        ValueError: inconsistent sizes.

    All methods must be called from one thread (the render thread).
    """

    #: spin/nap readbacks map without wgpu-py's poll thread (:class:`_ReadMap`)
    direct_map: bool = True

    def __init__(
        self,
        grid_n: int = 64,
        max_voices: int = 64,
        block_frames: int = 256,
        *,
        n_map_slots: int = 4,
        max_steps_per_sample: int = 16,
        max_events_per_voice: int = 32,
        adapter: wgpu.GPUAdapter | str | None = None,
        readback: Literal["spin", "thread"] = "spin",
        profile: bool = False,
    ) -> None:
        t0 = time.perf_counter()
        if readback not in READBACK_MODES:
            raise ValueError(f"readback={readback!r}; expected one of {', '.join(READBACK_MODES)}")
        self.readback = readback
        if not isinstance(adapter, wgpu.GPUAdapter):
            adapter = choose_adapter(adapter)
        self.adapter = adapter
        self.adapter_summary: str = adapter.summary
        self.is_cpu_adapter: bool = adapter.info.get("adapter_type") == "CPU"
        if grid_n % _CELLS or not 8 <= grid_n <= 64:
            raise ValueError(
                f"grid_n={grid_n}: the kernel takes multiples of {_CELLS} from 8 to 64 "
                f"(an invocation owns a strip of {_CELLS} rows)"
            )
        workgroup_size = grid_n * grid_n // _CELLS
        if self.is_cpu_adapter:
            log.warning(
                "the GPU kernel runs on the CPU Vulkan adapter %s: slow (the numba backend, "
                "--backend cpu, is ~100× faster on the same cores)",
                self.adapter_summary,
            )
            max_steps_per_sample = _fit_lavapipe_loop_budget(
                block_frames, max_steps_per_sample, max_events_per_voice
            )
        self.grid_n = grid_n
        self.max_voices = max_voices
        self.block_frames = block_frames
        self.n_map_slots = n_map_slots
        self.max_steps_per_sample = max_steps_per_sample
        self.max_events_per_voice = max_events_per_voice
        self.workgroup_size = workgroup_size
        self.profile = profile
        self.has_timestamps = profile and "timestamp-query" in adapter.features
        #: host perf_counter_ns at the phases of the last run (profile only): start, buffers
        #: written, submitted, pickups mapped, pickups copied
        self.last_timing_ns = np.zeros(5, np.int64)
        #: the last run's compute pass on the GPU clock, ns (profile with timestamps only)
        self.last_kernel_ns = 0
        # submit-to-mapped time per FDTD step of recent blocks ("nap" predicts from the least)
        self._wait_per_step_ns = np.zeros(32, np.float64)
        self._waits = 0
        plan = self.new_plan()
        nn = grid_n * grid_n
        sizes = {
            "headers": plan.headers.nbytes,
            "records": plan.records.nbytes,
            "events": plan.events.nbytes,
            "force": plan.force.nbytes,
            "maps": n_map_slots * 2 * nn * 4,
            # one more slot than voices: the scratch voice of warm_up
            "fields": (max_voices + 1) * 2 * nn * 4,
            "pickups": plan.max_out * 4,
        }
        self.device = create_device(
            adapter,
            workgroup_storage_bytes=2 * nn * 4,
            storage_buffer_bytes=max(sizes.values()),
            invocations_per_workgroup=workgroup_size,
            features=("timestamp-query",) if self.has_timestamps else (),
        )
        dev = self.device
        self._headers = dev.create_buffer(label="headers", size=sizes["headers"], usage=_STORAGE_IN)
        self._records = dev.create_buffer(label="records", size=sizes["records"], usage=_STORAGE_IN)
        self._events = dev.create_buffer(label="events", size=sizes["events"], usage=_STORAGE_IN)
        self._force = dev.create_buffer(label="force", size=sizes["force"], usage=_STORAGE_IN)
        self._maps = dev.create_buffer(label="maps", size=sizes["maps"], usage=_STORAGE_IN)
        self._fields = dev.create_buffer(
            label="fields",
            size=sizes["fields"],
            usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC,
        )
        self._pickups = dev.create_buffer(
            label="pickups",
            size=sizes["pickups"],
            usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC,
        )
        # two staging buffers, so that one block can be in flight while the one before is
        # read (submit/collect); each also takes its block's two timestamps, after the pickups
        self._ts_offset = (sizes["pickups"] + 255) // 256 * 256
        self._stagings = [
            dev.create_buffer(
                label=f"pickups-staging-{i}",
                size=self._ts_offset + 16 if self.has_timestamps else sizes["pickups"],
                usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST,
            )
            for i in range(_IN_FLIGHT)
        ]
        if self.has_timestamps:
            self._queries = dev.create_query_set(type="timestamp", count=2 * _IN_FLIGHT)
            self._query_buf = dev.create_buffer(
                size=256 * _IN_FLIGHT,
                usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC,
            )
        # blocks submitted and not yet collected: (staging index, out_size, map_bytes, steps,
        # submitted ns), oldest first
        self._in_flight: list[tuple[int, int, int, int, int]] = []
        self._next_staging = 0
        self._field_staging = dev.create_buffer(
            label="fields-staging",
            size=2 * nn * 4,
            usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST,
        )
        self._out = np.zeros(plan.max_out, np.float32)
        self._field_out = np.zeros((2, grid_n, grid_n), np.float32)
        # Fresh fields and maps are zero; write zeros anyway so no driver garbage is ever read.
        dev.queue.write_buffer(self._fields, 0, np.zeros((max_voices + 1) * 2 * nn, np.float32))
        # A map slot that was never uploaded is a uniform unit-stiffness, undamped body.
        blank = np.zeros((n_map_slots, 2, nn), np.float32)
        blank[:, 0] = 1.0
        dev.queue.write_buffer(self._maps, 0, blank)

        shader = dev.create_shader_module(
            label="fdtd",
            code=load_shader("fdtd", GRID_N=grid_n),
        )
        self._pipeline = dev.create_compute_pipeline(
            layout="auto", compute={"module": shader, "entry_point": "main"}
        )
        buffers = [
            self._headers,
            self._records,
            self._events,
            self._force,
            self._maps,
            self._fields,
            self._pickups,
        ]
        self._bind_group = dev.create_bind_group(
            layout=self._pipeline.get_bind_group_layout(0),
            entries=[
                {"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                for i, b in enumerate(buffers)
            ],
        )
        self._mappers = {
            id(b): _ReadMap.create(self.device, b) for b in (*self._stagings, self._field_staging)
        }
        self.startup_s = time.perf_counter() - t0
        log.info(
            "GPU FDTD on %s: %d×%d grid, %d voices, %d-frame blocks, %d invocations a voice, "
            "ready in %.2f s",
            self.adapter_summary,
            grid_n,
            grid_n,
            max_voices,
            block_frames,
            workgroup_size,
            self.startup_s,
        )

    def warm_up(self, duration_s: float = 0.5) -> float:
        """Run full-size blocks (every voice, four steps a sample, a force, an event) on a
        scratch field slot for ``duration_s``, then return the seconds it took; no voice's
        state changes. Call before real-time use, off the audio thread.

        The first blocks on a fresh device are slow: on an H100 host, submits and maps in the
        first 2 s of a live run took up to 124 ms and 41 ms (the driver and wgpu growing their
        pools; bench/soak.py --profile). On a CPU adapter one small block only: a full one
        takes seconds there.
        """
        t0 = time.perf_counter()
        scratch = self.max_voices
        plan = self.new_plan()
        rec = np.zeros((), RECORD_DTYPE)
        rec["c2"] = 0.1
        rec["exc_x"] = rec["exc_y"] = self.grid_n / 2
        rec["exc_inv_2w2"] = 0.5
        rec["exc_norm"] = 1.0
        rec["pick_lx"] = rec["pick_ly"] = rec["pick_rx"] = rec["pick_ry"] = 1.0
        rec["flags"] = RECORD_RESET
        small = self.is_cpu_adapter
        n_voices = 1 if small else self.max_voices
        steps = 1 if small else min(4, self.max_steps_per_sample)
        kick = np.zeros(self.block_frames, np.float32)
        kick[:4] = 1.0
        runs = 0
        while runs < 3 or (not small and time.perf_counter() - t0 < duration_s):
            plan.clear()
            first = plan.add_record(rec)
            again = plan.add_record(rec)
            for _ in range(n_voices):
                plan.add_voice(scratch, steps, first, kick, [(self.block_frames // 2, again)])
            self.run(plan)
            runs += 1
        elapsed = time.perf_counter() - t0
        log.info("GPU warmed up: %d blocks in %.2f s", runs, elapsed)
        return elapsed

    def new_plan(self) -> BlockPlan:
        """A :class:`~engine.block.BlockPlan` sized for this backend."""
        return BlockPlan.sized_for(self)

    def upload_map(self, slot: int, stiffness: np.ndarray, damping_per_s: np.ndarray) -> None:
        """Make a material map resident in ``slot``; arrays are ``(grid_n, grid_n)``."""
        check_map(self.grid_n, self.n_map_slots, slot, stiffness, damping_per_s)
        data = np.stack([stiffness, damping_per_s]).astype(np.float32)
        self.device.queue.write_buffer(self._maps, slot * data.nbytes, data)

    def run(self, plan: BlockPlan) -> np.ndarray:
        """One dispatch for the plan's voices; returns their fine-rate pickups (float32 view).

        The view is valid until the next call. ``run`` is :meth:`submit` then :meth:`collect`.

        Raises:
            RuntimeError: blocks are in flight (their pickups would come back instead).
        """
        if self._in_flight:
            raise RuntimeError("run() with submitted blocks in flight: collect them first")
        self.submit(plan)
        return self.collect()

    def submit(self, plan: BlockPlan) -> None:
        """Upload the plan and start its dispatch without waiting for it; :meth:`collect`
        returns its pickups. At most two blocks are in flight: the live engine submits a block
        and then collects the one before, which the GPU finished meanwhile, so only the last
        block before each audio callback waits for the GPU (``engine/audio.py``).

        Raises:
            RuntimeError: two blocks are already in flight.
        """
        if len(self._in_flight) >= _IN_FLIGHT:
            raise RuntimeError(f"{_IN_FLIGHT} blocks in flight already: collect one first")
        if plan.n_voices == 0:
            self._in_flight.append((-1, 0, 0, 0, 0))
            return
        timing = self.last_timing_ns if self.profile else None
        if timing is not None:
            timing[0] = time.perf_counter_ns()
        q = self.device.queue
        q.write_buffer(self._headers, 0, plan.headers[: plan.n_voices])
        q.write_buffer(self._records, 0, plan.records[: plan.n_records])
        if plan.n_events:
            q.write_buffer(self._events, 0, plan.events[: plan.n_events])
        q.write_buffer(self._force, 0, plan.force[: plan.n_voices * plan.block_frames])
        if timing is not None:
            timing[1] = time.perf_counter_ns()
        k = self._next_staging
        self._next_staging = (k + 1) % _IN_FLIGHT
        staging = self._stagings[k]
        encoder = self.device.create_command_encoder()
        stamps = self.has_timestamps
        cpass = encoder.begin_compute_pass(
            timestamp_writes={
                "query_set": self._queries,
                "beginning_of_pass_write_index": 2 * k,
                "end_of_pass_write_index": 2 * k + 1,
            }
            if stamps
            else None
        )
        cpass.set_pipeline(self._pipeline)
        cpass.set_bind_group(0, self._bind_group)
        cpass.dispatch_workgroups(plan.n_voices, 1, 1)
        cpass.end()
        nbytes = plan.out_size * 4
        encoder.copy_buffer_to_buffer(self._pickups, 0, staging, 0, nbytes)
        map_bytes = nbytes
        if stamps:
            encoder.resolve_query_set(self._queries, 2 * k, 2, self._query_buf, 256 * k)
            encoder.copy_buffer_to_buffer(self._query_buf, 256 * k, staging, self._ts_offset, 16)
            map_bytes = self._ts_offset + 16
        steps = int(plan.headers["steps_per_sample"][: plan.n_voices].max()) * plan.block_frames
        q.submit([encoder.finish()])
        submitted = time.perf_counter_ns()
        if timing is not None:
            timing[2] = submitted
        self._in_flight.append((k, plan.out_size, map_bytes, steps, submitted))

    def collect(self) -> np.ndarray:
        """The pickups of the oldest submitted block (float32 view, valid until the next
        ``collect``), waiting for the GPU if it has not finished it.

        Raises:
            RuntimeError: nothing was submitted, or the GPU did not answer (lost device).
        """
        if not self._in_flight:
            raise RuntimeError("collect() without a submitted block")
        k, out_size, map_bytes, steps, submitted = self._in_flight.pop(0)
        if k < 0:
            return self._out[:0]
        staging = self._stagings[k]
        timing = self.last_timing_ns if self.profile else None
        self._map_read(staging, map_bytes, steps, submitted)
        mapped = time.perf_counter_ns()
        if timing is not None:
            timing[3] = mapped
        self._wait_per_step_ns[self._waits & 31] = (mapped - submitted) / steps
        self._waits += 1
        try:
            view = staging.read_mapped(0, map_bytes, copy=False)
            self._out[:out_size] = np.frombuffer(view, np.float32, out_size)
            if self.has_timestamps:
                t = np.frombuffer(view, np.uint64, 2, self._ts_offset)
                self.last_kernel_ns = int(t[1]) - int(t[0])
            del view
        finally:
            staging.unmap()
        if timing is not None:
            timing[4] = time.perf_counter_ns()
        return self._out[:out_size]

    def drop_in_flight(self) -> None:
        """Forget submitted blocks that will not be collected (after an error)."""
        self._in_flight.clear()

    def _map_read(
        self, buffer: wgpu.GPUBuffer, nbytes: int, steps: int = 0, submitted_ns: int = 0
    ) -> None:
        """Map ``buffer`` for reading once the submitted work (``steps`` FDTD steps long,
        submitted at ``submitted_ns``) is done.

        ``"spin"`` (the default): this thread polls the device without blocking until the map
        has resolved. ``"thread"``: ``map_sync``, which sleeps until wgpu-py's per-device poll
        thread sees the map complete and wakes this one. Spinning holds a core for the
        kernel's duration but skips two thread wake-ups and their GIL hand-overs, and the
        empty submit that ``map_async`` adds before a read map (mode ``"READ_NOSYNC"``, which
        wgpu-py's own ``queue.read_buffer`` uses; here a copy was always submitted first).
        ``bench/roundtrip.py`` (H200, 32 voices × 128 frames × 5 steps): 977 vs 1153 µs a block
        back to back, 1097 vs 1281 µs with idle gaps, 1747 vs 1932 µs with gaps and an
        audio-callback thread; a *blocking* device poll on this thread instead took 10.6 ms.
        wgpu-py has no public non-blocking poll: ``GPUDevice._poll`` and the promise's
        ``_state`` are its internals (wgpu is pinned to 0.32); without them, ``map_sync``.

        ``"nap"``: as ``"spin"``, after sleeping through three quarters of the time the least
        of the last 32 blocks took a step, less 150 µs (a sleep overshoots by ~50–100 µs):
        the thread then holds neither a core nor the GIL for most of the kernel's run, which
        the audio callback needs.

        Both map through :class:`_ReadMap` (no wgpu-py poll thread) unless ``direct_map`` is
        false (for comparison in ``bench/roundtrip.py``) or wgpu-py's internals differ.
        """
        poll = getattr(self.device, "_poll", None)
        if self.readback in ("spin", "nap") and poll is not None:
            mapper = self._mappers.get(id(buffer)) if self.direct_map else None
            promise = None if mapper is not None else buffer.map_async("READ_NOSYNC", 0, nbytes)
            if self.readback == "nap" and steps and self._waits >= 8:
                recent = self._wait_per_step_ns[: min(self._waits, 32)]
                nap_ns = 0.75 * recent.min() * steps - 150_000
                if submitted_ns:
                    nap_ns -= time.perf_counter_ns() - submitted_ns
                if nap_ns > 100_000:
                    time.sleep(nap_ns * 1e-9)
            give_up = time.perf_counter_ns() + int(_READBACK_TIMEOUT_S * 1e9)
            if mapper is not None:
                mapper.map(nbytes, give_up, self.adapter_summary)
                return
            while getattr(promise, "_state", "fulfilled") == "pending":
                poll(False)
                if time.perf_counter_ns() > give_up:
                    raise RuntimeError(
                        f"the GPU ({self.adapter_summary}) did not return a block's pickups "
                        f"within {_READBACK_TIMEOUT_S:g} s; the device may be lost: restart "
                        "NeiroSynth, or play on the CPU backend (--backend cpu)"
                    )
            promise.sync_wait()
        else:
            buffer.map_sync(wgpu.MapMode.READ, 0, nbytes)

    def write_fields(self, slot: int, fields: np.ndarray) -> None:
        """Set the voice's ``(u^{n-1}, u^n)`` (float32 ``(2, N, N)``) before the next block."""
        check_fields(self.grid_n, self.max_voices, slot, fields)
        data = np.ascontiguousarray(fields, np.float32)
        self.device.queue.write_buffer(self._fields, slot * data.nbytes, data)

    def read_fields(self, slot: int) -> np.ndarray:
        """The voice's ``(u^{n-1}, u^n)`` after the last block, float32 ``(2, N, N)``."""
        nbytes = self._field_out.nbytes
        encoder = self.device.create_command_encoder()
        encoder.copy_buffer_to_buffer(self._fields, slot * nbytes, self._field_staging, 0, nbytes)
        self.device.queue.submit([encoder.finish()])
        self._map_read(self._field_staging, nbytes)
        try:
            view = self._field_staging.read_mapped(0, nbytes, copy=False)
            self._field_out.reshape(-1)[:] = np.frombuffer(view, np.float32)
            del view
        finally:
            self._field_staging.unmap()
        return self._field_out.copy()


# The host-side record layouts must match the WGSL structs.
assert RECORD_DTYPE.itemsize == 80 and HEADER_DTYPE.itemsize == 32 and EVENT_DTYPE.itemsize == 8
