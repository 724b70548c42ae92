"""The voice layer (engine/synth.py) driven headless: note on, render blocks, look at samples."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import smooth_map
from engine.cpu import CpuFdtd
from engine.presets import Preset
from engine.synth import Synth, note_to_hz
from test_tuning import cents, fundamental_hz

RATE = 48_000


def preset(rng: np.random.Generator, n: int = 32, damping: float = 3.0) -> Preset:
    return Preset(
        name="t",
        stiffness=smooth_map(rng, n, 0.8, 1.5).astype(np.float32),
        damping_per_s=np.full((n, n), damping, np.float32),
        size_m=0.2,
        loss_m2_per_s=3e-5,
    )


def synth(rng, voices: int = 4, n: int = 32, **kw) -> Synth:
    backend = CpuFdtd(n, voices, 128, dtype=np.float64)
    return Synth(backend, preset(rng, n), sample_rate_hz=RATE, **kw)


def render(s: Synth, blocks: int) -> np.ndarray:
    return np.concatenate([s.render_block() for _ in range(blocks)])


def test_note_starts_at_its_exact_sample(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng)
    offset = int(rng.integers(1, 127))
    s.note_on(60, 100, offset=offset)
    out = render(s, 2)
    assert np.all(out[:offset] == 0.0), f"seed={seed}: sound before sample {offset}"
    assert np.any(out[offset : offset + 64] != 0.0), f"seed={seed}: no sound after {offset}"


def test_same_event_at_another_offset_shifts_the_output_exactly(seed):
    rng = np.random.default_rng(seed)
    p = preset(rng)
    outs = []
    for offset in (10, 10 + 37):
        s = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), p, sample_rate_hz=RATE)
        s.note_on(64, 90, offset=offset)
        outs.append(render(s, 4))
    np.testing.assert_allclose(outs[1][37:], outs[0][:-37], rtol=0, atol=1e-12)


def test_release_decays_and_frees_the_voice(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, release_s=0.05)
    s.note_on(57, 100)
    render(s, 20)
    assert s.active_voices == 1
    held = np.abs(render(s, 4)).max()
    s.note_off(57)
    tail = render(s, 200)
    assert s.active_voices == 0, f"seed={seed}: voice not freed after release"
    last_active = np.nonzero(np.abs(tail).max(axis=1) > 1e-6)[0]
    assert last_active[-1] < 0.4 * RATE, f"seed={seed}: rang {last_active[-1] / RATE:.2f} s"
    assert np.abs(tail[-128:]).max() < 1e-4 * held


def test_sustain_pedal_holds_notes_until_released(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, release_s=0.05)
    s.sustain(True)
    s.note_on(60, 100)
    render(s, 4)
    s.note_off(60)
    render(s, 100)
    assert s.active_voices == 1, f"seed={seed}: the pedal did not hold the note"
    s.sustain(False)
    render(s, 150)
    assert s.active_voices == 0, f"seed={seed}: pedal up did not release the note"


def test_retrigger_reuses_the_voice_and_stealing_takes_the_oldest(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=3)
    s.note_on(60, 100)
    render(s, 1)
    s.note_on(60, 80)
    render(s, 1)
    assert s.active_voices == 1 and s.stats["stolen"] == 0
    for note in (62, 64):
        s.note_on(note, 100)
        render(s, 1)
    s.note_on(67, 100)  # a fourth note on three voices: the oldest (60) goes
    render(s, 1)
    assert s.stats["stolen"] == 1
    assert sorted(v.note for v in s.voices if v.active) == [62, 64, 67]


def test_pitch_bend_moves_the_pitch(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=1)
    s.pitch_bend(1.0)  # +2 semitones
    s.note_on(55, 100)
    y = render(s, 150)[:, 0]
    assert abs(cents(fundamental_hz(y, RATE), note_to_hz(57))) < 3.0, f"seed={seed}"


def test_pitch_bend_mid_note_lands_on_the_new_pitch(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=1)
    s.note_on(52, 100)
    render(s, 20)
    s.pitch_bend(-0.5, offset=17)  # −1 semitone from sample 17 of this block
    y = render(s, 150)[2000:, 0]
    assert abs(cents(fundamental_hz(y, RATE), note_to_hz(51))) < 3.0, f"seed={seed}"


def test_output_is_finite_and_below_full_scale_under_abuse(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=8)
    peak = 0.0
    for block in range(60):
        for _ in range(int(rng.integers(0, 6))):
            s.note_on(int(rng.integers(36, 90)), 127, channel=int(rng.integers(0, 3)),
                      offset=int(rng.integers(0, 128)))
        if rng.random() < 0.3:
            s.pitch_bend(float(rng.uniform(-1, 1)), offset=int(rng.integers(0, 128)))
        out = s.render_block()
        assert np.all(np.isfinite(out)), f"seed={seed}: non-finite output in block {block}"
        peak = max(peak, float(np.abs(out).max()))
    assert 0.0 < peak < 1.0, f"seed={seed}: peak {peak}"


def test_offsets_outside_the_block_are_refused(seed):
    s = synth(np.random.default_rng(seed))
    with pytest.raises(ValueError, match=r"offset=128 outside the block \(0..127\)"):
        s.note_on(60, 100, offset=128)


def test_preset_and_backend_grid_must_match(seed):
    rng = np.random.default_rng(seed)
    with pytest.raises(ValueError, match="is 32×32; the backend simulates 64×64"):
        Synth(CpuFdtd(64, 1, 128), preset(rng, 32))
