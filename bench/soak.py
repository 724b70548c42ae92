"""Soak: a real MIDI file played live through the audio callback for minutes.

Starts its own JACK server (dummy backend, real time), plays ``examples/minuet_in_g.mid`` (or
``--midi``) in a loop through :class:`engine.audio.LiveEngine`, each event posted at its time
as a MIDI input would, at a set polyphony, and reports xruns, underruns, the callback's and
the render's time percentiles, late events, non-finite or full-scale blocks, and the peak.

Run: ``.venv/bin/python bench/soak.py --minutes 10 --polyphony 32 [--backend gpu]``.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RATE = 48_000


def diagnose(engine) -> None:
    """Why the last underruns happened: for each, the block that was missing — did it start
    late, take longer than its budget, or did the callback come earlier than the clock said?"""
    blocks = engine.render_log[engine.render_log[:, 2] > 0]
    under = engine.underrun_log[engine.underrun_log[:, 1] > 0]
    if len(under):
        at_s = np.sort(under[:, 0]) / engine.sample_rate_hz
        print(f"underruns logged at (s of audio): first {at_s[:8].round(2).tolist()}, "
              f"last {at_s[-4:].round(2).tolist()}; {np.sum(at_s < 2.0)} in the first 2 s")
    if not len(blocks) or not len(under):
        print("diagnosis: no underruns in the logged window")
        return
    blocks = blocks[np.argsort(blocks[:, 0])]
    ns = 1e9 / engine.sample_rate_hz
    budget_ns = engine.ahead_frames * ns
    rows = []
    for frame, t_cb in under:
        k = np.searchsorted(blocks[:, 0], frame, side="right") - 1
        if k < 0 or k + 1 >= len(blocks):
            continue
        start, due, t0, t1 = blocks[k + 1]  # the block after the last one the callback had
        if due == 0:
            continue
        end = start + engine.block_frames
        base = due - (end - engine.delay_frames) * ns
        rows.append(((t0 - due) / 1e3, (t1 - t0) / 1e3, (t_cb - (base + frame * ns)) / 1e3,
                     (t1 - t_cb) / 1e3))
    if not rows:
        print("diagnosis: underruns outside the logged window")
        return
    a = np.array(rows)
    print(f"diagnosis of {len(a)} underruns (µs; budget {budget_ns / 1e3:.0f}): "
          f"start after due median {np.median(a[:, 0]):.0f} p90 {np.percentile(a[:, 0], 90):.0f}; "
          f"render median {np.median(a[:, 1]):.0f} p90 {np.percentile(a[:, 1], 90):.0f}; "
          f"callback vs clock median {np.median(a[:, 2]):.0f} p10 {np.percentile(a[:, 2], 10):.0f}; "
          f"block finished after the callback by median {np.median(a[:, 3]):.0f}")
    print(f"  started > 0.5 ms late: {np.sum(a[:, 0] > 500)}, render > budget: "
          f"{np.sum(a[:, 1] > budget_ns / 1e3)}, callback > 0.2 ms early: {np.sum(a[:, 2] < -200)}")
    shown = 0
    for frame, t_cb in under[-6:]:
        k = np.searchsorted(blocks[:, 0], frame, side="right") - 1
        if k < 1 or k + 2 >= len(blocks):
            continue
        print(f"  underrun at frame {frame}: blocks (start−frame, due, started, finished; µs from "
              f"the callback):")
        for b in blocks[k - 1 : k + 3]:
            print(f"    {b[0] - frame:+6d} {(b[1] - t_cb) / 1e3:+9.0f} {(b[2] - t_cb) / 1e3:+9.0f} "
                  f"{(b[3] - t_cb) / 1e3:+9.0f}")
        shown += 1
    g = np.diff(blocks[:, 2]) / 1e3
    print(f"all blocks: render median {np.median((blocks[:, 3] - blocks[:, 2]) / 1e3):.0f} µs, "
          f"start after due median {np.median((blocks[:, 2] - blocks[:, 1]) / 1e3):.0f} "
          f"p99 {np.percentile((blocks[:, 2] - blocks[:, 1]) / 1e3, 99):.0f} µs; gaps between "
          f"starts median {np.median(g):.0f} µs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--polyphony", type=int, default=32)
    ap.add_argument("--period", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--ahead", type=int, default=None,
                    help="frames the render thread has to render a block (default: one block)")
    ap.add_argument("--midi", type=Path, default=ROOT / "examples" / "minuet_in_g.mid")
    ap.add_argument("--preset", default="plate")
    ap.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None)
    ap.add_argument("--readback", choices=["spin", "thread"], default="spin",
                    help="GPU backend: how a block waits for its pickups (engine/fdtd.py)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from jack import start_jack_server  # tests/jack.py

    from engine.audio import LiveEngine
    from engine.backends import open_backend
    from engine.midifile import read_midi_file
    from engine.presets import find_preset, load_preset
    from engine.synth import Synth

    score = read_midi_file(args.midi, RATE)
    preset = load_preset(find_preset(args.preset))
    backend = open_backend(args.backend, grid_n=preset.grid_n, max_voices=args.polyphony,
                           block_frames=args.block)
    if hasattr(backend, "readback"):
        backend.readback = args.readback
    # the render's split: the backend's run (FDTD pass, readback) and the rest of the block
    run_us = np.zeros(1 << 20)
    runs = [0]
    inner_run = backend.run

    def timed_run(plan):
        t = time.perf_counter_ns()
        out = inner_run(plan)
        run_us[runs[0] % len(run_us)] = (time.perf_counter_ns() - t) * 1e-3
        runs[0] += 1
        return out

    backend.run = timed_run
    synth = Synth(backend, preset, sample_rate_hz=RATE, max_polyphony=args.polyphony)
    server = start_jack_server(sample_rate=RATE, period=args.period)
    os.environ.update(server.env)
    try:
        import sounddevice as sd
        from jack import portaudio_jack_output

        device = portaudio_jack_output()
        engine = LiveEngine(synth, device=device, period_frames=args.period, ahead_frames=args.ahead)
        engine.start()
        t_end = time.perf_counter() + args.minutes * 60
        loops = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter_ns()
            for ev in score.events:
                at = t0 + ev.sample * 1_000_000_000 // RATE
                wait_ns = at - time.perf_counter_ns()
                if wait_ns > 0:  # a MIDI input thread wakes when a message comes, not before
                    time.sleep(wait_ns * 1e-9)
                if ev.kind == "note_on":
                    engine.post(("note_on", ev.note, ev.velocity, ev.channel), at)
                elif ev.kind == "note_off":
                    engine.post(("note_off", ev.note, ev.channel), at)
                elif ev.kind == "sustain":
                    engine.post(("sustain", ev.value > 0.5, ev.channel), at)
                elif ev.kind == "pitch_bend":
                    engine.post(("pitch_bend", ev.value, ev.channel), at)
                if time.perf_counter() >= t_end:
                    break
            loops += 1
        played_s = engine.stats()["frames"] / RATE
        diagnose(engine)
        delay, ahead = engine.delay_frames, engine.ahead_frames
        stats = engine.stats()
        engine.stop()
        sd._terminate()
    finally:
        server.stop()
    cb, rd = stats["callback_us"], stats["render_us"]
    ru = run_us[: min(runs[0], len(run_us))]
    ru_q = [float(np.percentile(ru, q)) for q in (50, 99)] if len(ru) else [np.nan, np.nan]
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "\n".join([
        f"### soak — {platform.node()} ({os.cpu_count()} cores), {type(backend).__name__}, "
        f"{getattr(backend, 'adapter_summary', 'numba')} — {date}",
        "",
        f"{args.midi.name} looped {loops}× for {played_s:.0f} s of audio at up to "
        f"{args.polyphony} voices, JACK dummy {RATE} Hz, {args.period}-frame periods, "
        f"{args.block}-frame blocks, GPU readback: {getattr(backend, 'readback', '-')}, delay {delay} frames ({delay / RATE * 1e3:.2f} ms; "
        f"{ahead} frames to render a block).",
        "",
        "| xruns | underruns | late events | silenced (non-finite/full-scale) blocks | peak dBFS | callback µs min/median/p99/p99.9/max | render µs min/median/p99/p99.9/max | of it backend.run µs median/p99 |",
        "|---|---|---|---|---|---|---|---|",
        f"| {stats['xruns']} | {stats['underruns']} | {stats['late_events']} | {stats['silenced_blocks']} | "
        f"{20 * np.log10(max(stats['peak'], 1e-12)):.1f} | "
        f"{cb['min']:.0f}/{cb['median']:.0f}/{cb['p99']:.0f}/{cb['p99.9']:.0f}/{cb['max']:.0f} | "
        f"{rd['min']:.0f}/{rd['median']:.0f}/{rd['p99']:.0f}/{rd['p99.9']:.0f}/{rd['max']:.0f} | "
        f"{ru_q[0]:.0f}/{ru_q[1]:.0f} |",
        "",
    ])
    print(text)
    if not args.no_write:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n## bench/soak.py\n\n" + text)


if __name__ == "__main__":
    main()
