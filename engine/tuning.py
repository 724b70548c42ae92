r"""Exact pitch: the discrete dispersion relation of the scheme, and the steps per sample.

A mode of the discrete operator ``−s·L`` (``L`` the 5-point Laplacian in grid units with the
body's boundary) with eigenvalue ``μ`` evolves under the scheme of :mod:`engine.reference` as
the two-step recursion

    (1+γ)·z² − (2 − (C²+η)·μ)·z + (1 − γ − η·μ) = 0,

so it rings at ``f = θ/(2π·Δt)`` with

    cos θ = (2 − (C²+η)·μ) / (2·sqrt((1+γ)·(1 − γ − η·μ))).

Given a target frequency, :func:`solve_c2` inverts this in closed form for ``C²``; nothing
is approximated, so a note is exactly in tune to the extent that the mode's eigenvalue is
known (``scipy.sparse.linalg.eigsh`` in shift-invert mode gives it to machine precision in
milliseconds) and the damping is uniform over the mode (a per-cell ``γ`` enters through its
mode-weighted mean, a second-order effect of about ``γ²/2`` ≈ 1e-7 relative).

How high a body can sing: ``C²`` is bounded by stability, ``(C² + 2η)·max(s) < 0.5``. At one
step per sample (48 kHz) a uniform 64×64 clamped body reaches ~370 Hz. A higher note takes
more FDTD steps per output sample (the *oversampling factor*, chosen per voice by
:func:`choose_steps_per_sample`); the voice layer decimates the fine-rate pickup through an
elliptic low-pass. Raising the wave speed is the same as shrinking the body, so the timbre
of the body is kept across the keyboard. Low notes need nothing: ``C`` simply gets smaller.

Public API: ``operator_matrix``, ``lowest_mode``, ``mode_frequency_hz``, ``solve_c2``,
``choose_steps_per_sample``, ``LowestMode``, ``TuningError``, ``CFL_LIMIT``, ``CFL_SAFETY``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = [
    "CFL_LIMIT",
    "CFL_SAFETY",
    "LowestMode",
    "TuningError",
    "operator_matrix",
    "lowest_mode",
    "mode_frequency_hz",
    "solve_c2",
    "choose_steps_per_sample",
]

#: Stability bound of the scheme: (C² + 2η)·max(s) < CFL_LIMIT.
CFL_LIMIT = 0.5
#: Fraction of the bound the engine uses, leaving room for float32 rounding.
CFL_SAFETY = 0.98
#: Eigenvalues below this (grid units) are rigid-body motion of a free body, not a pitch.
_RIGID_MU = 1e-9


class TuningError(ValueError):
    """A note cannot be played in tune on this body within the stability bound."""


@dataclass(frozen=True, slots=True)
class LowestMode:
    """The lowest vibrating mode of a body.

    Attributes:
        mu: eigenvalue of ``−s·L`` in grid units (the mode's squared wavenumber × Δx²).
        shape: the mode of the symmetric form ``s^½·(−L)·s^½``, unit norm, ``(N, N)``.
        max_stiffness: ``max(s)``, which sets the stability bound.
    """

    mu: float
    shape: np.ndarray
    max_stiffness: float

    def weighted_mean(self, values: np.ndarray) -> float:
        """Mean of a per-cell quantity (e.g. damping) weighted by the mode's energy."""
        w = self.shape**2
        return float(np.sum(w * values) / np.sum(w))


def operator_matrix(stiffness: np.ndarray, boundary: float) -> sp.csr_matrix:
    """The symmetric form ``s^½·(−L)·s^½`` of the discrete operator, sparse (N²×N²).

    ``L`` is the 5-point Laplacian in grid units whose ghost cells hold ``boundary·u_edge``.
    Its eigenvalues are those of ``−s·L``, the operator the scheme applies.
    """
    n = stiffness.shape[0]
    main = np.full((n, n), 4.0)
    main[0, :] -= boundary
    main[-1, :] -= boundary
    main[:, 0] -= boundary
    main[:, -1] -= boundary
    idx = np.arange(n * n).reshape(n, n)
    rows = [idx.ravel()]
    cols = [idx.ravel()]
    vals = [main.ravel()]
    for a, b in ((idx[1:, :], idx[:-1, :]), (idx[:, 1:], idx[:, :-1])):
        rows += [a.ravel(), b.ravel()]
        cols += [b.ravel(), a.ravel()]
        vals += [np.full(a.size, -1.0)] * 2
    minus_l = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n,) * 2
    )
    root = sp.diags(np.sqrt(np.asarray(stiffness, np.float64).ravel()))
    return (root @ minus_l @ root).tocsr()


