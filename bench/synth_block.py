"""The synth's own cost per block, beside the FDTD pass: what live play spends outside the kernel.

For 1–64 sounding voices of a preset (a new note every 10 blocks, pitch bends, so events,
strikes and coefficient ramps are in the mix), renders blocks (``--block``, 128 frames by default) and splits each
``Synth.render_block`` into the backend's ``run`` (the FDTD pass and its readback; on the GPU
its ``submit`` and ``collect``) and the
rest (events, records, force, decimation, output matrix, mix, limiter). Two output stages side
by side, same run: the compiled one the synth uses (:func:`engine.mixdown.mix_voices`) and its
numpy/scipy twin (:func:`engine.mixdown.mix_voices_reference`, the naive version).

Run: ``.venv/bin/python bench/synth_block.py [--backend cpu|gpu] [--voices 1 8 32 64]``.
Appends a section to bench/RESULTS.md with device and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from results import publish  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 48_000


def measure(backend, preset, voices: int, blocks: int, mixer, gap_s: float = 0.0) -> dict[str, float]:
    import engine.synth as synth_mod

    synth_mod.mix_voices = mixer
    synth = synth_mod.Synth(backend, preset, sample_rate_hz=RATE, max_polyphony=voices)
    # the backend's share: run (numba), or submit + collect (GPU: Synth.begin/finish_block)
    names = [n for n in ("run", "submit", "collect") if hasattr(backend, n)]
    originals = {n: getattr(backend, n) for n in names}
    spent = [0]

    def timed(fn):
        def call(*args):
            t = time.perf_counter_ns()
            out = fn(*args)
            spent[0] += time.perf_counter_ns() - t
            return out

        return call

    for n in names:
        setattr(backend, n, timed(originals[n]))
    try:
        for i in range(voices):
            synth.note_on(40 + i % 48, 0.8, i % 16, offset=i % backend.block_frames)
        for _ in range(10):
            synth.render_block()
        total, kernel = [], []
        for k in range(blocks):
            if k % 10 == 0:
                synth.note_on(40 + (k // 10) % 48, 0.7, 0, offset=k % backend.block_frames)
            if k % 4 == 1:
                synth.pitch_bend(((k % 9) - 4) / 8, channel=k % 16, offset=17)
            spent[0] = 0
            if gap_s > 0:
                time.sleep(gap_s)
            elif gap_s < 0:  # busy-wait instead of sleeping
                until = time.perf_counter() - gap_s
                while time.perf_counter() < until:
                    pass
            t = time.perf_counter_ns()
            synth.render_block()
            total.append(time.perf_counter_ns() - t)
            kernel.append(spent[0])
        total_us, kernel_us = np.array(total) / 1e3, np.array(kernel) / 1e3
        rest = total_us - kernel_us
        return {
            "sounding": synth.active_voices,
            "total_median_us": float(np.median(total_us)),
            "run_median_us": float(np.median(kernel_us)),
            "rest_median_us": float(np.median(rest)),
            "rest_p99_us": float(np.percentile(rest, 99)),
        }
    finally:
        for n in names:
            delattr(backend, n)  # the instance attribute: the class's method again
        synth_mod.mix_voices = MIXERS["compiled"]


MIXERS: dict = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voices", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--blocks", type=int, default=300)
    ap.add_argument("--block", type=int, default=128, help="frames a block")
    ap.add_argument("--preset", default="plate")
    ap.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None)
    ap.add_argument("--gaps-ms", type=float, nargs="*", default=[],
                    help="also time blocks with these pauses between them (GPU readback modes)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from engine.backends import open_backend
    from engine.mixdown import mix_voices, mix_voices_reference
    from engine.presets import find_preset, load_preset

    MIXERS.update(compiled=mix_voices, reference=mix_voices_reference)
    preset = load_preset(find_preset(args.preset))
    backend = open_backend(args.backend, grid_n=preset.grid_n, max_voices=max(args.voices),
                           block_frames=args.block)
    if hasattr(backend, "warm_up"):
        backend.warm_up()
    rows = []
    for voices in args.voices:
        got = {name: measure(backend, preset, voices, args.blocks, fn) for name, fn in MIXERS.items()}
        rows.append((voices, got))
        c, r = got["compiled"], got["reference"]
        print(f"{voices} voices: rest {c['rest_median_us']:.0f} µs (reference {r['rest_median_us']:.0f}), "
              f"run {c['run_median_us']:.0f} µs", flush=True)

    for gap in args.gaps_ms:
        for mode in ("thread", "spin") if hasattr(backend, "readback") else ("-",):
            if mode != "-":
                backend.readback = mode
            got = measure(backend, preset, max(args.voices), args.blocks, MIXERS["compiled"], gap / 1e3)
            print(f"gap {gap} ms, readback {mode}: run median {got['run_median_us']:.0f} µs, "
                  f"rest {got['rest_median_us']:.0f} µs", flush=True)
        if hasattr(backend, "readback"):
            backend.readback = "spin"
    summary = getattr(backend, "adapter_summary", None) or f"numba, {os.cpu_count()} cores"
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"### synth per block — {platform.node()} ({os.cpu_count()} cores), "
        f"{type(backend).__name__}, {summary} — {date}",
        "",
        f"{args.block}-frame blocks of the {args.preset} preset at 48 kHz, {args.blocks} blocks a row; µs a "
        "block, medians. *rest* is everything `Synth.render_block` does besides the backend's "
        f"`run` (FDTD pass and readback); budget for real time: {args.block / RATE * 1e6:.0f} µs a block.",
        "",
        "| voices | sounding | run µs | rest µs (compiled mix) | rest p99 µs | rest µs (numpy mix) | numpy/compiled | total µs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for voices, got in rows:
        c, r = got["compiled"], got["reference"]
        lines.append(
            f"| {voices} | {c['sounding']} | {c['run_median_us']:.0f} | {c['rest_median_us']:.0f} | "
            f"{c['rest_p99_us']:.0f} | {r['rest_median_us']:.0f} | "
            f"{r['rest_median_us'] / c['rest_median_us']:.1f} | {c['total_median_us']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    publish("synth_block.py", text, write=not args.no_write)


if __name__ == "__main__":
    main()
