"""How late a thread that needs the GIL gets to run while another thread waits in a loop of
GIL-releasing calls (as a GPU readback polls the device), and how long this host stalls a
busy thread by itself.

The audio callback's stand-in wakes every 2.67 ms (128 frames at 48 kHz), and for each wake
this records how long after its due time it ran Python again. Beside it, one of:

* ``alone``: nothing else runs;
* ``spin``: a thread calls a C function that releases the GIL (``getpid`` through ctypes) in a
  tight loop, as ``GpuFdtd``'s ``"spin"`` readback calls ``wgpuDevicePoll``. CPython's waiter
  asks the holder to drop the GIL only when a whole switch interval passes *without a switch*,
  and a thread that drops and re-takes the GIL counts as a switch: the waiter may wait as long
  as the loop goes on (the convoy effect);
* ``doze``: the same loop sleeping ``--doze-us`` between calls, with the GIL released;
* ``python``: a pure-Python busy loop (the GIL is handed over each switch interval).

``host`` runs a busy thread alone in another process and records its gaps: what the
machine's scheduler and hypervisor take from a thread that never waits.

Run: ``python bench/gil_jitter.py [--seconds 10]``; appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import multiprocessing as mp
import os
import platform
import sys
import threading
import time

import numpy as np

from results import publish  # bench/results.py

PERIOD_NS = 2_666_667


def _set_timer_slack(ns: int) -> None:
    """PR_SET_TIMERSLACK (Linux): let short sleeps end on time."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _periodic(seconds: float) -> np.ndarray:
    """Wake every period; how late (µs) each wake ran Python."""
    _set_timer_slack(1000)
    n = int(seconds * 1e9 / PERIOD_NS)
    late = np.empty(n)
    t0 = time.perf_counter_ns()
    for k in range(n):
        due = t0 + (k + 1) * PERIOD_NS
        wait = due - time.perf_counter_ns()
        if wait > 0:
            time.sleep(wait * 1e-9)
        late[k] = (time.perf_counter_ns() - due) * 1e-3
    return late


def _contender(kind: str, stop: threading.Event, doze_s: float) -> None:
    _set_timer_slack(1000)
    getpid = ctypes.CDLL(None).getpid  # CDLL: the call releases the GIL
    if kind == "spin":
        while not stop.is_set():
            getpid()
    elif kind == "doze":
        while not stop.is_set():
            getpid()
            time.sleep(doze_s)
    elif kind == "python":
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i


def _host_gaps(seconds: float, q: mp.Queue) -> None:
    """A busy loop alone in its process: gaps between clock reads (µs) over 20 µs."""
    gaps = []
    end = time.perf_counter_ns() + int(seconds * 1e9)
    last = time.perf_counter_ns()
    while last < end:
        now = time.perf_counter_ns()
        if now - last > 20_000:
            gaps.append((now - last) * 1e-3)
        last = now
    q.put(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--doze-us", type=float, default=20.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sys.setswitchinterval(0.0005)  # as LiveEngine sets it while a stream runs

    rows = []
    for kind in ("alone", "spin", "doze", "python"):
        stop = threading.Event()
        th = threading.Thread(target=_contender, args=(kind, stop, args.doze_us * 1e-6))
        if kind != "alone":
            th.start()
        late = _periodic(args.seconds)
        stop.set()
        if kind != "alone":
            th.join()
        rows.append((kind, late))

    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_host_gaps, args=(args.seconds, q))
    p.start()
    gaps = np.array(q.get() or [0.0])
    p.join()

    lines = [
        f"### GIL hand-over — {platform.node()} ({os.cpu_count()} cores), Python "
        f"{platform.python_version()} — {dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"A thread waking every 2.67 ms for {args.seconds:g} s (switch interval 0.5 ms) beside "
        f"another thread; µs from its due time until it ran Python. doze: {args.doze_us:g} µs "
        "sleeps between the C calls.",
        "",
        "| beside it | late median | p99 | p99.9 | max | wakes > 1 ms late |",
        "|---|---|---|---|---|---|",
    ]
    for kind, late in rows:
        q50, q99, q999 = np.percentile(late, [50, 99, 99.9])
        lines.append(f"| {kind} | {q50:.0f} | {q99:.0f} | {q999:.0f} | {late.max():.0f} | "
                     f"{int((late > 1000).sum())} of {len(late)} |")
    lines += [
        "",
        f"A busy thread alone in a process ({args.seconds:g} s): {len(gaps)} gaps over 20 µs, "
        f"longest {gaps.max():.0f} µs, {int((gaps > 1000).sum())} over 1 ms.",
        "",
    ]
    text = "\n".join(lines)
    publish("gil_jitter.py", text, write=not args.no_write)


if __name__ == "__main__":
    main()
