"""The ``neirosynth`` command line.

``neirosynth render SONG.mid --preset NAME -o OUT.wav``
    Render a Standard MIDI File offline (see :mod:`engine.render`).
``neirosynth presets``
    List the shipped presets and the notes each can play.
``neirosynth adapters``
    List the wgpu adapters and which one would be used.
``neirosynth devices``
    List the audio outputs (PortAudio) and MIDI inputs (python-rtmidi).
``neirosynth play --preset NAME``
    Play live: MIDI in (a virtual port ``NeiroSynth``, or ``--midi PORT``), audio out.

Errors the user can fix (a bad MIDI file or preset, no adapter) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("neirosynth")


def _render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .backends import open_backend
    from .midifile import read_midi_file
    from .presets import find_preset, load_preset
    from .render import render_midi

    score = read_midi_file(args.midi, args.sample_rate)
    preset = load_preset(find_preset(args.preset))
    backend = open_backend(
        args.backend,
        grid_n=preset.grid_n,
        max_voices=args.polyphony,
        block_frames=args.block,
        adapter=args.adapter,
    )
    rate = score.sample_rate_hz
    with tqdm(
        total=round(score.duration_s, 1),
        unit="s",
        desc="rendering",
        disable=args.quiet or None,  # None: no bar when stderr is not a terminal
        leave=False,
        mininterval=0.5,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]",
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = round(total / rate, 1)
            bar.update(round(done / rate - bar.n, 3))

        result = render_midi(
            score, backend, preset, args.output, sample_format=args.format, progress=progress,
            tuning=_tuning(args),
        )
    peak_db = 20 * __import__("math").log10(max(result.peak, 1e-12))
    print(
        f"wrote {result.path}: {result.duration_s:.1f} s of audio, {result.notes} notes, "
        f"peak {peak_db:.1f} dBFS, rendered in {result.render_s:.1f} s "
        f"({result.realtime_factor:.2f}× real time) on {_describe(backend)}"
    )
    if result.refused_notes:
        print(f"warning: {result.refused_notes} notes were out of this body's range (see the log)")
    return 0


def _tuning(args: argparse.Namespace):
    if args.tuning is None:
        if args.kbm is not None:
            raise SystemExit("neirosynth: error: --kbm needs --tuning SCALE.scl")
        return None
    from .scala import load_tuning

    return load_tuning(args.tuning, args.kbm)


def _describe(backend) -> str:
    summary = getattr(backend, "adapter_summary", None)
    if summary:
        return f"the GPU kernel ({summary})"
    return f"the numba CPU backend ({type(backend).__name__})"


def _presets(args: argparse.Namespace) -> int:
    from .presets import PresetError, list_presets, load_preset

    for path in list_presets():
        try:
            p = load_preset(path)
        except PresetError as exc:
            print(f"{path.stem:16s} BROKEN: {exc}")
            continue
        title = p.meta.get("display_name") or p.name
        print(f"{p.name:16s} {p.grid_n}×{p.grid_n}  {title}")
    return 0


def _adapters(args: argparse.Namespace) -> int:
    import wgpu

    from .gpu import choose_adapter

    for a in wgpu.gpu.enumerate_adapters_sync():
        print(f"{a.info.get('adapter_type', '?'):14s} {a.summary}")
    print(f"chosen: {choose_adapter(args.adapter).summary}")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from .audio import list_output_devices
    from .midi import MidiError, api_name, choose_api, list_input_ports

    print("audio outputs:")
    outputs = list_output_devices()
    for d in outputs:
        print(f"  [{d['index']}] {d['name']} ({d['hostapi']}, {d['channels']} ch, "
              f"{d['default_rate_hz']:.0f} Hz)")
    if not outputs:
        print("  none (no sound card; a JACK server makes one: jackd -d dummy)")
    try:
        api = choose_api()
        ports = list_input_ports(api)
        print(f"MIDI inputs ({api_name(api)}):")
        for i, name in enumerate(ports):
            print(f"  [{i}] {name}")
        if not ports:
            print("  none (`neirosynth play` opens a virtual input named NeiroSynth)")
    except MidiError as exc:
        print(f"MIDI inputs: none ({exc})")
    return 0


def _play(args: argparse.Namespace) -> int:
    import time

    from .audio import AudioDeviceError, LiveEngine, live_block_frames
    from .backends import open_backend
    from .midi import MidiInput
    from .presets import find_preset, load_preset
    from .synth import Synth

    preset = load_preset(find_preset(args.preset))
    backend = open_backend(
        args.backend, grid_n=preset.grid_n, max_voices=args.polyphony,
        block_frames=args.block or live_block_frames(args.period, gpu=False),
        gpu_block_frames=args.block or live_block_frames(args.period, gpu=True),
        adapter=args.adapter,
    )
    synth = Synth(backend, preset, sample_rate_hz=args.sample_rate, max_polyphony=args.polyphony,
                  tuning=_tuning(args))
    midi = MidiInput(channels=args.channel)
    if args.midi is None:
        midi.open_virtual("NeiroSynth")
        where = "virtual MIDI input NeiroSynth"
    else:
        midi.open(int(args.midi) if args.midi.isdigit() else args.midi)
        where = f"MIDI input {midi.port_name}"
    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    ahead = None if args.ahead_ms is None else max(1, round(args.ahead_ms * 1e-3 * args.sample_rate))
    try:
        latency = float(args.latency)
    except ValueError:
        latency = args.latency
    engine = LiveEngine(synth, device=device, period_frames=args.period, midi=midi,
                        ahead_frames=ahead, latency=latency, rt_priority=args.rt_priority,
                        overload_detection=args.overload_detection)
    engine.start()
    print(f"playing {preset.name} on {_describe(backend)}: {where}; audio "
          f"{args.sample_rate} Hz, {args.period}-frame periods ({backend.block_frames}-frame "
          f"blocks), output latency "
          f"{engine.output_latency_s * 1e3:.1f} ms + {engine.delay_frames / args.sample_rate * 1e3:.1f} ms "
          f"of ours" + (f"; render thread {engine.rt_status}" if args.rt_priority else "")
          + ". Ctrl-C stops.")
    try:
        last_report = time.monotonic()
        while args.seconds is None or time.monotonic() - last_report < args.seconds:
            time.sleep(0.5)
            changes = midi.poll_ports()
            if changes.added or changes.removed or changes.lost:
                print(f"MIDI ports: +{list(changes.added)} -{list(changes.removed)}"
                      + (f" lost {changes.lost}" if changes.lost else ""))
            if not engine.running:  # the device vanished, or a reopen failed
                print("audio device lost; trying to reopen it (re-reading the devices)")
                try:
                    engine.reopen(rescan=True)
                    print(f"audio back on {engine.device!r}")
                except AudioDeviceError as exc:  # keep running (MIDI too), try again later
                    print(f"reopen failed: {exc}")
                    if "restart NeiroSynth" in str(exc):
                        return 1
                    time.sleep(2.0)
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
        midi.close()
    st = engine.stats()
    rd = st["render_us"]
    budget_us = engine.ahead_frames / args.sample_rate * 1e6
    peak_dbfs = 20 * math.log10(max(st["peak"], 1e-12))
    print(f"stopped: {st['frames'] / args.sample_rate:.1f} s played, peak {peak_dbfs:.1f} dBFS, "
          f"{st['underruns']} underruns, "
          f"{st['xruns']} xruns, callback p99 {st['callback_us']['p99']:.0f} µs; a block took "
          f"{rd['median']:.0f} µs (median), {rd['p99.9']:.0f} µs (p99.9), {rd['max']:.0f} µs (max) "
          f"of its {budget_us:.0f} µs" + ("; raise --ahead-ms" if st["underruns"] else "")
          + (f"; {st['shed_voices']} voices faded out for want of time (fewer --polyphony, or "
             "a faster backend)" if st["shed_voices"] else ""))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neirosynth", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render a MIDI file to WAV")
    r.add_argument("midi", type=Path, help="Standard MIDI File (.mid)")
    r.add_argument("--preset", default="plate", help="preset name or .npz path (default: plate)")
    r.add_argument("-o", "--output", type=Path, required=True, help="WAV file to write")
    r.add_argument("--format", choices=["16", "24", "float"], default="24", help="WAV sample format")
    r.add_argument("--sample-rate", type=int, default=48_000, help="output rate in Hz")
    r.add_argument("--block", type=int, default=256, help="frames per block")
    r.add_argument("--polyphony", type=int, default=32, help="most voices at once")
    r.add_argument("--tuning", type=Path, default=None, help="Scala scale (.scl)")
    r.add_argument("--kbm", type=Path, default=None, help="Scala keyboard mapping (.kbm)")
    r.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None,
                   help="simulation backend (default: $NEIROSYNTH_BACKEND or auto)")
    r.add_argument("--adapter", default=None, help="wgpu adapter name (substring)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)

    ps = sub.add_parser("presets", help="list the shipped presets")
    ps.set_defaults(func=_presets)

    dv = sub.add_parser("devices", help="list audio outputs and MIDI inputs")
    dv.set_defaults(func=_devices)

    pl = sub.add_parser("play", help="play live from MIDI")
    pl.add_argument("--preset", default="plate", help="preset name or .npz path")
    pl.add_argument("--midi", default=None, help="MIDI input port (name or index); default: "
                    "a virtual input named NeiroSynth")
    pl.add_argument("--channel", type=int, default=None, help="listen to one channel 0..15 (default: omni)")
    pl.add_argument("--device", default=None, help="audio output (name or index)")
    pl.add_argument("--sample-rate", type=int, default=48_000, help="Hz (44100, 48000, 96000)")
    pl.add_argument("--period", type=int, default=128, help="audio frames per callback (32..1024)")
    pl.add_argument("--block", type=int, default=None,
                    help="frames the engine renders at a time (default: half the period on a "
                    "GPU, the period on the CPU); below --period the GPU works on a period's "
                    "earlier blocks while its later events arrive, and only the last block "
                    "waits for the GPU inside the --ahead-ms budget")
    pl.add_argument("--ahead-ms", type=float, default=None,
                    help="time the engine has to render a block (default: 4 ms, at least a "
                    "block); lower for less latency, raise if the stats show underruns")
    pl.add_argument("--rt-priority", type=int, default=None,
                    help="run the render thread under SCHED_FIFO at this priority (1..99, below "
                    "JACK's; needs realtime rights, e.g. the audio group's rtprio)")
    pl.add_argument("--overload-detection", action=argparse.BooleanOptionalAction, default=True,
                    help="when the machine cannot render every voice in time, fade out the "
                    "least-missed voice and play fewer rather than drop out (default: on)")
    pl.add_argument("--latency", default="low",
                    help="PortAudio's suggested output latency: seconds, 'low' or 'high'")
    pl.add_argument("--polyphony", type=int, default=16, help="most voices at once")
    pl.add_argument("--tuning", type=Path, default=None, help="Scala scale (.scl)")
    pl.add_argument("--kbm", type=Path, default=None, help="Scala keyboard mapping (.kbm)")
    pl.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None)
    pl.add_argument("--adapter", default=None, help="wgpu adapter name (substring)")
    pl.add_argument("--seconds", type=float, default=None, help="stop after this long")
    pl.set_defaults(func=_play)

    ad = sub.add_parser("adapters", help="list the wgpu adapters")
    ad.add_argument("--adapter", default=None, help="name to choose")
    ad.set_defaults(func=_adapters)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .gpu import NoAdapterError
    from .midifile import MidiFileError
    from .presets import PresetError
    from .scala import ScalaError
    from .tuning import TuningError

    errors: tuple[type[BaseException], ...] = (
        MidiFileError, PresetError, NoAdapterError, TuningError, ScalaError, OSError,
    )
    if args.command in ("play", "devices"):
        from .audio import AudioDeviceError
        from .midi import MidiError

        errors += (AudioDeviceError, MidiError)
    try:
        return args.func(args)
    except errors as exc:
        print(f"neirosynth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
