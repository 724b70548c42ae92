"""Instrument presets on disk: one ``.npz`` file per preset, checked before anything plays it.

A preset file is a numpy ``.npz`` archive (read with ``allow_pickle=False``, so loading runs no
code) holding

``stiffness``      float32 ``(N, N)``, dimensionless, in [0.01, 100], N ∈ {32, 64}
``damping_per_s``  float32 ``(N, N)``, in [0, 500] 1/s
``meta``           a 0-d unicode array: JSON metadata (below)

and, from later schema versions on, the KAN weights. ``meta`` holds::

    {"schema_version": 1, "name": "plate", "display_name": "...", "description": "...",
     "source": "...", "license": "CC0-1.0", "made_by": "how it was made",
     "body": {"size_m": 0.5, "loss_m2_per_s": 3e-4, "boundary": 0.0},
     "excitation": {"x": 0.37, "y": 0.41, "width": 0.04, "contact_time_s": 0.0015,
                    "kind": "strike"},
     "pickups": {"left": [0.71, 0.33], "right": [0.29, 0.62]},
     "gain_db": 0.0}

Positions are fractions of the body side (0 = first cell, 1 = last); ``width`` is the
excitation's Gaussian radius as a fraction of the side.

Loading checks shape, dtype, finiteness, ranges, the schema version (a newer one is refused by
name) and the stability bound of the loss term, and raises :class:`PresetError` naming the file
and the problem. Saving is atomic: a temporary file in the same folder, then a rename.

Public API: ``Preset``, ``PresetError``, ``load_preset``, ``save_preset``, ``find_preset``,
``list_presets``, ``SCHEMA_VERSION``, ``PRESET_DIR``.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .tuning import CFL_LIMIT

__all__ = [
    "SCHEMA_VERSION",
    "PRESET_DIR",
    "Preset",
    "PresetError",
    "load_preset",
    "save_preset",
    "find_preset",
    "list_presets",
]

#: The newest preset schema this version reads and writes.
SCHEMA_VERSION = 1
#: The presets shipped with NeiroSynth.
PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"

GRID_SIZES = (32, 64)
STIFFNESS_RANGE = (0.01, 100.0)
DAMPING_RANGE_PER_S = (0.0, 500.0)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: The loss term alone may use at most this share of the stability budget at 44.1 kHz and one
#: step per sample, so every note keeps room for its wave speed.
LOSS_BUDGET = 0.5
_WORST_SAMPLE_RATE_HZ = 44_100.0


class PresetError(ValueError):
    """A preset file is missing, corrupt, or holds values the engine cannot play."""


@dataclass
class Preset:
    """A material map and what is needed to play it.

    Attributes:
        name: file stem, ``[a-z0-9_-]``.
        stiffness: ``s[i, j]``, float32 ``(N, N)``.
        damping_per_s: ``d[i, j]`` in 1/s, float32 ``(N, N)``.
        size_m: side length of the square body in metres (sets Δx = size_m / N).
        loss_m2_per_s: σ₁, frequency-dependent loss.
        boundary: 0 clamped edges … 1 free edges.
        excitation: ``x``, ``y``, ``width`` (fractions), ``contact_time_s``, ``kind``.
        pickups: ``left`` and ``right`` positions (fractions).
        gain_db: output gain of the instrument.
        meta: the remaining metadata (display name, source, license, made_by, ...).
    """

    name: str
    stiffness: np.ndarray
    damping_per_s: np.ndarray
    size_m: float = 0.5
    loss_m2_per_s: float = 3e-4
    boundary: float = 0.0
    excitation: dict[str, Any] = field(
        default_factory=lambda: {
            "x": 0.37,
            "y": 0.41,
            "width": 0.04,
            "contact_time_s": 0.0015,
            "kind": "strike",
        }
    )
    pickups: dict[str, list[float]] = field(
        default_factory=lambda: {"left": [0.71, 0.33], "right": [0.29, 0.62]}
    )
    gain_db: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_n(self) -> int:
        return int(self.stiffness.shape[0])

    @property
    def dx_m(self) -> float:
        """Grid spacing in metres."""
        return self.size_m / self.grid_n

    def to_meta(self) -> dict[str, Any]:
        meta = dict(self.meta)
        meta.update(
            schema_version=SCHEMA_VERSION,
            name=self.name,
            body={
                "size_m": self.size_m,
                "loss_m2_per_s": self.loss_m2_per_s,
                "boundary": self.boundary,
            },
            excitation=dict(self.excitation),
            pickups={k: list(v) for k, v in self.pickups.items()},
            gain_db=self.gain_db,
        )
        for key in ("display_name", "description", "source", "license", "made_by"):
            meta.setdefault(key, "")
        return meta


def _fail(path: Path | str, problem: str) -> PresetError:
    return PresetError(f"preset {path}: {problem}")


def _number(path, meta: dict, where: str, key: str, lo: float, hi: float) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"{where}{key} must be a number, got {value!r}")
    if not (lo <= value <= hi) or not np.isfinite(value):
        raise _fail(path, f"{where}{key}={value!r} is outside [{lo:g}, {hi:g}]")
    return float(value)


def _position(path, value: Any, where: str) -> list[float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise _fail(path, f"{where} must be [x, y] fractions, got {value!r}")
    if not all(0.0 <= v <= 1.0 for v in value):
        raise _fail(path, f"{where}={value!r} must lie in [0, 1] (fractions of the body side)")
    return [float(v) for v in value]


def validate_maps(path: Path | str, stiffness: np.ndarray, damping_per_s: np.ndarray) -> None:
    """Check shape, dtype, finiteness and ranges of a material map; raises :class:`PresetError`."""
    for key, arr in (("stiffness", stiffness), ("damping_per_s", damping_per_s)):
        if arr.dtype != np.float32:
            raise _fail(path, f"{key} has dtype {arr.dtype}; presets store float32")
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] not in GRID_SIZES:
            raise _fail(
                path,
                f"{key} has shape {arr.shape}; expected square N×N with N in {GRID_SIZES}",
            )
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise _fail(path, f"{key} has {bad} NaN or Inf values")
    if stiffness.shape != damping_per_s.shape:
        raise _fail(
            path, f"stiffness {stiffness.shape} and damping_per_s {damping_per_s.shape} differ"
        )
    lo, hi = float(stiffness.min()), float(stiffness.max())
    if lo < STIFFNESS_RANGE[0] or hi > STIFFNESS_RANGE[1]:
        raise _fail(
            path, f"stiffness spans [{lo:g}, {hi:g}]; allowed [{STIFFNESS_RANGE[0]:g}, "
            f"{STIFFNESS_RANGE[1]:g}]",
        )
    lo, hi = float(damping_per_s.min()), float(damping_per_s.max())
    if lo < DAMPING_RANGE_PER_S[0] or hi > DAMPING_RANGE_PER_S[1]:
        raise _fail(
            path, f"damping_per_s spans [{lo:g}, {hi:g}] 1/s; allowed "
            f"[{DAMPING_RANGE_PER_S[0]:g}, {DAMPING_RANGE_PER_S[1]:g}]",
        )


def _validate(path: Path | str, preset: Preset) -> None:
    validate_maps(path, preset.stiffness, preset.damping_per_s)
    # Stability: the loss term alone, (2η)·max(s), at the coarsest step we ever use.
    dt = 1.0 / _WORST_SAMPLE_RATE_HZ
    eta = 2.0 * preset.loss_m2_per_s * dt / preset.dx_m**2
    used = 2.0 * eta * float(preset.stiffness.max())
    if used >= CFL_LIMIT * LOSS_BUDGET:
        raise _fail(
            path,
            f"loss_m2_per_s={preset.loss_m2_per_s:g} with size_m={preset.size_m:g} and "
            f"max(stiffness)={float(preset.stiffness.max()):g} uses {used:.3f} of the stability "
            f"bound (C² + 2η)·max(s) < {CFL_LIMIT}; the loss may use at most "
            f"{CFL_LIMIT * LOSS_BUDGET:g}. Lower the loss or enlarge the body.",
        )


def _parse_meta(path: Path, raw: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"meta is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _fail(path, "meta must be a JSON object")
    version = meta.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise _fail(
            path,
            f"schema_version {version} is newer than this NeiroSynth reads (up to "
            f"{SCHEMA_VERSION}); upgrade NeiroSynth to load it",
        )
    return meta


def load_preset(path: str | os.PathLike) -> Preset:
    """Read and validate a preset file.

    Raises:
        PresetError: missing, not an npz, truncated, too large, wrong keys, shapes, dtypes,
            NaN/Inf, values out of range, newer schema, or a loss that breaks stability.
    """
    path = Path(path)
    if path.is_dir():
        raise _fail(path, "is a directory, not a preset file")
    if not path.is_file():
        raise _fail(path, "no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _fail(path, f"is {size} bytes; a preset is at most {MAX_FILE_BYTES} bytes")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _fail(path, "holds a single .npy array, not a preset archive (.npz)")
        with loaded as npz:
            # A compressed member can inflate far beyond the file's size: bound what is read.
            unpacked = sum(info.file_size for info in npz.zip.infolist())
            if unpacked > MAX_FILE_BYTES:
                raise _fail(
                    path,
                    f"unpacks to {unpacked} bytes; a preset is at most {MAX_FILE_BYTES} bytes",
                )
            missing = {"stiffness", "damping_per_s", "meta"} - set(npz.files)
            if missing:
                raise _fail(path, f"lacks {sorted(missing)} (has {sorted(npz.files)})")
            stiffness = npz["stiffness"]
            damping = npz["damping_per_s"]
            raw_meta = npz["meta"]
    except PresetError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise _fail(path, f"is not a readable preset archive (.npz): {exc}") from exc
    if raw_meta.shape != () or raw_meta.dtype.kind != "U":
        raise _fail(path, f"meta must be a 0-d string array, got {raw_meta.dtype} {raw_meta.shape}")
    meta = _parse_meta(path, str(raw_meta[()]))
    return _from_meta(path, meta, stiffness, damping)


def _from_meta(
    path: Path | str, meta: dict[str, Any], stiffness: np.ndarray, damping: np.ndarray
) -> Preset:
    """Check parsed metadata and the maps together and build the :class:`Preset`."""
    body = meta.get("body")
    exc = meta.get("excitation")
    picks = meta.get("pickups")
    for key, value in (("body", body), ("excitation", exc), ("pickups", picks)):
        if not isinstance(value, dict):
            raise _fail(path, f"meta.{key} must be an object, got {value!r}")
    name = meta.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise _fail(path, f"meta.name must be a non-empty string of at most 64 characters, got {name!r}")
    kind = exc.get("kind", "strike")
    if kind not in ("strike", "pluck"):
        raise _fail(path, f"meta.excitation.kind={kind!r}; expected 'strike' or 'pluck'")
    preset = Preset(
        name=name,
        stiffness=stiffness,
        damping_per_s=damping,
        size_m=_number(path, body, "meta.body.", "size_m", 0.01, 10.0),
        loss_m2_per_s=_number(path, body, "meta.body.", "loss_m2_per_s", 0.0, 1.0),
        boundary=_number(path, body, "meta.body.", "boundary", 0.0, 1.0),
        excitation={
            "x": _number(path, exc, "meta.excitation.", "x", 0.0, 1.0),
            "y": _number(path, exc, "meta.excitation.", "y", 0.0, 1.0),
            "width": _number(path, exc, "meta.excitation.", "width", 0.005, 0.5),
            "contact_time_s": _number(path, exc, "meta.excitation.", "contact_time_s", 1e-4, 0.05),
            "kind": kind,
        },
        pickups={
            "left": _position(path, picks.get("left"), "meta.pickups.left"),
            "right": _position(path, picks.get("right", picks.get("left")), "meta.pickups.right"),
        },
        gain_db=_number(path, meta, "meta.", "gain_db", -60.0, 40.0) if "gain_db" in meta else 0.0,
        meta={
            k: v
            for k, v in meta.items()
            if k not in ("schema_version", "name", "body", "excitation", "pickups", "gain_db")
        },
    )
    _validate(path, preset)
    return preset


def save_preset(preset: Preset, path: str | os.PathLike) -> Path:
    """Validate and write ``preset`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    preset = Preset(**{**preset.__dict__})
    preset.stiffness = np.ascontiguousarray(preset.stiffness, np.float32)
    preset.damping_per_s = np.ascontiguousarray(preset.damping_per_s, np.float32)
    meta_json = json.dumps(preset.to_meta(), indent=1, sort_keys=True)
    # The same checks load_preset runs, so a save never writes a file that cannot be loaded.
    _from_meta(path, _parse_meta(path, meta_json), preset.stiffness, preset.damping_per_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp makes 0600 files; keep the usual mode
            np.savez(
                f,
                stiffness=preset.stiffness,
                damping_per_s=preset.damping_per_s,
                meta=np.array(meta_json),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_presets(directory: Path | None = None) -> list[Path]:
    """Preset files in ``directory`` (default: :data:`PRESET_DIR`), sorted by name."""
    return sorted((PRESET_DIR if directory is None else directory).glob("*.npz"))


def find_preset(name_or_path: str | os.PathLike) -> Path:
    """A preset path from a file path or the name of a shipped preset.

    Raises:
        PresetError: neither a file nor a shipped preset; the message lists those shipped.
    """
    path = Path(name_or_path)
    if path.suffix == ".npz" or path.exists():
        if not path.exists():
            raise PresetError(f"preset {path}: no such file")
        return path
    candidate = PRESET_DIR / f"{name_or_path}.npz"
    if candidate.is_file():
        return candidate
    shipped = ", ".join(p.stem for p in list_presets()) or "none"
    raise PresetError(f"no preset named {str(name_or_path)!r}; shipped presets: {shipped}")
