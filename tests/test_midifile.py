"""Tests for engine.midifile: real .mid files written to tmp_path with mido or raw bytes."""

from __future__ import annotations

import dataclasses
import struct
import warnings
from fractions import Fraction
from pathlib import Path

import mido
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.midifile import MidiEvent, MidiFileError, MidiFileWarning, MidiScore, read_midi_file

SR = 48_000
REPO = Path(__file__).resolve().parent.parent
MINUET = REPO / "examples" / "minuet_in_g.mid"


# ---------------------------------------------------------------- helpers


def track(*msgs: mido.Message | mido.MetaMessage) -> mido.MidiTrack:
    return mido.MidiTrack(msgs)


def save(path: Path, *tracks: mido.MidiTrack, type: int = 1, tpb: int = 480) -> Path:
    mido.MidiFile(type=type, ticks_per_beat=tpb, tracks=list(tracks)).save(path)
    return path


def on(note: int, vel: int = 100, ch: int = 0, t: int = 0) -> mido.Message:
    return mido.Message("note_on", channel=ch, note=note, velocity=vel, time=t)


def off(note: int, vel: int = 64, ch: int = 0, t: int = 0) -> mido.Message:
    return mido.Message("note_off", channel=ch, note=note, velocity=vel, time=t)


def cc(control: int, value: int, ch: int = 0, t: int = 0) -> mido.Message:
    return mido.Message("control_change", channel=ch, control=control, value=value, time=t)


def tempo(us: int, t: int = 0) -> mido.MetaMessage:
    return mido.MetaMessage("set_tempo", tempo=us, time=t)


def smf_bytes(*track_bodies: bytes, fmt: int = 0, tpb: int = 96) -> bytes:
    """A Standard MIDI File assembled by hand from raw MTrk bodies."""
    out = b"MThd" + struct.pack(">LHHH", 6, fmt, len(track_bodies), tpb)
    for body in track_bodies:
        out += b"MTrk" + struct.pack(">L", len(body)) + body
    return out


EOT = b"\x00\xff\x2f\x00"


def summary(score: MidiScore) -> list[tuple]:
    return [(e.sample, e.kind, e.channel, e.note, e.velocity) for e in score.events]


def minimal_file(tmp_path: Path) -> Path:
    return save(tmp_path / "ok.mid", track(on(60), off(60, t=480)))


# ---------------------------------------------------------------- timing


def test_tempo_change_in_the_middle_gives_exact_samples(tmp_path: Path) -> None:
    # Tempo track: 120 bpm (500000 us/beat) then 240 bpm (250000) from tick 960.
    tempo_track = track(tempo(500_000), tempo(250_000, t=960))
    notes = track(on(60), off(60, t=480), on(62, t=480), off(62, t=240), on(64, t=240), off(64, t=960))
    score = read_midi_file(save(tmp_path / "tempo.mid", tempo_track, notes), SR)
    # Hand computation, tpb=480:
    #   tick 480  -> 480/480 * 0.5 s             = 0.5 s    -> 24000
    #   tick 960  -> 1.0 s                                  -> 48000
    #   tick 1200 -> 1.0 + 240/480 * 0.25 s      = 1.125 s  -> 54000
    #   tick 1440 -> 1.0 + 480/480 * 0.25 s      = 1.25 s   -> 60000
    #   tick 2400 -> 1.0 + 1440/480 * 0.25 s     = 1.75 s   -> 84000
    assert summary(score) == [
        (0, "note_on", 0, 60, 100),
        (24_000, "note_off", 0, 60, 64),
        (48_000, "note_on", 0, 62, 100),
        (54_000, "note_off", 0, 62, 64),
        (60_000, "note_on", 0, 64, 100),
        (84_000, "note_off", 0, 64, 64),
    ]
    assert score.duration_s == pytest.approx(1.75, abs=1e-12)
    assert score.n_tracks == 2 and score.n_notes == 3 and score.sample_rate_hz == SR


