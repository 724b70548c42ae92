r"""The 25 physical parameters of a voice: what a note's parameter vector means.

Every note the :class:`~engine.synth.Synth` plays is described by one vector ``p`` of
:data:`N_PARAMS` = 25 numbers, in the order of :data:`PARAMS`. Each entry is a physical
quantity with a unit and a closed range ``[lo, hi]``; the synth maps each one onto what the
voice does (its FDTD record, its strike, its release or its output), and each one changes the
sound measurably (``tests/test_params.py`` renders every parameter at both ends of its range).

The unit interval. Learning (:mod:`engine.kan`) works on ``u ∈ [0, 1]``, one per parameter:

* ``scale="linear"``:  ``p = lo + u·(hi − lo)``,      ``dp/du = hi − lo``
* ``scale="log"`` (positive quantities spanning decades, ``lo > 0``):
  ``p = lo·(hi/lo)^u``,  ``dp/du = p·ln(hi/lo)``

so equal steps of ``u`` are equal ratios of a time constant or a scale factor, and equal
decibels of a level (levels are already logarithmic, in dB, so they are linear here).

Levels that reach "off" (``thump_db``, ``drive_db``) are read by :func:`level_amplitude` as
``max(10^(dB/20) − 10^(lo/20), 0)``: exactly zero at the bottom of the range and continuous.

Public API: ``ParamSpec``, ``ParamError``, ``PARAMS``, ``N_PARAMS``, ``NAMES``, ``index``,
``spec``, ``defaults``, ``lows``, ``highs``, ``clip``, ``validate``, ``to_unit``,
``from_unit``, ``from_unit_derivative``, ``as_dict``, ``from_dict``, ``preset_params``,
``level_amplitude``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .presets import Preset

__all__ = [
    "ParamSpec",
    "ParamError",
    "PARAMS",
    "N_PARAMS",
    "NAMES",
    "index",
    "spec",
    "defaults",
    "lows",
    "highs",
    "clip",
    "validate",
    "to_unit",
    "from_unit",
    "from_unit_derivative",
    "as_dict",
    "from_dict",
    "preset_params",
    "level_amplitude",
]


class ParamError(ValueError):
    """A parameter vector, name or value the engine cannot play."""


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One physical parameter of a voice.

    Attributes:
        name: identifier with its unit in it where it has one (``release_s``, ``gain_db``).
        unit: the unit, written out (``"s"``, ``"dB"``, ``"1/s"``, ``"cent"``, ``"×"``, ``"1"``).
        lo, hi: the closed range the engine accepts, ``lo < hi``.
        default: the value of a neutral instrument, inside ``[lo, hi]``.
        meaning: one line of physical meaning.
        scale: ``"linear"`` or ``"log"`` (``lo > 0``): how the unit interval maps onto the range.
    """

    name: str
    unit: str
    lo: float
    hi: float
    default: float
    meaning: str
    scale: Literal["linear", "log"] = "linear"

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ParamError(f"{self.name}: lo={self.lo} must be below hi={self.hi}")
        if self.scale not in ("linear", "log"):
            raise ParamError(f"{self.name}: scale={self.scale!r}; expected 'linear' or 'log'")
        if self.scale == "log" and self.lo <= 0:
            raise ParamError(f"{self.name}: a log-scaled range needs lo > 0, got lo={self.lo}")
        if not self.lo <= self.default <= self.hi:
            raise ParamError(
                f"{self.name}: default={self.default} outside [{self.lo:g}, {self.hi:g}]"
            )

    def to_unit(self, value: float | np.ndarray) -> float | np.ndarray:
        """``value`` (in range) to ``u ∈ [0, 1]``."""
        if self.scale == "log":
            return np.log(np.asarray(value, np.float64) / self.lo) / math.log(self.hi / self.lo)
        return (np.asarray(value, np.float64) - self.lo) / (self.hi - self.lo)

    def from_unit(self, u: float | np.ndarray) -> float | np.ndarray:
        """``u ∈ [0, 1]`` to the value inside ``[lo, hi]`` (the inverse of :meth:`to_unit`)."""
        u = np.asarray(u, np.float64)
        if self.scale == "log":
            value = self.lo * np.exp(u * math.log(self.hi / self.lo))
        else:
            value = self.lo + u * (self.hi - self.lo)
        return np.clip(value, self.lo, self.hi)

    def check(self, value: float) -> float:
        """``value`` as a float, or :class:`ParamError` naming it and the allowed range."""
        v = float(value)
        if not math.isfinite(v) or not self.lo <= v <= self.hi:
            raise ParamError(
                f"{self.name}={value!r} {self.unit} is outside "
                f"[{self.lo:g}, {self.hi:g}] {self.unit}"
            )
        return v


