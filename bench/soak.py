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

from results import publish  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

RATE = 48_000


def diagnose(engine, runs: np.ndarray | None = None) -> list[str]:
    """Why the underruns happened, over every logged one: for each, the block that was
    missing — did it start late (the thread woke late, or the block before overran), take
    longer than its budget (and how much of it the backend's run took), or did the callback
    come earlier than the clock said? ``runs`` holds (start, end) ns of each backend.run.
    Returns the lines it printed."""
    lines: list[str] = []

    def say(line: str) -> None:
        print(line)
        lines.append(line)

    blocks = engine.render_log[engine.render_log[:, 2] > 0]
    under = engine.underrun_log[engine.underrun_log[:, 1] > 0]
    xr = engine.xrun_log[engine.xrun_log[:, 1] > 0]
    rate = engine.sample_rate_hz
    if len(xr):
        say(f"xruns at (s of audio): {np.sort(xr[:, 0] / rate).round(1)[:12].tolist()}")
    if not len(blocks) or not len(under):
        say("diagnosis: no underruns in the logged window")
        return lines
    blocks = blocks[np.argsort(blocks[:, 0])]
    ns = 1e9 / rate
    budget_us = engine.ahead_frames * ns / 1e3
    if runs is not None and len(runs):
        runs = runs[np.argsort(runs[:, 0])]
    rows = []
    for frame, t_cb in under:
        k = np.searchsorted(blocks[:, 0], frame, side="right") - 1
        if k < 0 or k + 1 >= len(blocks):
            continue
        start, due, t0, t1 = blocks[k + 1]  # the block after the last one the callback had
        if due == 0:
            continue
        prev_t1 = blocks[k, 3]
        end = start + engine.block_frames
        base = due - (end - engine.delay_frames) * ns
        run_us = np.nan
        if runs is not None and len(runs):
            j = np.searchsorted(runs[:, 0], t0)
            if j < len(runs) and runs[j, 0] <= t1:  # this block's physics started in it
                run_us = backend_us(runs[j : j + 1])[0]
        rows.append(((t0 - due) / 1e3, (t1 - t0) / 1e3, (t_cb - (base + frame * ns)) / 1e3,
                     (t1 - t_cb) / 1e3, (prev_t1 - due) / 1e3, run_us, frame / rate))
    if not rows:
        say("diagnosis: underruns outside the logged window")
        return lines
    a = np.array(rows)
    late = a[:, 0] > 300
    after_overrun = late & (a[:, 4] > 0)
    slow = a[:, 1] > budget_us
    early = a[:, 2] < -200
    say(f"diagnosis of {len(a)} underruns (µs; render budget {budget_us:.0f}):")
    say(f"  started > 0.3 ms after due: {int(late.sum())} ({int(after_overrun.sum())} of them "
        f"because the block before was still rendering); render > budget: {int(slow.sum())}; "
        f"callback > 0.2 ms earlier than the clock: {int(early.sum())}; none of these: "
        f"{int((~late & ~slow & ~early).sum())}")
    say(f"  start after due median {np.median(a[:, 0]):.0f} max {a[:, 0].max():.0f}; render "
        f"median {np.median(a[:, 1]):.0f} max {a[:, 1].max():.0f}; of it backend.run median "
        f"{np.nanmedian(a[:, 5]) if np.isfinite(a[:, 5]).any() else float('nan'):.0f}; "
        f"callback vs clock median {np.median(a[:, 2]):.0f}")
    at = np.sort(a[:, 6])
    say(f"  when (s of audio): first {at[:6].round(1).tolist()} last {at[-4:].round(1).tolist()}; "
        f"in the first 2 s: {int(np.sum(at < 2.0))}; in bursts (≤ 0.1 s apart): "
        f"{int(np.sum(np.diff(at) <= 0.1))}")
    r = (blocks[:, 3] - blocks[:, 2]) / 1e3
    d = (blocks[blocks[:, 1] > 0, 2] - blocks[blocks[:, 1] > 0, 1]) / 1e3
    say(f"all {len(blocks)} logged blocks: render median {np.median(r):.0f} p99.9 "
        f"{np.percentile(r, 99.9):.0f} max {r.max():.0f} µs; start after due median "
        f"{np.median(d):.0f} p99.9 {np.percentile(d, 99.9):.0f} max {d.max():.0f} µs")
    if runs is not None and len(runs):
        ru = backend_us(runs)
        say(f"  backend.run median {np.median(ru):.0f} p99.9 {np.percentile(ru, 99.9):.0f} "
            f"max {ru.max():.0f} µs; render − run median {np.median(r) - np.median(ru):.0f} µs")
        if runs[:, 2].any():
            say("  backend.run phases, µs: " + phase_table(runs))
            first = runs[runs[:, 0] < runs[0, 0] + 2_000_000_000]
            say(f"  the first 2 s ({len(first)} runs): " + phase_table(first))
            slow_runs = runs[ru > budget_us / 2]
            if len(slow_runs):
                say(f"  the {len(slow_runs)} runs over half the budget: " + phase_table(slow_runs))
    return lines


