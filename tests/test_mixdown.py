"""The compiled output stage (engine/mixdown.py) against its float64 numpy/scipy twin."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.signal

from engine.mixdown import (
    MixInput,
    MixState,
    decimation_sos,
    mix_voices,
    mix_voices_reference,
)

N_FRAMES = 96
SLOTS = 12


def _block(rng: np.random.Generator, n: int, steps_of: dict[int, int]):
    """Random pickups, resets and coefficient changes for ``n`` voices of SLOTS."""
    inp = MixInput.allocate(SLOTS, 64)
    slots = rng.choice(SLOTS, n, replace=False)
    chunks, offset, r, c = [], 0, 0, 0
    for v, s in enumerate(slots):
        steps = steps_of[int(s)]
        inp.slots[v], inp.steps[v], inp.offsets[v] = s, steps, offset
        fine = rng.standard_normal(2 * N_FRAMES * steps).astype(np.float32)
        chunks.append(fine)
        offset += fine.size
        inp.reset_first[v] = r
        for at in sorted(rng.choice(N_FRAMES, rng.integers(0, 3), replace=False)):
            inp.reset_at[r] = at
            r += 1
        inp.change_first[v] = c
        for at in sorted(rng.integers(0, N_FRAMES, rng.integers(0, 4))):
            inp.change_at[c] = at
            inp.change_ramp[c] = rng.choice([0, 1, 7, 200])
            inp.change_coef[c] = rng.uniform(-1, 1, 6)
            c += 1
    inp.reset_first[n], inp.change_first[n], inp.n = r, c, n
    return np.concatenate(chunks), inp


def _run(fn, pickups, inp, state, sos):
    mix = np.full((N_FRAMES, 2), np.nan)
    peak = np.full(inp.n, np.nan)
    finite = np.zeros(inp.n, bool)
    fn(pickups, inp, state, sos, N_FRAMES, mix, peak, finite)
    return mix, peak, finite


def test_mix_matches_reference_over_blocks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sos = decimation_sos()
    state = MixState.allocate(SLOTS, sos.shape[1])
    state.coef_now[:] = rng.uniform(-1, 1, (SLOTS, 6))
    state.coef_target[:] = rng.uniform(-1, 1, (SLOTS, 6))
    state.coef_left[:] = rng.integers(0, 150, SLOTS)
    twin = copy.deepcopy(state)
    steps_of = {s: int(rng.choice([1, 2, 3, 5, 8, 16])) for s in range(SLOTS)}
    for block in range(6):
        if block == 3:  # some voices change oversampling: their filters restart
            steps_of.update({s: int(rng.choice([1, 4, 7])) for s in range(0, SLOTS, 3)})
        pickups, inp = _block(rng, int(rng.integers(1, SLOTS + 1)), steps_of)
        got = _run(mix_voices, pickups, inp, state, sos)
        want = _run(mix_voices_reference, pickups, inp, twin, sos)
        scale = np.max(np.abs(want[0]))
        assert scale > 0.1
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
        assert got[2].all() and want[2].all()
        for name in ("zi", "zi_steps", "y_prev", "coef_now", "coef_target", "coef_left"):
            np.testing.assert_allclose(
                getattr(state, name), getattr(twin, name), rtol=1e-9, atol=1e-12, err_msg=name
            )


def test_decimation_is_scipy_sosfilt(seed: int) -> None:
    """One voice, 4× oversampled, no changes: y = sosfilt(x)[3::4] over consecutive blocks."""
    rng = np.random.default_rng(seed)
    sos = decimation_sos()
    state = MixState.allocate(1, sos.shape[1])
    state.coef_now[0] = [1, 0, 1, 0, 0, 1]  # y straight to L and R
    x = rng.standard_normal((2, 3 * N_FRAMES * 4)).astype(np.float32)
    out = []
    for b in range(3):
        inp = MixInput.allocate(1, 1)
        inp.n, inp.steps[0], inp.reset_first[1], inp.change_first[1] = 1, 4, 0, 0
        chunk = x[:, b * N_FRAMES * 4 : (b + 1) * N_FRAMES * 4]
        out.append(_run(mix_voices, chunk.reshape(-1).copy(), inp, state, sos)[0])
    want = scipy.signal.sosfilt(sos[4], x.astype(np.float64), axis=1)[:, 3::4].T
    np.testing.assert_allclose(np.concatenate(out), want, rtol=0, atol=1e-11)


def test_non_finite_voice_is_left_out(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sos = decimation_sos()
    state = MixState.allocate(SLOTS, sos.shape[1])
    state.coef_now[:] = [1, 0, 1, 0, 0, 1]
    pickups, inp = _block(rng, 3, {s: 2 for s in range(SLOTS)})
    inp.reset_first[:] = 0
    inp.change_first[:] = 0
    bad = int(inp.offsets[1]) + 17
    pickups[bad] = np.nan
    before = state.zi[inp.slots[1]].copy()
    mix, peak, finite = _run(mix_voices, pickups, inp, state, sos)
    assert finite.tolist() == [True, False, True]
    assert np.all(np.isfinite(mix)) and peak[1] == 0.0
    np.testing.assert_array_equal(state.zi[inp.slots[1]], before)
    # the mix is exactly the other two voices
    keep = MixInput.allocate(SLOTS, 1)
    for v_new, v in enumerate((0, 2)):
        keep.slots[v_new], keep.steps[v_new], keep.offsets[v_new] = (
            inp.slots[v], inp.steps[v], inp.offsets[v]
        )
    keep.n = 2
    fresh = MixState.allocate(SLOTS, sos.shape[1])
    fresh.coef_now[:] = [1, 0, 1, 0, 0, 1]
    want = _run(mix_voices_reference, pickups, keep, fresh, sos)[0]
    np.testing.assert_allclose(mix, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("steps", [1, 3])
def test_reset_forgets_the_past(steps: int, seed: int) -> None:
    """After a reset at sample r, the output from r on depends only on input from r on."""
    rng = np.random.default_rng(seed)
    sos = decimation_sos()
    r = 40

    def run(x):
        state = MixState.allocate(1, sos.shape[1])
        state.coef_now[0] = [0.5, 0.3, 1, 0, 0, 1]
        inp = MixInput.allocate(1, 1)
        inp.n, inp.steps[0] = 1, steps
        inp.reset_at[0], inp.reset_first[1], inp.change_first[1] = r, 1, 0
        return _run(mix_voices, x, inp, state, sos)[0]

    a = rng.standard_normal(2 * N_FRAMES * steps).astype(np.float32)
    b = a.copy().reshape(2, -1)
    b[:, : r * steps] = rng.standard_normal((2, r * steps))
    out_a, out_b = run(a), run(b.reshape(-1))
    np.testing.assert_array_equal(out_a[r:], out_b[r:])
    assert not np.allclose(out_a[:r], out_b[:r])


def test_master_bus_matches_reference(seed: int) -> None:
    """DC blocker and limiter over consecutive blocks, loud enough to hit the limiter."""
    from engine.mixdown import master_bus, master_bus_reference

    rng = np.random.default_rng(seed)
    r = float(np.exp(-2 * np.pi * 8 / 48_000))
    state = [np.zeros(2), np.zeros(2)]
    twin = [np.zeros(2), np.zeros(2)]
    limited = 0
    for _ in range(5):
        mix = rng.standard_normal((N_FRAMES, 2)) * 0.7 + rng.uniform(-0.5, 0.5)
        got = np.empty((N_FRAMES, 2), np.float32)
        want = np.empty((N_FRAMES, 2), np.float32)
        master_bus(mix, *state, r, 0.8, got)
        master_bus_reference(mix, *twin, r, 0.8, want)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state, twin, rtol=1e-12, atol=1e-12)
        assert np.all(np.abs(got) < 1.0)
        limited += int(np.sum(np.abs(got) > 0.8))
    assert limited > 0, "the test never reached the limiter"