#: The 25 parameters, in vector order.
# fmt: off
PARAMS: tuple[ParamSpec, ...] = (
    # ---- pitch
    ParamSpec("detune_cents", "cent", -100.0, 100.0, 0.0,
              "offset of the note's target pitch; the engine tunes to it exactly"),
    ParamSpec("glide_cents", "cent", 0.0, 300.0, 0.0,
              "tension modulation: the strike starts this much sharp, the offset decays with "
              "the fundamental's energy"),
    # ---- losses
    ParamSpec("damping_scale", "×", 0.1, 10.0, 1.0,
              "multiplies the material map's damping d[i,j] (frequency-independent loss)", "log"),
    ParamSpec("damping_add_per_s", "1/s", 0.0, 40.0, 0.0,
              "uniform damping added over the whole body (air and mounting loss)"),
    ParamSpec("loss_scale", "×", 0.1, 10.0, 1.0,
              "multiplies the preset's σ₁, the frequency-dependent loss (high partials die "
              "faster)", "log"),
    # ---- release (damper)
    ParamSpec("release_s", "s", 0.01, 10.0, 0.25,
              "60 dB decay time after note off: the damper's uniform damping", "log"),
    ParamSpec("release_loss_scale", "×", 1.0, 100.0, 1.0,
              "the damper also multiplies σ₁ by this (a felt damper dulls the highs first)",
              "log"),
    ParamSpec("thump_db", "dB", -80.0, 0.0, -80.0,
              "the damper knocks the body at note off: a strike this far below full force "
              "(−80 dB: none)"),
    # ---- body
    ParamSpec("morph", "1", 0.0, 1.0, 0.0,
              "weight of the second material map: s = (1−w)·s_a + w·s_b, d likewise"),
    ParamSpec("boundary", "1", 0.0, 1.0, 0.0,
              "edge support: 0 clamped … 1 free (ghost cell = boundary·edge cell)"),
    # ---- excitation
    ParamSpec("excite_x", "fraction of side", 0.0, 1.0, 0.37,
              "strike centre, column coordinate (0 first cell, 1 last)"),
    ParamSpec("excite_y", "fraction of side", 0.0, 1.0, 0.41,
              "strike centre, row coordinate (0 first row, 1 last)"),
    ParamSpec("excite_width", "fraction of side", 0.005, 0.5, 0.04,
              "Gaussian radius of the strike footprint (mallet size; wide = fewer high modes)",
              "log"),
    ParamSpec("force_db", "dB", -60.0, 6.0, 20.0 * math.log10(0.5**1.5),
              "peak strike force relative to full force (loudness of the hit)"),
    ParamSpec("contact_time_s", "s", 1e-4, 0.05, 0.0015,
              "how long the mallet touches the body (short = hard, bright)", "log"),
    ParamSpec("pluck", "1", 0.0, 1.0, 0.0,
              "force envelope from a raised-cosine strike (0) to a ramp released at once (1)"),
    ParamSpec("drive_db", "dB", -80.0, 0.0, -80.0,
              "sustained noise drive at the strike point while the key is down (rubbing, "
              "bowing); −80 dB: none"),
    # ---- pickups
    ParamSpec("pickup_l_x", "fraction of side", 0.0, 1.0, 0.71,
              "left output pickup position, column (the left channel reads the body there)"),
    ParamSpec("pickup_l_y", "fraction of side", 0.0, 1.0, 0.33,
              "left output pickup position, row"),
    ParamSpec("pickup_r_x", "fraction of side", 0.0, 1.0, 0.29,
              "right output pickup position, column (the right channel reads the body there)"),
    ParamSpec("pickup_r_y", "fraction of side", 0.0, 1.0, 0.62,
              "right output pickup position, row"),
    ParamSpec("pickup_velocity", "1", 0.0, 1.0, 0.0,
              "what the pickups sense: displacement (0) … velocity (1: +6 dB/octave, matched "
              "at the fundamental)"),
    # ---- output
    ParamSpec("gain_db", "dB", -60.0, 40.0, 0.0, "output gain of the voice"),
    ParamSpec("pan", "1", -1.0, 1.0, 0.0,
              "constant-power balance: −1 left only, 0 both at unity, +1 right only"),
    ParamSpec("stereo_width", "1", 0.0, 2.0, 1.0,
              "mid/side width of the two pickups: 0 mono, 1 as picked up, 2 side doubled"),
)
# fmt: on

#: Number of parameters of a voice.
N_PARAMS = 25
assert len(PARAMS) == N_PARAMS

#: Parameter names in vector order.
NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
_INDEX = {name: i for i, name in enumerate(NAMES)}
assert len(_INDEX) == N_PARAMS, "parameter names must be unique"

_LO = np.array([p.lo for p in PARAMS])
_HI = np.array([p.hi for p in PARAMS])
_DEFAULTS = np.array([p.default for p in PARAMS])
_LOG = np.array([p.scale == "log" for p in PARAMS])
_LOG_SPAN = np.array([math.log(p.hi / p.lo) if p.scale == "log" else 0.0 for p in PARAMS])


def index(name: str) -> int:
    """Position of parameter ``name`` in the vector."""
    try:
        return _INDEX[name]
    except KeyError:
        raise ParamError(
            f"no parameter named {name!r}; the parameters are {', '.join(NAMES)}"
        ) from None


