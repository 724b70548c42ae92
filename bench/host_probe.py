"""A probe of the host's own stalls, to run beside a soak: are a soak's xruns and underruns
the engine's, or moments when this machine woke nobody on time?

Each probe is a separate process (no GIL shared with the engine) whose only thread sleeps
1 ms at a time, with 1 µs timer slack, and notes every wake that came more than
``threshold_us`` late — what the JACK server's driver thread and PortAudio's callback thread
go through, with none of the engine's work. ``coincidence`` then counts the soak's events
that followed a probe stall within a window, against how often a random moment does.

Used by ``bench/soak.py --probe``.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import time

import numpy as np

#: A wake this much later than asked counts as a stall.
THRESHOLD_US = 1_000


def _probe(stop, out, threshold_us: float) -> None:
    try:
        ctypes.CDLL(None).prctl(29, ctypes.c_ulong(1_000), 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass
    stalls = []
    limit = int(threshold_us * 1e3)
    while not stop.is_set():
        due = time.perf_counter_ns() + 1_000_000
        time.sleep(1e-3)
        woke = time.perf_counter_ns()
        if woke - due > limit:
            stalls.append((due, woke))
    out.put(stalls)


class HostProbe:
    """``n`` probe processes from construction until :meth:`stop`."""

    def __init__(self, n: int = 2, threshold_us: float = THRESHOLD_US) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._out = ctx.Queue()
        self._procs = [ctx.Process(target=_probe, args=(self._stop, self._out, threshold_us),
                                   daemon=True) for _ in range(n)]
        for p in self._procs:
            p.start()
        self.started_ns = time.perf_counter_ns()

    def stop(self) -> np.ndarray:
        """Stop the probes; every stall seen, ``(due_ns, woke_ns)`` rows sorted by time."""
        self.stopped_ns = time.perf_counter_ns()
        self._stop.set()
        rows = [r for _ in self._procs for r in self._out.get(timeout=30)]
        for p in self._procs:
            p.join(timeout=10)
        return np.array(sorted(rows), np.int64).reshape(-1, 2)


def coincidence(times_ns: np.ndarray, stalls: np.ndarray, window_ns: int) -> int:
    """How many of ``times_ns`` came at most ``window_ns`` after a stall began (or during it)."""
    if not len(times_ns) or not len(stalls):
        return 0
    starts = stalls[:, 0]
    ends = stalls[:, 1]
    k = np.searchsorted(starts, times_ns, side="right") - 1  # the last stall begun before t
    hit = np.zeros(len(times_ns), bool)
    for back in range(0, 4):  # stalls may overlap across probes: look at a few before
        j = k - back
        ok = j >= 0
        jj = np.where(ok, j, 0)
        hit |= ok & (times_ns - starts[jj] <= window_ns + (ends[jj] - starts[jj]))
    return int(hit.sum())


def summary(stalls: np.ndarray, span_ns: int, events: dict[str, np.ndarray],
            window_ns: int = 20_000_000, threshold_us: float = THRESHOLD_US) -> list[str]:
    """Lines saying how often and how long the host stalled the probes, and how many of each
    kind of event (callback times, ns) followed a stall within ``window_ns``, against chance:
    the share of the run that lies within a window after some stall."""
    lines = []
    late_ms = (stalls[:, 1] - stalls[:, 0]) / 1e6 if len(stalls) else np.zeros(0)
    covered = 0.0
    if len(stalls):  # time within a window after a stall, overlaps merged
        iv = np.stack([stalls[:, 0], stalls[:, 1] + window_ns], 1)
        end = -np.inf
        for a, b in iv:
            if b > end:
                covered += b - max(a, end)
                end = b
    chance = covered / max(span_ns, 1)
    lines.append(
        f"host probe (1 ms sleeps in other processes, wakes > "
        f"{threshold_us / 1e3:g} ms late): {len(late_ms)} stalls in {span_ns / 1e9:.0f} s"
        + (f", median {np.median(late_ms):.1f} ms, longest {late_ms.max():.1f} ms" if len(late_ms) else "")
        + f"; {chance * 100:.1f}% of the run lies ≤ {window_ns / 1e6:g} ms after one"
    )
    for name, t in events.items():
        if len(t):
            lines.append(f"  {name}: {coincidence(np.sort(t), stalls, window_ns)} of {len(t)} "
                         f"came ≤ {window_ns / 1e6:g} ms after a probe stall (chance: "
                         f"{chance * len(t):.1f})")
    return lines
