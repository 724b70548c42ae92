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


def test_shedding_fades_the_least_missed_voice_and_a_voice_limit_makes_notes_steal(seed):
    """``shed_voice`` fades out (as a steal fades) the voice a steal would take, from its sample,
    leaving everything before it untouched; ``set_voice_limit`` makes a new note steal once
    that many voices sound, and ``None`` lifts it."""
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=4)
    ref = Synth(CpuFdtd(32, 4, 128, dtype=np.float64), s.preset, sample_rate_hz=RATE)
    for x in (s, ref):
        x.note_on(57, 80)
        x.note_on(64, 80, offset=5)
        x.note_on(69, 80, offset=9)
    y = [render(x, 6) for x in (s, ref)]
    for x in (s, ref):
        x.note_off(64, offset=0)
    y = [np.concatenate([a, render(x, 4)]) for a, x in zip(y, (s, ref))]
    k = int(rng.integers(0, 128))
    s.shed_voice(offset=k)
    y = [np.concatenate([a, render(x, 4)]) for a, x in zip(y, (s, ref))]
    at = 10 * 128 + k
    np.testing.assert_array_equal(y[0][:at], y[1][:at], err_msg=f"seed={seed}: before the shed")
    assert np.abs(y[0][at + 200 :] - y[1][at + 200 :]).max() > 0, f"seed={seed}: nothing shed"
    assert sorted(v.note for v in s.voices if v.active) == [57, 69], "the released note went"
    assert s.stats["shed"] == 1 and s.stats["stolen"] == 0
    s.set_voice_limit(2)
    s.note_on(72, 80)
    render(s, 4)
    assert s.active_voices == 2 and s.stats["stolen"] == 1, "at the limit a new note steals"
    assert 72 in [v.note for v in s.voices if v.active]
    s.set_voice_limit(None)
    s.note_on(74, 80)
    render(s, 2)
    assert s.active_voices == 3 and s.stats["stolen"] == 1
    s.set_voice_limit(4)
    assert s.voice_limit is None, "the whole polyphony is no limit"
    for bad in (0, 5):
        with pytest.raises(ValueError, match=f"voice limit {bad}: expected 1..4"):
            s.set_voice_limit(bad)


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
            s.note_on(
                int(rng.integers(36, 90)),
                127,
                channel=int(rng.integers(0, 3)),
                offset=int(rng.integers(0, 128)),
            )
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


# ---- parameters, re-evaluation, stealing (issue 5) -------------------------------------------

import engine.params as P  # noqa: E402
from engine.kan import KAN  # noqa: E402
from engine.synth import STEAL_FADE_S  # noqa: E402


def twin(rng, voices: int = 2, **kw) -> tuple[Synth, Synth]:
    p = preset(rng)
    return tuple(
        Synth(CpuFdtd(32, voices, 128, dtype=np.float64), p, sample_rate_hz=RATE, **kw)
        for _ in "ab"
    )


def held_note_then(
    s: Synth, note: int, block: int, event, blocks: int, velocity: int = 60, voice_mix: list | None = None
) -> np.ndarray:
    """Play ``note``, call ``event(s)`` before block ``block``, render ``blocks`` in all
    (and append each block's pre-bus ``voice_mix`` to ``voice_mix`` if given)."""
    s.note_on(note, velocity)
    out = []
    for k in range(blocks):
        if k == block and event is not None:
            event(s)
        out.append(s.render_block())
        if voice_mix is not None:
            voice_mix.append(s.voice_mix.copy())
    return np.concatenate(out)


