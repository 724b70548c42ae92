r"""A Kolmogorov–Arnold network (KAN) that turns a played note into the 25 voice parameters.

Inputs (:data:`INPUTS`), each in ``[0, 1]``: ``note/127``, ``velocity/127``, the mod wheel,
MPE pressure and MPE slide. Outputs: the 25 parameters of :mod:`engine.params`.

Layers. A layer maps ``x ∈ ℝ^{n_in}`` to ``y ∈ ℝ^{n_out}``; every edge ``i → o`` carries its
own function of one variable and a node sums its edges plus a bias:

    y_o = c_o + Σ_i φ_oi(x_i),     φ_oi(x) = Σ_k w_oik·exp(−((x − g_k)/h)²) + b_oi·x

with ``K`` Gaussian radial basis functions on a fixed grid ``g_k = lo + k·h``,
``h = (hi − lo)/(K − 1)`` (``[lo, hi] = [0, 1]`` unless given), and a linear residual ``b·x``
that carries the edge outside the grid. No other nonlinearity: the edges are it.

Squash. The last layer's ``z`` (one per parameter) becomes a value inside its range:

    u = σ(z) = 1/(1 + e^{−z}) ∈ (0, 1),     p = params.from_unit(u)

(linear or logarithmic per parameter, :func:`engine.params.from_unit`), so every output is
inside its range whatever the weights and inputs.

Backward. For a loss ``ℓ`` with ``∂ℓ/∂p`` given, ``∂ℓ/∂z = ∂ℓ/∂p · p'(u) · u(1−u)``, and per
layer, with ``B_ik = exp(−((x_i − g_k)/h)²)``:

    ∂ℓ/∂w_oik = Σ_batch δ_o·B_ik     ∂ℓ/∂b_oi = Σ_batch δ_o·x_i     ∂ℓ/∂c_o = Σ_batch δ_o
    ∂ℓ/∂x_i   = Σ_o δ_o·(b_oi + Σ_k w_oik·B_ik·(−2(x_i − g_k)/h²))

analytic, in float64, checked against central finite differences in ``tests/test_kan.py``.

Default weights (:meth:`KAN.default`): the hidden layer passes the five inputs through
(``b = 1`` on the edges ``i → i``), and the output layer sits at a centre vector (the
parameters' defaults, or an instrument's) at the rest state — velocity ½, mod wheel 0,
pressure 0, slide ½ — plus one fitted edge per control (least squares on 201 points, exact at
the rest value):

* velocity → ``force_db = centre + 30·log10(2v)`` (force ∝ ``v^1.5``; flat below ``v = 0.04``)
  and ``contact_time_s = centre·(1.5 − v)``: louder and brighter;
* mod wheel → ``loss_scale = centre·4^−m``: the highs ring longer;
* pressure → ``drive_db`` from the centre to −20 dB along ``1 − (1 − p)³`` in the logit (a
  held note starts to sing past half pressure);
* slide → ``damping_scale = centre·4^(1−2s)``: longer ring above the middle.

The note number maps to nothing: pitch is the engine's exact tuning.

Storage: :meth:`KAN.to_arrays` / :meth:`KAN.from_arrays` give the ``kan_*`` arrays a preset
file stores; :meth:`KAN.save` / :meth:`KAN.load` write and read them as an ``.npz``.

Public API: ``KAN``, ``KANError``, ``INPUTS``, ``N_INPUTS``, ``REST_INPUTS``, ``inputs``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from . import params as P

__all__ = ["KAN", "KANError", "INPUTS", "N_INPUTS", "REST_INPUTS", "inputs"]

#: What the network reads, in order, each scaled to [0, 1].
INPUTS: tuple[str, ...] = ("note", "velocity", "mod_wheel", "pressure", "slide")
N_INPUTS = len(INPUTS)
#: The rest state (besides the note): velocity ½, mod wheel 0, pressure 0, slide ½ (MPE's 64).
REST_INPUTS = {"velocity": 0.5, "mod_wheel": 0.0, "pressure": 0.0, "slide": 0.5}
#: A default sitting at an end of its range is aimed this close to it (σ never reaches 0 or 1).
_EDGE = 1e-6


class KANError(ValueError):
    """Bad shapes, names or stored arrays for a :class:`KAN`."""


def inputs(
    note: float,
    velocity: float,
    mod_wheel: float = 0.0,
    pressure: float = 0.0,
    slide: float = 0.5,
) -> np.ndarray:
    """The network's input vector: ``note`` is a MIDI number (0..127, fractional allowed),
    ``velocity`` a fraction in [0, 1] (MIDI velocity / 127), the rest fractions in [0, 1]."""
    x = np.array([note / 127.0, velocity, mod_wheel, pressure, slide], np.float64)
    if not np.all(np.isfinite(x)):
        raise KANError(f"non-finite input {dict(zip(INPUTS, x.tolist()))}")
    return np.clip(x, 0.0, 1.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, _EDGE, 1.0 - _EDGE)
    return np.log(u) - np.log1p(-u)


class KAN:
    """A KAN with Gaussian RBF edges whose outputs are the 25 voice parameters.

    Arguments:
        widths: layer widths, first :data:`N_INPUTS`, last :data:`engine.params.N_PARAMS`.
        n_basis: Gaussians per edge (``K`` ≥ 2).
        grid: ``(lo, hi)`` of the basis centres of every layer.
        rng: weights drawn from it (``w ~ N(0, 0.3²)``, ``b ~ N(0, 0.3²)``, ``c = 0``);
            ``None``: all zeros.

    Not thread-safe; evaluate from one thread or on copies.
    """

    def __init__(
        self,
        widths: tuple[int, ...] | list[int] = (N_INPUTS, 8, P.N_PARAMS),
        n_basis: int = 8,
        grid: tuple[float, float] = (0.0, 1.0),
        rng: np.random.Generator | None = None,
    ) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or widths[0] != N_INPUTS or widths[-1] != P.N_PARAMS:
            raise KANError(
                f"widths={widths}: need at least two layers, {N_INPUTS} inputs "
                f"({', '.join(INPUTS)}) and {P.N_PARAMS} outputs"
            )
        if min(widths) < 1:
            raise KANError(f"widths={widths}: every layer needs at least one node")
        if int(n_basis) < 2:
            raise KANError(f"n_basis={n_basis}; at least 2 Gaussians per edge")
        lo, hi = float(grid[0]), float(grid[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise KANError(f"grid={grid}; need finite lo < hi")
        self.widths = widths
        self.n_basis = int(n_basis)
        self.grid = (lo, hi)
        self.centres = np.linspace(lo, hi, self.n_basis)
        self.h = (hi - lo) / (self.n_basis - 1)
        self.w: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            if rng is None:
                self.w.append(np.zeros((n_out, n_in, self.n_basis)))
                self.b.append(np.zeros((n_out, n_in)))
            else:
                self.w.append(rng.normal(0.0, 0.3, (n_out, n_in, self.n_basis)))
                self.b.append(rng.normal(0.0, 0.3, (n_out, n_in)))
            self.c.append(np.zeros(n_out))

    # ---- evaluation ---------------------------------------------------------------------

    def _basis(self, x: np.ndarray) -> np.ndarray:
        """``B[batch, i, k] = exp(−((x_i − g_k)/h)²)``."""
        return np.exp(-(((x[:, :, None] - self.centres) / self.h) ** 2))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Parameters for inputs ``x`` (``(5,)`` or ``(batch, 5)``), a cache for :meth:`backward`.

        Returns ``(params, cache)``; ``params`` has shape ``(25,)`` or ``(batch, 25)``, every
        entry inside its range.
        """
        x = np.asarray(x, np.float64)
        single = x.ndim == 1
        xb = x[None, :] if single else x
        if xb.ndim != 2 or xb.shape[1] != N_INPUTS:
            raise KANError(
                f"inputs have shape {x.shape}; expected ({N_INPUTS},) or (batch, {N_INPUTS})"
            )
        acts = [xb]
        bases = []
        for w, b, c in zip(self.w, self.b, self.c):
            a = acts[-1]
            basis = self._basis(a)
            bases.append(basis)
            acts.append(np.einsum("nik,oik->no", basis, w) + a @ b.T + c)
        u = _sigmoid(acts[-1])
        p = P.from_unit(u)
        cache = {"acts": acts, "bases": bases, "u": u, "single": single}
        return (p[0] if single else p), cache

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Parameters for inputs ``x`` (see :meth:`forward`), without the cache."""
        return self.forward(x)[0]

    def backward(self, cache: dict, grad_params: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of a loss with ``∂ℓ/∂params = grad_params`` (shaped like the forward output).

        Returns ``{"w0": …, "b0": …, "c0": …, "w1": …, …, "x": ∂ℓ/∂inputs}``, each shaped like
        its weight (``x`` like the inputs). Summed over the batch.
        """
        g = np.asarray(grad_params, np.float64)
        u = cache["u"]
        if cache["single"]:
            g = g[None, :]
        if g.shape != u.shape:
            raise KANError(
                f"grad_params has shape {np.shape(grad_params)}; expected "
                f"{u.shape[1:] if cache['single'] else u.shape}"
            )
        delta = g * P.from_unit_derivative(u) * u * (1.0 - u)
        grads: dict[str, np.ndarray] = {}
        for layer in range(len(self.w) - 1, -1, -1):
            a = cache["acts"][layer]
            basis = cache["bases"][layer]
            w, b = self.w[layer], self.b[layer]
            grads[f"w{layer}"] = np.einsum("no,nik->oik", delta, basis)
            grads[f"b{layer}"] = delta.T @ a
            grads[f"c{layer}"] = delta.sum(axis=0)
            dbasis = basis * (-2.0 * (a[:, :, None] - self.centres) / self.h**2)
            delta = np.einsum("no,oik,nik->ni", delta, w, dbasis) + delta @ b
        grads["x"] = delta[0] if cache["single"] else delta
        return grads

    # ---- weights as one vector ----------------------------------------------------------

    def _names(self) -> list[str]:
        return [f"{kind}{layer}" for layer in range(len(self.w)) for kind in ("w", "b", "c")]

    def _get(self, name: str) -> np.ndarray:
        return {"w": self.w, "b": self.b, "c": self.c}[name[0]][int(name[1:])]

    @property
    def n_weights(self) -> int:
        """Number of trainable numbers."""
        return sum(self._get(n).size for n in self._names())

    def parameters(self) -> np.ndarray:
        """All weights as one float64 vector: per layer ``w``, ``b``, ``c``, each C-ordered."""
        return np.concatenate([self._get(n).ravel() for n in self._names()])

    def set_parameters(self, vector: np.ndarray) -> None:
        """Set all weights from a vector laid out as :meth:`parameters`."""
        v = np.asarray(vector, np.float64)
        if v.shape != (self.n_weights,):
            raise KANError(
                f"weight vector has shape {v.shape}; this KAN has {self.n_weights} weights"
            )
        if not np.all(np.isfinite(v)):
            raise KANError("weight vector contains NaN or Inf")
        at = 0
        for n in self._names():
            arr = self._get(n)
            arr[...] = v[at : at + arr.size].reshape(arr.shape)
            at += arr.size

    def flatten_grads(self, grads: dict[str, np.ndarray]) -> np.ndarray:
        """The weight gradients of :meth:`backward` as one vector laid out as :meth:`parameters`."""
        return np.concatenate([np.asarray(grads[n]).ravel() for n in self._names()])

    # ---- storage ------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The network as named float64/unicode arrays (``kan_*``), as a preset stores it."""
        out: dict[str, np.ndarray] = {
            "kan_widths": np.array(self.widths, np.int64),
            "kan_grid": np.array([self.grid[0], self.grid[1], float(self.n_basis)]),
            "kan_param_names": np.array(P.NAMES),
            "kan_inputs": np.array(INPUTS),
        }
        for n in self._names():
            out[f"kan_{n}"] = self._get(n).copy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "KAN":
        """The network stored by :meth:`to_arrays`; checks shapes, names and finiteness.

        Raises:
            KANError: a missing array, a shape that does not match the widths, non-finite
                weights, or parameter/input names that differ from this engine's.
        """
        for key in ("kan_widths", "kan_grid", "kan_param_names", "kan_inputs"):
            if key not in arrays:
                raise KANError(f"missing {key} (has {sorted(arrays)})")
        names = tuple(str(s) for s in np.asarray(arrays["kan_param_names"]).ravel())
        if names != P.NAMES:
            raise KANError(
                f"stored outputs {list(names)} differ from this engine's parameters {list(P.NAMES)}"
            )
        ins = tuple(str(s) for s in np.asarray(arrays["kan_inputs"]).ravel())
        if ins != INPUTS:
            raise KANError(f"stored inputs {list(ins)} differ from {list(INPUTS)}")
        grid = np.asarray(arrays["kan_grid"], np.float64)
        if grid.shape != (3,) or not np.all(np.isfinite(grid)) or grid[2] != round(grid[2]):
            raise KANError(f"kan_grid must be [lo, hi, n_basis], got {grid.tolist()}")
        kan = cls(
            tuple(int(w) for w in np.asarray(arrays["kan_widths"]).ravel()),
            int(grid[2]),
            (float(grid[0]), float(grid[1])),
        )
        for n in kan._names():
            key = f"kan_{n}"
            if key not in arrays:
                raise KANError(f"missing {key}")
            arr = np.asarray(arrays[key], np.float64)
            if arr.shape != kan._get(n).shape:
                raise KANError(
                    f"{key} has shape {arr.shape}; widths {kan.widths} need {kan._get(n).shape}"
                )
            if not np.all(np.isfinite(arr)):
                raise KANError(f"{key} contains NaN or Inf")
            kan._get(n)[...] = arr
        return kan

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_arrays` to an ``.npz`` file."""
        path = Path(path)
        with open(path, "wb") as f:
            np.savez(f, **self.to_arrays())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KAN":
        """Read a network written by :meth:`save` (no pickles)."""
        with np.load(Path(path), allow_pickle=False) as npz:
            return cls.from_arrays({k: npz[k] for k in npz.files})

    def copy(self) -> "KAN":
        """An independent copy."""
        return KAN.from_arrays(self.to_arrays())

    # ---- the default instrument ---------------------------------------------------------

    @classmethod
    def default(
        cls,
        centre: np.ndarray | None = None,
        widths: tuple[int, ...] = (N_INPUTS, 8, P.N_PARAMS),
        n_basis: int = 8,
    ) -> "KAN":
        """A playable network: ``centre`` (default :func:`engine.params.defaults`) at rest, and
        velocity, mod wheel, pressure and slide curves (see the module docstring).

        Needs exactly two layers whose hidden width is at least :data:`N_INPUTS`.
        """
        if len(widths) != 3 or widths[1] < N_INPUTS:
            raise KANError(f"default weights need widths (5, ≥5, 25), got {widths}")
        centre = P.validate(P.defaults() if centre is None else np.asarray(centre, np.float64))
        kan = cls(widths, n_basis)
        for i in range(N_INPUTS):  # hidden node i = input i
            kan.b[0][i, i] = 1.0
        kan.c[1][:] = _logit(P.to_unit(centre))

        def edge(inp: str, name: str, target, anchor: float) -> None:
            """Fit the output edge input → parameter to ``target(x)``, exact at ``anchor``."""
            k, i = P.index(name), INPUTS.index(inp)
            s = P.PARAMS[k]
            x = np.linspace(0.0, 1.0, 201)
            values = np.clip(target(x, centre[k]), s.lo, s.hi)
            z = _logit(s.to_unit(values))
            z0 = _logit(s.to_unit(np.clip(target(np.array([anchor]), centre[k]), s.lo, s.hi)))
            design = np.concatenate([kan._basis(x[:, None])[:, 0, :], x[:, None]], axis=1)
            at = np.concatenate([kan._basis(np.array([[anchor]]))[0, 0], [anchor]])
            coef, *_ = np.linalg.lstsq(design - at, z - z0, rcond=None)
            kan.w[1][k, i] = coef[:-1]
            kan.b[1][k, i] = coef[-1]
            kan.c[1][k] -= float(at @ coef)  # the edge is exactly 0 at the anchor

        v0, s0 = REST_INPUTS["velocity"], REST_INPUTS["slide"]
        edge(
            "velocity", "force_db", lambda v, c: c + 30.0 * np.log10(np.maximum(2.0 * v, 0.08)), v0
        )
        edge("velocity", "contact_time_s", lambda v, c: c * (1.5 - v), v0)
        edge("mod_wheel", "loss_scale", lambda m, c: c * 4.0 ** (-m), 0.0)
        drive = P.spec("drive_db")

        def drive_curve(p: np.ndarray, c: float) -> np.ndarray:
            # from the centre to −20 dB, smooth in the logit (a rest level at the range's
            # bottom sits at σ⁻¹(1e-6) ≈ −13.8, so the curve climbs as 1 − (1 − p)³ there)
            z0, z1 = _logit(drive.to_unit(c)), _logit(drive.to_unit(max(-20.0, c)))
            return drive.from_unit(_sigmoid(z0 + (z1 - z0) * (1.0 - (1.0 - p) ** 3)))

        edge("pressure", "drive_db", drive_curve, 0.0)
        edge("slide", "damping_scale", lambda s, c: c * 4.0 ** (1.0 - 2.0 * s), s0)
        return kan
