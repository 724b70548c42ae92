"""The compute pass of a live-sized block on the GPU's own clock: the current kernel against
another version of it.

A live block is 32 voices × 128 frames at 1–5 steps a sample, each voice struck (a force every
sample) and switching records mid-block (release ramps). This times the compute pass alone
with timestamp queries (``GpuFdtd(profile=True)``), so host and driver noise stays out, for
the current ``shaders/fdtd.wgsl`` and, with ``--against FILE``, another version of it
(``git show REV:shaders/fdtd.wgsl > FILE``), blocks interleaved one by one.

``--gap-ms 0 1.5`` also idles before each block as live play does (a block every 2.67 ms),
to see whether the GPU runs the same kernel slower after idling (a live soak measured a median
984 µs where back to back took 473–594 µs).

Run: ``python bench/block_kernel.py [--against old.wgsl] [--gap-ms 0 1.5]``; appends a table
to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

from results import publish  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import engine.fdtd as fdtd  # noqa: E402
from engine.block import RECORD_DTYPE, RECORD_RESET  # noqa: E402
from engine.fdtd import GpuFdtd  # noqa: E402
from engine.gpu import load_shader  # noqa: E402

VOICES, FRAMES, N = 32, 128, 64


def _record(steps: int, first: bool) -> np.ndarray:
    rec = np.zeros((), RECORD_DTYPE)
    rec["c2"], rec["eta"], rec["gamma_per_d"] = 0.15, 1e-4, 1.0 / 48_000 / steps
    rec["exc_x"] = rec["exc_y"] = 20.0
    rec["exc_inv_2w2"], rec["exc_norm"] = 0.25, 1.0 / (4 * np.pi)
    rec["pick_lx"] = rec["pick_ly"] = rec["pick_rx"] = rec["pick_ry"] = 40.0
    rec["map_b"] = 1
    rec["flags"] = RECORD_RESET if first else 0
    return rec


def _block(gpu: GpuFdtd, steps: int, first: bool, events: int) -> int:
    """One live-like block; returns its compute pass in ns (GPU clock)."""
    plan = gpu.new_plan()
    force = np.hanning(FRAMES).astype(np.float32) * 1e-3
    for v in range(VOICES):
        head = plan.add_record(_record(steps, first))
        ev = [(k * FRAMES // (events + 1), plan.add_record(_record(steps, False)))
              for k in range(1, events + 1)]
        plan.add_voice(v, steps, head, force, ev)
    gpu.run(plan)
    return gpu.last_kernel_ns


def main() -> None:
    global VOICES
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", type=Path, default=None, help="another fdtd.wgsl to compare")
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--voices", type=int, default=32)
    ap.add_argument("--gap-ms", type=float, nargs="*", default=[0.0],
                    help="idle time before each block (a live block comes every 2.67 ms): does "
                    "the GPU run the same kernel slower after idling?")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    VOICES = args.voices

    kernels = {"current": None}
    if args.against is not None:
        kernels[args.against.name] = args.against.read_text()
    gpus = {}
    for name, source in kernels.items():
        if source is not None:  # build this backend's pipeline from the other file
            fdtd.load_shader = lambda _name, GRID_N, _s=source: _s.replace(
                "const GRID_N: u32 = 64u;", f"const GRID_N: u32 = {GRID_N}u;")
        gpus[name] = GpuFdtd(N, VOICES, FRAMES, profile=True)
        fdtd.load_shader = load_shader
    gpu0 = next(iter(gpus.values()))
    if not gpu0.has_timestamps:
        raise SystemExit(f"{gpu0.adapter_summary} has no timestamp queries")
    rows = []
    for gap_ms in args.gap_ms:
        for steps in (1, 4, 5):
            for events in (0, 8):
                got = {name: [] for name in gpus}
                for b in range(args.blocks):
                    for name, gpu in gpus.items():
                        if gap_ms:
                            time.sleep(gap_ms * 1e-3)
                        got[name].append(_block(gpu, steps, b == 0, events))
                for name, ns in got.items():
                    a = np.array(ns[min(5, len(ns) - 1):]) / 1e3
                    per_step = np.median(a) / (FRAMES * steps)
                    rows.append((gap_ms, steps, events, name, np.median(a),
                                 np.percentile(a, 99), a.max(), per_step))
                    print(f"gap {gap_ms} ms steps {steps} events {events} {name:>14}: compute "
                          f"pass median {np.median(a):.0f} µs, p99 {np.percentile(a, 99):.0f}, "
                          f"max {a.max():.0f}; {per_step:.3f} µs a step")
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "\n".join([
        f"### compute pass of a live block (GPU clock) — {gpu0.adapter_summary}, "
        f"{platform.node()} — {date}",
        "",
        f"{VOICES} voices × {FRAMES} frames, each struck (a force every sample), with 0 or 8 "
        f"record switches a voice; {args.blocks} blocks per kernel, interleaved. µs.",
        "",
        "| idle before a block ms | steps a sample | switches | kernel | median | p99 | max | µs a step |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {g:g} | {s} | {e} | {k} | {m:.0f} | {p:.0f} | {x:.0f} | {ps:.3f} |"
          for g, s, e, k, m, p, x, ps in rows],
        "",
    ])
    publish("block_kernel.py", text, write=not args.no_write)


if __name__ == "__main__":
    main()