@pytest.mark.parametrize("new_note, same_steps", [(50, True), (86, False)])
def test_a_stolen_voice_fades_out_instead_of_being_cut(seed, new_note, same_steps):
    """One voice: a second note steals it. No sample step beyond the old note's own largest
    step plus the fade's slope; a cut at that sample would have stepped by |y|."""
    rng = np.random.default_rng(seed)
    a, b = twin(rng, voices=1)
    steal_block = 10
    reference = held_note_then(a, 45, steal_block, None, steal_block + 1)  # both channels
    block = reference[steal_block * 128 :]
    offset = int(np.argmax(np.abs(block[:128]).max(axis=1)))  # where a cut would hurt most
    at = steal_block * 128 + offset
    bus_in: list[np.ndarray] = []
    y = held_note_then(
        b, 45, steal_block, lambda s: s.note_on(new_note, 60, offset=offset), 24, voice_mix=bus_in
    )
    assert b.stats["stolen"] == 1 and [v.note for v in b.voices] == [new_note]
    np.testing.assert_array_equal(y[:at], reference[:at])
    fade = int(round(STEAL_FADE_S * RATE))
    start = at + fade if same_steps else -(-(at + fade) // 128) * 128
    before = y[at - 1000 : at]  # both channels, as the steps below
    natural = np.abs(np.diff(before, axis=0)).max()
    amplitude = np.abs(before).max()
    allowed = natural + 2.0 * amplitude / fade
    # up to the new note's first sample: from there on it is exactly a fresh note (below)
    steps = np.abs(np.diff(y[at - 1 : start + 1], axis=0)).max()
    assert steps <= allowed, f"seed={seed}: a step of {steps:.4g} (allowed {allowed:.4g})"
    cut = np.abs(reference[at]).max()  # the step a cut at `at` would make
    assert allowed < 0.5 * cut, f"seed={seed}: the test would not catch a cut"
    # after the fade only the DC blocker's slow memory of the old note is left ...
    tail = np.abs(np.diff(y[at + fade + 1 : start + 1], axis=0)).max(initial=0.0)
    assert tail < 1e-3 * amplitude, f"seed={seed}: the old note still sounds after the fade"
    # ... and from its start the new note is exactly a fresh one: compared before the master
    # bus, whose DC blocker remembers the old note and whose limiter is not linear
    fresh = Synth(CpuFdtd(32, 1, 128, dtype=np.float64), a.preset, sample_rate_hz=RATE)
    fresh.note_on(new_note, 60)
    fresh_in = []
    for _ in range(12):
        fresh.render_block()
        fresh_in.append(fresh.voice_mix.copy())
    got, want = np.concatenate(bus_in)[start:], np.concatenate(fresh_in)
    n = min(len(got), len(want))
    scale = np.abs(want[:n]).max()
    assert scale > 50 * 1e-3 * amplitude, f"seed={seed}: the new note is silent"
    np.testing.assert_allclose(got[:n], want[:n], rtol=0, atol=1e-9 * scale, err_msg=f"seed={seed}")


def test_mod_wheel_reevaluates_sounding_notes_at_the_exact_sample(seed):
    rng = np.random.default_rng(seed)
    a, b = twin(rng)
    offset = int(rng.integers(1, 127))
    at = 5 * 128 + offset
    ya = held_note_then(a, 60, 5, None, 30)
    yb = held_note_then(b, 60, 5, lambda s: s.set_mod_wheel(1.0, offset=offset), 30)
    np.testing.assert_array_equal(yb[:at], ya[:at], err_msg=f"seed={seed}")
    assert (
        np.abs(yb[at : at + 64] - ya[at : at + 64]).max() > 0
    ), f"seed={seed}: no change at {offset}"
    # mod wheel → lower σ₁: the highs ring longer
    hi_a = np.abs(np.diff(ya[-1000:, 0])).mean() / np.abs(ya[-1000:, 0]).mean()
    hi_b = np.abs(np.diff(yb[-1000:, 0])).mean() / np.abs(yb[-1000:, 0]).mean()
    assert hi_b > hi_a, f"seed={seed}: mod wheel did not brighten ({hi_b:.4g} vs {hi_a:.4g})"


def test_pressure_drives_a_held_note_and_slide_lengthens_it(seed):
    rng = np.random.default_rng(seed)
    p = preset(rng)

    def tail_rms(event) -> float:
        s = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), p, sample_rate_hz=RATE)
        y = held_note_then(s, 57, 3, event, 375)  # 1 s
        assert np.all(np.isfinite(y))
        return float(np.sqrt(np.mean(y[-12_000:] ** 2)))

    rest = tail_rms(None)
    assert tail_rms(lambda s: s.set_pressure(1.0)) > 2.0 * rest, f"seed={seed}"
    assert tail_rms(lambda s: s.set_slide(1.0)) > 1.5 * rest, f"seed={seed}"
    # another channel's pressure leaves this note alone
    assert tail_rms(lambda s: s.set_pressure(1.0, channel=3)) == rest


