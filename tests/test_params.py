"""The 25 voice parameters (engine/params.py): the table, the maps, and that each one is heard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal

import engine.params as P
from conftest import smooth_map
from engine.cpu import CpuFdtd
from engine.presets import Preset, find_preset, load_preset
from engine.synth import Synth

RATE = 48_000
GRID = 32
NOTE = 57
#: Blocks of 256 frames: 0.30 s, the key let go at 0.15 s (so the release parameters sound).
BLOCKS, OFF_BLOCK = 56, 28
#: Two renders "differ measurably" when the RMS difference of their log-magnitude spectrograms
#: exceeds this (1024-sample Hann STFT, both channels, bins above −80 dB re the louder render).
#: Every parameter clears it by ~2× or more; a change of 0.5 dB RMS is about the smallest
#: spectral change a listener notices on a sustained tone.
MIN_DIFFERENCE_DB = 1.5


def test_exactly_25_parameters_with_units_ranges_and_meanings():
    assert P.N_PARAMS == 25 == len(P.PARAMS) == len(P.NAMES)
    assert len(set(P.NAMES)) == 25, "names must be unique"
    for s in P.PARAMS:
        assert s.unit and s.meaning and len(s.meaning) > 20, s.name
        assert s.lo < s.hi and s.lo <= s.default <= s.hi, s.name
        assert s.scale in ("linear", "log") and (s.scale == "linear" or s.lo > 0), s.name
        assert P.index(s.name) == P.NAMES.index(s.name) and P.spec(s.name) is s
    np.testing.assert_array_equal(P.defaults(), [s.default for s in P.PARAMS])
    P.validate(P.defaults())
    for name in ("release_s", "gain_db", "contact_time_s", "damping_add_per_s", "detune_cents"):
        assert name in P.NAMES


def test_unit_interval_maps_roundtrip_and_their_derivative(seed):
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, (50, P.N_PARAMS))
    p = P.from_unit(u)
    assert np.all(p >= P.lows()) and np.all(p <= P.highs()), f"seed={seed}"
    np.testing.assert_allclose(P.to_unit(p), u, atol=1e-12, err_msg=f"seed={seed}")
    np.testing.assert_allclose(P.from_unit(np.zeros(25)), P.lows(), rtol=1e-12)
    np.testing.assert_allclose(P.from_unit(np.ones(25)), P.highs(), rtol=1e-12)
    eps = 1e-6
    numeric = (P.from_unit(u + eps) - P.from_unit(u - eps)) / (2 * eps)
    u_in = np.clip(u, 2 * eps, 1 - 2 * eps)
    numeric = (P.from_unit(u_in + eps) - P.from_unit(u_in - eps)) / (2 * eps)
    np.testing.assert_allclose(
        P.from_unit_derivative(u_in), numeric, rtol=1e-6, err_msg=f"seed={seed}"
    )
    # log-scaled: equal steps of u are equal ratios
    r = P.spec("release_s")
    assert r.scale == "log" and math.isclose(r.from_unit(0.5), math.sqrt(r.lo * r.hi))
    for s in P.PARAMS:
        assert math.isclose(float(s.from_unit(s.to_unit(s.default))), s.default, abs_tol=1e-12)


def test_validation_names_the_parameter_and_its_range():
    p = P.defaults()
    p[P.index("release_s")] = 20.0
    with pytest.raises(P.ParamError, match=r"release_s=20\.0 s is outside \[0\.01, 10\] s"):
        P.validate(p)
    p = P.defaults()
    p[P.index("pan")] = np.nan
    with pytest.raises(P.ParamError, match=r"pan=nan 1 is outside \[-1, 1\]"):
        P.validate(p)
    with pytest.raises(P.ParamError, match=r"25 entries; got shape \(24,\)"):
        P.validate(np.zeros(24))
    with pytest.raises(
        P.ParamError, match="no parameter named 'volume'; the parameters are detune_cents"
    ):
        P.index("volume")
    with pytest.raises(P.ParamError, match=r"gain_db=99 dB is outside \[-60, 40\] dB"):
        P.from_dict({"gain_db": 99})
    with pytest.raises(P.ParamError, match="NaN in morph"):
        P.clip(np.where(np.arange(25) == P.index("morph"), np.nan, P.defaults()))
    clipped = P.clip(P.highs() + 5.0)
    np.testing.assert_array_equal(clipped, P.highs())
    q = P.from_dict({"gain_db": -6.0, "pan": 0.25})
    assert P.as_dict(q)["gain_db"] == -6.0 and P.as_dict(q)["pan"] == 0.25
    assert P.as_dict(q)["release_s"] == P.spec("release_s").default


def test_preset_params_take_the_instrument_values():
    preset = load_preset(find_preset("plate"))
    p = P.as_dict(P.preset_params(preset))
    assert (
        p["excite_x"] == preset.excitation["x"] and p["excite_width"] == preset.excitation["width"]
    )
    assert p["contact_time_s"] == preset.excitation["contact_time_s"] and p["pluck"] == 0.0
    assert [p["pickup_l_x"], p["pickup_l_y"]] == preset.pickups["left"]
    assert [p["pickup_r_x"], p["pickup_r_y"]] == preset.pickups["right"]
    assert p["boundary"] == preset.boundary and p["gain_db"] == preset.gain_db
    assert P.level_amplitude(-80.0, "drive_db") == 0.0 and P.level_amplitude(0.0, "thump_db") > 0.99


# ---- every parameter is heard --------------------------------------------------------------


@pytest.fixture(scope="module")
def backend():
    """One numba backend (float32, the real-time precision) for every render: compiled once."""
    return CpuFdtd(GRID, 1, 256, dtype=np.float32)


def bodies(rng: np.random.Generator) -> tuple[Preset, Preset]:
    """A random body and a quite different one to morph towards."""
    a = Preset(
        "a",
        smooth_map(rng, GRID, 0.7, 1.6).astype(np.float32),
        smooth_map(rng, GRID, 1.0, 6.0).astype(np.float32),
        size_m=0.2,
        loss_m2_per_s=4e-5,
    )
    b = Preset(
        "b",
        smooth_map(rng, GRID, 0.3, 3.0).astype(np.float32),
        smooth_map(rng, GRID, 5.0, 30.0).astype(np.float32),
        size_m=0.2,
        loss_m2_per_s=4e-5,
    )
    return a, b


def render(backend, a: Preset, b: Preset, params: np.ndarray) -> np.ndarray:
    synth = Synth(backend, a, morph_to=b, sample_rate_hz=RATE)
    synth.note_on(NOTE, 100, params=params)
    out = []
    for k in range(BLOCKS):
        if k == OFF_BLOCK:
            synth.note_off(NOTE)
        out.append(synth.render_block())
    return np.concatenate(out).astype(np.float64)


def spectrogram_difference_db(ya: np.ndarray, yb: np.ndarray, floor_db: float = -80.0) -> float:
    """RMS difference (dB) of two stereo renders' log-magnitude spectrograms (MIN_DIFFERENCE_DB)."""
    _, _, za = scipy.signal.stft(ya.T, fs=RATE, nperseg=1024, noverlap=512)
    _, _, zb = scipy.signal.stft(yb.T, fs=RATE, nperseg=1024, noverlap=512)
    ma, mb = np.abs(za), np.abs(zb)
    floor = max(ma.max(), mb.max()) * 10 ** (floor_db / 20)
    heard = (ma > floor) | (mb > floor)
    diff = 20 * np.log10(np.maximum(ma, floor)) - 20 * np.log10(np.maximum(mb, floor))
    return float(np.sqrt(np.mean(diff[heard] ** 2)))


def test_every_parameter_changes_the_sound(backend, seed):
    """Each parameter at its min and at its max (the others at their defaults): the two renders
    (one note, 32×32 float32 numba, 0.3 s, released at 0.15 s) differ by > MIN_DIFFERENCE_DB."""
    rng = np.random.default_rng(seed)
    a, b = bodies(rng)
    differences = {}
    for i, s in enumerate(P.PARAMS):
        renders = []
        for value in (s.lo, s.hi):
            p = P.defaults()
            p[i] = value
            y = render(backend, a, b, p)
            assert (
                np.all(np.isfinite(y)) and np.abs(y).max() > 1e-4
            ), f"seed={seed}: {s.name}={value} gave no sound"
            renders.append(y)
        differences[s.name] = spectrogram_difference_db(*renders)
    quiet = {k: round(v, 2) for k, v in differences.items() if v <= MIN_DIFFERENCE_DB}
    assert not quiet, (
        f"seed={seed}: these parameters change the sound by no more than {MIN_DIFFERENCE_DB} dB "
        f"between their min and max: {quiet} (all: "
        f"{ {k: round(v, 1) for k, v in differences.items()} })"
    )
