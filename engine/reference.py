r"""The FDTD scheme in float64 numpy: the twin every fast kernel is tested against.

The body is a 2D scalar wave equation on an N×N grid with a per-cell stiffness ``s[i,j]``
(dimensionless) and damping ``d[i,j]`` (1/s), a frequency-dependent loss and a force:

    u_tt = c²·s·∇²u − 2·d·u_t + 2σ₁·s·∇²u_t + f(t)·e(x, y)

Leapfrog in time, 5-point Laplacian in space, the σ₁ term backward-differenced
(Bilbao, *Numerical Sound Synthesis*, 2009, §6.1.2 and §11.3):

    u⁺ = [2u − (1−γ)u⁻ + C²·s·Lu + η·s·L(u − u⁻) + F] / (1+γ)

with ``L`` the 5-point Laplacian in grid units, ``γ = d·Δt``, ``η = 2σ₁Δt/Δx²``,
``C = cΔt/Δx`` and ``F`` the force footprint times the kick of this step. Writing
``a = 2/(1+γ)`` the update is

    u⁺ = a·u + (1−a)·u⁻ + (C²s/(1+γ))·Lu + (ηs/(1+γ))·(Lu − Lu⁻) + F/(1+γ)

which is how every backend computes it (``Lu⁻`` is the previous step's ``Lu``).

Boundary: the ghost cell just outside an edge holds ``b·u_edge``; ``b = 0`` is a fixed
(clamped, Dirichlet) edge, ``b = 1`` a free (Neumann) edge.

Stability: ``(C² + 2η)·max(s) < 0.5`` (the largest eigenvalue of −L is below 8). A mode of
the operator −s·L with eigenvalue μ (grid units) obeys the two-step recursion
``(1+γ)z² − (2 − (C²+η)μ)z + (1 − γ − ημ) = 0``, so it sounds at ``θ/(2πΔt)`` Hz with
``cos θ = (2 − (C²+η)μ) / (2·sqrt((1+γ)(1−γ−ημ)))`` and decays at about ``d + σ₁μ/Δx²``
per second; :mod:`engine.tuning` inverts this for exact pitch.

Excitation: a Gaussian footprint ``exp(−((j−x)² + (i−y)²)/(2w²))`` normalised to sum 1,
centred at a continuous position. Pickups: bilinear reads of ``u`` at continuous positions,
one per channel, after every step.

The records, events and force of a block are laid out by :mod:`engine.block`;
:class:`ReferenceFdtd` runs a :class:`~engine.block.BlockPlan` exactly as the GPU kernel
``shaders/fdtd.wgsl`` does, in float64.

Public API: ``laplacian``, ``coefficients``, ``bilinear``, ``ReferenceFdtd``.
"""

from __future__ import annotations

import numpy as np

from .block import RECORD_RESET, BlockPlan, check_fields, check_map

__all__ = ["laplacian", "coefficients", "bilinear", "ReferenceFdtd"]


def laplacian(u: np.ndarray, boundary: float) -> np.ndarray:
    """5-point Laplacian in grid units; ghost cells hold ``boundary · u_edge``."""
    lu = -4.0 * u
    lu[1:, :] += u[:-1, :]
    lu[:-1, :] += u[1:, :]
    lu[:, 1:] += u[:, :-1]
    lu[:, :-1] += u[:, 1:]
    if boundary != 0.0:
        lu[0, :] += boundary * u[0, :]
        lu[-1, :] += boundary * u[-1, :]
        lu[:, 0] += boundary * u[:, 0]
        lu[:, -1] += boundary * u[:, -1]
    return lu


