"""Live audio: a render thread stays ahead of the PortAudio callback through a ring buffer.

Threads and what each may do:

* the **render thread** (:class:`LiveEngine` starts it) owns the :class:`~engine.synth.Synth`
  and the backend: it drains performance events, renders a block (GPU dispatch or numba
  kernel, which releases the GIL), and writes the finished frames into the ring;
* the **audio thread** (PortAudio's callback, :meth:`LiveEngine._callback`) only copies
  finished frames from the ring into ``outdata``. When the ring is short it plays zeros for the
  rest and counts an underrun. It never waits, locks, touches the GPU, logs or raises, and
  writes no buffer that was not allocated in ``__init__``;
* any other thread (MIDI input callback, GUI) hands events in with :meth:`LiveEngine.post`,
  stamped with ``time.perf_counter_ns()`` on arrival.

Why a render thread rather than rendering in the callback: the callback runs Python and
needs the GIL, and the GUI and training share the process. Rendering inside the callback
makes every period wait for a whole block of physics and any hiccup — a GUI repaint, a
garbage collection, a slow GPU round trip — becomes an xrun that PortAudio can do nothing
about; a render thread with a time budget (``ahead_frames``) absorbs them at the cost of that
budget in latency. ``bench/latency.py`` measures both on the same run. On an H100 host, 200
notes at 128-frame periods: rendering in the callback added 2.5 ms (median) but its p99 of
2.4 ms is most of the 2.67 ms period, and it caused 20–83 xruns per run; the render thread
at a 2 ms budget (4.67 ms added) caused 4 xruns and 176 underruns, at 4 ms (6.67 ms added,
the default) a soak of 4 minutes had 2 xruns and 44 underruns (bench/RESULTS.md). Profiled
soaks (``bench/soak.py --profile``) put the remaining misses on the host: the blocks that ran
over had their buffer writes and submits take 4× their usual time, while callbacks came up to
4 ms late — threads losing their cores, which ``rt_priority`` (SCHED_FIFO) is for where the
system allows it. On the lent GPU VMs the JACK dummy device itself has xruns with the engine
idle (0–10 a minute, by host), and processes that only sleep 1 ms at a time wake up to 6 ms
late (``bench/soak.py --idle --probe``); the GPU readback's polling does not delay a thread
that needs the GIL measurably (``bench/gil_jitter.py``). An underrun here is a block of
silence we chose; an xrun is the device's.

Blocks shorter than the period: the render thread *begins* each block at its time
(:meth:`~engine.synth.Synth.begin_block`: events applied, the GPU dispatch submitted) and then
*finishes* the block before it (its pickups read back and mixed: the GPU completed it
meanwhile); the last block before a period boundary is finished at once. So with 32-frame
blocks and 128-frame periods only a quarter of the period's physics is left to wait for
inside the render budget, instead of all of it. The output is sample for sample what an
offline render of the same events plays (tested through JACK). On a GPU, live play therefore
renders half-period blocks by default (:func:`live_block_frames`): on an H100 at 32 voices and
a 2 ms budget, 40 s soaks had 5–35 underruns with 64-frame blocks and 1946 with 128-frame
ones (render median 0.6 vs 1.7 ms); at the default 4 ms, 9.4 minutes had 55 underruns and 32
xruns, where 128-frame blocks had 3406 and 290 in 8 minutes on the same kind of host. On the
CPU the numba kernel runs inside ``begin_block``: nothing overlaps, and shorter blocks only
add the synth's per-block Python (~9 µs a voice), so the block stays the period.

Timing: an event stamped at ``t`` is played at the output frame that the callback will reach
``delay_frames`` after ``t``, placed at its exact sample offset inside its block. So events keep
their spacing to the sample, and the latency is constant instead of jittering with the block
grid. The render thread renders a block *just in time*: once the last event that can fall
inside it has arrived (``delay_frames`` before the block's end), leaving it ``ahead_frames``
to render the block before the callback that plays it. Rendering earlier would only make
events late; later, an underrun. An event that arrives too late for its frame anyway (the
render thread was descheduled) plays at the start of its block, counted in ``stats``. The
arrival clock is mapped onto device frames through the most punctual callback of each 1 s
window (Python callbacks come late under load, never early); in the first second after
``start`` that estimate can still improve, so spacing is exact from then on. After an underrun
the render position skips the frames that were played as zeros, so the latency stays what it
was.

The GIL: the callback needs it for the few microseconds of its copy, and CPython hands it
from a running thread to a waiting one only every ``sys.getswitchinterval()`` (5 ms by
default: two periods at 128 frames). While a stream runs, :class:`LiveEngine` lowers the
interval to 0.5 ms (restored by ``stop``); the numba kernel and the GPU wait release the GIL
anyway. The render thread's sleeps have 1 µs of timer slack instead of Linux's 50 µs.

Overload: a machine too slow for the notes being played (two CPU cores and many high,
oversampled voices) would miss every deadline; instead the least-missed voice fades out and
new notes steal beyond one voice fewer, until the render thread has room again
(:mod:`engine.overload`, ``overload_detection``).

Safety: a block that is not finite, or reaches full scale, is replaced by silence before it
enters the ring, and the offending voices are reset by the synth's own guard; the synth's
limiter keeps the mix below full scale.

Devices: PortAudio reads the system's devices once; :meth:`LiveEngine.reopen` with ``rescan``
re-reads them, so an interface plugged in (or replugged) while NeiroSynth runs can be opened.

Public API: ``RingBuffer``, ``LiveEngine``, ``AudioDeviceError``, ``list_output_devices``,
``rescan_devices``, ``DurationHistogram``, ``DEFAULT_AHEAD_S``, ``live_block_frames``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .overload import SHED, OverloadGuard
from .synth import Synth

__all__ = [
    "RingBuffer",
    "LiveEngine",
    "AudioDeviceError",
    "DurationHistogram",
    "DEFAULT_AHEAD_S",
    "live_block_frames",
    "list_output_devices",
    "rescan_devices",
]

log = logging.getLogger(__name__)


#: Callbacks this much later than the clock, 16 in a row, re-anchor it (a stalled device).
_REANCHOR_NS = 20_000_000
#: The render's default time for a block. On an H200 at 32 voices a 128-frame block takes
#: 1.3–1.5 ms (median), 1.9 ms at p99 and up to ~3 ms: a 2 ms budget missed ~1% of its
#: deadlines, 4 ms a few in minutes (bench/RESULTS.md). Lower it with ``ahead_frames`` for
#: less latency on a fast machine.
DEFAULT_AHEAD_S = 0.004
#: GIL switch interval while a stream runs (CPython's default is 5 ms).
_SWITCH_INTERVAL_S = 0.0005
#: Overload detection allows one more voice after this long with the render thread idle half
#: the time or more.
_RELAX_S = 2.0
#: A device whose callback has not come for this long is taken for lost.
_LOST_AFTER_NS = 500_000_000


def live_block_frames(period_frames: int, gpu: bool) -> int:
    """The block to render live at ``period_frames`` a callback: half the period on a GPU
    (the GPU runs the period's first half while the second half's events arrive; not below
    32 frames), the period on the CPU. See the module docstring for the measurements."""
    if gpu and period_frames >= 64 and period_frames % 2 == 0:
        return period_frames // 2
    return period_frames


def _tight_timer_slack() -> None:
    """Let this thread's sleeps end within ~1 µs of their time (Linux ``PR_SET_TIMERSLACK``;
    a normal thread's sleeps may overshoot by up to 50 µs so the kernel can batch wake-ups).
    The render thread sleeps until each block is due and, reading back from a GPU, between
    polls. Elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, ctypes.c_ulong(1_000), 0, 0, 0)  # 29: PR_SET_TIMERSLACK
    except (OSError, AttributeError) as exc:
        log.debug("timer slack unchanged: %s", exc)


