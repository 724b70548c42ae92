"""The KAN (engine/kan.py): analytic gradients against finite differences, ranges, defaults."""

from __future__ import annotations

import numpy as np
import pytest

import engine.params as P
from engine.kan import INPUTS, KAN, KANError, N_INPUTS, REST_INPUTS, inputs


def random_kan(
    rng: np.random.Generator, widths=(N_INPUTS, 8, P.N_PARAMS), scale: float = 1.0
) -> KAN:
    kan = KAN(widths, n_basis=int(rng.integers(3, 10)), rng=rng)
    kan.set_parameters(kan.parameters() * scale + rng.normal(0, 0.1, kan.n_weights))
    return kan


def loss(kan: KAN, x: np.ndarray, g: np.ndarray) -> float:
    return float(np.sum(kan(x) * g))


@pytest.mark.parametrize("widths", [(5, 8, 25), (5, 3, 6, 25)])
def test_backward_matches_central_differences(seed, widths):
    """Every weight and input gradient, float64, relative error < 1e-6 (overall and per entry)."""
    rng = np.random.default_rng(seed)
    kan = random_kan(rng, widths)
    x = rng.uniform(-0.2, 1.2, (3, N_INPUTS))  # a little outside the grid, too
    g = rng.normal(size=(3, P.N_PARAMS))
    _, cache = kan.forward(x)
    grads = kan.backward(cache, g)
    analytic = kan.flatten_grads(grads)
    w0 = kan.parameters()
    eps = 1e-6
    numeric = np.empty_like(w0)
    for i in range(w0.size):
        w = w0.copy()
        w[i] += eps
        kan.set_parameters(w)
        up = loss(kan, x, g)
        w[i] -= 2 * eps
        kan.set_parameters(w)
        numeric[i] = (up - loss(kan, x, g)) / (2 * eps)
    kan.set_parameters(w0)
    rel = np.linalg.norm(numeric - analytic) / np.linalg.norm(analytic)
    assert rel < 1e-6, f"seed={seed}: weight gradients off by {rel:.2e} (relative L2)"
    scale = np.abs(analytic).max()
    worst = int(np.argmax(np.abs(numeric - analytic)))
    assert (
        np.abs(numeric - analytic).max() < 1e-6 * scale
    ), f"seed={seed}: weight {worst}: analytic {analytic[worst]!r}, numeric {numeric[worst]!r}"
    dx = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        dx[idx] = (loss(kan, xp, g) - loss(kan, xm, g)) / (2 * eps)
    rel_x = np.linalg.norm(dx - grads["x"]) / np.linalg.norm(grads["x"])
    assert rel_x < 1e-6, f"seed={seed}: input gradients off by {rel_x:.2e}"


def test_single_input_matches_batch_and_backward_shapes(seed):
    rng = np.random.default_rng(seed)
    kan = random_kan(rng)
    x = rng.uniform(0, 1, (4, N_INPUTS))
    batch, _ = kan.forward(x)
    for n in range(4):
        np.testing.assert_allclose(kan(x[n]), batch[n], rtol=1e-12, err_msg=f"seed={seed}")
    _, cache = kan.forward(x[0])
    grads = kan.backward(cache, np.ones(P.N_PARAMS))
    assert grads["x"].shape == (N_INPUTS,)
    assert grads["w1"].shape == kan.w[1].shape and grads["c0"].shape == kan.c[0].shape
    with pytest.raises(KANError, match="grad_params has shape"):
        kan.backward(cache, np.ones(3))


def test_outputs_stay_inside_the_ranges_for_any_weights_and_inputs(seed):
    rng = np.random.default_rng(seed)
    kan = random_kan(rng, scale=30.0)  # saturates the sigmoid on purpose
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * N_INPUTS)).reshape(N_INPUTS, -1).T
    extreme = np.concatenate([corners, rng.uniform(-50, 50, (64, N_INPUTS))])
    p = kan(extreme)
    assert np.all(np.isfinite(p)), f"seed={seed}"
    lo, hi = P.lows(), P.highs()
    bad = np.argwhere((p < lo) | (p > hi))
    assert bad.size == 0, f"seed={seed}: {P.NAMES[bad[0][1]]}={p[tuple(bad[0])]} out of range"
    P.validate(p)


def test_default_sits_at_the_centre_at_rest(seed):
    rng = np.random.default_rng(seed)
    centres = [P.defaults(), P.from_unit(rng.uniform(0, 1, P.N_PARAMS))]
    for centre in centres:
        kan = KAN.default(centre)
        for note in (0, 60, 127):
            p = kan(inputs(note, **REST_INPUTS))
            # a default at an end of its range comes out within σ(−13.8) = 1e-6 of the range
            err = np.abs(P.to_unit(p) - P.to_unit(centre))
            assert (
                err.max() < 2e-6
            ), f"seed={seed}: {P.NAMES[int(np.argmax(err))]} off at note {note}"