def test_explicit_params_are_played_as_given_and_checked(seed):
    rng = np.random.default_rng(seed)
    a, b = twin(rng)
    quiet = P.from_dict({"gain_db": -20.0}, base=a.base_params)
    ya = held_note_then(a, 60, 5, lambda s: s.set_mod_wheel(1.0), 20)
    b.note_on(60, 60, params=quiet)
    yb = np.concatenate([b.render_block() for _ in range(5)])
    b.set_mod_wheel(1.0)  # explicit parameters are not re-evaluated
    yb = np.concatenate([yb] + [b.render_block() for _ in range(15)])
    # the default source at velocity 60 vs the centre (velocity ½ ≈ 63.5): close in force,
    # and 20 dB quieter
    ratio = np.abs(yb).max() / np.abs(ya).max()
    assert 0.07 < ratio < 0.14, f"seed={seed}: level ratio {ratio:.3f}"
    bad = P.defaults()
    bad[P.index("excite_width")] = 2.0
    with pytest.raises(
        P.ParamError, match=r"excite_width=2\.0 fraction of side is outside \[0\.005, 0\.5\]"
    ):
        a.note_on(60, 100, params=bad)
    with pytest.raises(P.ParamError, match="25 entries"):
        a.note_on(60, 100, params=np.zeros(3))


def test_a_custom_parameter_source_is_used(seed):
    rng = np.random.default_rng(seed)
    p = preset(rng)
    seen = []

    def source(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return P.from_dict({"pan": -1.0})

    s = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), p, sample_rate_hz=RATE, param_source=source)
    s.set_mod_wheel(0.25, channel=2)
    s.note_on(64, 127, channel=2)
    y = render(s, 10)
    np.testing.assert_allclose(seen[0], [64 / 127, 1.0, 0.25, 0.0, 0.5])
    assert np.abs(y[:, 1]).max() == 0.0 and np.abs(y[:, 0]).max() > 0.0, "pan −1 is left only"
    with pytest.raises(ValueError, match="with param_source given, the source decides release_s"):
        Synth(CpuFdtd(32, 1, 128), p, release_s=0.1, param_source=KAN.default())


def test_many_controller_events_in_one_block_are_coalesced(seed):
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=2)
    s.note_on(60, 90)
    s.note_on(67, 90, channel=1)
    render(s, 2)
    for k in range(100):  # more than a voice's 32 events a block
        s.set_mod_wheel(k / 99, offset=k)
        s.set_pressure(k / 99, channel=1, offset=k + 1)
    y = render(s, 20)
    assert np.all(np.isfinite(y)) and np.abs(y).max() < 1.0, f"seed={seed}"
    with pytest.raises(ValueError, match="mod wheel=nan"):
        s.set_mod_wheel(float("nan"))


