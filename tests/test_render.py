"""`neirosynth render`: real MIDI files in, real WAV files out, through the real engine."""

from __future__ import annotations

import os

import mido
import numpy as np
import pytest
import soundfile

from conftest import smooth_map
from engine.cli import main
from engine.presets import Preset, save_preset


def small_preset(tmp_path, rng, n: int = 32) -> str:
    preset = Preset(
        name="tiny",
        stiffness=smooth_map(rng, n, 0.7, 1.5).astype(np.float32),
        damping_per_s=smooth_map(rng, n, 2.0, 6.0).astype(np.float32),
        size_m=0.2,
        loss_m2_per_s=5e-5,
    )
    return str(save_preset(preset, tmp_path / "tiny.npz"))


def write_song(path, *, tempo_change: bool = True) -> None:
    """Two tracks, a tempo change, sustain, a pitch bend, a program change to ignore."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    if tempo_change:
        meta.append(mido.MetaMessage("set_tempo", tempo=250_000, time=480))
    mid.tracks.append(meta)
    a = mido.MidiTrack()
    a.append(mido.Message("program_change", program=12, time=0))
    a.append(mido.Message("note_on", note=60, velocity=100, time=0))
    a.append(mido.Message("note_off", note=60, velocity=0, time=240))
    a.append(mido.Message("note_on", note=67, velocity=80, time=0))
    a.append(mido.Message("pitchwheel", pitch=4096, time=120))
    a.append(mido.Message("note_on", note=67, velocity=0, time=120))
    mid.tracks.append(a)
    b = mido.MidiTrack()
    b.append(mido.Message("control_change", channel=1, control=64, value=127, time=0))
    b.append(mido.Message("note_on", channel=1, note=48, velocity=90, time=0))
    b.append(mido.Message("note_off", channel=1, note=48, time=240))
    b.append(mido.Message("control_change", channel=1, control=64, value=0, time=240))
    mid.tracks.append(b)
    mid.save(path)


@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_render_writes_a_wav_with_sound(tmp_path, seed, backend, capsys):
    rng = np.random.default_rng(seed)
    preset = small_preset(tmp_path, rng)
    song = tmp_path / "song.mid"
    write_song(song)
    out = tmp_path / "out.wav"
    rc = main(["render", str(song), "--preset", preset, "-o", str(out), "--backend", backend,
               "--format", "float", "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "× real time" in printed and "3 notes" in printed
    audio, rate = soundfile.read(out)
    assert rate == 48_000 and audio.ndim == 2 and audio.shape[1] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask, "the WAV is not an ordinary readable file"
    assert np.all(np.isfinite(audio))
    peak = np.max(np.abs(audio))
    assert 1e-3 < peak < 1.0, f"seed={seed}: peak {peak}"
    # the first note starts at sample 0, the 48 sounds from 0 too; the score's last events
    # (note off, pedal up) are at 0.5 s (the tempo change comes at its very end), and the
    # file goes on while the released notes ring
    assert np.max(np.abs(audio[:4800])) > 1e-3
    end = int(0.5 * 48_000)
    assert len(audio) > end + 128, f"seed={seed}: the render stopped at the score's end"
    assert np.max(np.abs(audio[end : end + 2400])) > 1e-4, f"seed={seed}: no release tail"


@pytest.mark.parametrize("fmt, subtype", [("16", "PCM_16"), ("24", "PCM_24"), ("float", "FLOAT")])
def test_render_formats(tmp_path, seed, fmt, subtype):
    rng = np.random.default_rng(seed)
    preset = small_preset(tmp_path, rng)
    song = tmp_path / "song.mid"
    write_song(song, tempo_change=False)
    out = tmp_path / f"out-{fmt}.wav"
    assert main(["render", str(song), "--preset", preset, "-o", str(out), "--backend", "cpu",
                 "--format", fmt, "-q"]) == 0
    assert soundfile.info(out).subtype == subtype


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "WAV"),
        (b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x01\x00\x00\x90", "truncated"),
        (b"hello, this is not a midi file at all\n" * 4, "not a Standard MIDI File"),
    ],
)
def test_bad_midi_gives_a_clear_error_and_no_wav(tmp_path, capsys, content, message):
    song = tmp_path / "bad.mid"
    song.write_bytes(content)
    out = tmp_path / "out.wav"
    rc = main(["render", str(song), "-o", str(out), "--backend", "cpu", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("neirosynth: error: MIDI file") and message in err, err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [song], "a partial or temporary file was left behind"


def test_unknown_preset_lists_the_shipped_ones(tmp_path, capsys):
    song = tmp_path / "song.mid"
    write_song(song)
    rc = main(["render", str(song), "--preset", "no-such-preset", "-o", str(tmp_path / "o.wav")])
    assert rc == 2
    assert "no preset named 'no-such-preset'; shipped presets: plate" in capsys.readouterr().err


def test_render_with_a_scala_tuning_and_a_bad_one(tmp_path, seed, capsys):
    rng = np.random.default_rng(seed)
    preset = small_preset(tmp_path, rng)
    song = tmp_path / "song.mid"
    write_song(song, tempo_change=False)
    scl = tmp_path / "pythagorean.scl"
    scl.write_text("! pythagorean.scl\nPythagorean\n12\n256/243\n9/8\n32/27\n81/64\n4/3\n"
                   "729/512\n3/2\n128/81\n27/16\n16/9\n243/128\n2/1\n")
    out = tmp_path / "out.wav"
    assert main(["render", str(song), "--preset", preset, "-o", str(out), "--backend", "cpu",
                 "--tuning", str(scl), "-q"]) == 0
    assert soundfile.info(out).frames > 0
    bad = tmp_path / "bad.scl"
    bad.write_text("! bad\nBroken\n3\n100.0\nnot-a-pitch\n")
    rc = main(["render", str(song), "--preset", preset, "-o", str(tmp_path / "b.wav"),
               "--backend", "cpu", "--tuning", str(bad), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("neirosynth: error:") and "bad.scl" in err, err
    assert not (tmp_path / "b.wav").exists()