def test_default_velocity_makes_louder_and_brighter_and_mod_wheel_is_audible(seed):
    rng = np.random.default_rng(seed)
    centre = P.defaults()
    # any instrument's centre, not only the defaults (keep the force and contact inside)
    centre[P.index("contact_time_s")] = rng.uniform(3e-4, 0.01)
    centre[P.index("force_db")] = rng.uniform(-20, -5)
    kan = KAN.default(centre)
    v = np.linspace(0, 1, 501)
    x = np.array([inputs(60, vel) for vel in v])
    p = kan(x)
    force, contact = p[:, P.index("force_db")], p[:, P.index("contact_time_s")]
    assert np.all(np.diff(force) > 0), f"seed={seed}: force not increasing with velocity"
    assert np.all(np.diff(contact) < 0), f"seed={seed}: contact not shortening with velocity"
    assert (
        force[-1] - force[0] > 30.0
    ), f"seed={seed}: only {force[-1] - force[0]:.1f} dB of dynamics"
    assert contact[0] / contact[-1] > 2.5
    others = np.delete(p, [P.index("force_db"), P.index("contact_time_s")], axis=1)
    assert np.ptp(others, axis=0).max() < 1e-9, "velocity moved another parameter"
    m = kan(np.array([inputs(60, 0.5, mod) for mod in np.linspace(0, 1, 101)]))
    loss_scale = m[:, P.index("loss_scale")]
    assert np.all(np.diff(loss_scale) < 0) and loss_scale[0] / loss_scale[-1] > 3.5, f"seed={seed}"
    pr = kan(np.array([inputs(60, 0.5, 0.0, pressure) for pressure in np.linspace(0, 1, 101)]))
    drive = pr[:, P.index("drive_db")]
    assert np.all(np.diff(drive) >= 0) and drive[-1] > -21.0 and drive[0] < -79.99


def test_parameters_roundtrip_and_storage(tmp_path, seed):
    rng = np.random.default_rng(seed)
    kan = random_kan(rng, (5, 6, 25))
    vec = kan.parameters()
    assert (
        vec.shape
        == (kan.n_weights,)
        == (6 * 5 * kan.n_basis + 30 + 6 + 25 * 6 * kan.n_basis + 150 + 25,)
    )
    other = KAN((5, 6, 25), kan.n_basis)
    other.set_parameters(vec)
    x = rng.uniform(0, 1, (5, N_INPUTS))
    np.testing.assert_array_equal(other(x), kan(x))
    arrays = kan.to_arrays()
    assert all(k.startswith("kan_") for k in arrays)
    np.testing.assert_array_equal(KAN.from_arrays(arrays)(x), kan(x))
    path = kan.save(tmp_path / "kan.npz")
    np.testing.assert_array_equal(KAN.load(path)(x), kan(x))
    with pytest.raises(KANError, match="weight vector has shape"):
        kan.set_parameters(vec[:-1])
    with pytest.raises(KANError, match="NaN"):
        kan.set_parameters(np.full_like(vec, np.nan))


def test_stored_arrays_are_checked():
    arrays = KAN.default().to_arrays()
    bad = dict(arrays, kan_param_names=np.array(list(P.NAMES[:-1]) + ["volume"]))
    with pytest.raises(KANError, match="differ from this engine's parameters"):
        KAN.from_arrays(bad)
    bad = dict(arrays, kan_w1=arrays["kan_w1"][:, :3])
    with pytest.raises(KANError, match=r"kan_w1 has shape \(25, 3, 8\)"):
        KAN.from_arrays(bad)
    bad = {k: v for k, v in arrays.items() if k != "kan_c0"}
    with pytest.raises(KANError, match="missing kan_c0"):
        KAN.from_arrays(bad)
    bad = dict(arrays, kan_b0=np.full_like(arrays["kan_b0"], np.inf))
    with pytest.raises(KANError, match="kan_b0 contains NaN or Inf"):
        KAN.from_arrays(bad)


def test_bad_shapes_are_refused():
    with pytest.raises(KANError, match="5 inputs"):
        KAN((4, 8, 25))
    with pytest.raises(KANError, match="25 outputs"):
        KAN((5, 8, 24))
    with pytest.raises(KANError, match="n_basis=1"):
        KAN(n_basis=1)
    with pytest.raises(KANError, match=r"inputs have shape \(4,\)"):
        KAN.default()(np.zeros(4))
    assert INPUTS == ("note", "velocity", "mod_wheel", "pressure", "slide")
    with pytest.raises(KANError, match="non-finite input"):
        inputs(60, float("nan"))
