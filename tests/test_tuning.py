"""Pitch: the dispersion relation, the lowest mode, and notes measured from rendered audio."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from conftest import smooth_map
from engine.presets import Preset
from engine.synth import Synth, note_to_hz
from engine.tuning import (
    CFL_LIMIT,
    TuningError,
    choose_steps_per_sample,
    lowest_mode,
    mode_frequency_hz,
    operator_matrix,
    solve_c2,
)


def test_uniform_clamped_and_free_lowest_eigenvalues():
    n = 64
    s = np.ones((n, n))
    assert lowest_mode(s, 0.0).mu == pytest.approx(8 * np.sin(np.pi / 130) ** 2, rel=1e-10)
    # free edges: skip the rigid mode μ = 0; the first bending mode is 4·sin²(π/2N)
    assert lowest_mode(s, 1.0).mu == pytest.approx(4 * np.sin(np.pi / 128) ** 2, rel=1e-9)
    # stiffness scales every eigenvalue
    assert lowest_mode(2.5 * s, 0.0).mu == pytest.approx(2.5 * 8 * np.sin(np.pi / 130) ** 2, rel=1e-10)


def test_lowest_mode_matches_dense_eigensolver(seed):
    """Shift-invert Lanczos against a dense float64 eigensolver of −s·L on a random map."""
    rng = np.random.default_rng(seed)
    n = 16
    s = smooth_map(rng, n, 0.05, 5.0)
    b = float(rng.uniform(0, 0.9))
    dense = operator_matrix(s, b).toarray()
    # the non-symmetric operator the scheme applies: −s·L = S·A, A = S^-½·dense·S^-½
    root = np.sqrt(s.ravel())
    minus_sl = root[:, None] * dense / root[None, :]
    expected = np.min(scipy.linalg.eigvals(minus_sl).real)
    assert lowest_mode(s, b).mu == pytest.approx(expected, rel=1e-9), f"seed={seed}"


def test_solve_c2_inverts_the_dispersion_relation(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        mu = rng.uniform(1e-4, 2.0)
        dt = 1.0 / rng.uniform(20_000, 400_000)
        gamma = rng.uniform(0, 1e-3)
        eta = rng.uniform(0, 1e-3)
        c2 = rng.uniform(1e-4, 0.45) / mu * min(mu, 1.0)
        f = mode_frequency_hz(mu, c2, eta, gamma, dt)
        assert solve_c2(f, mu, eta, gamma, dt) == pytest.approx(c2, rel=1e-8), f"seed={seed}"


def test_steps_per_sample_respects_the_bound_and_refuses_out_of_reach():
    mode = lowest_mode(np.ones((64, 64)), 0.0)
    kw = dict(sample_rate_hz=48_000, loss_m2_per_s=3e-4, dx_m=0.4 / 64, gamma_per_step_hz=1.0)
    last = 0
    for note in range(36, 97, 6):
        steps, c2, eta = choose_steps_per_sample(note_to_hz(note), mode, **kw, headroom_semitones=2)
        assert (c2 + 2 * eta) * mode.max_stiffness < CFL_LIMIT
        assert steps >= last
        last = steps
        if steps > 1:  # one step fewer would break the bound (with the bend headroom)
            dt = 1 / (48_000 * (steps - 1))
            eta1 = 2 * 3e-4 * dt / (0.4 / 64) ** 2
            c2_top = solve_c2(note_to_hz(note + 2), mode.mu, eta1, dt, dt)
            assert (c2_top + 2 * eta1) * mode.max_stiffness >= CFL_LIMIT * 0.98
    with pytest.raises(TuningError, match=r"out of reach of this body.*more than 4 FDTD steps"):
        choose_steps_per_sample(note_to_hz(108), mode, **kw, max_steps_per_sample=4)


def fundamental_hz(y: np.ndarray, rate_hz: float) -> float:
    """The lowest strong spectral peak of ``y`` (within 30 dB of the strongest), refined by a
    parabola through the log-magnitudes of a 16×-zero-padded FFT. The Blackman–Harris window's
    side lobes sit 92 dB down, so none of them passes for a peak (a Hann window's first side
    lobe, −31 dB, did: a 220 Hz note read as 214 Hz)."""
    y = y - y.mean()
    n_fft = 1 << int(np.ceil(np.log2(len(y) * 16)))
    mag = np.abs(np.fft.rfft(y * scipy.signal.windows.blackmanharris(len(y)), n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1 / rate_hz)
    mag[freqs < 20] = 0
    peaks, _ = scipy.signal.find_peaks(mag, height=mag.max() * 10 ** (-30 / 20))
    k = int(peaks[0])
    a, b, c = np.log(mag[k - 1 : k + 2])
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return float(freqs[k] + shift * (freqs[1] - freqs[0]))


def cents(f: float, ref: float) -> float:
    return 1200 * np.log2(f / ref)


NOTES = [36, 43, 50, 57, 64, 69, 76, 83, 90, 96]


def render_note(backend, preset: Preset, note: int, seconds: float) -> np.ndarray:
    synth = Synth(backend, preset, sample_rate_hz=48_000, bend_range_semitones=2.0)
    synth.note_on(note, 100)
    blocks = int(seconds * 48_000 / backend.block_frames)
    audio = np.concatenate([synth.render_block() for _ in range(blocks)])
    return audio[:, 0] + audio[:, 1]


def pitch_preset(kind: str, rng: np.random.Generator) -> Preset:
    n = 64
    if kind == "uniform":
        s = np.ones((n, n))
    else:
        s = smooth_map(rng, n, 0.5, 2.0)
    return Preset(
        name=f"pitch-{kind}",
        stiffness=s.astype(np.float32),
        damping_per_s=np.full((n, n), 0.5, np.float32),
        size_m=0.4,
        loss_m2_per_s=2e-5,
        excitation={"x": 0.31, "y": 0.27, "width": 0.03, "contact_time_s": 0.001, "kind": "strike"},
        pickups={"left": [0.23, 0.36], "right": [0.23, 0.36]},
    )


@pytest.mark.parametrize("kind", ["uniform", "random-smooth"])
def test_notes_sound_at_their_pitch_across_five_octaves(cpu_backend_64, seed, kind):
    """Fundamental measured from the rendered audio within ±3 cents, MIDI 36–96."""
    rng = np.random.default_rng(seed)
    preset = pitch_preset(kind, rng)
    errors = {}
    for note in NOTES:
        y = render_note(cpu_backend_64, preset, note, 0.6)
        errors[note] = cents(fundamental_hz(y, 48_000), note_to_hz(note))
    worst = max(errors.values(), key=abs)
    assert abs(worst) < 3.0, f"seed={seed}: cents off per note: {errors}"


def test_gpu_notes_in_tune(adapter, seed):
    """The same on the GPU kernel, for a low, a middle (oversampled) and a high note."""
    from engine.fdtd import GpuFdtd

    rng = np.random.default_rng(seed)
    preset = pitch_preset("random-smooth", rng)
    gpu = GpuFdtd(64, 2, 256, adapter=adapter)
    errors = {}
    for note in (40, 67, 88):
        y = render_note(gpu, preset, note, 0.2)
        errors[note] = cents(fundamental_hz(y, 48_000), note_to_hz(note))
    assert max(abs(e) for e in errors.values()) < 3.0, f"seed={seed}: cents off: {errors}"
