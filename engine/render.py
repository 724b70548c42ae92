"""Offline rendering: a Standard MIDI File through the synthesizer into a WAV file.

Every event of the file (:mod:`engine.midifile`) reaches the :class:`~engine.synth.Synth` at
its exact sample: the block it falls in, at its offset inside the block. After the last event
the tail rings on until every voice has decayed below −90 dBFS (at most ``tail_s``). The WAV is
written with soundfile to a temporary file beside the target and renamed into place only when
the render succeeded, so a failed render leaves no partial file.

Public API: ``render_midi``, ``RenderResult``, ``SUBTYPES``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile

from .block import FdtdBackend
from .midifile import MidiScore
from .presets import Preset
from .synth import Synth

__all__ = ["render_midi", "RenderResult", "SUBTYPES"]

#: WAV sample formats by their command-line name.
SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What a render produced."""

    path: Path
    duration_s: float
    render_s: float
    peak: float
    notes: int
    refused_notes: int

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio per second of rendering (> 1 is faster than real time)."""
        return self.duration_s / self.render_s if self.render_s > 0 else float("inf")


def render_midi(
    score: MidiScore,
    backend: FdtdBackend,
    preset: Preset,
    out_path: str | os.PathLike,
    *,
    sample_format: Literal["16", "24", "float"] = "24",
    tail_s: float = 4.0,
    progress: Callable[[int, int], None] | None = None,
    tuning=None,
) -> RenderResult:
    """Render ``score`` on ``backend`` with ``preset`` and write a stereo WAV to ``out_path``.

    Arguments:
        score: the parsed MIDI file; its sample rate is the WAV's.
        backend: any :class:`~engine.block.FdtdBackend`.
        preset: the instrument.
        out_path: the WAV to write (replaced atomically).
        sample_format: ``"16"``, ``"24"`` (PCM) or ``"float"`` (32-bit float).
        tail_s: longest time to let voices ring after the last event.
        progress: called as ``progress(done_frames, total_frames)`` after each block.
        tuning: a Scala tuning (:func:`engine.scala.load_tuning`); ``None``: equal temperament.
    """
    if sample_format not in SUBTYPES:
        raise ValueError(f"sample_format={sample_format!r}; choose one of {sorted(SUBTYPES)}")
    out_path = Path(out_path)
    t0 = time.perf_counter()
    synth = Synth(backend, preset, sample_rate_hz=score.sample_rate_hz, tuning=tuning)
    block = synth.block_frames
    events = score.events
    last_sample = max(events[-1].sample, int(score.duration_s * score.sample_rate_hz))
    tail = int(tail_s * score.sample_rate_hz)
    estimate = last_sample + tail
    chunks: list[np.ndarray] = []
    i = 0
    start = 0
    while True:
        end = start + block
        while i < len(events) and events[i].sample < end:
            e = events[i]
            off = e.sample - start
            if e.kind == "note_on":
                synth.note_on(e.note, e.velocity, e.channel, off)
            elif e.kind == "note_off":
                synth.note_off(e.note, e.channel, off)
            elif e.kind == "sustain":
                synth.sustain(e.value > 0.5, e.channel, off)
            elif e.kind == "pitch_bend":
                synth.pitch_bend(e.value, e.channel, off)
            elif e.kind == "all_notes_off":
                synth.all_notes_off(e.channel, off)
            elif e.kind == "all_sound_off":
                synth.all_sound_off(e.channel, off)
            i += 1
        chunks.append(synth.render_block())
        start = end
        if progress is not None:
            progress(min(start, estimate), estimate)
        if start >= last_sample and (synth.active_voices == 0 or start >= last_sample + tail):
            break
    audio = np.concatenate(chunks)
    render_s = time.perf_counter() - t0
    _write_atomic(out_path, audio, score.sample_rate_hz, SUBTYPES[sample_format])
    return RenderResult(
        path=out_path,
        duration_s=len(audio) / score.sample_rate_hz,
        render_s=render_s,
        peak=float(np.max(np.abs(audio))) if audio.size else 0.0,
        notes=synth.stats["notes"],
        refused_notes=synth.stats["refused"],
    )


def _write_atomic(path: Path, audio: np.ndarray, sample_rate_hz: int, subtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".wav.tmp", dir=path.parent)
    os.close(fd)
    try:
        soundfile.write(tmp, audio, sample_rate_hz, subtype=subtype, format="WAV")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600; a WAV is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