def test_non_integer_sample_positions_round_half_to_even(tmp_path: Path) -> None:
    # tpb 96 at 100 bpm (600000 us/beat): one tick = 6250 us = 275.625 samples at 44.1 kHz.
    t = track(tempo(600_000), on(60, t=1), off(60, t=1), on(61, t=2), off(61, t=100))
    score = read_midi_file(save(tmp_path / "r.mid", t, tpb=96), 44_100)
    # tick 1 -> 275.625 -> 276;  tick 2 -> 551.25 -> 551;  tick 4 -> 1102.5 -> 1102 (tie, even);
    # tick 104 -> 28665.0
    assert [e.sample for e in score.events] == [276, 551, 1102, 28_665]
    assert round(Fraction(4 * 6250, 1_000_000) * 44_100) == 1102  # the rule we claim


def test_tempo_set_in_the_note_track_of_a_type0_file(tmp_path: Path) -> None:
    t = track(on(60), tempo(1_000_000, t=240), off(60, t=240), on(67, vel=90, ch=9, t=480))
    score = read_midi_file(save(tmp_path / "t0.mid", t, type=0), 1000)
    # 240 ticks at 0.5 s/beat = 0.25 s; then 240 + 480 ticks at 1 s/beat = 0.5 s + 1 s.
    assert summary(score) == [(0, "note_on", 0, 60, 100), (750, "note_off", 0, 60, 64), (1750, "note_on", 9, 67, 90)]
    assert score.n_tracks == 1


def test_samples_match_an_independent_exact_computation_and_mido_iteration(tmp_path: Path) -> None:
    tempos = [(0, 612_345), (333, 471_111), (1000, 1_234_567), (1777, 300_001)]
    tempo_track = track(*[tempo(us, t=tick - prev) for (tick, us), prev in zip(tempos, [0] + [t for t, _ in tempos])])
    ticks = list(range(0, 2600, 37))
    msgs = [on(60 + i % 12, t=tk - prev) for i, (tk, prev) in enumerate(zip(ticks, [0] + ticks))]
    path = save(tmp_path / "x.mid", tempo_track, track(*msgs), tpb=384)
    score = read_midi_file(path, 44_100)

    def exact(tick: int) -> int:
        seconds, last_tick, us = Fraction(0), 0, 500_000
        for t, new_us in tempos:
            if t >= tick:
                break
            seconds += Fraction((t - last_tick) * us, 384 * 1_000_000)
            last_tick, us = t, new_us
        seconds += Fraction((tick - last_tick) * us, 384 * 1_000_000)
        return round(seconds * 44_100)

    assert [e.sample for e in score.events] == [exact(t) for t in ticks]
    now, mido_samples = 0.0, []
    for msg in mido.MidiFile(path):  # mido's own float-seconds iteration
        now += msg.time
        if msg.type == "note_on":
            mido_samples.append(now * 44_100)
    assert all(abs(a - b) <= 0.5 + 1e-6 for a, b in zip((e.sample for e in score.events), mido_samples, strict=True))


# ---------------------------------------------------------------- merging and order


def test_two_tracks_on_two_channels_are_merged_in_time_order(tmp_path: Path) -> None:
    right = track(on(72, 80, ch=0), off(72, ch=0, t=480), on(74, 81, ch=0, t=0), off(74, ch=0, t=480))
    left = track(on(48, 60, ch=1, t=240), off(48, ch=1, t=480), on(50, 61, ch=1, t=240), off(50, ch=1, t=240))
    score = read_midi_file(save(tmp_path / "two.mid", track(tempo(500_000)), right, left), SR)
    # 480 ticks = 0.5 s = 24000 samples.
    assert summary(score) == [
        (0, "note_on", 0, 72, 80),
        (12_000, "note_on", 1, 48, 60),
        (24_000, "note_off", 0, 72, 64),
        (24_000, "note_on", 0, 74, 81),
        (36_000, "note_off", 1, 48, 64),
        (48_000, "note_off", 0, 74, 64),  # track 1 before track 2 at the same tick
        (48_000, "note_on", 1, 50, 61),
        (60_000, "note_off", 1, 50, 64),
    ]
    assert score.n_tracks == 3 and score.n_notes == 4
    assert {e.channel for e in score.events} == {0, 1}


