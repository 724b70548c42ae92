"""How a live block waits for the GPU: the round trip of ``GpuFdtd.run`` per readback mode.

A live block is one dispatch and one readback, rendered just in time with idle gaps between
blocks, while the audio callback's thread takes the GIL every period. This times
``GpuFdtd.run`` for 32 voices × 128 frames (5 FDTD steps a sample: the highest notes of the
demo minuet) in each readback mode of :class:`engine.fdtd.GpuFdtd`, interleaved block by
block so drift hits every mode alike, in three settings: back to back; 1.5 ms idle between
blocks; and a block every audio period beside a Python thread that wakes every period and
copies a block (the audio callback's load on the GIL), measuring how late that thread came.

Run on the GPU machine: ``python3 bench/roundtrip.py [--blocks 300]``; on a CPU adapter with
smaller sizes (``--voices 2 --grid 16 --steps 1 --frames 128``). Appends a section to
bench/RESULTS.md with device and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from results import publish  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.block import RECORD_DTYPE, RECORD_RESET  # noqa: E402
from engine.fdtd import READBACK_MODES, GpuFdtd  # noqa: E402

VOICES, FRAMES, STEPS, N = 32, 128, 5, 64


def _plan(gpu: GpuFdtd, first: bool):  # noqa: D103 - sizes from the module globals
    plan = gpu.new_plan()
    rec = np.zeros((), RECORD_DTYPE)
    rec["c2"], rec["eta"], rec["gamma_per_d"] = 0.15, 1e-4, 1.0 / 48_000 / STEPS
    rec["exc_x"] = rec["exc_y"] = N * 0.3
    rec["exc_inv_2w2"], rec["exc_norm"] = 0.25, 1.0 / (4 * np.pi)
    rec["pick_lx"] = rec["pick_ly"] = rec["pick_rx"] = rec["pick_ry"] = N * 0.6
    rec["map_b"] = 1
    rec["flags"] = RECORD_RESET if first else 0
    force = np.hanning(FRAMES) if first else None
    for v in range(VOICES):
        plan.add_voice(v, STEPS, plan.add_record(rec), force)
    return plan


class CallbackLoad:
    """A thread that takes the GIL every period for a small copy, like the audio callback, and
    records how late each of its wake-ups came (µs): what the render thread's waiting costs
    the audio thread."""

    def __init__(self, period_s: float, frames: int) -> None:
        self.period_s = period_s
        self.running = True
        self.src = np.zeros((frames, 2), np.float32)
        self.dst = np.zeros((frames, 2), np.float32)
        self.late_us: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        nxt = time.perf_counter()
        while self.running:
            nxt += self.period_s
            time.sleep(max(0.0, nxt - time.perf_counter()))
            self.dst[:] = self.src  # needs the GIL
            self.late_us.append((time.perf_counter() - nxt) * 1e6)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def main() -> None:
    global VOICES, FRAMES, STEPS, N
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=300)
    ap.add_argument("--voices", type=int, default=VOICES)
    ap.add_argument("--frames", type=int, default=FRAMES)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--grid", type=int, default=N)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    VOICES, FRAMES, STEPS, N = args.voices, args.frames, args.steps, args.grid
    sys.setswitchinterval(0.0005)  # as engine.audio.LiveEngine does while playing

    # "spin (map_async)": the spin before engine.fdtd._ReadMap, through wgpu-py's map_async
    modes = {"spin": ("spin", True), "spin (map_async)": ("spin", False),
             "nap": ("nap", True), "thread": ("thread", True)}
    assert set(READBACK_MODES) <= {m for m, _ in modes.values()}
    gpus = {}
    for name, (mode, direct) in modes.items():
        gpus[name] = GpuFdtd(N, VOICES, FRAMES, readback=mode)
        gpus[name].direct_map = direct
    plans = {name: (_plan(g, True), _plan(g, False)) for name, g in gpus.items()}
    period_s = FRAMES / 48_000
    rows = []
    # back to back and with gaps: modes interleaved block by block, so drift hits all alike
    for setting, gap_s in (("back to back", 0.0), ("1.5 ms gaps", 1.5e-3)):
        times: dict[str, list[float]] = {name: [] for name in gpus}
        for i in range(args.blocks + 20):
            for name, gpu in gpus.items():
                if gap_s:
                    time.sleep(gap_s)
                plan = plans[name][0 if i == 0 else 1]
                t0 = time.perf_counter_ns()
                gpu.run(plan)
                if i >= 20:
                    times[name].append((time.perf_counter_ns() - t0) / 1e3)
        for name, t in times.items():
            a = np.array(t)
            rows.append((setting, name, np.median(a), np.percentile(a, 99), a.max(), None))
    # blocks at the audio period with a callback thread: one mode at a time, so the callback's
    # lateness belongs to it
    setting = "every period + callback thread"
    for name, gpu in gpus.items():
        loader = CallbackLoad(period_s, FRAMES)
        t_next = time.perf_counter()
        t = []
        for i in range(args.blocks + 20):
            t_next += period_s
            time.sleep(max(0.0, t_next - period_s / 2 - time.perf_counter()))
            t0 = time.perf_counter_ns()
            gpu.run(plans[name][0 if i == 0 else 1])
            if i >= 20:
                t.append((time.perf_counter_ns() - t0) / 1e3)
        loader.stop()
        a, late = np.array(t), np.array(loader.late_us[10:])
        rows.append((setting, name, np.median(a), np.percentile(a, 99), a.max(),
                     (np.median(late), np.percentile(late, 99), late.max())))
    for setting, name, med, p99, mx, late in rows:
        extra = "" if late is None else f"  callback late median {late[0]:.0f} p99 {late[1]:.0f} max {late[2]:.0f} µs"
        print(f"{setting:32s} {name:17s} median {med:7.0f} µs  p99 {p99:7.0f} µs{extra}", flush=True)

    summary = next(iter(gpus.values())).adapter_summary
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"### GpuFdtd.run round trip by readback — {summary}, {platform.node()} — {date}",
        "",
        f"{VOICES} voices × {FRAMES} frames × {STEPS} steps a sample on a {N}×{N} grid, "
        f"{args.blocks} blocks per mode; GIL switch interval 0.5 ms. *spin (map_async)* is the "
        "spin through wgpu-py's map_async (its poll thread wakes every block), *spin* maps "
        "directly (engine.fdtd._ReadMap). In the last setting a block starts every period "
        "(half a period after a thread that wakes every period and copies a block, like the "
        "audio callback) and *callback late* is how late that thread's wake-ups came. µs.",
        "",
        "| setting | readback | median | p99 | max | callback late median/p99/max |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s} | {m} | {a:.0f} | {b:.0f} | {c:.0f} | "
        + ("" if late is None else "/".join(f"{x:.0f}" for x in late)) + " |"
        for s, m, a, b, c, late in rows
    ]
    text = "\n".join(lines) + "\n"
    publish("roundtrip.py", text, write=not args.no_write)


if __name__ == "__main__":
    main()
