"""Tunings from Scala files: a scale (``.scl``) and a keyboard mapping (``.kbm``).

The formats are those of the Scala program (https://www.huygens-fokker.org/scala/), the de
facto standard for microtonal tunings in synthesizers.

Public API (``__all__``)
------------------------
``read_scl(path) -> Scale`` / ``parse_scl(text, source="<string>") -> Scale``
    A scale: a description and its pitches above the implicit 1/1, in cents; the last pitch is
    the period (usually the octave, 2/1).
``read_kbm(path) -> KeyboardMapping`` / ``parse_kbm(text, source="<string>") -> KeyboardMapping``
    Which scale degree each MIDI key plays, and the reference key and frequency.
``load_tuning(scl_path, kbm_path=None) -> Tuning``
    Both files at once (no ``.kbm``: :data:`DEFAULT_MAPPING`).
``Tuning(scale, mapping=DEFAULT_MAPPING)``
    ``note_to_hz(note, bend_semitones=0.0)`` (NaN for an unmapped key), ``frequencies()``
    (all 128 keys), ``is_mapped(note)``, ``degree(note)``.
``Scale``, ``KeyboardMapping``, ``DEFAULT_MAPPING``
    The parsed files (frozen dataclasses); the default mapping is linear, scale degree 0 on
    key 60 and 440 Hz on key 69 — a 12-note equal scale then gives standard tuning exactly.
``ScalaError``
    A ``ValueError`` for a malformed file: the message names the file, the line number, what
    was found and what was expected there.

The ``.scl`` format
-------------------
Lines starting with ``!`` are comments, anywhere. The first other line is the description
(it may be empty), the next the number of pitches N (>= 1), then N pitch lines. A pitch with
a ``.`` is in cents (``701.955``, ``-5.``, ``100.0``); otherwise it is a ratio ``p/q`` or an
integer ``p`` meaning ``p/1`` (``3/2``, ``2``), positive. Text after the value is ignored
(``3/2 perfect fifth``). The 1/1 (0 cents) is implicit and not listed. The last pitch is the
*period* at which the scale repeats. Blank lines after the last pitch are fine; any other
extra line is an error, so a wrong count is caught. Pitches need not be ascending.

Scale degree ``k`` (any integer) is ``k = q·N + r`` with ``0 <= r < N``; its pitch is
``q·period + pitch[r]`` cents, ``pitch[0] = 0``.

The ``.kbm`` format
-------------------
Comments as above; blank lines are skipped. Seven values, one a line (only the first token of
each line counts), then the mapping:

1. map size M (0 = linear: key ``middle + k`` plays degree ``k``);
2. first and 3. last MIDI key to retune (keys outside are unmapped);
4. middle key, where the first mapping entry (and, when linear, degree 0) sits;
5. reference key and 6. its frequency in Hz;
7. the scale degree of the formal octave D: each repetition of the M-key pattern moves by
   degree D's pitch (0 = the scale's period, i.e. degree N);
8. up to M entries, one a line: a scale degree (>= 0) or ``x`` for an unmapped key. Entries
   left out at the end are unmapped.

For a key ``n`` with ``n - middle = q·M + i`` (``0 <= i < M``) and entry ``e = mapping[i]``, the
pitch is ``cents(n) = pitch(e) + q·pitch(D)``; linear maps use ``cents(n) = pitch(n - middle)``.
The frequency is ``reference_hz · 2^((cents(n) − cents(reference_key)) / 1200)``. The reference
key must be mapped (else :class:`ScalaError` when the tuning is made); it need not lie inside
first..last.

Exactness: cents are summed in float64 and the exponent is one division, so a 12-note scale
written in cents (``100.0`` … ``1200.0``, or ``2/1`` as the last line) under the default
mapping gives ``440 · 2^((n − 69)/12)`` bit for bit, the same value as
:func:`engine.synth.note_to_hz`. Ratios become cents through ``log2``, so a just scale is exact
to about 1e-13 relative.

Threads: everything here is pure computation on immutable objects; any thread may call any
function or method. Load files on a control thread (not the audio thread): they read disk.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MAPPING",
    "KeyboardMapping",
    "Scale",
    "ScalaError",
    "Tuning",
    "load_tuning",
    "parse_kbm",
    "parse_scl",
    "read_kbm",
    "read_scl",
]

# Scala asks for at least 2^31 - 1 in numerators and denominators; Python ints are unbounded,
# but a huge integer is almost certainly garbage, and log2 of it must stay finite.
_MAX_RATIO_DIGITS = 300


class ScalaError(ValueError):
    """A malformed ``.scl`` or ``.kbm`` file; the message says where and what was expected."""


def _error(source: str, line_no: int | None, problem: str, expected: str) -> ScalaError:
    where = f"{source}, line {line_no}" if line_no is not None else source
    return ScalaError(f"{where}: {problem}; expected {expected}.")


@dataclass(frozen=True, slots=True)
class Scale:
    """A parsed ``.scl`` file.

    Attributes:
        description: the description line (may be empty).
        cents: the N pitches above 1/1, in file order; ``cents[-1]`` is the period.
        source: the file (or ``"<string>"``) it came from, for messages.
    """

    description: str
    cents: tuple[float, ...]
    source: str = "<string>"

    @property
    def size(self) -> int:
        """N, the number of pitches (degrees per period)."""
        return len(self.cents)

    @property
    def period_cents(self) -> float:
        """The interval at which the scale repeats (the last pitch)."""
        return self.cents[-1]

    def degree_cents(self, degree: int) -> float:
        """Pitch of scale degree ``degree`` (any integer) above degree 0, in cents."""
        q, r = divmod(int(degree), len(self.cents))
        base = 0.0 if r == 0 else self.cents[r - 1]
        return q * self.cents[-1] + base


@dataclass(frozen=True, slots=True)
class KeyboardMapping:
    """A parsed ``.kbm`` file (see the module docstring for the meaning of each field).

    Attributes:
        size: M, keys in the repeating pattern; 0 = linear.
        first_note, last_note: the retuned key range (inclusive).
        middle_note: the key of the first mapping entry (degree 0 when linear).
        reference_note, reference_hz: the key and the frequency it is tuned to.
        octave_degree: the formal octave's scale degree; 0 = the scale's period.
        mapping: M entries, a degree or ``None`` (unmapped); short lists are padded with
            ``None``.
        source: where it came from, for messages.
    """

    size: int
    first_note: int
    last_note: int
    middle_note: int
    reference_note: int
    reference_hz: float
    octave_degree: int
    mapping: tuple[int | None, ...]
    source: str = "<string>"


#: Linear, keys 0..127, degree 0 on key 60, 440 Hz on key 69, octave = the scale's period.
DEFAULT_MAPPING = KeyboardMapping(
    size=0,
    first_note=0,
    last_note=127,
    middle_note=60,
    reference_note=69,
    reference_hz=440.0,
    octave_degree=0,
    mapping=(),
    source="<default mapping>",
)


# ---- reading ------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike[str], kind: str) -> tuple[str, str]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise ScalaError(f"{kind} file '{p}' does not exist; check the path.") from exc
    except IsADirectoryError as exc:
        raise ScalaError(f"{kind} file '{p}' is a directory; pass the file inside it.") from exc
    except OSError as exc:
        raise ScalaError(f"{kind} file '{p}' cannot be read ({exc}); check its permissions.") from exc
    if b"\0" in data[:4096]:
        raise ScalaError(f"{kind} file '{p}' is binary, not a text file; pass a Scala {kind} file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # old Scala files are often Latin-1 (descriptions only)
    return text, str(p)


def read_scl(path: str | os.PathLike[str]) -> Scale:
    """Read a ``.scl`` file.

    Raises:
        ScalaError: the file is missing, unreadable or malformed (line and expectation named).

    Thread: any (reads disk; not the audio thread).
    """
    text, source = _read_text(path, ".scl")
    return parse_scl(text, source)


def read_kbm(path: str | os.PathLike[str]) -> KeyboardMapping:
    """Read a ``.kbm`` file.

    Raises:
        ScalaError: the file is missing, unreadable or malformed (line and expectation named).

    Thread: any (reads disk; not the audio thread).
    """
    text, source = _read_text(path, ".kbm")
    return parse_kbm(text, source)


def load_tuning(
    scl_path: str | os.PathLike[str], kbm_path: str | os.PathLike[str] | None = None
) -> Tuning:
    """Read a scale and (optionally) a keyboard mapping into a :class:`Tuning`.

    Raises:
        ScalaError: either file is malformed, or they do not fit together (the reference key is
            unmapped).

    Thread: any (reads disk; not the audio thread).
    """
    scale = read_scl(scl_path)
    mapping = read_kbm(kbm_path) if kbm_path is not None else DEFAULT_MAPPING
    return Tuning(scale, mapping)


# ---- .scl ---------------------------------------------------------------------------------

_CENTS_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_RATIO_RE = re.compile(r"(\d+)(?:[ \t]*/[ \t]*(\d+))?")
_EXPECT_PITCH = "a pitch: cents with a '.' (701.955) or a positive ratio (3/2, or 2 for 2/1)"


def _parse_pitch(body: str, source: str, line_no: int) -> float:
    s = body.strip(" \t")
    m = _CENTS_RE.match(s)
    if m:
        value = float(m.group(0))
        if not math.isfinite(value):
            raise _error(source, line_no, f"the cents value {m.group(0)!r} is not finite", _EXPECT_PITCH)
        return value
    m = _RATIO_RE.match(s)
    if m is None:
        found = s[:40] if s else "an empty line"
        raise _error(source, line_no, f"found {found!r}", _EXPECT_PITCH)
    num_s, den_s = m.group(1), m.group(2) or "1"
    if len(num_s) > _MAX_RATIO_DIGITS or len(den_s) > _MAX_RATIO_DIGITS:
        raise _error(source, line_no, "the ratio has more than 300 digits", _EXPECT_PITCH)
    num, den = int(num_s), int(den_s)
    if den == 0:
        raise _error(source, line_no, f"the ratio {num}/{den} divides by zero", "a positive ratio")
    if num == 0:
        raise _error(source, line_no, f"the ratio {num}/{den} is zero", "a positive ratio")
    return 1200.0 * (math.log2(num) - math.log2(den))


def _lines(text: str):
    """(line number, line) for every line that is not a comment."""
    for i, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip(" \t").startswith("!"):
            continue
        yield i, raw


def parse_scl(text: str, source: str = "<string>") -> Scale:
    """Parse the text of a ``.scl`` file (format in the module docstring).

    Args:
        text: the file's contents.
        source: a name for messages (the path).

    Raises:
        ScalaError: no description or count line, a count that is not a positive integer, a
            pitch line that is not cents or a positive ratio, fewer or more pitch lines than
            the count, a zero or non-finite period.

    Thread: any.
    """
    lines = _lines(text)
    first = next(lines, None)
    if first is None:
        raise _error(source, None, "the file has no description line (it is empty or all comments)",
                     "a description line, a line with the number of pitches, then the pitches")
    line_no, _ = first
    description = first[1].strip()
    count_line = next(lines, None)
    if count_line is None:
        raise _error(source, line_no, "the file ends after the description",
                     "a line with the number of pitches next")
    line_no, raw = count_line
    token = raw.strip(" \t").split(maxsplit=1)
    if not token or not re.fullmatch(r"\d+", token[0]):
        found = raw.strip()[:40] if raw.strip() else "an empty line"
        raise _error(source, line_no, f"found {found!r} where the number of pitches goes",
                     "a non-negative integer (the number of pitch lines that follow)")
    count = int(token[0])
    if count == 0:
        raise _error(source, line_no, "the scale has 0 pitches, so it has no period",
                     "at least 1 pitch (the last one is the period, e.g. 2/1)")
    if count > 100_000:
        raise _error(source, line_no, f"{count} pitches is not a plausible scale", "at most 100000")
    cents: list[float] = []
    last_line = line_no
    for line_no, raw in lines:
        if len(cents) == count:
            if raw.strip(" \t"):
                raise _error(source, line_no,
                             f"found {raw.strip()[:40]!r} after the {count} pitches the count "
                             f"on line {count_line[0]} announced",
                             f"no more pitch lines (or fix the count on line {count_line[0]})")
            continue
        cents.append(_parse_pitch(raw, source, line_no))
        last_line = line_no
    if len(cents) < count:
        raise _error(source, last_line,
                     f"the file ends after {len(cents)} of the {count} pitches announced on "
                     f"line {count_line[0]}",
                     f"{count - len(cents)} more pitch line(s) (or fix the count)")
    if cents[-1] == 0.0:
        raise _error(source, last_line, "the last pitch (the period) is 0 cents (1/1)",
                     "a period other than unison, usually 2/1 or 1200.0")
    return Scale(description, tuple(cents), source)


# ---- .kbm ---------------------------------------------------------------------------------

_KBM_FIELDS = (
    ("map size", "an integer >= 0 (0 = linear mapping)"),
    ("first MIDI note to retune", "an integer 0..127"),
    ("last MIDI note to retune", "an integer 0..127"),
    ("middle note", "an integer 0..127 (where the first mapping entry sits)"),
    ("reference note", "an integer 0..127"),
    ("reference frequency", "a positive frequency in Hz, e.g. 440.0"),
    ("formal octave degree", "an integer >= 0 (0 = the scale's period)"),
)


def _kbm_int(token: str, source: str, line_no: int, index: int, lo: int, hi: int | None) -> int:
    name, expected = _KBM_FIELDS[index]
    if not re.fullmatch(r"[+-]?\d+", token):
        raise _error(source, line_no, f"the {name} is {token[:40]!r}", expected)
    value = int(token)
    if value < lo or (hi is not None and value > hi):
        raise _error(source, line_no, f"the {name} is {value}", expected)
    return value


def parse_kbm(text: str, source: str = "<string>") -> KeyboardMapping:
    """Parse the text of a ``.kbm`` file (format in the module docstring).

    Args:
        text: the file's contents.
        source: a name for messages (the path).

    Raises:
        ScalaError: a header value missing or out of range (which one, and its range), first
            note above last note, a mapping entry that is neither a degree >= 0 nor ``x``, more
            entries than the map size.

    Thread: any.
    """
    values: list[int | float] = []
    value_lines: list[int] = []
    entries: list[int | None] = []
    size = 0
    line_no = 0
    for line_no, raw in _lines(text):
        token = raw.strip(" \t").split(maxsplit=1)
        if not token:
            continue  # blank lines carry nothing in a .kbm
        tok = token[0]
        k = len(values)
        if k < len(_KBM_FIELDS):
            if k == 0:
                size = _kbm_int(tok, source, line_no, 0, 0, 100_000)
                values.append(size)
            elif k == 5:
                try:
                    hz = float(tok)
                except ValueError:
                    hz = float("nan")
                if not (math.isfinite(hz) and hz > 0.0):
                    raise _error(source, line_no, f"the reference frequency is {tok[:40]!r}",
                                 _KBM_FIELDS[5][1])
                values.append(hz)
            elif k == 6:
                values.append(_kbm_int(tok, source, line_no, 6, 0, None))
            else:
                values.append(_kbm_int(tok, source, line_no, k, 0, 127))
            value_lines.append(line_no)
            continue
        if len(entries) == size:
            raise _error(source, line_no,
                         f"found {tok[:40]!r} after the {size} mapping entries the map size "
                         f"(line {value_lines[0]}) allows",
                         f"at most {size} entries (or a larger map size)")
        if tok in ("x", "X"):
            entries.append(None)
        elif re.fullmatch(r"\d+", tok):
            entries.append(int(tok))
        else:
            raise _error(source, line_no, f"the mapping entry is {tok[:40]!r}",
                         "a scale degree (an integer >= 0) or 'x' for an unmapped key")
    if len(values) < len(_KBM_FIELDS):
        name, expected = _KBM_FIELDS[len(values)]
        raise _error(source, line_no or None, f"the file ends before the {name}", expected)
    _, first, last, middle, ref_note, ref_hz, octave = values
    if first > last:
        raise _error(source, value_lines[2],
                     f"the last note to retune ({last}) is below the first ({first}, line "
                     f"{value_lines[1]})", "last >= first")
    entries.extend([None] * (size - len(entries)))
    return KeyboardMapping(
        size=size,
        first_note=int(first),
        last_note=int(last),
        middle_note=int(middle),
        reference_note=int(ref_note),
        reference_hz=float(ref_hz),
        octave_degree=int(octave),
        mapping=tuple(entries),
        source=source,
    )


# ---- the tuning ---------------------------------------------------------------------------


class Tuning:
    """A scale laid onto the 128 MIDI keys by a keyboard mapping.

    Arguments:
        scale: the pitches.
        mapping: which degree each key plays, and the reference (default
            :data:`DEFAULT_MAPPING`).

    Raises:
        ScalaError: the mapping's reference key is unmapped (nothing to tune it against).

    All 128 frequencies are computed once here; lookups are an array read, safe on the audio
    thread. Immutable: any thread may call any method.
    """

    def __init__(self, scale: Scale, mapping: KeyboardMapping = DEFAULT_MAPPING) -> None:
        self.scale = scale
        self.mapping = mapping
        ref_cents = self._cents(mapping.reference_note, ignore_range=True)
        if ref_cents is None:
            raise ScalaError(
                f"{mapping.source}: the reference note {mapping.reference_note} is unmapped "
                f"('x' or past the listed entries), so {mapping.reference_hz} Hz cannot be "
                "placed on the scale; expected a mapped reference note (map it, or choose "
                "another reference note)."
            )
        hz = np.full(128, np.nan)
        degrees = np.full(128, -1, np.int64)
        for n in range(128):
            c = self._cents(n)
            if c is not None:
                hz[n] = mapping.reference_hz * 2.0 ** ((c - ref_cents) / 1200.0)
                degrees[n] = self._degree(n)  # type: ignore[assignment]
        hz.setflags(write=False)
        self._hz = hz
        self._degrees = degrees
        self._ref_cents = ref_cents

    def _degree(self, note: int, ignore_range: bool = False) -> int | None:
        """The extended scale degree key ``note`` plays, or None when unmapped."""
        m = self.mapping
        if not ignore_range and not m.first_note <= note <= m.last_note:
            return None
        offset = note - m.middle_note
        if m.size == 0:
            return offset
        q, i = divmod(offset, m.size)
        entry = m.mapping[i]
        if entry is None:
            return None
        octave = m.octave_degree or self.scale.size
        return entry + q * octave

    def _cents(self, note: int, ignore_range: bool = False) -> float | None:
        m = self.mapping
        if not ignore_range and not m.first_note <= note <= m.last_note:
            return None
        offset = note - m.middle_note
        if m.size == 0:
            return self.scale.degree_cents(offset)
        q, i = divmod(offset, m.size)
        entry = m.mapping[i]
        if entry is None:
            return None
        octave_cents = self.scale.degree_cents(m.octave_degree or self.scale.size)
        return self.scale.degree_cents(entry) + q * octave_cents

    def note_to_hz(self, note: int, bend_semitones: float = 0.0) -> float:
        """Frequency of MIDI key ``note`` (0..127), NaN when the key is unmapped.

        ``bend_semitones`` (pitch bend, MPE per-note pitch) is applied on top in equal-tempered
        semitones, as MIDI defines bend: ``hz · 2^(bend/12)``.

        Raises:
            ValueError: ``note`` is not an integer in 0..127.

        Thread: any (an array read).
        """
        if isinstance(note, bool) or not isinstance(note, (int, np.integer)) or not 0 <= note <= 127:
            raise ValueError(f"note must be an integer MIDI key 0..127, got {note!r}")
        hz = float(self._hz[note])
        if bend_semitones:
            hz *= 2.0 ** (bend_semitones / 12.0)
        return hz

    def is_mapped(self, note: int) -> bool:
        """True when key ``note`` (0..127) plays a pitch."""
        return bool(0 <= note <= 127 and not math.isnan(self._hz[note]))

    def degree(self, note: int) -> int | None:
        """The (extended) scale degree key ``note`` plays, None when unmapped."""
        if not 0 <= note <= 127 or math.isnan(self._hz[note]):
            return None
        return int(self._degrees[note])

    def frequencies(self) -> np.ndarray:
        """The 128 key frequencies in Hz (read-only float64; NaN = unmapped)."""
        return self._hz

    def __repr__(self) -> str:
        return (
            f"Tuning({self.scale.description!r}, {self.scale.size} pitches, "
            f"{self.mapping.reference_hz} Hz on key {self.mapping.reference_note})"
        )