def test_events_at_the_same_sample_keep_file_order_both_ways(tmp_path: Path) -> None:
    # Within one track: a note_on written before a note_off at the same tick stays first.
    t = track(on(60), on(62, t=480), off(60), off(62, t=480), on(64), off(64, t=1))
    score = read_midi_file(save(tmp_path / "order.mid", t), SR)
    kinds = [(e.kind, e.note) for e in score.events]
    assert kinds == [
        ("note_on", 60), ("note_on", 62), ("note_off", 60), ("note_off", 62), ("note_on", 64), ("note_off", 64)
    ]
    assert [e.sample for e in score.events] == sorted(e.sample for e in score.events)


# ---------------------------------------------------------------- message mapping


def test_note_on_with_velocity_zero_is_a_note_off(tmp_path: Path) -> None:
    t = track(on(60, 90), on(60, 0, t=480), on(62, 70), off(62, vel=33, t=480))
    score = read_midi_file(save(tmp_path / "v0.mid", t), SR)
    assert summary(score) == [
        (0, "note_on", 0, 60, 90),
        (24_000, "note_off", 0, 60, 64),  # velocity-0 note_on: default release velocity 64
        (24_000, "note_on", 0, 62, 70),
        (48_000, "note_off", 0, 62, 33),  # a real note_off keeps its release velocity
    ]
    assert score.n_notes == 2


def test_sustain_mod_wheel_pitch_bend_and_channel_mode_values(tmp_path: Path) -> None:
    t = track(
        on(60, ch=3),
        cc(64, 127, ch=3), cc(64, 64, ch=3), cc(64, 63, ch=3), cc(64, 0, ch=3),
        cc(1, 0, ch=3), cc(1, 64, ch=3), cc(1, 127, ch=3),
        mido.Message("pitchwheel", channel=3, pitch=-8192),  # raw 0
        mido.Message("pitchwheel", channel=3, pitch=0),  # raw 8192
        mido.Message("pitchwheel", channel=3, pitch=8191),  # raw 16383
        mido.Message("pitchwheel", channel=3, pitch=-4096),
        cc(120, 0, ch=3), cc(123, 0, ch=3, t=10),
    )
    score = read_midi_file(save(tmp_path / "cc.mid", t), SR)
    got = [(e.kind, e.value) for e in score.events if e.kind != "note_on"]
    assert got == [
        ("sustain", 1.0), ("sustain", 1.0), ("sustain", 0.0), ("sustain", 0.0),
        ("mod_wheel", 0.0), ("mod_wheel", 64 / 127), ("mod_wheel", 1.0),
        ("pitch_bend", -1.0), ("pitch_bend", 0.0), ("pitch_bend", 8191 / 8192), ("pitch_bend", -0.5),
        ("all_sound_off", 0.0), ("all_notes_off", 0.0),
    ]
    assert all(e.channel == 3 for e in score.events)
    assert score.events[-1].sample == 500  # 10 ticks at 120 bpm, tpb 480 = 1/96 s


def test_ignored_messages_do_not_appear(tmp_path: Path) -> None:
    t = track(
        mido.MetaMessage("track_name", name="piano"),
        mido.MetaMessage("text", text="hello"),
        mido.MetaMessage("key_signature", key="Eb"),
        mido.MetaMessage("time_signature", numerator=3, denominator=4),
        mido.MetaMessage("marker", text="A"),
        mido.Message("program_change", program=5),
        cc(7, 100), cc(10, 30), cc(121, 0), cc(91, 40),
        mido.Message("sysex", data=[0x7E, 0x7F, 0x09, 0x01]),
        on(60, 77),
        mido.Message("aftertouch", value=50, time=10),
        mido.Message("polytouch", note=60, value=40),
        mido.Message("pitchwheel", pitch=100),
        off(60, t=10),
    )
    score = read_midi_file(save(tmp_path / "ign.mid", t, type=0), SR)
    assert [(e.kind, e.note) for e in score.events] == [("note_on", 60), ("pitch_bend", 0), ("note_off", 60)]
    assert score.events[1].value == pytest.approx(100 / 8192)