def test_random_parameters_and_controllers_never_break_the_engine(seed):
    """Random 25-vectors (anywhere in their ranges), velocities, controllers, pedal and bends
    on six voices of a morphing body: finite output below full scale, every block."""
    rng = np.random.default_rng(seed)
    s = Synth(
        CpuFdtd(32, 6, 128, dtype=np.float32),
        preset(rng),
        morph_to=preset(rng),
        sample_rate_hz=RATE,
    )
    for block in range(120):
        for _ in range(int(rng.integers(0, 4))):
            kind, off, ch = int(rng.integers(0, 8)), int(rng.integers(0, 128)), int(rng.integers(3))
            note = int(rng.integers(30, 100))
            if kind < 3:
                params = P.from_unit(rng.uniform(0, 1, P.N_PARAMS)) if rng.random() < 0.5 else None
                s.note_on(note, int(rng.integers(1, 128)), ch, off, params=params)
            elif kind == 3:
                s.note_off(note, ch, off)
            elif kind == 4:
                s.set_mod_wheel(rng.random(), ch, off)
            elif kind == 5:
                s.set_pressure(rng.random(), ch, off)
            elif kind == 6:
                s.set_slide(rng.random(), ch, off)
            else:
                s.pitch_bend(rng.uniform(-1, 1), ch, off)
        if rng.random() < 0.05:
            s.sustain(rng.random() < 0.5, int(rng.integers(3)))
        y = s.render_block()
        assert np.all(np.isfinite(y)) and np.abs(y).max() < 1.0, f"seed={seed}: block {block}"
    assert s.stats["notes"] > 20 and s.stats["stolen"] > 0, f"seed={seed}: {s.stats}"


def test_a_scala_tuning_sets_the_pitch_and_unmapped_keys_stay_silent(tmp_path, seed):
    """19-EDO from a real .scl file: key 72 sounds at 440·2^(3/19); with a mapping that leaves
    the black keys unmapped, C#4 is refused and plays nothing."""
    from engine.scala import load_tuning

    steps = "\n".join(f"{1200 * k / 19:.10f}" for k in range(1, 19)) + "\n2/1\n"
    scl = tmp_path / "19edo.scl"
    scl.write_text(f"! 19edo.scl\n19-EDO\n19\n{steps}")
    rng = np.random.default_rng(seed)
    s = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), preset(rng), sample_rate_hz=RATE,
              tuning=load_tuning(scl))
    s.note_on(72, 100)
    y = render(s, 150)[:, 0]
    assert abs(cents(fundamental_hz(y, RATE), 440.0 * 2 ** (3 / 19))) < 3.0, f"seed={seed}"

    kbm = tmp_path / "white.kbm"
    kbm.write_text("! white.kbm\n12\n0\n127\n60\n69\n440.0\n7\n0\nx\n1\nx\n2\n3\nx\n4\nx\n5\nx\n6\n")
    seven = tmp_path / "seven.scl"
    seven.write_text("! seven.scl\nJust major\n7\n9/8\n5/4\n4/3\n3/2\n5/3\n15/8\n2/1\n")
    s = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), preset(rng), sample_rate_hz=RATE,
              tuning=load_tuning(seven, kbm))
    s.note_on(61, 100)
    assert np.all(render(s, 4) == 0.0) and s.stats["refused"] == 1 and s.active_voices == 0


# ---- all sound off (CC120) -------------------------------------------------------------------