class AudioDeviceError(RuntimeError):
    """The output device could not be opened, or vanished; the message says which and why."""


class DurationHistogram:
    """Durations in µs counted in log-spaced bins (20 a decade, 1 µs to 1 s), allocated once:
    percentiles over a whole run without keeping every value (the order statistic's bin
    middle: within ±3%); min and max are exact. ``add`` may be called from the audio callback."""

    BINS_PER_DECADE = 20

    def __init__(self) -> None:
        self.counts = np.zeros(6 * self.BINS_PER_DECADE + 1, np.int64)
        self.n = 0
        self.min = math.inf
        self.max = 0.0

    def add(self, us: float) -> None:
        k = int(self.BINS_PER_DECADE * math.log10(us)) if us > 1.0 else 0
        self.counts[min(k, len(self.counts) - 1)] += 1
        self.n += 1
        if us < self.min:
            self.min = us
        if us > self.max:
            self.max = us

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0–100): the geometric middle of its bin, within min–max."""
        if not self.n:
            return math.nan
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.n))
        mid = 10.0 ** ((k + 0.5) / self.BINS_PER_DECADE)
        return min(max(mid, self.min), self.max)


class RingBuffer:
    """Single-producer, single-consumer ring of float32 frames, allocated once.

    ``write`` is called by one thread (the render thread), ``read_into`` by one other (the
    audio callback). The two indices only grow and each is written by one side; under the
    GIL an int store is atomic, so no lock is needed.
    """

    def __init__(self, capacity_frames: int, channels: int = 2) -> None:
        self.capacity = int(capacity_frames)
        self.channels = channels
        self._buf = np.zeros((self.capacity, channels), np.float32)
        self._write = 0
        self._read = 0

    def readable(self) -> int:
        return self._write - self._read

    def writable(self) -> int:
        return self.capacity - (self._write - self._read)

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` (n, channels); the caller checks :meth:`writable` first."""
        n = len(frames)
        if n > self.writable():
            raise ValueError(f"{n} frames do not fit: {self.writable()} writable")
        start = self._write % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = frames[:first]
        if first < n:
            self._buf[: n - first] = frames[first:]
        self._write += n

    def read_into(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` frames into ``out``, zero the rest; returns frames copied."""
        n = min(len(out), self._write - self._read)
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start : start + first]
        if first < n:
            out[first:n] = self._buf[: n - first]
        if n < len(out):
            out[n:] = 0.0
        self._read += n
        return n


def rescan_devices(timeout_s: float = 5.0) -> None:
    """Re-read the system's audio devices: PortAudio reads them once, when it initialises,
    so a device plugged in later is not seen until it is terminated and initialised again
    (the way sounddevice's author recommends, python-sounddevice issue #125). Call it with
    no stream open.

    Raises:
        AudioDeviceError: PortAudio did not answer within ``timeout_s``. Its JACK host hangs
            in ``Pa_Terminate`` once the JACK server it was connected to has died; then only
            a restart of the program gets audio back.

    Thread: any but the audio callback's; the caller's stream must be closed.
    """
    import sounddevice as sd

    def refresh() -> None:
        sd._terminate()
        sd._initialize()

    worker = threading.Thread(target=refresh, name="neirosynth-audio-rescan", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise AudioDeviceError(
            "PortAudio did not answer while re-reading the audio devices (its JACK host hangs "
            "once its JACK server has died); restart NeiroSynth to get audio back"
        )


def list_output_devices() -> list[dict[str, Any]]:
    """Audio outputs PortAudio sees: ``index``, ``name``, ``hostapi``, ``channels``, ``default_rate_hz``."""
    import sounddevice as sd

    apis = sd.query_hostapis()
    return [
        {
            "index": i,
            "name": d["name"],
            "hostapi": apis[d["hostapi"]]["name"],
            "channels": d["max_output_channels"],
            "default_rate_hz": d["default_samplerate"],
        }
        for i, d in enumerate(sd.query_devices())
        if d["max_output_channels"] > 0
    ]


class LiveEngine:
    """A synth played live: render thread + ring buffer + PortAudio output stream.

    Arguments:
        synth: the instrument; its block size is the render granularity.
        device: output device index or a substring of its name (``None``: the default).
        period_frames: PortAudio's block size (32–1024).
        ahead_frames: the render thread's time to render one block, in frames: a block is
            rendered once the last event that may fall in it has arrived, this long before the
            callback that plays it (default: :data:`DEFAULT_AHEAD_S`, at least one block).
            The added latency, event to
            PortAudio, is :attr:`delay_frames` = ``ahead_frames + block + period −
            gcd(block, period)``.
        latency: PortAudio's suggested latency, seconds or ``"low"``/``"high"``.
        dispatch: applies one posted event to the synth at a block offset; the default
            understands ``("note_on", note, velocity, channel)``, ``("note_off", note,
            channel)``, ``("sustain", down, channel)``, ``("pitch_bend", amount, channel)``,
            ``("all_notes_off", channel)``.
        capture_s: keep the first seconds of output for inspection (:attr:`captured`).
        midi: an :class:`engine.midi.MidiInput` whose queued events the render thread plays,
            each at the frame its arrival stamp maps to, through ``router``
            (an :class:`engine.midi.MidiRouter`, made if not given: MPE included).
        rt_priority: run the render thread under ``SCHED_FIFO`` at this priority (1–99; below
            the JACK server's, e.g. 60 under a realtime ``jackd``), as audio threads are run:
            a normal-priority thread can be preempted for milliseconds on a busy machine.
            Needs the right (root, or ``rtprio`` in ``/etc/security/limits.d/audio.conf``);
            without it the thread keeps normal priority and :attr:`rt_status` says why.
            Linux only; ``None`` (the default) leaves the scheduling alone.
        log_blocks: how many blocks :attr:`render_log` and callbacks :attr:`callback_ns`
            keep (a power of two; the benchmarks keep a whole run).
        overload_detection: when the render thread is busy more than 85% of the time over
            the last 32 blocks, fade out the least-missed voice and play one voice fewer;
            allow one more after 2 s under 50% (:mod:`engine.overload`). ``False``: play
            every voice and let blocks go silent when the machine falls behind.

    Methods other than the callback may be called from any thread except where stated.
    """

    def __init__(
        self,
        synth: Synth,
        *,
        device: int | str | None = None,
        period_frames: int = 128,
        ahead_frames: int | None = None,
        latency: float | str = "low",
        dispatch: Callable[[Synth, tuple, int], None] | None = None,
        capture_s: float = 0.0,
        midi=None,
        router=None,
        rt_priority: int | None = None,
        log_blocks: int = 4096,
        overload_detection: bool = True,
    ) -> None:
        if not 32 <= period_frames <= 1024:
            raise ValueError(f"period_frames={period_frames} outside 32..1024")
        if ahead_frames is None:
            ahead_frames = max(synth.block_frames, round(DEFAULT_AHEAD_S * synth.sample_rate_hz))
        ahead_frames = int(ahead_frames)
        if ahead_frames < 1:
            raise ValueError(f"ahead_frames={ahead_frames} must be >= 1")
        if log_blocks < 16 or log_blocks & (log_blocks - 1):
            raise ValueError(f"log_blocks={log_blocks}: expected a power of two >= 16")
        if rt_priority is not None and not 1 <= int(rt_priority) <= 99:
            raise ValueError(f"rt_priority={rt_priority}: expected 1..99 (SCHED_FIFO) or None")
        self.rt_priority = None if rt_priority is None else int(rt_priority)
        #: how the render thread is scheduled ("normal", "SCHED_FIFO 60", or why not)
        self.rt_status = "normal"
        self._log_mask = log_blocks - 1
        self.synth = synth
        self.sample_rate_hz = synth.sample_rate_hz
        self.block_frames = synth.block_frames
        self.period_frames = period_frames
        self.device = device
        self.latency = latency
        self._dispatch = dispatch or _default_dispatch
        self.midi = midi
        if midi is not None and router is None:
            from .midi import MidiRouter

            router = MidiRouter(bend_range_semitones=synth.bend_range_semitones)
        self.router = router
        if midi is not None:
            from .midi import EVENT_DTYPE as MIDI_EVENT

            self._midi_buf = np.zeros(256, MIDI_EVENT)
        #: frames from an event's arrival to its output frame (constant): the render thread's
        #: ``ahead_frames``, the block the event falls in, and the worst alignment of a block
        #: start inside a period (blocks start on multiples of gcd(block, period))
        self.delay_frames = (
            ahead_frames
            + self.block_frames
            + period_frames
            - math.gcd(self.block_frames, period_frames)
        )
        self.ahead_frames = ahead_frames
        self._guard: OverloadGuard | None = None
        if overload_detection:
            block_s = self.block_frames / self.sample_rate_hz
            self._guard = OverloadGuard(
                min(self.block_frames, ahead_frames) / self.sample_rate_hz * 1e9,
                relax_blocks=max(1, round(_RELAX_S / block_s)),
            )
        #: voices faded out because the machine fell behind (overload detection)
        self.shed_voices = 0
        self.ring = RingBuffer(self.delay_frames + self.block_frames + period_frames)
        self._events: deque[tuple[int, tuple]] = deque(maxlen=4096)
        #: (output frame, event) of the last events the render thread applied
        self.event_log: deque[tuple[int, tuple]] = deque(maxlen=1024)
        self._stream = None
        #: the name of the device the stream last opened (a reopen after a rescan uses it)
        self.device_name: str | None = None
        self._switch_interval_s: float | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        # clock: frames the callback has consumed; _base_ns is when frame 0 would have been
        # consumed: the most punctual callback's estimate (callbacks come late under load, and
        # in bursts when the host's period is longer than ours), re-taken every 1 s window, so
        # it follows the device's clock (drift, or a device that falls behind) without the
        # callbacks' jitter
        self._frames_read = 0
        self._window_min_ns = float("inf")
        self._window_start_ns = 0
        self._first_window = True
        self._lagging = 0
        self._lag_min_ns = float("inf")
        self._last_callback_ns = 0
        #: set when the callback stopped coming (the device vanished); cleared by start()
        self.device_lost = False
        self._ns_per_frame = 1e9 / self.sample_rate_hz
        self._base_ns = float("inf")
        self._rendered_frames = 0  # frames of the blocks begun (Synth.begin_block)
        self._unwritten = 0  # blocks begun and not yet in the ring (0 or 1 between calls)
        self._silence = np.zeros((self.block_frames, 2), np.float32)
        self._skipped = 0  # device frames the callback filled with zeros (underruns)
        # statistics, preallocated
        self._cb_hist = DurationHistogram()
        #: how late each callback came against the clock (µs): a waiting GIL or a
        #: descheduled audio thread shows here, not in the callback's own run time
        self._late_hist = DurationHistogram()
        self._cb_count = 0
        #: per callback: the first frame it handed over and when it started (perf_counter_ns)
        self.callback_frames = np.zeros(log_blocks, np.int64)
        self.callback_ns = np.zeros(log_blocks, np.int64)
        self._render_hist = DurationHistogram()
        #: the last ``log_blocks`` blocks: (first device frame, due, started, finished) in
        #: frames / ns
        self.render_log = np.zeros((log_blocks, 4), np.int64)
        #: the last ``log_blocks`` underruns and xruns: (first device frame of the callback,
        #: its start in ns)
        self.underrun_log = np.zeros((log_blocks, 2), np.int64)
        self.xrun_log = np.zeros((log_blocks, 2), np.int64)
        self._render_count = 0
        self.underruns = 0
        self.xruns = 0
        self.late_events = 0
        #: posted events the synth refused (wrong note, channel, value): ignored, logged
        self.bad_events = 0
        self.silenced_blocks = 0
        self.device_errors = 0
        #: largest |sample| handed to the ring
        self.peak = 0.0
        self._capture = np.zeros((int(capture_s * self.sample_rate_hz), 2), np.float32)
        self._captured = 0

    # ---- control (any thread) ---------------------------------------------------------------

    def post(self, event: tuple, arrival_ns: int | None = None) -> None:
        """Hand a performance event to the render thread (MIDI/GUI threads)."""
        self._events.append((time.perf_counter_ns() if arrival_ns is None else arrival_ns, event))

    def start(self) -> None:
        """Open the output stream and start the render thread.

        Raises:
            AudioDeviceError: the device is missing or refuses the settings.
        """
        import sounddevice as sd

        if self._running:
            return
        warm_up = getattr(self.synth.backend, "warm_up", None)
        if warm_up is not None:  # numba: compile or load now, not in the first played block
            warm_up()
        # bodies the synth has not solved yet (a morph sweep) are solved in a worker process
        # from now on, not in the render thread (engine/modes.py)
        self.synth.bodies.start_background()
        # A full garbage collection walks every object the process holds (~20 ms with numpy,
        # scipy, numba and wgpu loaded) and may start in the render thread; freezing what
        # exists now leaves the collector only what is made from here on.
        gc.collect()
        gc.freeze()
        self._running = True
        self.device_lost = False
        if self._switch_interval_s is None:
            self._switch_interval_s = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval_s, _SWITCH_INTERVAL_S))
        self._last_callback_ns = 0
        self._base_ns = float("inf")
        self._window_min_ns = float("inf")
        self._window_start_ns = 0
        self._first_window = True
        self._lagging = 0
        self._lag_min_ns = float("inf")
        self._frames_read = (
            self._rendered_frames
            + self._skipped
            - self.ring.readable()
            - self._unwritten * self.block_frames
        )
        self._prefill()
        self._thread = threading.Thread(target=self._render_loop, name="neirosynth-render", daemon=True)
        self._thread.start()
        try:
            self._stream = sd.OutputStream(
                samplerate=self.sample_rate_hz,
                blocksize=self.period_frames,
                device=self.device,
                channels=2,
                dtype="float32",
                latency=self.latency,
                callback=self._callback,
                finished_callback=self._finished,
            )
            self._stream.start()
            self.device_name = str(sd.query_devices(self._stream.device)["name"])
        except (sd.PortAudioError, ValueError) as exc:
            self.stop()
            raise AudioDeviceError(
                f"could not open audio output {self.device!r} at {self.sample_rate_hz} Hz with "
                f"{self.period_frames}-frame periods: {exc}. `neirosynth devices` lists the outputs."
            ) from exc
        log.info(
            "audio: %s, %d Hz, %d-frame periods, output latency %.1f ms",
            self._stream.device,
            self.sample_rate_hz,
            self.period_frames,
            self.output_latency_s * 1e3,
        )

    def stop(self) -> None:
        """Stop the stream and the render thread (idempotent)."""
        self._running = False
        if self._stream is not None:
            stream, self._stream = self._stream, None
            # A vanished device (a JACK server gone) can hang PortAudio's abort forever: close
            # from a helper thread and leave the stream behind if it does not answer.
            closer = threading.Thread(
                target=lambda: (stream.abort(ignore_errors=True), stream.close(ignore_errors=True)),
                name="neirosynth-audio-close",
                daemon=True,
            )
            closer.start()
            closer.join(timeout=1.0)
            if closer.is_alive():
                self.device_errors += 1
                log.error("audio device %r did not answer while closing; left behind", self.device)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
            if not self._thread.is_alive() and self._unwritten:
                try:  # a block begun and not finished: into the ring, for a later start
                    self._write_block(self.synth.finish_block())
                except Exception:  # noqa: BLE001
                    log.exception("could not finish the last block")
                    self.synth.drop_in_flight()
                    while self._unwritten:
                        self._write_block(self._silence)
        self._thread = None
        if self._switch_interval_s is not None:
            sys.setswitchinterval(self._switch_interval_s)
            self._switch_interval_s = None
        self.synth.bodies.close()

    def reopen(self, device: int | str | None = None, *, rescan: bool = False) -> None:
        """Stop and start again, on ``device`` if given (after a device vanished); with
        ``rescan``, re-read the system's devices first (:func:`rescan_devices`), so that a
        device plugged in since the start can be opened.

        Raises:
            AudioDeviceError: the device cannot be opened, or PortAudio hung re-reading.
        """
        self.stop()
        if rescan:
            rescan_devices()
            if device is None and isinstance(self.device, int) and self.device_name:
                device = self.device_name  # indices change when devices come and go
        if device is not None:
            self.device = device
        self.start()

    @property
    def running(self) -> bool:
        """The stream plays and its callback keeps coming."""
        return (
            self._running
            and not self.device_lost
            and self._stream is not None
            and self._stream.active
        )

    @property
    def output_latency_s(self) -> float:
        """PortAudio's reported output latency."""
        return float(self._stream.latency) if self._stream is not None else float("nan")

    @property
    def captured(self) -> np.ndarray:
        """What the render thread handed to the ring so far (tests, live view)."""
        return self._capture[: self._captured]

    def stats(self) -> dict[str, float]:
        """Underruns, xruns, and the callback's and the render's time (µs) over the whole run:
        min, median, p99, p99.9, max (percentiles within ±3%: :class:`DurationHistogram`);
        ``callback_late_us``: how much later than the clock the callbacks came;
        ``shed_voices`` and ``voice_limit``: overload detection's doing."""

        def pct(h: DurationHistogram) -> dict[str, float]:
            return {
                "min": h.min if h.n else math.nan,
                "median": h.percentile(50),
                "p99": h.percentile(99),
                "p99.9": h.percentile(99.9),
                "max": h.max if h.n else math.nan,
            }

        return {
            "callbacks": self._cb_count,
            "frames": self._frames_read,
            "underruns": self.underruns,
            "xruns": self.xruns,
            "late_events": self.late_events,
            "bad_events": self.bad_events,
            "silenced_blocks": self.silenced_blocks,
            "shed_voices": self.shed_voices,
            "voice_limit": self.synth.voice_limit or len(self.synth.voices),
            "peak": self.peak,
            "device_errors": self.device_errors,
            "callback_us": pct(self._cb_hist),
            "callback_late_us": pct(self._late_hist),
            "render_us": pct(self._render_hist),
        }

    # ---- audio thread ---------------------------------------------------------------------

    def _callback(self, outdata: np.ndarray, frames: int, time_info, status) -> None:
        t0 = time.perf_counter_ns()
        self._last_callback_ns = t0
        if status.output_underflow:
            k = self.xruns & self._log_mask
            self.xrun_log[k, 0] = self._frames_read
            self.xrun_log[k, 1] = t0
            self.xruns += 1
        got = self.ring.read_into(outdata)
        if got < frames:
            k = self.underruns & self._log_mask
            self.underrun_log[k, 0] = self._frames_read
            self.underrun_log[k, 1] = t0
            self.underruns += 1
            self._skipped += frames - got
        self._tick(t0, frames)

    def _tick(self, t0: int, frames: int) -> None:
        """The clock and statistics of one callback that started at ``t0`` (audio thread)."""
        base = t0 - self._frames_read * self._ns_per_frame
        if base > self._base_ns:  # finite: the clock is set
            self._late_hist.add((base - self._base_ns) * 1e-3)
        if base < self._window_min_ns:
            self._window_min_ns = base
        if self._first_window and base < self._base_ns:
            self._base_ns = base  # the first window: the earliest estimate so far
        # The device stalled (a JACK graph change, a sleeping laptop): every callback comes
        # later than the clock says. After 16 such callbacks in a row, re-anchor at once
        # rather than at the end of the window.
        if base - self._base_ns > _REANCHOR_NS:
            self._lagging += 1
            self._lag_min_ns = min(self._lag_min_ns, base)
            if self._lagging >= 16:
                self._base_ns = self._lag_min_ns
                self._window_min_ns = self._lag_min_ns
                self._lagging = 0
                self._lag_min_ns = float("inf")
        else:
            self._lagging = 0
            self._lag_min_ns = float("inf")
        if self._window_start_ns == 0:
            self._window_start_ns = t0
        elif t0 - self._window_start_ns > 1_000_000_000:
            if not self._first_window:
                self._base_ns = self._window_min_ns
            self._first_window = False
            self._window_min_ns = float("inf")
            self._window_start_ns = t0
        self._frames_read += frames
        i = self._cb_count & self._log_mask
        self.callback_frames[i] = self._frames_read - frames
        self.callback_ns[i] = t0
        self._cb_hist.add((time.perf_counter_ns() - t0) * 1e-3)
        self._cb_count += 1

    def _finished(self) -> None:
        # PortAudio stopped the stream: stopped by us, or the device went away.
        if self._running:
            self.device_errors += 1
            self._running = False

    # ---- render thread ----------------------------------------------------------------------

    def _prefill(self) -> None:
        while (
            self._due_ns() <= 0
            and self.ring.writable() >= (self._unwritten + 1) * self.block_frames
        ):
            self._render_one()

    def _due_ns(self) -> float:
        """When the next block may be rendered (perf_counter ns): once every event that can
        fall inside it has arrived, ``delay_frames`` before its end. Before the first
        callback, at once up to ``delay_frames`` of (silent) lead."""
        base = self._base_ns  # one read: the callback may move it meanwhile
        if not math.isfinite(base):
            lead = self.ring.readable() + (self._unwritten + 1) * self.block_frames
            return 0.0 if lead <= self.delay_frames else math.inf
        end = self._rendered_frames + self._skipped + self.block_frames
        return base + (end - self.delay_frames) * self._ns_per_frame

    def _raise_priority(self) -> None:
        """SCHED_FIFO for this (the render) thread, if asked and allowed (render thread)."""
        if self.rt_priority is None:
            self.rt_status = "normal"
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_priority))
            self.rt_status = f"SCHED_FIFO {self.rt_priority}"
        except (AttributeError, OSError) as exc:  # not Linux, or no right to it
            self.rt_status = f"normal (SCHED_FIFO {self.rt_priority} refused: {exc})"
            log.warning(
                "render thread keeps normal priority: SCHED_FIFO %d refused (%s); allow "
                "realtime scheduling (the audio group's rtprio) for fewer underruns",
                self.rt_priority,
                exc,
            )

    def _render_loop(self) -> None:
        self._raise_priority()
        _tight_timer_slack()
        # Leave a core to the audio callback, MIDI and the GUI: a numba kernel spread over
        # every core waits for its slowest thread, and one preempted thread stalls the block.
        try:
            import numba

            numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS - 1))
        except ImportError:
            pass
        poll_ns = int(self.period_frames * self._ns_per_frame / 4)
        while self._running:
            now = time.perf_counter_ns()
            last = self._last_callback_ns
            if last and not self.device_lost and now - last > _LOST_AFTER_NS:
                self.device_lost = True
                self.device_errors += 1
                log.error(
                    "audio device %r stopped calling back (vanished?); reopen it or choose "
                    "another with `neirosynth devices`",
                    self.device,
                )
            wait_ns = self._due_ns() - now
            if wait_ns <= 0 and self.ring.writable() >= (self._unwritten + 1) * self.block_frames:
                self._render_one()  # survives a failing render itself
            else:
                time.sleep(min(max(wait_ns, 20_000), poll_ns) * 1e-9)

    def _frame_of(self, arrival_ns: int) -> int:
        """Output frame an event stamped at ``arrival_ns`` plays at."""
        base = self._base_ns  # one read: the callback may move it meanwhile
        if not math.isfinite(base):  # no callback yet: play at once
            return self._rendered_frames + self._skipped
        return int(round((arrival_ns - base) / self._ns_per_frame)) + self.delay_frames

    def _render_one(self) -> None:
        t0 = time.perf_counter_ns()
        due = self._due_ns()
        # the device frame this block will start at: rendered frames plus the zeros played
        start = self._rendered_frames + self._skipped
        end = start + self.block_frames
        # Begin this block (on the GPU: submitted, not waited for), then finish the block
        # before it, which the GPU completed meanwhile; the last block before a callback's
        # period boundary is finished at once. With blocks shorter than the period, only that
        # one waits for the GPU inside the render budget (Synth.begin_block).
        begun = False
        try:
            self._apply_events(start, end)
            self.synth.begin_block()
            begun = True
            self._rendered_frames += self.block_frames
            self._unwritten += 1
            if self._unwritten > 1:
                self._write_block(self.synth.finish_block())
            if end % self.period_frames == 0:
                self._write_block(self.synth.finish_block())
        except Exception:  # noqa: BLE001 - the render thread must survive anything
            log.exception("render failed; playing silence for the blocks in progress")
            self.synth.drop_in_flight()
            if not begun:
                self._rendered_frames += self.block_frames
                self._unwritten += 1
            while self._unwritten:
                self._write_block(self._silence)
        i = self._render_count & self._log_mask
        t1 = time.perf_counter_ns()
        if self._guard is not None:
            verdict = self._guard.observe(t1 - t0)
            if verdict:
                self._follow_load(verdict)
        self._render_hist.add((t1 - t0) * 1e-3)
        self.render_log[i] = (start, due if math.isfinite(due) else 0, t0, t1)
        self._render_count += 1

    def _follow_load(self, verdict: int) -> None:
        """Shed a voice and play one fewer (``SHED``), or allow one more (``GROW``)."""
        synth = self.synth
        if verdict == SHED:
            sounding = synth.active_voices
            if sounding <= 1:
                return
            synth.shed_voice(0)
            synth.set_voice_limit(sounding - 1)
            self.shed_voices += 1
            log.info(
                "overload: render thread busy %.0f%% of the time; fading out a voice, playing "
                "at most %d", self._guard.utilisation * 100, sounding - 1)
        elif synth.voice_limit is not None:
            synth.set_voice_limit(synth.voice_limit + 1)

    def _apply_events(self, start: int, end: int) -> None:
        """Hand the synth every event that falls in device frames ``[start, end)``."""
        while self._events:
            arrival, event = self._events[0]
            frame = self._frame_of(arrival)
            if frame >= end:
                break
            self._events.popleft()
            if frame < start:
                self.late_events += 1
                frame = start
            try:
                self._dispatch(self.synth, event, frame - start)
            except (ValueError, TypeError, IndexError) as exc:  # a bad event, not a bad block
                self.bad_events += 1
                log.warning("ignored event %r: %s", event, exc)
                continue
            self.event_log.append((frame, event))
        if self.midi is not None:
            self._play_midi(start, end)

    def _write_block(self, block: np.ndarray) -> None:
        """Hand a finished block to the ring (silenced if not finite or at full scale)."""
        lo, hi = float(block.min()), float(block.max())
        if not (-1.0 < lo and hi < 1.0):  # NaN fails both comparisons
            self.silenced_blocks += 1
            block = self._silence
        else:
            self.peak = max(self.peak, -lo, hi)
        self.ring.write(block)
        self._unwritten -= 1
        if self._captured < len(self._capture):
            n = min(len(block), len(self._capture) - self._captured)
            self._capture[self._captured : self._captured + n] = block[:n]
            self._captured += n

    def _play_midi(self, start: int, end: int) -> None:
        base = self._base_ns
        if not math.isfinite(base):
            before = time.perf_counter_ns() + 1
        else:
            before = int(base + (end - self.delay_frames) * self._ns_per_frame)
        n = self.midi.queue.pop_into(self._midi_buf, before)
        for t_ns, _off, kind, ch, note, velocity, value in self._midi_buf[:n].tolist():
            frame = max(self._frame_of(t_ns), start)
            if frame == start and self._frame_of(t_ns) < start:
                self.late_events += 1
            frame = min(frame, end - 1)
            self.router.apply(self.synth, kind, ch, note, velocity, value, frame - start)
            self.event_log.append((frame, ("midi", kind, ch, note, velocity, value, t_ns)))


def _default_dispatch(synth: Synth, event: tuple, offset: int) -> None:
    kind = event[0]
    if kind == "note_on":
        synth.note_on(event[1], event[2], event[3], offset)
    elif kind == "note_off":
        synth.note_off(event[1], event[2], offset)
    elif kind == "sustain":
        synth.sustain(bool(event[1]), event[2], offset)
    elif kind == "pitch_bend":
        synth.pitch_bend(float(event[1]), event[2], offset)
    elif kind == "all_notes_off":
        synth.all_notes_off(event[1], offset)
    else:
        log.debug("ignored event %r", event)