def test_running_status_in_raw_bytes(tmp_path: Path) -> None:
    body = (
        b"\x00\x90\x3c\x64"  # t=0   note_on ch0 60 vel 100
        b"\x60\x3e\x50"  # t=96  running status: note_on 62 vel 80
        b"\x00\x3c\x00"  # t=96  running status: note_on 60 vel 0 -> note_off
        b"\x00\xff\x01\x03abc"  # text meta (mido keeps running status across it)
        b"\x60\x3e\x00"  # t=192 running status: note_on 62 vel 0
        b"\x00\xb1\x40\x7f"  # CC64 127 on channel 1
        b"\x30\x40\x00"  # t=240 running status: CC64 0 on channel 1
        b"\x00\xe1\x00\x00"  # pitch bend ch1 raw 0 -> -1
        b"\x00\x7f\x7f"  # running status: raw 16383
        + EOT
    )
    path = tmp_path / "rs.mid"
    path.write_bytes(smf_bytes(body, tpb=96))
    score = read_midi_file(path, 960)  # 120 bpm, tpb 96: one tick = 5 samples
    assert [(e.sample, e.kind, e.channel, e.note, e.velocity, e.value) for e in score.events] == [
        (0, "note_on", 0, 60, 100, 0.0),
        (480, "note_on", 0, 62, 80, 0.0),
        (480, "note_off", 0, 60, 64, 0.0),
        (960, "note_off", 0, 62, 64, 0.0),
        (960, "sustain", 1, 0, 0, 1.0),
        (1200, "sustain", 1, 0, 0, 0.0),
        (1200, "pitch_bend", 1, 0, 0, -1.0),
        (1200, "pitch_bend", 1, 0, 0, 8191 / 8192),
    ]
    assert score.duration_s == pytest.approx(1.25)  # 240 ticks at 120 bpm, tpb 96


def test_data_byte_above_127_is_clamped_with_a_warning(tmp_path: Path) -> None:
    # CC7 volume 0xFF (seen in real files) and a note_on velocity of 0x85.
    body = b"\x00\xb0\x07\xff" b"\x00\x90\x3c\x85" b"\x60\x80\x3c\x40" + EOT
    path = tmp_path / "hi.mid"
    path.write_bytes(smf_bytes(body))
    with pytest.warns(MidiFileWarning, match=r"data bytes above 127 .* clamped to 127"):
        score = read_midi_file(path, 960)
    assert summary(score) == [(0, "note_on", 0, 60, 127), (480, "note_off", 0, 60, 64)]


def test_clean_file_gives_no_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score = read_midi_file(minimal_file(tmp_path), SR)
    assert score.n_notes == 1


def test_event_and_score_are_frozen(tmp_path: Path) -> None:
    score = read_midi_file(minimal_file(tmp_path), SR)
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.events[0].sample = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.n_notes = 5  # type: ignore[misc]
    assert score.events[0] == MidiEvent(0, "note_on", 0, 60, 100)
    assert isinstance(score.events, tuple) and score.path == tmp_path / "ok.mid"


def test_accepts_str_path(tmp_path: Path) -> None:
    assert read_midi_file(str(minimal_file(tmp_path)), SR).n_notes == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("rate", [0, -44_100, 44_100.0, True, "48000", None])
def test_sample_rate_must_be_a_positive_int(tmp_path: Path, rate: object) -> None:
    path = minimal_file(tmp_path)
    with pytest.raises(ValueError, match=r"sample_rate_hz must be a positive int") as info:
        read_midi_file(path, rate)  # type: ignore[arg-type]
    assert not isinstance(info.value, MidiFileError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mid"
    with pytest.raises(MidiFileError, match=r"nope\.mid'?: does not exist"):
        read_midi_file(path, SR)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(MidiFileError, match=r"is a directory, not a file"):
        read_midi_file(tmp_path, SR)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mid"
    path.write_bytes(b"")
    with pytest.raises(MidiFileError, match=r"empty\.mid': is empty \(0 bytes\)"):
        read_midi_file(path, SR)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = minimal_file(tmp_path)

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)  # chmod 0 does not stop root
    expected = r"ok\.mid': cannot be read \(permission denied\)\. Check the file's permissions"
    with pytest.raises(MidiFileError, match=expected):
        read_midi_file(path, SR)


