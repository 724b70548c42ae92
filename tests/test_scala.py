"""Scala tunings (engine/scala.py): real .scl/.kbm files written to tmp_path and read back."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.scala import (
    DEFAULT_MAPPING,
    ScalaError,
    Tuning,
    load_tuning,
    parse_kbm,
    parse_scl,
    read_kbm,
    read_scl,
)
from engine.synth import note_to_hz

TET12_SCL = """! 12tet.scl
!
12 tone equal temperament
 12
!
 100.0
 200.
 300.0
 400.0
 500.0
 600.0
 700.0
 800.0
 900.0
 1000.0
 1100.0
 2/1
"""

JUST_RATIOS = ["9/8", "5/4", "4/3", "3/2", "5/3", "15/8", "2/1"]
JUST_SCL = "! ji7.scl\n!\nJust major (Ptolemy's intense diatonic)\n7\n!\n" + "\n".join(
    f"{r}   ! degree {i + 1}" for i, r in enumerate(JUST_RATIOS)
) + "\n"

STANDARD_KBM = """! standard.kbm
! Size of map:
12
! First MIDI note number to retune:
0
! Last MIDI note number to retune:
127
! Middle note where the first entry of the mapping is mapped to:
60
! Reference note for which frequency is given:
69
! Frequency to tune the above note to
440.0
! Scale degree to consider as formal octave:
12
! Mapping.
0
1
2
3
4
5
6
7
8
9
10
11
"""

# a 7-note scale on the white keys, A4 (key 69) at 432 Hz, black keys unmapped
WHITE_KEYS_KBM = """! white.kbm
12
0
127
60
69
432.0
7
0
x
1
x
2
3
x
4
x
5
x
6
"""


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# ---- equal temperaments --------------------------------------------------------------------


def test_12tet_reproduces_standard_tuning_exactly(tmp_path):
    tuning = load_tuning(write(tmp_path, "12tet.scl", TET12_SCL))
    scale = tuning.scale
    assert scale.description == "12 tone equal temperament"
    assert scale.size == 12 and scale.period_cents == 1200.0
    for n in range(128):
        expected = 440.0 * 2.0 ** ((n - 69) / 12)
        assert tuning.note_to_hz(n) == expected, n  # bit for bit
        assert tuning.note_to_hz(n) == note_to_hz(n), n
    assert tuning.note_to_hz(69) == 440.0


def test_12tet_with_an_explicit_standard_kbm_is_exact_too(tmp_path):
    tuning = load_tuning(write(tmp_path, "12tet.scl", TET12_SCL), write(tmp_path, "std.kbm", STANDARD_KBM))
    assert tuning.mapping.size == 12 and tuning.mapping.octave_degree == 12
    got = tuning.frequencies()
    expected = np.array([440.0 * 2.0 ** ((n - 69) / 12) for n in range(128)])  # scalar pow
    assert np.array_equal(got, expected)
    assert not got.flags.writeable


def test_19edo(tmp_path):
    lines = "\n".join(f"{1200 * k / 19:.10f}" for k in range(1, 19)) + "\n2/1\n"
    tuning = load_tuning(write(tmp_path, "19edo.scl", f"19-EDO\n19\n{lines}"))
    hz = tuning.frequencies()
    assert tuning.note_to_hz(69) == 440.0
    step = hz[1:] / hz[:-1]
    np.testing.assert_allclose(step, 2.0 ** (1 / 19), rtol=1e-12)
    np.testing.assert_allclose(hz[69 + 19], 880.0, rtol=1e-12)
    np.testing.assert_allclose(hz[69 - 19], 220.0, rtol=1e-12)
    # default mapping: degree 0 on key 60, so key 69 is degree 9 and key 60 is 9 steps below A
    np.testing.assert_allclose(hz[60], 440.0 * 2.0 ** (-9 / 19), rtol=1e-12)
    assert tuning.degree(60) == 0 and tuning.degree(79) == 19


# ---- just intonation and keyboard mappings --------------------------------------------------


def test_just_intonation_ratios(tmp_path):
    scl = write(tmp_path, "ji.scl", JUST_SCL)
    kbm = write(tmp_path, "c.kbm", "7\n0\n127\n60\n60\n261.6255653\n7\n0\n1\n2\n3\n4\n5\n6\n")
    tuning = load_tuning(scl, kbm)
    assert tuning.scale.description.startswith("Just major")
    base = tuning.note_to_hz(60)
    assert base == 261.6255653  # the reference itself is exact
    ratios = [Fraction(1)] + [Fraction(r) for r in JUST_RATIOS]
    for k, ratio in enumerate(ratios):  # keys 60..67 play degrees 0..7
        assert tuning.note_to_hz(60 + k) / base == pytest.approx(float(ratio), rel=1e-13)
    # the 7-key pattern repeats every 7 keys, an octave each
    for n in range(0, 121):
        assert tuning.note_to_hz(n + 7) / tuning.note_to_hz(n) == pytest.approx(2.0, rel=1e-13)


def test_reference_note_and_frequency_with_unmapped_keys(tmp_path):
    tuning = load_tuning(write(tmp_path, "ji.scl", JUST_SCL), write(tmp_path, "white.kbm", WHITE_KEYS_KBM))
    assert tuning.note_to_hz(69) == 432.0  # the reference key, exactly
    for black in (61, 63, 66, 68, 70, 49, 118):
        assert math.isnan(tuning.note_to_hz(black)), black
        assert not tuning.is_mapped(black) and tuning.degree(black) is None
    c4 = tuning.note_to_hz(60)
    assert 432.0 / c4 == pytest.approx(5 / 3, rel=1e-13)  # A is degree 5 (5/3) above C
    assert tuning.note_to_hz(67) / c4 == pytest.approx(3 / 2, rel=1e-13)
    assert tuning.note_to_hz(72) / c4 == pytest.approx(2.0, rel=1e-13)  # formal octave: degree 7
    assert tuning.note_to_hz(48) / c4 == pytest.approx(0.5, rel=1e-13)
    assert tuning.degree(72) == 7 and tuning.degree(71) == 6
    hz = tuning.frequencies()
    assert np.count_nonzero(np.isnan(hz)) == sum(1 for n in range(128) if (n - 60) % 12 in (1, 3, 6, 8, 10))


def test_linear_mapping_key_range_and_octave_degree_zero(tmp_path):
    scl = write(tmp_path, "12tet.scl", TET12_SCL)
    kbm = write(tmp_path, "range.kbm", "0\n36\n96\n60\n69\n440\n0\n")  # linear, keys 36..96
    tuning = load_tuning(scl, kbm)
    assert math.isnan(tuning.note_to_hz(35)) and math.isnan(tuning.note_to_hz(97))
    assert tuning.note_to_hz(36) == note_to_hz(36) and tuning.note_to_hz(96) == note_to_hz(96)
    # a short mapping with octave degree 0 (= the period): entries left out are unmapped
    kbm2 = write(tmp_path, "short.kbm", "12\n0\n127\n60\n60\n261.0\n0\n0\n! only the first entry\n")
    t2 = load_tuning(scl, kbm2)
    assert t2.note_to_hz(60) == 261.0 and t2.note_to_hz(72) == 522.0 and t2.note_to_hz(48) == 130.5
    assert math.isnan(t2.note_to_hz(61))
    assert t2.mapping.mapping == (0,) + (None,) * 11


def test_mapping_entries_beyond_the_scale_wrap_into_the_next_period():
    scale = parse_scl("3 steps of an octave\n3\n400.0\n800.0\n1200.0\n")
    mapping = parse_kbm("2\n0\n127\n60\n60\n100\n3\n0\n4\n")  # degree 4 = 1200 + 400 cents
    tuning = Tuning(scale, mapping)
    assert tuning.note_to_hz(61) == pytest.approx(100 * 2 ** (1600 / 1200), rel=1e-13)
    assert tuning.note_to_hz(62) == pytest.approx(200.0, rel=1e-13)


def test_bend_semitones_apply_on_top():
    tuning = Tuning(parse_scl(TET12_SCL))
    assert tuning.note_to_hz(69, bend_semitones=12.0) == pytest.approx(880.0, rel=1e-15)
    assert tuning.note_to_hz(69, bend_semitones=-0.5) == pytest.approx(note_to_hz(68.5), rel=1e-15)


def test_note_must_be_a_midi_key():
    tuning = Tuning(parse_scl(TET12_SCL))
    for bad in (-1, 128, 60.5, "60", True):
        with pytest.raises(ValueError, match="0..127"):
            tuning.note_to_hz(bad)
    assert tuning.note_to_hz(np.int64(69)) == 440.0


def test_parsing_details():
    scl = parse_scl(
        "\r\n".join(
            [
                "! comment before the description",
                "",  # an empty description is allowed
                "\t4 pitches follow",
                "! a comment between pitches",
                "  701.955 fifth",
                "-5.0",
                "\t81 / 64",
                "3",  # an integer is 3/1
            ]
        )
    )
    assert scl.description == ""
    assert scl.cents[0] == 701.955 and scl.cents[1] == -5.0
    assert scl.cents[2] == pytest.approx(1200 * math.log2(81 / 64), abs=1e-12)
    assert scl.cents[3] == pytest.approx(1200 * math.log2(3), abs=1e-12)
    assert scl.degree_cents(4) == scl.period_cents and scl.degree_cents(-4) == -scl.period_cents
    assert DEFAULT_MAPPING.reference_hz == 440.0 and DEFAULT_MAPPING.middle_note == 60


def test_latin1_description_and_byte_order_mark(tmp_path):
    latin = tmp_path / "latin.scl"
    latin.write_bytes("Gamme de Zarlino — é\n1\n2/1\n".replace("—", "-").encode("latin-1"))
    assert read_scl(latin).description == "Gamme de Zarlino - é"
    bom = tmp_path / "bom.kbm"
    bom.write_bytes(b"\xef\xbb\xbf0\n0\n127\n60\n69\n440.0\n0\n")
    assert read_kbm(bom).reference_hz == 440.0


# ---- malformed files: a ScalaError naming the line and what was expected ---------------------

BAD_SCL = [
    ("", None, "no description line"),
    ("! only comments\n!\n", None, "no description line"),
    ("desc only\n", 1, "number of pitches"),
    ("desc\ntwelve\n100.0\n", 2, "number of pitches"),
    ("desc\n-3\n100.0\n", 2, "number of pitches"),
    ("desc\n0\n", 2, "0 pitches"),
    ("desc\n3\n100.0\n200.0\n", 4, "1 more pitch"),
    ("desc\n2\n100.0\n2/1\n300.0\n", 5, "after the 2 pitches"),
    ("desc\n2\nabc\n2/1\n", 3, "a pitch"),
    ("desc\n2\n\n2/1\n", 3, "an empty line"),
    ("desc\n2\n3/0\n2/1\n", 3, "divides by zero"),
    ("desc\n2\n0/5\n2/1\n", 3, "is zero"),
    ("desc\n2\n-3/2\n2/1\n", 3, "a pitch"),
    ("desc\n1\n1/1\n", 3, "period"),
    ("desc\n1\n0.0\n", 3, "period"),
]


@pytest.mark.parametrize("text, line, what", BAD_SCL)
def test_malformed_scl(tmp_path, text, line, what):
    path = write(tmp_path, "bad.scl", text)
    with pytest.raises(ScalaError) as info:
        read_scl(path)
    msg = str(info.value)
    assert str(path) in msg and what in msg and "expected" in msg, msg
    if line is not None:
        assert f"line {line}:" in msg, msg


GOOD_HEADER = ["12", "0", "127", "60", "69", "440.0", "12"]


def kbm_text(header: list[str], mapping: list[str] = ()) -> str:
    return "\n".join(["! test"] + header + list(mapping)) + "\n"


BAD_KBM = [
    (kbm_text(GOOD_HEADER[:3]), 4, "ends before the middle note"),
    (kbm_text(["-1"] + GOOD_HEADER[1:]), 2, "map size"),
    (kbm_text(["12", "0", "128"] + GOOD_HEADER[3:]), 4, "last MIDI note"),
    (kbm_text(["12", "64", "60"] + GOOD_HEADER[3:]), 4, "below the first"),
    (kbm_text(GOOD_HEADER[:4] + ["A4"] + GOOD_HEADER[5:]), 6, "reference note"),
    (kbm_text(GOOD_HEADER[:5] + ["abc"] + GOOD_HEADER[6:]), 7, "reference frequency"),
    (kbm_text(GOOD_HEADER[:5] + ["0"] + GOOD_HEADER[6:]), 7, "positive frequency"),
    (kbm_text(GOOD_HEADER[:5] + ["inf"] + GOOD_HEADER[6:]), 7, "positive frequency"),
    (kbm_text(GOOD_HEADER[:6] + ["-2"]), 8, "formal octave degree"),
    (kbm_text(GOOD_HEADER, ["0", "y"]), 10, "'x' for an unmapped key"),
    (kbm_text(GOOD_HEADER, ["0", "-1"]), 10, "mapping entry"),
    (kbm_text(["2"] + GOOD_HEADER[1:], ["0", "1", "2"]), 11, "after the 2 mapping entries"),
]


@pytest.mark.parametrize("text, line, what", BAD_KBM)
def test_malformed_kbm(tmp_path, text, line, what):
    path = write(tmp_path, "bad.kbm", text)
    with pytest.raises(ScalaError) as info:
        read_kbm(path)
    msg = str(info.value)
    assert str(path) in msg and what in msg and "expected" in msg, msg
    assert f"line {line}:" in msg, msg


def test_unmapped_reference_note_is_refused(tmp_path):
    scl = write(tmp_path, "ji.scl", JUST_SCL)
    kbm = write(tmp_path, "ref.kbm", WHITE_KEYS_KBM.replace("\n69\n432.0", "\n70\n432.0"))  # A#: 'x'
    with pytest.raises(ScalaError, match="reference note 70 is unmapped.*expected a mapped reference"):
        load_tuning(scl, kbm)


def test_unreadable_files(tmp_path):
    with pytest.raises(ScalaError, match="does not exist"):
        read_scl(tmp_path / "missing.scl")
    with pytest.raises(ScalaError, match="is a directory"):
        read_kbm(tmp_path)
    binary = tmp_path / "song.scl"
    binary.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
    with pytest.raises(ScalaError, match="binary"):
        read_scl(binary)