def backend_us(runs: np.ndarray) -> np.ndarray:
    """The backend's own time per block (µs): its run, or on the GPU its submit plus its
    collect — not the time between them, when the render thread finished the block before
    (a block shorter than the period is collected during the next one's render)."""
    total = (runs[:, 1] - runs[:, 0]) / 1e3
    split = runs[:, 3] > 0
    total[split] = ((runs[split, 3] - runs[split, 0]) + (runs[split, 1] - runs[split, 7])) / 1e3
    return total


def phase_table(runs: np.ndarray) -> str:
    """median/p99/p99.9/max of each phase of the GPU backend's runs (µs)."""
    phases = {
        "write buffers": runs[:, 2] - runs[:, 0],
        "encode+submit": runs[:, 3] - runs[:, 2],
        "wait for map in collect": runs[:, 4] - np.maximum(runs[:, 7], runs[:, 3]),
        "copy out": runs[:, 5] - runs[:, 4],
    }
    if runs[:, 6].any():
        phases["compute pass (GPU clock)"] = runs[:, 6]
        phases["wait − compute pass"] = runs[:, 4] - runs[:, 3] - runs[:, 6]
    return "; ".join(
        f"{name} {'/'.join(f'{np.percentile(v, q) / 1e3:.0f}' for q in (50, 99, 99.9))}"
        f"/{v.max() / 1e3:.0f}"
        for name, v in phases.items()
    ) + " (median/p99/p99.9/max)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--polyphony", type=int, default=32)
    ap.add_argument("--period", type=int, default=128)
    ap.add_argument("--block", type=int, default=None,
                    help="frames a block (default: half the period on a GPU, as `play`)")
    ap.add_argument("--ahead", type=int, default=None,
                    help="frames the render thread has to render a block (default: one block)")
    ap.add_argument("--midi", type=Path, default=ROOT / "examples" / "minuet_in_g.mid")
    ap.add_argument("--preset", default="plate")
    ap.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None)
    ap.add_argument("--readback", choices=["spin", "nap", "thread"], default="spin",
                    help="GPU backend: how a block waits for its pickups (engine/fdtd.py)")
    ap.add_argument("--rt-priority", type=int, default=None,
                    help="run the render thread under SCHED_FIFO at this priority")
    ap.add_argument("--jack-realtime", action="store_true",
                    help="run jackd (and its clients' process threads) under SCHED_FIFO")
    ap.add_argument("--profile", action="store_true",
                    help="GPU backend: time each block's phases and its compute pass")
    ap.add_argument("--idle", action="store_true",
                    help="post no notes: the xruns of the device and this machine alone")
    ap.add_argument("--overload-detection", action=argparse.BooleanOptionalAction, default=True,
                    help="shed voices when the render falls behind (as `play`; the table "
                    "counts them)")
    ap.add_argument("--probe", action="store_true",
                    help="probe the host's own stalls beside the soak (bench/host_probe.py)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from jack import start_jack_server  # tests/jack.py

    from engine.audio import LiveEngine, live_block_frames
    from engine.backends import open_backend
    from engine.midifile import read_midi_file
    from engine.presets import find_preset, load_preset
    from engine.synth import Synth

    score = read_midi_file(args.midi, RATE)
    preset = load_preset(find_preset(args.preset))
    if args.profile:
        from engine.fdtd import GpuFdtd

        backend = GpuFdtd(grid_n=preset.grid_n, max_voices=args.polyphony, profile=True,
                          block_frames=args.block or live_block_frames(args.period, gpu=True))
    else:
        backend = open_backend(args.backend, grid_n=preset.grid_n, max_voices=args.polyphony,
                               block_frames=args.block or live_block_frames(args.period, gpu=False),
                               gpu_block_frames=args.block or live_block_frames(args.period, gpu=True))
    if hasattr(backend, "readback"):
        backend.readback = args.readback
    # the render's split: the backend's run (FDTD pass, readback) and the rest of the block
    n_log = 1 << int(np.ceil(np.log2(args.minutes * 60 * RATE / backend.block_frames * 1.1 + 16)))
    # per block the backend ran: start, end (of run, or of submit … collect on the GPU), and
    # with --profile the GPU backend's phases (buffers written, submitted, pickups mapped,
    # copied; host ns), its compute pass on the GPU clock (ns), and when collect began
    run_ns = np.zeros((n_log, 8), np.int64)
    runs = [0]
    timing = getattr(backend, "last_timing_ns", None) if args.profile else None
    split = hasattr(backend, "submit")
    if split:
        inner_submit, inner_collect = backend.submit, backend.collect
        started: list[int] = []

        def timed_submit(plan):
            t = time.perf_counter_ns()
            inner_submit(plan)
            submitted = time.perf_counter_ns()
            started.extend((t, int(timing[1]) if timing is not None else 0, submitted))

        def timed_collect():
            c = time.perf_counter_ns()
            out = inner_collect()
            row = run_ns[runs[0] % n_log]
            row[0], row[2], row[3] = started[0], started[1], started[2]
            del started[:3]
            row[1] = time.perf_counter_ns()
            row[7] = c
            if timing is not None:
                row[4:6] = timing[3:5]
                row[6] = backend.last_kernel_ns
            runs[0] += 1
            return out

        backend.submit, backend.collect = timed_submit, timed_collect
    else:
        inner_run = backend.run

        def timed_run(plan):
            t = time.perf_counter_ns()
            out = inner_run(plan)
            row = run_ns[runs[0] % n_log]
            row[0] = t
            row[1] = row[7] = time.perf_counter_ns()
            runs[0] += 1
            return out

        backend.run = timed_run
    synth = Synth(backend, preset, sample_rate_hz=RATE, max_polyphony=args.polyphony)
    server = start_jack_server(sample_rate=RATE, period=args.period, realtime=args.jack_realtime)
    os.environ.update(server.env)
    try:
        import sounddevice as sd
        from jack import portaudio_jack_output

        device = portaudio_jack_output()
        engine = LiveEngine(synth, device=device, period_frames=args.period, ahead_frames=args.ahead,
                            rt_priority=args.rt_priority, log_blocks=n_log,
                            overload_detection=args.overload_detection)
        probe = None
        if args.probe:
            from host_probe import HostProbe  # bench/

            probe = HostProbe()
        engine.start()
        t_end = time.perf_counter() + args.minutes * 60
        loops = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter_ns()
            for ev in [] if args.idle else score.events:
                at = t0 + ev.sample * 1_000_000_000 // RATE
                wait_ns = at - time.perf_counter_ns()
                if wait_ns > 0:  # a MIDI input thread wakes when a message comes, not before
                    time.sleep(wait_ns * 1e-9)
                # stamped on posting, as MidiInput stamps a message on arrival (a stamp from
                # the score would make every late wake of this thread a late event)
                if ev.kind == "note_on":
                    engine.post(("note_on", ev.note, ev.velocity, ev.channel))
                elif ev.kind == "note_off":
                    engine.post(("note_off", ev.note, ev.channel))
                elif ev.kind == "sustain":
                    engine.post(("sustain", ev.value > 0.5, ev.channel))
                elif ev.kind == "pitch_bend":
                    engine.post(("pitch_bend", ev.value, ev.channel))
                if time.perf_counter() >= t_end:
                    break
            loops += 1
            if args.idle:
                time.sleep(max(0.0, t_end - time.perf_counter()))
        played_s = engine.stats()["frames"] / RATE
        ran = run_ns[: min(runs[0], n_log)]
        diagnosis = diagnose(engine, ran[ran[:, 0] > 0])
        if probe is not None:
            from host_probe import summary

            stalls = probe.stop()
            xr_t = engine.xrun_log[engine.xrun_log[:, 1] > 0, 1]
            un_t = engine.underrun_log[engine.underrun_log[:, 1] > 0, 1]
            for line in summary(stalls, probe.stopped_ns - probe.started_ns,
                                {"xruns": xr_t, "underruns": un_t}):
                print(line)
                diagnosis.append(line)
        delay, ahead, rt_status = engine.delay_frames, engine.ahead_frames, engine.rt_status
        stats = engine.stats()
        engine.stop()
        sd._terminate()
    finally:
        server.stop()
    cb, rd, late = stats["callback_us"], stats["render_us"], stats["callback_late_us"]
    ru = backend_us(ran)
    ru_q = [float(np.percentile(ru, q)) for q in (50, 99)] if len(ru) else [np.nan, np.nan]
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "\n".join([
        f"### soak — {platform.node()} ({os.cpu_count()} cores), {type(backend).__name__}, "
        f"{getattr(backend, 'adapter_summary', 'numba')} — {date}",
        "",
        f"{'nothing (--idle)' if args.idle else args.midi.name} looped {loops}× for {played_s:.0f} s of audio at up to "
        f"{args.polyphony} voices, JACK dummy {RATE} Hz, {args.period}-frame periods, "
        f"{backend.block_frames}-frame blocks, GPU readback: {getattr(backend, 'readback', '-')}, delay {delay} frames ({delay / RATE * 1e3:.2f} ms; "
        f"{ahead} frames to render a block); render thread {rt_status}, jackd "
        f"{'--realtime' if args.jack_realtime else '--no-realtime'}.",
        "",
        "| xruns | underruns | late events | voices shed (overload) | silenced (non-finite/full-scale) blocks | peak dBFS | callback µs min/median/p99/p99.9/max | callback later than the clock µs median/p99/p99.9/max | render µs min/median/p99/p99.9/max | of it backend.run µs median/p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {stats['xruns']} | {stats['underruns']} | {stats['late_events']} | "
        f"{stats['shed_voices'] if args.overload_detection else 'off'} | {stats['silenced_blocks']} | "
        f"{20 * np.log10(max(stats['peak'], 1e-12)):.1f} | "
        f"{cb['min']:.0f}/{cb['median']:.0f}/{cb['p99']:.0f}/{cb['p99.9']:.0f}/{cb['max']:.0f} | "
        f"{late['median']:.0f}/{late['p99']:.0f}/{late['p99.9']:.0f}/{late['max']:.0f} | "
        f"{rd['min']:.0f}/{rd['median']:.0f}/{rd['p99']:.0f}/{rd['p99.9']:.0f}/{rd['max']:.0f} | "
        f"{ru_q[0]:.0f}/{ru_q[1]:.0f} |",
        "",
        *[f"    {line}" for line in diagnosis],
        "",
    ])
    publish("soak.py", text, write=not args.no_write)


if __name__ == "__main__":
    main()