def test_path_with_a_nul_byte(tmp_path: Path) -> None:
    with pytest.raises(MidiFileError, match=r"cannot be read \(embedded null byte\)"):
        read_midi_file(str(tmp_path / "a\0b.mid"), SR)


def test_wav_file(tmp_path: Path) -> None:
    path = tmp_path / "sound.mid"
    path.write_bytes(b"RIFF" + struct.pack("<L", 36) + b"WAVEfmt " + bytes(28))
    with pytest.raises(MidiFileError, match=r"sound\.mid': is not a Standard MIDI File .*WAV audio file"):
        read_midi_file(path, SR)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.mid"
    path.write_text("C D E F G A B\n")
    with pytest.raises(MidiFileError, match=r"no 'MThd' header; it looks like a text file"):
        read_midi_file(path, SR)


def test_rmid_file(tmp_path: Path) -> None:
    path = tmp_path / "x.rmi"
    path.write_bytes(b"RIFF" + struct.pack("<L", 4) + b"RMIDdata")
    with pytest.raises(MidiFileError, match=r"RIFF-wrapped MIDI file \(RMID\)"):
        read_midi_file(path, SR)


def test_file_cut_in_the_middle_of_a_track(tmp_path: Path) -> None:
    full = minimal_file(tmp_path).read_bytes()
    path = tmp_path / "cut.mid"
    path.write_bytes(full[: len(full) - 5])
    expected = r"cut\.mid': is truncated: the data ends at byte \d+, before the end of the tracks"
    with pytest.raises(MidiFileError, match=expected) as info:
        read_midi_file(path, SR)
    assert isinstance(info.value.__cause__, EOFError)


def test_file_cut_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "cut.mid"
    for data in (b"MT", b"MThd", b"MThd\x00\x00\x00\x06\x00"):
        path.write_bytes(data)
        with pytest.raises(MidiFileError, match=r"is truncated"):
            read_midi_file(path, SR)


def test_file_with_a_missing_second_track(tmp_path: Path) -> None:
    data = smf_bytes(b"\x00\x90\x3c\x40\x10\x80\x3c\x40" + EOT, fmt=1)
    data = data[:10] + b"\x00\x02" + data[12:]  # header claims 2 tracks
    path = tmp_path / "missing.mid"
    path.write_bytes(data)
    with pytest.raises(MidiFileError, match=r"is truncated: .*tracks that its header announces"):
        read_midi_file(path, SR)


def test_corrupt_track_data(tmp_path: Path) -> None:
    path = tmp_path / "bad.mid"
    path.write_bytes(smf_bytes(b"\x00\x90\x3c\x40\x00\xf4" + EOT))  # 0xF4 is an undefined status
    expected = r"bad\.mid': is corrupt near byte \d+ of \d+ \(mido: OSError: undefined status byte 0xf4\)"
    with pytest.raises(MidiFileError, match=expected):
        read_midi_file(path, SR)


def test_running_status_with_no_status_yet(tmp_path: Path) -> None:
    path = tmp_path / "rs.mid"
    path.write_bytes(smf_bytes(b"\x00\x3c\x40" + EOT))
    with pytest.raises(MidiFileError, match=r"running status without last_status"):
        read_midi_file(path, SR)


def test_undecodable_meta_event(tmp_path: Path) -> None:
    # A key signature with 32 sharps: mido cannot decode it and cannot skip it.
    path = tmp_path / "key.mid"
    path.write_bytes(smf_bytes(b"\x00\xff\x59\x02\x20\x05" b"\x00\x90\x3c\x40" + EOT))
    with pytest.raises(MidiFileError, match=r"is corrupt .*KeySignatureError: Could not decode key"):
        read_midi_file(path, SR)


