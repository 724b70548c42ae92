"""Read a Standard MIDI File into a flat, sample-exact list of performance events.

The file is parsed by mido (no parser of our own); this module turns mido's
messages into the few events the synthesizer plays, each stamped with the
absolute sample index at which it happens.

Public API (``__all__``)
------------------------
``read_midi_file(path, sample_rate_hz) -> MidiScore``
    Read a type-0 or type-1 file. Tracks are merged, tempo changes are
    honoured, and events are returned sorted by sample.
``MidiScore``
    The result: path, events, duration_s, sample_rate_hz, n_tracks, n_notes.
``MidiEvent``
    One event: sample, kind, channel, note, velocity, value.
``EventKind``
    The ``Literal`` type of ``MidiEvent.kind``.
``MidiFileError``
    Raised (a ``ValueError``) for any file that cannot be played, with a
    message naming the file, the problem and what to do about it.
``MidiFileWarning``
    Warned (a ``UserWarning``) when a non-conforming file was read only by
    clamping out-of-range data bytes (see "Data bytes > 127" below).

What is kept
------------
==================  ===============================================================
kind                from
==================  ===============================================================
``note_on``         note_on with velocity 1..127 (``note``, ``velocity``)
``note_off``        note_off (``velocity`` = its release velocity), and note_on
                    with velocity 0, which becomes a note_off with release
                    velocity 64 (the MIDI 1.0 default when there is none)
``sustain``         CC64; ``value`` 1.0 when the CC value is >= 64 (down), else 0.0
``mod_wheel``       CC1; ``value`` = CC value / 127 (0.0 .. 1.0)
``pitch_bend``      pitchwheel; ``value`` = (raw14 - 8192) / 8192, so raw 0 is -1.0,
                    8192 is 0.0 and 16383 is +8191/8192
``all_sound_off``   CC120
``all_notes_off``   CC123
==================  ===============================================================

Everything else (program change, other CCs, aftertouch, sysex, meta events,
system common/real-time bytes) is read by mido and ignored.

Timing
------
The tracks are merged with mido's ``MidiFile.merged_track`` (a stable sort by
absolute tick, so at equal ticks earlier tracks come first and each track keeps
its own order) and walked with the tempo map exactly as ``MidiFile.__iter__``
does (a ``set_tempo`` in any track applies from its tick on; default 120 bpm).
Instead of summing float seconds per message, elapsed time is kept as an exact
integer (ticks x microseconds-per-beat), so ``sample`` is exactly
``round(time_s * sample_rate_hz)`` (ties to even, like Python's ``round``)
with no drift over long files. ``duration_s`` is the time of the last
end-of-track, i.e. the playing length of the file, which may be later than the
last event.

Data bytes > 127
----------------
MIDI data bytes are 7-bit. Some real files break this (e.g. a CC7 volume of
0xFF, or 8-bit bytes inside a sysex). mido then has two modes: by default
(``clip=False``) it raises ``OSError``/``ValueError("data byte must be in range
0..127")`` and refuses the whole file; with ``clip=True`` it silently clamps
every such byte to 127. We first read strictly. Only if that fails and a
``clip=True`` read of the same bytes succeeds is the file accepted, and a
``MidiFileWarning`` says that values were clamped (a clamped note or velocity
plays as 127). A file that is well-formed reads identically either way.

Known limits (from mido)
------------------------
* A meta event that mido cannot decode (e.g. a key signature with an
  impossible key, or a tempo event with fewer than 3 bytes) makes the whole
  file unreadable; mido has no option to skip it. We report it clearly.
* Chunks other than ``MTrk`` between tracks (allowed by the SMF spec, rare in
  practice) and RIFF-wrapped ``RMID`` files are refused.
* SMPTE time division (negative division field) is refused.
* A file cut short (truncated) makes mido raise ``EOFError`` with no message;
  we report the byte offset where the data ran out.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import mido

__all__ = [
    "EventKind",
    "MidiEvent",
    "MidiFileError",
    "MidiFileWarning",
    "MidiScore",
    "read_midi_file",
]

EventKind = Literal[
    "note_on", "note_off", "sustain", "pitch_bend", "mod_wheel", "all_notes_off", "all_sound_off"
]

_DEFAULT_TEMPO_US: Final = 500_000  # microseconds per beat: 120 bpm, the SMF default
_NOTE_OFF_DEFAULT_VELOCITY: Final = 64  # release velocity for "note_on velocity 0"
_CC_MOD_WHEEL: Final = 1
_CC_SUSTAIN: Final = 64
_CC_ALL_SOUND_OFF: Final = 120
_CC_ALL_NOTES_OFF: Final = 123

# What mido raises on malformed input: OSError/EOFError from its reader, and
# ValueError/KeyError/IndexError/TypeError from message and meta decoders (a
# short meta event is indexed past its end). KeySignatureError is a plain
# Exception. 30 000 fuzzed files raised nothing outside this tuple.
_MIDO_ERRORS: Final = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OverflowError,
    mido.KeySignatureError,
)

_FIX_HINT: Final = "Re-export it as a Standard MIDI File (.mid) from a MIDI editor or DAW."


class MidiFileError(ValueError):
    """A MIDI file cannot be read or played; the message names the file and the problem."""


class MidiFileWarning(UserWarning):
    """A MIDI file was read, but only after clamping out-of-range data bytes to 127."""


@dataclass(frozen=True, slots=True)
class MidiEvent:
    """One performance event at an absolute sample index.

    Attributes:
        sample: absolute sample index, ``round(time_s * sample_rate_hz)``.
        kind: what happens (see the module docstring for the mapping).
        channel: MIDI channel 0..15.
        note: MIDI note number (note_on/note_off), else 0.
        velocity: note_on 1..127; note_off release velocity 0..127; else 0.
        value: sustain 1.0 down / 0.0 up; pitch_bend -1.0..+8191/8192;
            mod_wheel 0.0..1.0; else 0.0.
    """

    sample: int
    kind: EventKind
    channel: int
    note: int = 0
    velocity: int = 0
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class MidiScore:
    """A whole file, read and flattened.

    Attributes:
        path: the file that was read (as given).
        events: all kept events, stable-sorted by ``sample``.
        duration_s: playing length in seconds (time of the last end-of-track).
        sample_rate_hz: the rate the ``sample`` indices refer to.
        n_tracks: number of MTrk chunks in the file.
        n_notes: number of ``note_on`` events.
    """

    path: Path
    events: tuple[MidiEvent, ...]
    duration_s: float
    sample_rate_hz: int
    n_tracks: int
    n_notes: int


def read_midi_file(path: str | os.PathLike[str], sample_rate_hz: int) -> MidiScore:
    """Read a type-0 or type-1 Standard MIDI File.

    Args:
        path: the ``.mid`` file.
        sample_rate_hz: positive int; event times are converted to sample
            indices at this rate.

    Returns:
        The merged, time-sorted events and a summary of the file.

    Raises:
        ValueError: ``sample_rate_hz`` is not a positive int.
        MidiFileError: the path is missing, a directory, unreadable or empty;
            the data is not MIDI, is truncated or corrupt; the file is type 2,
            uses SMPTE timing, or has no notes.

    Warns:
        MidiFileWarning: out-of-range data bytes were clamped to 127.
    """
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) or sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be a positive int, got {sample_rate_hz!r}")
    file_path = Path(path)
    data = _read_bytes(file_path)
    mid = _parse(file_path, data)
    return _flatten(file_path, mid, sample_rate_hz)


def _fail(path: Path, problem: str, todo: str = _FIX_HINT) -> MidiFileError:
    return MidiFileError(f"MIDI file '{path}': {problem}. {todo}")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise _fail(path, "does not exist", "Check the path and file name.") from exc
    except IsADirectoryError as exc:
        raise _fail(path, "is a directory, not a file", "Pass the path of a .mid file inside it.") from exc
    except PermissionError as exc:
        raise _fail(path, "cannot be read (permission denied)", "Check the file's permissions.") from exc
    except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
        raise _fail(path, f"cannot be read ({exc})", "Check the path.") from exc
    if not data:
        raise _fail(path, "is empty (0 bytes)")
    return data


def _describe_non_midi(data: bytes) -> str:
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        kind = "it is a WAV audio file"
    elif head[:4] == b"RIFF" and head[8:12] == b"RMID":
        kind = "it is a RIFF-wrapped MIDI file (RMID), which is not supported"
    elif head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        kind = "it looks like an MP3 audio file"
    elif head[:4] in (b"fLaC", b"OggS"):
        kind = "it is a FLAC/Ogg audio file"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in data[:64]):
        kind = "it looks like a text file"
    else:
        kind = f"it starts with {head[:4]!r}"
    return f"is not a Standard MIDI File (no 'MThd' header; {kind})"


def _parse(path: Path, data: bytes) -> mido.MidiFile:
    if len(data) < 4 or data[:4] != b"MThd":
        if b"MThd".startswith(data[:4]):  # shorter than the 4-byte tag itself
            raise _fail(path, f"is truncated: only {len(data)} byte(s), not even a full header")
        raise _fail(path, _describe_non_midi(data))

    stream = io.BytesIO(data)
    try:
        return mido.MidiFile(file=stream, clip=False)
    except EOFError as exc:
        where = "the header" if stream.tell() < 14 else "the tracks that its header announces"
        raise _fail(
            path,
            f"is truncated: the data ends at byte {len(data)}, before the end of {where}",
            "The file was probably cut short while downloading or copying; get a complete copy.",
        ) from exc
    except _MIDO_ERRORS as strict_exc:
        offset = stream.tell()
        try:
            clipped = mido.MidiFile(file=io.BytesIO(data), clip=True)
        except _MIDO_ERRORS:
            raise _fail(
                path, f"is corrupt near byte {offset} of {len(data)} ({_mido_reason(strict_exc)})"
            ) from strict_exc
        warnings.warn(
            f"MIDI file '{path}': data bytes above 127 (not allowed by MIDI) were clamped to 127 "
            f"({_mido_reason(strict_exc)}); some controller/note values may be wrong.",
            MidiFileWarning,
            stacklevel=3,
        )
        return clipped


def _mido_reason(exc: BaseException) -> str:
    text = str(exc).strip() or "no detail"
    return f"mido: {type(exc).__name__}: {text}"


def _round_div(num: int, den: int) -> int:
    """round(num / den) for non-negative ints, ties to even, exactly."""
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2 == 1):
        q += 1
    return q


def _flatten(path: Path, mid: mido.MidiFile, sample_rate_hz: int) -> MidiScore:
    if mid.type == 2:
        raise _fail(
            path,
            "is a type-2 MIDI file (independent sequences with no common timeline), which cannot be played as one song",
            "Convert it to type 1 or type 0 in a MIDI editor.",
        )
    if mid.type not in (0, 1):
        raise _fail(path, f"has an unknown format {mid.type} in its header (only 0, 1 and 2 exist)")
    tpb = mid.ticks_per_beat
    if tpb < 0:
        raise _fail(
            path,
            "uses SMPTE time division (frames per second), which is not supported",
            "Re-export it with musical timing (ticks per quarter note).",
        )
    if tpb == 0:
        raise _fail(path, "has a time division of 0 ticks per beat in its header")

    # Elapsed time is kept as ticks x microseconds-per-beat: exact integers.
    den = tpb * 1_000_000
    tempo = _DEFAULT_TEMPO_US
    acc = 0
    events: list[MidiEvent] = []
    n_notes = 0
    for msg in mid.merged_track:
        acc += msg.time * tempo
        kind = msg.type
        if kind == "set_tempo":
            tempo = msg.tempo
            continue
        if kind not in ("note_on", "note_off", "control_change", "pitchwheel"):
            continue
        sample = _round_div(acc * sample_rate_hz, den)
        ch = msg.channel
        if kind == "note_on":
            if msg.velocity > 0:
                events.append(MidiEvent(sample, "note_on", ch, msg.note, msg.velocity))
                n_notes += 1
            else:
                events.append(MidiEvent(sample, "note_off", ch, msg.note, _NOTE_OFF_DEFAULT_VELOCITY))
        elif kind == "note_off":
            events.append(MidiEvent(sample, "note_off", ch, msg.note, msg.velocity))
        elif kind == "pitchwheel":  # mido gives pitch already centred: -8192..8191
            events.append(MidiEvent(sample, "pitch_bend", ch, value=msg.pitch / 8192.0))
        else:
            cc, val = msg.control, msg.value
            if cc == _CC_SUSTAIN:
                events.append(MidiEvent(sample, "sustain", ch, value=1.0 if val >= 64 else 0.0))
            elif cc == _CC_MOD_WHEEL:
                events.append(MidiEvent(sample, "mod_wheel", ch, value=val / 127.0))
            elif cc == _CC_ALL_SOUND_OFF:
                events.append(MidiEvent(sample, "all_sound_off", ch))
            elif cc == _CC_ALL_NOTES_OFF:
                events.append(MidiEvent(sample, "all_notes_off", ch))

    if n_notes == 0:
        raise _fail(
            path,
            f"contains no notes ({len(mid.tracks)} track(s), no note-on with velocity > 0)",
            "Check that this is the right file; a tempo map or controller-only file cannot be played.",
        )
    # merged_track is already in tick order and time only moves forward, so this
    # stable sort is a no-op guard; it keeps file order at equal samples.
    events.sort(key=lambda e: e.sample)
    return MidiScore(
        path=path,
        events=tuple(events),
        duration_s=acc / den,
        sample_rate_hz=sample_rate_hz,
        n_tracks=len(mid.tracks),
        n_notes=n_notes,
    )