def spec(name: str) -> ParamSpec:
    """The :class:`ParamSpec` of parameter ``name``."""
    return PARAMS[index(name)]


def defaults() -> np.ndarray:
    """The default vector (float64, a fresh copy)."""
    return _DEFAULTS.copy()


def lows() -> np.ndarray:
    """Lower ends of the ranges, in vector order."""
    return _LO.copy()


def highs() -> np.ndarray:
    """Upper ends of the ranges, in vector order."""
    return _HI.copy()


def _shape_check(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.shape[-1:] != (N_PARAMS,):
        raise ParamError(f"a parameter vector has {N_PARAMS} entries; got shape {p.shape}")
    return p


def clip(p: np.ndarray) -> np.ndarray:
    """``p`` clipped into every range (a new float64 array; NaN is refused)."""
    p = _shape_check(p)
    if np.any(np.isnan(p)):
        bad = [NAMES[i] for i in np.nonzero(np.isnan(p).reshape(-1, N_PARAMS).any(0))[0]]
        raise ParamError(f"NaN in {', '.join(bad)}")
    return np.clip(p, _LO, _HI)


def validate(p: np.ndarray) -> np.ndarray:
    """``p`` as float64, or :class:`ParamError` naming the first bad entry and its range."""
    p = _shape_check(p)
    flat = p.reshape(-1, N_PARAMS)
    bad = ~np.isfinite(flat) | (flat < _LO) | (flat > _HI)
    if np.any(bad):
        row, i = (int(k) for k in np.argwhere(bad)[0])
        s = PARAMS[i]
        where = f" (row {row})" if p.ndim > 1 else ""
        raise ParamError(
            f"{s.name}={float(flat[row, i])!r} {s.unit}{where} is outside "
            f"[{s.lo:g}, {s.hi:g}] {s.unit}"
        )
    return p


def to_unit(p: np.ndarray) -> np.ndarray:
    """Values (any leading shape, last axis the 25 parameters) to ``u ∈ [0, 1]``."""
    p = _shape_check(p)
    lin = (p - _LO) / (_HI - _LO)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log(p / np.where(_LOG, _LO, 1.0)) / np.where(_LOG, _LOG_SPAN, 1.0)
    return np.where(_LOG, log, lin)


def from_unit(u: np.ndarray) -> np.ndarray:
    """``u ∈ [0, 1]`` (last axis the 25 parameters) to values inside the ranges."""
    u = _shape_check(u)
    lin = _LO + u * (_HI - _LO)
    log = _LO * np.exp(u * _LOG_SPAN)
    # clipped: lo·exp(ln(hi/lo)) may round one ulp above hi
    return np.clip(np.where(_LOG, log, lin), _LO, _HI)


def from_unit_derivative(u: np.ndarray) -> np.ndarray:
    """``dp/du`` of :func:`from_unit`, elementwise (for the backward pass of :mod:`engine.kan`)."""
    u = _shape_check(u)
    return np.where(_LOG, _LO * np.exp(u * _LOG_SPAN) * _LOG_SPAN, _HI - _LO)


def as_dict(p: np.ndarray) -> dict[str, float]:
    """``{name: value}`` of one vector."""
    p = _shape_check(p)
    if p.ndim != 1:
        raise ParamError(f"as_dict takes one vector, got shape {p.shape}")
    return {name: float(v) for name, v in zip(NAMES, p)}


def from_dict(values: Mapping[str, float], base: np.ndarray | None = None) -> np.ndarray:
    """A vector from ``{name: value}``; names not given keep ``base`` (default: :func:`defaults`).

    Raises:
        ParamError: an unknown name or a value outside its range.
    """
    p = defaults() if base is None else _shape_check(base).copy()
    for name, value in values.items():
        p[index(name)] = spec(name).check(value)
    return p


def preset_params(preset: "Preset") -> np.ndarray:
    """The default vector of an instrument: :func:`defaults` with what the preset sets.

    A preset sets the excitation (position, width, contact time, strike or pluck), the
    boundary, the pickups and the gain; values outside a parameter's range are clipped.
    """
    p = defaults()
    exc = preset.excitation
    p[index("excite_x")] = exc["x"]
    p[index("excite_y")] = exc["y"]
    p[index("excite_width")] = exc["width"]
    p[index("contact_time_s")] = exc["contact_time_s"]
    p[index("pluck")] = 1.0 if exc.get("kind", "strike") == "pluck" else 0.0
    p[index("boundary")] = preset.boundary
    p[index("pickup_l_x")], p[index("pickup_l_y")] = preset.pickups["left"]
    p[index("pickup_r_x")], p[index("pickup_r_y")] = preset.pickups.get(
        "right", preset.pickups["left"]
    )
    p[index("gain_db")] = preset.gain_db
    return clip(p)


def level_amplitude(level_db: float, name: str) -> float:
    """Amplitude of a level whose bottom means "off": ``max(10^(dB/20) − 10^(lo/20), 0)``."""
    lo = spec(name).lo
    return max(10.0 ** (level_db / 20.0) - 10.0 ** (lo / 20.0), 0.0)