def test_no_mtrk_chunk(tmp_path: Path) -> None:
    data = smf_bytes(b"\x00\x90\x3c\x40" + EOT)
    path = tmp_path / "chunk.mid"
    path.write_bytes(data[:14] + b"XFIH" + data[18:])
    with pytest.raises(MidiFileError, match=r"no MTrk header at start of track"):
        read_midi_file(path, SR)


def test_file_without_notes(tmp_path: Path) -> None:
    t = track(tempo(400_000), cc(64, 127), on(60, 0, t=10), off(61, t=10), mido.Message("program_change", program=3))
    path = save(tmp_path / "silent.mid", t)
    with pytest.raises(MidiFileError, match=r"silent\.mid': contains no notes \(1 track\(s\)"):
        read_midi_file(path, SR)


def test_file_with_no_tracks(tmp_path: Path) -> None:
    path = tmp_path / "zero.mid"
    path.write_bytes(smf_bytes(fmt=1))
    with pytest.raises(MidiFileError, match=r"contains no notes \(0 track\(s\)"):
        read_midi_file(path, SR)


def test_type_2_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "t2.mid", track(on(60), off(60, t=480)), track(on(62), off(62, t=480)), type=2)
    with pytest.raises(MidiFileError, match=r"t2\.mid': is a type-2 MIDI file .*Convert it to type 1 or type 0"):
        read_midi_file(path, SR)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f7.mid"
    path.write_bytes(smf_bytes(b"\x00\x90\x3c\x40" + EOT, fmt=7))
    with pytest.raises(MidiFileError, match=r"unknown format 7"):
        read_midi_file(path, SR)


def test_smpte_division_is_refused(tmp_path: Path) -> None:
    data = smf_bytes(b"\x00\x90\x3c\x40" + EOT)
    path = tmp_path / "smpte.mid"
    path.write_bytes(data[:12] + b"\xe7\x28" + data[14:])  # -25 fps, 40 ticks per frame
    with pytest.raises(MidiFileError, match=r"SMPTE time division"):
        read_midi_file(path, SR)


def test_zero_division_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tpb0.mid"
    path.write_bytes(smf_bytes(b"\x00\x90\x3c\x40" + EOT, tpb=0))
    with pytest.raises(MidiFileError, match=r"time division of 0 ticks per beat"):
        read_midi_file(path, SR)


def test_midi_file_error_is_a_value_error_and_chains_the_cause(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        read_midi_file(tmp_path / "missing.mid", SR)
    assert isinstance(info.value, MidiFileError)
    assert isinstance(info.value.__cause__, FileNotFoundError)


# ---------------------------------------------------------------- properties

_HEADER = b"MThd" + struct.pack(">LHHH", 6, 0, 1, 96)  # type 0, 1 track, tpb 96


def _read_or_midi_error(tmp_path: Path, data: bytes) -> MidiScore | None:
    path = tmp_path / "fuzz.mid"
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MidiFileWarning)
            score = read_midi_file(path, 44_100)
    except MidiFileError as exc:
        assert "fuzz.mid" in str(exc)
        return None
    assert score.n_notes > 0
    assert all(a.sample <= b.sample for a, b in zip(score.events, score.events[1:]))
    return score


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_midi_file_error(tmp_path: Path, data: bytes) -> None:
    _read_or_midi_error(tmp_path, data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), declared=st.one_of(st.none(), st.integers(0, 400)))
def test_random_track_bodies_raise_only_midi_file_error(tmp_path: Path, body: bytes, declared: int | None) -> None:
    # A valid header and MTrk tag, so the garbage reaches mido's event parser.
    size = len(body) if declared is None else declared
    _read_or_midi_error(tmp_path, _HEADER + b"MTrk" + struct.pack(">L", size) + body)