def test_all_sound_off_fades_the_channel_to_zero_without_a_click_and_frees_its_voices(seed):
    """Notes on channels 0 and 1; CC120 on channel 0 at sample k of block 10. Before k the
    output is untouched; after it no step is a click, and channel 0 is, sample by sample, its
    own sound (``ref``: no CC120) under a gain falling linearly to zero, so never louder than
    it would have been (not "than before k": a sound can swell by itself in 3 ms); from the
    end of the fade channel 0's voices add exactly 0 (the voices' sum equals a ``twin``'s that
    plays only channel 1's note); they are freed at the first block boundary after the fade
    (within STEAL_FADE_S + one block), and channel 1 sounds on."""
    rng = np.random.default_rng(seed)
    p = preset(rng)
    s, ref, twin = (
        Synth(CpuFdtd(32, 4, 128, dtype=np.float64), p, sample_rate_hz=RATE) for _ in range(3)
    )
    quiet = P.from_dict({"gain_db": -12.0}, base=s.base_params)  # the master bus stays linear
    for x in (s, ref, twin):
        x.note_on(67, 60, channel=1, params=quiet)  # slot 0 in each
    for x in (s, ref):
        x.note_on(57, 60, params=quiet)
        x.note_on(64, 60, offset=3, params=quiet)
    k = int(rng.integers(0, 128))
    at = 10 * 128 + k
    fade = int(round(STEAL_FADE_S * RATE))
    freed_by = -(-(at + fade) // 128) * 128  # the first block boundary after the fade
    ys, yr, yt, ms, mr, mt, active = [], [], [], [], [], [], []
    for block in range(16):
        if block == 10:
            s.all_sound_off(0, offset=k)
        ys.append(s.render_block())
        yr.append(ref.render_block())
        yt.append(twin.render_block())
        ms.append(s._mix.copy())  # the voices' sum, before the master bus
        mr.append(ref._mix.copy())
        mt.append(twin._mix.copy())
        active.append(sorted((v.note, v.channel) for v in s.voices if v.active))
    y, r, m, mref, mtwin = (np.concatenate(a) for a in (ys, yr, ms, mr, mt))
    np.testing.assert_array_equal(y[:at], r[:at], err_msg=f"seed={seed}: changed before CC120")
    # no click: no step beyond the music's own plus the fade's slope
    before = y[at - 1000 : at]
    amplitude = np.abs(before).max()
    assert amplitude < 0.8, f"seed={seed}: the test wants the master bus linear"
    allowed = np.abs(np.diff(before, axis=0)).max() + 2.0 * amplitude / fade
    steps = np.abs(np.diff(y[at - 1 : at + fade + 16], axis=0)).max()
    assert steps <= allowed, f"seed={seed}: a step of {steps:.4g} (allowed {allowed:.4g})"
    channel_0 = np.abs(m - mtwin).max(axis=1)
    unfaded = np.abs(mref - mtwin).max(axis=1)
    assert channel_0[at - 64 : at].max() > 0.1 * amplitude, f"seed={seed}: channel 0 silent"
    assert channel_0[at + fade // 2] > 0.0, f"seed={seed}: cut, not faded"
    gain = 1.0 - np.arange(fade) / fade
    over = channel_0[at : at + fade] - gain * unfaded[at : at + fade]
    assert over.max() <= 1e-12, f"seed={seed}: channel 0 above its fade by {over.max():.3g}"
    # from the end of the fade channel 0 adds exactly nothing, and goes on adding nothing
    assert np.all(channel_0[at + fade :] == 0.0), (
        f"seed={seed}: channel 0 sounds {np.nonzero(channel_0[at + fade :])[0][0]} samples "
        "after the fade"
    )
    # what is left of it in the output is the DC blocker's slow memory (a 20 ms decay)
    d = y - np.concatenate(yt)
    assert np.abs(np.diff(d[at + fade :], axis=0)).max() < 1e-3 * amplitude, f"seed={seed}"
    # channel 1 sounds on
    assert np.abs(mtwin[-128:]).max() > 0.01 * amplitude, f"seed={seed}: channel 1 went quiet"
    # the voices: channel 0's are freed at the first block boundary after the fade
    assert freed_by <= at + fade + 128
    for block, got in enumerate(active):
        want = [(57, 0), (64, 0), (67, 1)] if (block + 1) * 128 < freed_by else [(67, 1)]
        assert got == want, f"seed={seed}: after block {block} active {got}, wanted {want}"
    assert s.stats["stolen"] == 0


def test_all_sound_off_drops_a_waiting_note_and_lifts_the_pedal(seed):
    """One voice. A steal is fading when CC120 comes: the waiting note never starts. The pedal
    that was down no longer holds notes. A note struck after CC120 in the same block takes the
    fading voice (no steal counted) and starts when the fade ends."""
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=1, release_s=0.05)
    fade = int(round(STEAL_FADE_S * RATE))
    s.sustain(True)
    s.note_on(45, 60)
    render(s, 5)
    s.note_on(50, 60, offset=10)  # steals the only voice: 45 fades, 50 waits for the fade
    s.all_sound_off(0, offset=20)  # the fade goes on; 50 is dropped
    mixes = []
    for _ in range(4):
        s.render_block()
        mixes.append(s._mix.copy())
    m = np.concatenate(mixes)
    assert s.stats["stolen"] == 1 and s.active_voices == 0, f"seed={seed}: {s.stats}"
    assert np.all(m[10 + fade :] == 0.0), f"seed={seed}: the dropped note sounded"
    assert np.abs(m[:10]).max() > 0.0
    s.note_on(52, 60)
    render(s, 4)
    s.note_off(52)
    render(s, 150)
    assert s.active_voices == 0, f"seed={seed}: the pedal still held the note after CC120"

    s.note_on(45, 60)
    render(s, 5)
    s.all_sound_off(0, offset=20)
    s.note_on(47, 60, offset=40)  # after CC120: takes the fading voice once the fade is over
    y, mix = [], []
    for _ in range(4):
        y.append(s.render_block())
        mix.append(s._mix.copy())
    y, mix = np.concatenate(y), np.concatenate(mix)
    assert [(v.note, v.active) for v in s.voices] == [(47, True)]
    assert s.stats["stolen"] == 1, f"seed={seed}: reusing a silenced voice is no steal"
    assert np.abs(mix[:20]).max() > 0.0 and np.all(mix[20 + fade - 1] == 0.0), "faded first"
    assert np.abs(y[20 + fade + 64 :]).max() > 0.01, f"seed={seed}: the new note is silent"


def _records_played(s: Synth, voice: int = 0) -> list[tuple[int, float, float]]:
    """(sample in block, gamma_add, eta) of every record the plan switched voice ``voice`` to."""
    plan = s.plan
    h = plan.headers[voice]
    out = [(0, float(plan.records[h["record"]]["gamma_add"]), float(plan.records[h["record"]]["eta"]))]
    for e in plan.events[h["first_event"] : h["first_event"] + h["n_events"]]:
        rec = plan.records[e["record"]]
        out.append((int(e["sample"]), float(rec["gamma_add"]), float(rec["eta"])))
    return out


def test_note_off_ramps_the_release_damping_in(seed):
    """Note off raises the uniform damping (and the loss) to the release values over a 5 ms
    ramp of small steps, starting at the note-off sample, not in one jump."""
    rng = np.random.default_rng(seed)
    s = synth(rng, voices=1, release_s=0.3)
    s.note_on(60, 100)
    for _ in range(3):
        s.render_block()
    held = _records_played(s)[-1]
    offset = int(rng.integers(0, 128))
    s.note_off(60, offset=offset)
    seen = []
    for b in range(5):
        s.render_block()
        seen += [(b * 128 + k, g, eta) for k, g, eta in _records_played(s)]
    steps = s.voices[0].tone.steps
    dt = 1.0 / (RATE * steps)
    full = held[1] + dt * np.log(1000.0) / 0.3
    ramp = round(0.005 * RATE)
    gammas = np.array([g for _, g, _ in seen])
    assert np.all(np.diff(gammas) >= -1e-12), f"seed={seed}: the damping went down"
    at = [k for k, g, _ in seen]
    before = [g for k, g, _ in seen if k <= offset]
    assert np.allclose(before, held[1], rtol=1e-6), f"seed={seed}: damping changed before note off"
    rising = [g for k, g, _ in seen if offset < k < offset + ramp]
    assert len(set(np.round(rising, 12))) >= 10, f"seed={seed}: {len(rising)} steps, expected a ramp"
    assert all(held[1] < g < full for g in rising), f"seed={seed}: the ramp overshoots or stalls"
    after = [g for k, g, _ in seen if k >= offset + ramp + 16]
    assert after and np.allclose(after, full, rtol=1e-5), f"seed={seed}: {after[:3]} vs {full}"
    assert max(at) >= offset + ramp + 16
    from engine import params as P

    rls = float(s.voices[0].tone.params[P.index("release_loss_scale")])
    etas = [eta for k, _, eta in seen if k >= offset + ramp + 16]
    assert np.allclose(etas, held[2] * rls, rtol=1e-5), f"seed={seed}: the loss did not follow"


def test_loudness_does_not_depend_on_the_grid_resolution(seed):
    """The same body on a 64×64 grid and resampled to 32×32 (coarse-to-fine training moves
    between them) plays a note at the same level: within 1.5 dB."""
    import scipy.ndimage

    rng = np.random.default_rng(seed)
    s64 = smooth_map(rng, 64, 0.8, 1.5).astype(np.float32)
    levels = {}
    for n in (32, 64):
        s = s64 if n == 64 else scipy.ndimage.zoom(s64, n / 64, order=1).astype(np.float32)
        body = Preset(name="x", stiffness=s, damping_per_s=np.full((n, n), 3.0, np.float32),
                      size_m=0.2, loss_m2_per_s=3e-5)  # fmt: skip
        syn = Synth(CpuFdtd(n, 1, 128), body, sample_rate_hz=RATE, max_polyphony=1)
        syn.note_on(48, 80)
        y = render(syn, 60)[2000:]
        assert np.abs(y).max() < 0.8, f"seed={seed}: {n}×{n} reached the limiter"
        levels[n] = 20 * np.log10(np.sqrt(np.mean(y**2)))
    assert abs(levels[32] - levels[64]) < 1.5, f"seed={seed}: {levels}"


def _score(s: Synth, k: int) -> None:
    """A small performance: notes struck and released, voices decaying to silence and freed,
    a retrigger, a bend, all sound off on channel 1, all within 4 voices."""
    if k == 0:
        s.note_on(57, 100, 0, 7)
        s.note_on(64, 80, 1, 40)
    elif k == 3:
        s.note_off(57, 0, 5)
    elif k == 5:
        s.note_on(69, 110, 0, 100)
        s.pitch_bend(0.3, 0, 64)
    elif k == 9:
        s.note_on(69, 90, 0, 3)  # retriggered
        s.all_sound_off(1, 20)
    elif k == 14:
        s.note_off(69, 0, 0)
        s.note_off(64, 1, 0)
    elif k == 40:
        s.note_on(60, 100, 0, 11)


def _render_both_ways(make, blocks: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The score rendered block after block, and in the live engine's order (begin block k,
    then finish block k−1); also the blocks at which a voice was freed (sequential run)."""
    seq, live = make(), make()
    a, freed = [], []
    for k in range(blocks):
        _score(seq, k)
        before = seq.active_voices
        a.append(seq.render_block())
        if seq.active_voices < before:
            freed.append(k)
    b = []
    for k in range(blocks):
        _score(live, k)
        live.begin_block()
        if k:
            b.append(live.finish_block())
    b.append(live.finish_block())
    return np.concatenate(a), np.concatenate(b), freed


def test_beginning_a_block_before_finishing_the_last_plays_the_same(seed):
    """The live engine's order (begin k, then finish k−1) plays what block-after-block
    rendering plays: sample for sample until a voice is first freed, and after that within
    the −90 dBFS at which voices are freed (a freed voice can sound one block longer: the
    next block was begun before the freeing block was finished)."""
    rng = np.random.default_rng(seed)
    p = preset(rng)

    def make():
        return Synth(CpuFdtd(32, 4, 128, dtype=np.float64), p, sample_rate_hz=RATE, release_s=0.03)

    a, b, freed = _render_both_ways(make, 60)
    assert np.abs(a).max() > 0.01 and freed, (np.abs(a).max(), freed)
    first = freed[0] * 128
    np.testing.assert_array_equal(a[:first], b[:first], err_msg=f"seed={seed}")
    assert np.abs(a - b).max() < 10 ** (-90 / 20), (seed, np.abs(a - b).max())
    s = make()
    s.begin_block()
    s.begin_block()
    with pytest.raises(RuntimeError, match="two blocks begun and not finished"):
        s.begin_block()
    s.finish_block()
    s.finish_block()
    with pytest.raises(RuntimeError, match=r"finish_block\(\) without begin_block\(\)"):
        s.finish_block()


def test_the_gpu_pipeline_plays_the_same_as_block_after_block(adapter, seed):
    """On the GPU backend begin_block submits without waiting and finish_block collects: the
    same check as above through GpuFdtd.submit/collect (two staging buffers in turn)."""
    from engine.fdtd import GpuFdtd

    rng = np.random.default_rng(seed)
    p = preset(rng, n=16)

    def make():
        return Synth(GpuFdtd(16, 4, 128, adapter=adapter), p, sample_rate_hz=RATE, release_s=0.03)

    a, b, freed = _render_both_ways(make, 24)
    assert np.abs(a).max() > 0.01
    first = (freed[0] if freed else 24) * 128
    np.testing.assert_array_equal(a[:first], b[:first], err_msg=f"seed={seed}")
    assert np.abs(a - b).max() < 10 ** (-90 / 20), (seed, np.abs(a - b).max())


def test_the_morph_knob_moves_held_notes_at_its_sample(seed):
    """set_morph while a note sounds: from the event's sample the voice plays the new blend
    of the two maps (its record's morph) on the new body, retuned to its pitch; explicit
    parameters stay as given; None gives the note back its source's morph."""
    rng = np.random.default_rng(seed)
    a, b = preset(rng), preset(rng)
    s = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), a, morph_to=b, sample_rate_hz=RATE)
    s.note_on(57, 100, 0, 0)
    explicit = s.base_params.copy()
    s.note_on(64, 100, 1, 0, params=explicit)
    s.render_block()
    held = next(v for v in s.voices if v.active and v.note == 57)
    fixed = next(v for v in s.voices if v.active and v.note == 64)
    start_morph = float(held.tone.record["morph"])
    s.set_morph(0.7, offset=40)
    s.render_block()
    plan = s.plan
    h = plan.headers[[int(x) for x in plan.headers["slot"][: plan.n_voices]].index(held.slot)]
    switches = [
        (int(e["sample"]), float(plan.records[e["record"]]["morph"]))
        for e in plan.events[h["first_event"] : h["first_event"] + h["n_events"]]
    ]
    assert float(plan.records[h["record"]]["morph"]) == pytest.approx(start_morph)
    assert (40, pytest.approx(round(0.7 * 128) / 128)) in switches, switches
    assert held.tone.body_key[0] == round(0.7 * 128)
    assert float(fixed.tone.record["morph"]) == pytest.approx(float(explicit[P.index("morph")]))
    # a held note alone is still tuned to its pitch on the new body
    solo = Synth(CpuFdtd(32, 2, 128, dtype=np.float64), a, morph_to=b, sample_rate_hz=RATE)
    solo.note_on(57, 100, 0, 0)
    render(solo, 2)
    solo.set_morph(0.7, offset=17)
    out = render(solo, 40)[2 * 128 :, 0]
    assert abs(cents(fundamental_hz(out, RATE), note_to_hz(57))) < 3.0, seed
    s.set_morph(None)
    s.render_block()
    assert float(held.tone.record["morph"]) == pytest.approx(start_morph)
    with pytest.raises(ValueError, match="morph=nan"):
        s.set_morph(float("nan"))
