"""How a live block waits for the GPU: the round trip of ``GpuFdtd.run`` per readback mode.

A live block is one dispatch and one readback, rendered just in time with idle gaps between
blocks, while the audio callback's thread takes the GIL every period. This times
``GpuFdtd.run`` for 32 voices × 128 frames (5 FDTD steps a sample: the highest notes of the
demo minuet) in each readback mode of :class:`engine.fdtd.GpuFdtd`, interleaved block by
block so drift hits every mode alike, in three settings: back to back; 1.5 ms idle between
blocks; and idle gaps plus a Python thread that wakes every 2.67 ms and copies 128 frames (the
audio callback's load on the GIL).

Run on the GPU machine: ``python3 bench/roundtrip.py [--blocks 300]``. Appends a section to
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.block import RECORD_DTYPE, RECORD_RESET  # noqa: E402
from engine.fdtd import READBACK_MODES, GpuFdtd  # noqa: E402

VOICES, FRAMES, STEPS, N = 32, 128, 5, 64


def _plan(gpu: GpuFdtd, first: bool):
    plan = gpu.new_plan()
    rec = np.zeros((), RECORD_DTYPE)
    rec["c2"], rec["eta"], rec["gamma_per_d"] = 0.15, 1e-4, 1.0 / 48_000 / STEPS
    rec["exc_x"] = rec["exc_y"] = 20.0
    rec["exc_inv_2w2"], rec["exc_norm"] = 0.25, 1.0 / (4 * np.pi)
    rec["pick_lx"] = rec["pick_ly"] = rec["pick_rx"] = rec["pick_ry"] = 40.0
    rec["map_b"] = 1
    rec["flags"] = RECORD_RESET if first else 0
    force = np.hanning(FRAMES) if first else None
    for v in range(VOICES):
        plan.add_voice(v, STEPS, plan.add_record(rec), force)
    return plan


class CallbackLoad:
    """A thread that takes the GIL every period for a small copy, like the audio callback."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.running = True
        self.src = np.zeros((FRAMES, 2), np.float32)
        self.dst = np.zeros((FRAMES, 2), np.float32)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        nxt = time.perf_counter()
        while self.running:
            nxt += self.period_s
            time.sleep(max(0.0, nxt - time.perf_counter()))
            self.dst[:] = self.src

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=300)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sys.setswitchinterval(0.0005)  # as engine.audio.LiveEngine does while playing

    gpus = {mode: GpuFdtd(N, VOICES, FRAMES, readback=mode) for mode in READBACK_MODES}
    plans = {mode: (_plan(g, True), _plan(g, False)) for mode, g in gpus.items()}
    settings = {"back to back": (0.0, False), "1.5 ms gaps": (1.5e-3, False),
                "gaps + callback thread": (1.5e-3, True)}
    rows = []
    for name, (gap_s, load) in settings.items():
        times: dict[str, list[float]] = {mode: [] for mode in gpus}
        loader = CallbackLoad(FRAMES / 48_000) if load else None
        for i in range(args.blocks + 20):
            for mode, gpu in gpus.items():
                if gap_s:
                    time.sleep(gap_s)
                plan = plans[mode][0 if i == 0 else 1]
                t0 = time.perf_counter_ns()
                gpu.run(plan)
                if i >= 20:
                    times[mode].append((time.perf_counter_ns() - t0) / 1e3)
        if loader:
            loader.stop()
        for mode, t in times.items():
            a = np.array(t)
            rows.append((name, mode, np.median(a), np.percentile(a, 99), a.max()))
            print(f"{name:24s} {mode:7s} median {np.median(a):7.0f} µs  p99 {np.percentile(a, 99):7.0f} µs",
                  flush=True)

    summary = next(iter(gpus.values())).adapter_summary
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"### GpuFdtd.run round trip by readback — {summary}, {platform.node()} — {date}",
        "",
        f"{VOICES} voices × {FRAMES} frames × {STEPS} steps a sample, {args.blocks} blocks per "
        "mode, modes interleaved block by block; GIL switch interval 0.5 ms. µs.",
        "",
        "| setting | readback | median | p99 | max |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {m} | {a:.0f} | {b:.0f} | {c:.0f} |" for s, m, a, b, c in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n## bench/roundtrip.py\n\n" + text)


if __name__ == "__main__":
    main()