_events = st.lists(
    st.tuples(
        st.integers(0, 2000),  # delta ticks
        st.sampled_from(["on", "off", "tempo", "cc64", "bend"]),
        st.integers(0, 15),
        st.integers(0, 127),
        st.integers(20_000, 2_000_000),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_events, tpb=st.integers(1, 32767), rate=st.sampled_from([8000, 44_100, 48_000, 96_000]))
def test_written_events_read_back_at_exact_samples(
    tmp_path: Path, events: list[tuple[int, str, int, int, int]], tpb: int, rate: int
) -> None:
    msgs: list[mido.Message | mido.MetaMessage] = [on(1, 1)]
    expected: list[tuple[int, str, int, int]] = [(0, "note_on", 0, 1)]
    seconds, us = Fraction(0), 500_000
    for delta, what, ch, val, new_us in events:
        seconds += Fraction(delta * us, tpb * 1_000_000)
        sample = round(seconds * rate)
        if what == "on":
            msgs.append(on(val, max(val, 1), ch=ch, t=delta))
            expected.append((sample, "note_on", ch, val))
        elif what == "off":
            msgs.append(off(val, ch=ch, t=delta))
            expected.append((sample, "note_off", ch, val))
        elif what == "cc64":
            msgs.append(cc(64, val, ch=ch, t=delta))
            expected.append((sample, "sustain", ch, 0))
        elif what == "bend":
            msgs.append(mido.Message("pitchwheel", channel=ch, pitch=val * 128 - 8192, time=delta))
            expected.append((sample, "pitch_bend", ch, 0))
        else:
            msgs.append(tempo(new_us, t=delta))
            us = new_us
    path = save(tmp_path / "rt.mid", track(*msgs), type=0, tpb=tpb)
    score = read_midi_file(path, rate)
    assert [(e.sample, e.kind, e.channel, e.note) for e in score.events] == expected
    assert score.duration_s == pytest.approx(float(seconds), rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------- the example file


def test_minuet_example_loads() -> None:
    score = read_midi_file(MINUET, SR)
    assert score.n_tracks == 3
    assert score.n_notes == 93  # 64 melody + 29 bass
    notes = [e for e in score.events if e.kind == "note_on"]
    assert {e.channel for e in notes} == {0, 1}
    assert sum(e.channel == 0 for e in notes) == 64
    assert min(e.note for e in notes) >= 43 and max(e.note for e in notes) <= 83
    assert 60 <= min(e.velocity for e in notes) and max(e.velocity for e in notes) <= 100
    assert len({e.velocity for e in notes}) >= 5
    # Every note is released.
    assert sum(e.kind == "note_off" for e in score.events) == 93
    # Sustain pedal down and up once per bar on the bass channel.
    pedal = [e.value for e in score.events if e.kind == "sustain"]
    assert pedal == [1.0, 0.0] * 16 and all(e.channel == 1 for e in score.events if e.kind == "sustain")
    # One bend up and back on the melody channel, ending centred.
    bends = [e for e in score.events if e.kind == "pitch_bend"]
    assert bends and all(e.channel == 0 for e in bends)
    assert max(e.value for e in bends) > 0.2 and bends[-1].value == 0.0
    # 14 bars at 100 bpm (25.2 s) plus a ritardando: the last beats are longer.
    assert 28.0 < score.duration_s < 31.0
    onsets = [e.sample for e in notes if e.channel == 0]
    eighth_at_100_bpm = (onsets[1] - onsets[0]) // 2  # bar 1: D5 quarter, then eighths
    assert eighth_at_100_bpm == round(0.3 * SR)
    # The F#4 eighth before the last note falls on beat 3 of bar 15, at 87 bpm.
    assert onsets[-1] - onsets[-2] == round(0.5 * 60 / 87 * SR)
    # The last bar (82, 76, 70 bpm) is much longer than a bar at 100 bpm (1.8 s).
    assert score.duration_s - onsets[-1] / SR == pytest.approx(60 / 82 + 60 / 76 + 60 / 70, rel=1e-5)
    assert score.events[-1].sample <= round(score.duration_s * SR)