def coefficients(
    record: np.void, maps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell ``(a, C²s/(1+γ), ηs/(1+γ), footprint/(1+γ))`` of a record, in float64.

    ``maps`` has shape ``(slots, 2, N, N)``: stiffness then damping in 1/s.
    """
    w = float(record["morph"])
    ma, mb = maps[int(record["map_a"])], maps[int(record["map_b"])]
    s = ma[0] * (1.0 - w) + mb[0] * w
    d = ma[1] * (1.0 - w) + mb[1] * w
    gamma = float(record["gamma_per_d"]) * d + float(record["gamma_add"])
    inv = 1.0 / (1.0 + gamma)
    n = s.shape[0]
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    r2 = (j - float(record["exc_x"])) ** 2 + (i - float(record["exc_y"])) ** 2
    footprint = np.exp(-r2 * float(record["exc_inv_2w2"])) * float(record["exc_norm"])
    return 2.0 * inv, float(record["c2"]) * s * inv, float(record["eta"]) * s * inv, footprint * inv


def bilinear(u: np.ndarray, x: float, y: float) -> float:
    """``u`` read at the continuous position (column ``x``, row ``y``), in grid units."""
    n = u.shape[0]
    j0 = min(int(np.floor(x)), n - 1)
    i0 = min(int(np.floor(y)), n - 1)
    fx, fy = x - j0, y - i0
    j1, i1 = min(j0 + 1, n - 1), min(i0 + 1, n - 1)
    return float(
        (1 - fy) * ((1 - fx) * u[i0, j0] + fx * u[i0, j1])
        + fy * ((1 - fx) * u[i1, j0] + fx * u[i1, j1])
    )


class ReferenceFdtd:
    """The float64 backend: runs a :class:`~engine.block.BlockPlan` step by step in numpy.

    Slow (one voice at a time, ~20 µs a 64×64 step) and exact; the twin of
    ``shaders/fdtd.wgsl``. Implements :class:`~engine.block.FdtdBackend`.
    """

    def __init__(
        self,
        grid_n: int,
        max_voices: int,
        block_frames: int,
        *,
        n_map_slots: int = 4,
        max_steps_per_sample: int = 16,
        max_events_per_voice: int = 32,
    ) -> None:
        self.grid_n = grid_n
        self.max_events_per_voice = max_events_per_voice
        self.max_voices = max_voices
        self.block_frames = block_frames
        self.n_map_slots = n_map_slots
        self.max_steps_per_sample = max_steps_per_sample
        self.maps = np.zeros((n_map_slots, 2, grid_n, grid_n))
        self.fields = np.zeros((max_voices, 2, grid_n, grid_n))
        self.pickups = np.zeros(max_voices * 2 * block_frames * max_steps_per_sample)

    def new_plan(self) -> BlockPlan:
        return BlockPlan.sized_for(self)

    def upload_map(self, slot: int, stiffness: np.ndarray, damping_per_s: np.ndarray) -> None:
        check_map(self.grid_n, self.n_map_slots, slot, stiffness, damping_per_s)
        self.maps[slot, 0] = stiffness
        self.maps[slot, 1] = damping_per_s

    def read_fields(self, slot: int) -> np.ndarray:
        return self.fields[slot].copy()

    def write_fields(self, slot: int, fields: np.ndarray) -> None:
        check_fields(self.grid_n, self.max_voices, slot, fields)
        self.fields[slot] = fields

    def run(self, plan: BlockPlan) -> np.ndarray:
        for v in range(plan.n_voices):
            self._run_voice(plan, v)
        return self.pickups[: plan.out_size]

    def _run_voice(self, plan: BlockPlan, v: int) -> None:
        h = plan.headers[v]
        slot = int(h["slot"])
        os_ = int(h["steps_per_sample"])
        n_samples = int(h["n_samples"])
        n_fine = n_samples * os_
        out = self.pickups[int(h["out_offset"]) : int(h["out_offset"]) + 2 * n_fine]
        out = out.reshape(2, n_fine)
        force = plan.force[int(h["force_offset"]) : int(h["force_offset"]) + n_samples]
        events = plan.events[int(h["first_event"]) : int(h["first_event"]) + int(h["n_events"])]
        u_prev, u = self.fields[slot, 0].copy(), self.fields[slot, 1].copy()

        def apply(rec_index: int):
            nonlocal u, u_prev
            rec = plan.records[rec_index]
            if int(rec["flags"]) & RECORD_RESET:
                u = np.zeros_like(u)
                u_prev = np.zeros_like(u)
            return rec, coefficients(rec, self.maps)

        rec, (a, cl, ce, fe) = apply(int(h["record"]))
        lu_prev = laplacian(u_prev, float(rec["boundary"]))
        ev = 0
        k = 0
        for n in range(n_samples):
            while ev < len(events) and int(events[ev]["sample"]) == n:
                rec, (a, cl, ce, fe) = apply(int(events[ev]["record"]))
                if int(rec["flags"]) & RECORD_RESET:
                    lu_prev = np.zeros_like(u)
                ev += 1
            b = float(rec["boundary"])
            f = float(force[n])
            for _ in range(os_):
                lu = laplacian(u, b)
                u_new = a * u + (1.0 - a) * u_prev + cl * lu + ce * (lu - lu_prev) + fe * f
                u_prev, u, lu_prev = u, u_new, lu
                out[0, k] = bilinear(u, float(rec["pick_lx"]), float(rec["pick_ly"]))
                out[1, k] = bilinear(u, float(rec["pick_rx"]), float(rec["pick_ry"]))
                k += 1
        self.fields[slot, 0] = u_prev
        self.fields[slot, 1] = u
