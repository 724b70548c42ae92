"""The ``neirosynth`` command line.

``neirosynth render SONG.mid --preset NAME -o OUT.wav``
    Render a Standard MIDI File offline (see :mod:`engine.render`).
``neirosynth presets``
    List the shipped presets and the notes each can play.
``neirosynth adapters``
    List the wgpu adapters and which one would be used.

Errors the user can fix (a bad MIDI file or preset, no adapter) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
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
            score, backend, preset, args.output, sample_format=args.format, progress=progress
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
    r.add_argument("--backend", choices=["auto", "gpu", "cpu"], default=None,
                   help="simulation backend (default: $NEIROSYNTH_BACKEND or auto)")
    r.add_argument("--adapter", default=None, help="wgpu adapter name (substring)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)

    ps = sub.add_parser("presets", help="list the shipped presets")
    ps.set_defaults(func=_presets)

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
    from .tuning import TuningError

    try:
        return args.func(args)
    except (MidiFileError, PresetError, NoAdapterError, TuningError, OSError) as exc:
        print(f"neirosynth: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