def lowest_mode(stiffness: np.ndarray, boundary: float = 0.0) -> LowestMode:
    """The lowest non-rigid mode of ``−s·L`` (shift-invert Lanczos, a few milliseconds at 64²).

    Arguments:
        stiffness: the (morphed) stiffness map ``s``, positive, ``(N, N)``.
        boundary: ``b`` in [0, 1]; at ``b = 1`` the rigid mode (μ = 0) is skipped.
    """
    s = np.asarray(stiffness, np.float64)
    n = s.shape[0]
    a = operator_matrix(s, boundary)
    # A slightly negative shift keeps the factorisation regular for a free body (μ₀ = 0).
    shift = -1e-6 * float(s.max())
    vals, vecs = spla.eigsh(a, k=2, sigma=shift, which="LM")
    order = np.argsort(vals)
    for i in order:
        if vals[i] > _RIGID_MU * float(s.max()):
            return LowestMode(float(vals[i]), vecs[:, i].reshape(n, n), float(s.max()))
    raise TuningError("the body has no vibrating mode (all eigenvalues are zero)")


def mode_frequency_hz(
    mu: float | np.ndarray,
    c2: float | np.ndarray,
    eta: float,
    gamma: float,
    dt_s: float,
) -> float | np.ndarray:
    """Frequency in Hz at which a mode of eigenvalue ``mu`` rings under the scheme."""
    cos_theta = (2.0 - (c2 + eta) * mu) / (2.0 * np.sqrt((1.0 + gamma) * (1.0 - gamma - eta * mu)))
    return np.arccos(np.clip(cos_theta, -1.0, 1.0)) / (2.0 * np.pi * dt_s)


def solve_c2(frequency_hz: float, mu: float, eta: float, gamma: float, dt_s: float) -> float:
    """The ``C²`` that makes a mode of eigenvalue ``mu`` ring at ``frequency_hz`` (exact).

    May be negative or break the stability bound: :func:`choose_steps_per_sample` checks.
    """
    theta = 2.0 * np.pi * frequency_hz * dt_s
    if not 0.0 < theta < np.pi:
        raise TuningError(
            f"{frequency_hz:.2f} Hz is at or above the Nyquist frequency of the step "
            f"Δt={dt_s:.3e} s"
        )
    root = np.sqrt((1.0 + gamma) * (1.0 - gamma - eta * mu))
    return float((2.0 - 2.0 * np.cos(theta) * root) / mu - eta)


def choose_steps_per_sample(
    frequency_hz: float,
    mode: LowestMode,
    *,
    sample_rate_hz: float,
    loss_m2_per_s: float,
    dx_m: float,
    gamma_per_step_hz: float = 0.0,
    max_steps_per_sample: int = 16,
    headroom_semitones: float = 0.0,
) -> tuple[int, float, float]:
    """The fewest FDTD steps per output sample that play ``frequency_hz`` stably.

    Arguments:
        frequency_hz: the note's fundamental.
        mode: the body's lowest mode (:func:`lowest_mode`).
        sample_rate_hz: output sample rate.
        loss_m2_per_s: σ₁, the frequency-dependent loss, in m²/s.
        dx_m: grid spacing in metres (body side / N).
        gamma_per_step_hz: the mode-weighted damping d in 1/s (γ = d·Δt).
        max_steps_per_sample: the largest oversampling factor allowed.
        headroom_semitones: also keep ``frequency × 2^(headroom/12)`` stable (pitch bend).

    Returns:
        ``(steps_per_sample, C², η)`` for the exact frequency.

    Raises:
        TuningError: no oversampling factor up to the maximum fits the CFL bound; the
            message names the note, the body's ``max(s)`` and what would be needed.
    """
    bound = CFL_LIMIT * CFL_SAFETY / mode.max_stiffness
    top_hz = frequency_hz * 2.0 ** (headroom_semitones / 12.0)
    for steps in range(1, max_steps_per_sample + 1):
        dt = 1.0 / (sample_rate_hz * steps)
        eta = 2.0 * loss_m2_per_s * dt / dx_m**2
        gamma = gamma_per_step_hz * dt
        if 2.0 * np.pi * top_hz * dt >= np.pi:
            continue
        c2_top = solve_c2(top_hz, mode.mu, eta, gamma, dt)
        if 0.0 < c2_top and c2_top + 2.0 * eta < bound:
            return steps, solve_c2(frequency_hz, mode.mu, eta, gamma, dt), eta
    raise TuningError(
        f"{frequency_hz:.1f} Hz (with {headroom_semitones:g} semitones of bend headroom) is out "
        f"of reach of this body: its lowest mode μ={mode.mu:.3e} with max(s)={mode.max_stiffness:.3g} "
        f"and σ₁={loss_m2_per_s:.2e} m²/s needs more than {max_steps_per_sample} FDTD steps per "
        f"sample at {sample_rate_hz:g} Hz to stay stable. Play lower, lower the loss, or use a "
        f"body with less stiffness contrast."
    )
