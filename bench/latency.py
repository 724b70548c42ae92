"""MIDI-to-audio latency: from a note-on's arrival to its first sound handed to PortAudio.

Starts its own JACK server (dummy backend, real time), opens NeiroSynth's virtual MIDI input
and the JACK audio output, and sends ≥ 200 notes as real MIDI bytes from a second JACK
client. For each note it takes the arrival stamp of the MIDI callback, the output frame the
engine placed the note at (the first non-silent sample of that note), and the time the audio
callback handed that frame to PortAudio; their difference is the latency we add. PortAudio's
reported output latency comes on top. Two designs side by side, same run:

``ring``      the engine's design (engine/audio.py): a render thread ahead of the callback;
``callback``  the naive one: the callback renders its block itself (period = block).

Run: ``.venv/bin/python bench/latency.py [--notes 200] [--period 128] [--backend cpu|gpu]``.
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

RATE = 48_000


class CallbackRenderer:
    """The naive design: PortAudio's callback renders the synth's block itself."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __call__(self, outdata, frames, time_info, status) -> None:
        eng = self.engine
        t0 = time.perf_counter_ns()
        eng._last_callback_ns = t0
        if status.output_underflow:
            eng.xruns += 1
        start = eng._rendered_frames + eng._skipped
        if eng.midi is not None:
            eng._play_midi(start, start + frames)
        outdata[:] = eng.synth.render_block()
        eng._rendered_frames += frames
        eng._tick(t0, frames)  # the engine's clock and statistics


def measure(design: str, args, device: int) -> dict:
    import rtmidi

    from engine.audio import LiveEngine, live_block_frames
    from engine.backends import open_backend
    from engine.midi import MidiInput
    from engine.presets import find_preset, load_preset
    from engine.synth import Synth

    preset = load_preset(find_preset(args.preset))
    # the ring design may render blocks shorter than the period (engine/audio.py: only the
    # last block of a period waits for the GPU); the callback design renders one period
    if design == "ring":
        backend = open_backend(
            args.backend, grid_n=preset.grid_n, max_voices=16,
            block_frames=args.block or live_block_frames(args.period, gpu=False),
            gpu_block_frames=args.block or live_block_frames(args.period, gpu=True))
    else:
        backend = open_backend(args.backend, grid_n=preset.grid_n, max_voices=16,
                               block_frames=args.period)
    synth = Synth(backend, preset, sample_rate_hz=RATE, release_s=0.05, max_polyphony=16)
    midi = MidiInput(api="jack", client_name=f"latency-{design}")
    midi.open_virtual("in")
    engine = LiveEngine(synth, device=device, period_frames=args.period, midi=midi,
                        ahead_frames=args.ahead, capture_s=args.notes * args.spacing_s + 3)
    delay_frames = engine.delay_frames
    if design == "callback":
        engine.delay_frames = 0  # events go into the block this callback renders
        engine._render_loop = lambda: None  # no render thread: the callback renders
        engine._prefill = lambda: None
        engine._callback = CallbackRenderer(engine)
    engine.start()
    sender = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "sender")
    port = [i for i, n in enumerate(sender.get_ports()) if f"latency-{design}" in n][0]
    sender.open_port(port)
    time.sleep(1.0)
    for k in range(args.notes):
        note = 48 + (k * 7) % 24
        sender.send_message([0x90, note, 100])
        time.sleep(args.spacing_s / 2)
        sender.send_message([0x80, note, 0])
        time.sleep(args.spacing_s / 2)
    time.sleep(0.5)
    out_latency_ms = engine.output_latency_s * 1e3
    sender.close_port()
    engine.stop()
    midi.close()
    frames = engine.callback_frames[: min(engine._cb_count, 4096)]
    times = engine.callback_ns[: min(engine._cb_count, 4096)]
    order = np.argsort(frames)
    frames, times = frames[order], times[order]
    lat = []
    for frame, ev in engine.event_log:
        if ev[0] != "midi" or ev[1] != 1:
            continue
        k = np.searchsorted(frames, frame, side="right") - 1
        if k < 0 or k >= len(frames) - 1 or frame >= frames[k] + args.period * 4:
            continue
        lat.append((times[k] - ev[6]) / 1e6)
    lat = np.array(lat)
    st = engine.stats()
    return {
        "design": design,
        "notes": len(lat),
        "latency_ms": lat,
        "output_latency_ms": out_latency_ms,
        "underruns": st["underruns"],
        "xruns": st["xruns"],
        "callback_p99_us": st["callback_us"]["p99"],
        "backend": type(backend).__name__,
        "block_frames": backend.block_frames,
        "delay_frames": delay_frames,
        "ahead_frames": engine.ahead_frames,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--notes", type=int, default=200)
    ap.add_argument("--period", type=int, default=128)
    ap.add_argument("--ahead", type=int, default=None,
                    help="frames the render thread has to render a block (default: one block)")
    ap.add_argument("--block", type=int, default=None,
                    help="ring design: frames the engine renders at a time (default: as `play`, half "
                    "the period on a GPU)")
    ap.add_argument("--spacing-s", type=float, default=0.06)
    ap.add_argument("--preset", default="plate")
    ap.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from jack import start_jack_server  # tests/jack.py

    server = start_jack_server(sample_rate=RATE, period=args.period)
    os.environ.update(server.env)
    try:
        import sounddevice as sd
        from jack import portaudio_jack_output

        device = portaudio_jack_output()
        results = [measure(d, args, device) for d in ("ring", "callback")]
        sd._terminate()
    finally:
        server.stop()

    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"### latency — {platform.node()} ({os.cpu_count()} cores), {results[0]['backend']}, "
        f"JACK dummy {RATE} Hz, {args.period}-frame periods, ring design's blocks "
        f"{next(r['block_frames'] for r in results if r['design'] == 'ring')} frames and delay "
        f"{results[0]['delay_frames']} frames ({results[0]['delay_frames'] / RATE * 1e3:.2f} ms: "
        f"{results[0]['ahead_frames']} frames to render a block) — {date}",
        "",
        "MIDI note-on arrival → its first sample handed to PortAudio (ms), over "
        f"{args.notes} notes; PortAudio's output latency comes on top.",
        "",
        "| design | notes | min | median | p99 | max | + PortAudio output latency | underruns | xruns | callback p99 µs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a = r["latency_ms"]
        q = (a.min(), np.median(a), np.percentile(a, 99), a.max()) if len(a) else (np.nan,) * 4
        lines.append(
            f"| {r['design']} | {r['notes']} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} | {q[3]:.2f} | "
            f"{r['output_latency_ms']:.2f} | {r['underruns']} | {r['xruns']} | {r['callback_p99_us']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    publish("latency.py", text, write=not args.no_write)


if __name__ == "__main__":
    main()
