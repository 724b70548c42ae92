"""Tests for engine.presets: real preset files on disk (tmp_path), good and corrupted.

Random maps come from an unseeded generator; every assertion that depends on them names the
seed, so a failure can be replayed with ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import io
import json
import pathlib
import secrets
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import engine.presets as presets
from engine.presets import (
    MAX_FILE_BYTES,
    SCHEMA_VERSION,
    Preset,
    PresetError,
    find_preset,
    list_presets,
    load_preset,
    save_preset,
)

# ---------------------------------------------------------------- helpers


def new_seed() -> int:
    return secrets.randbits(63)


def random_maps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    stiffness = rng.uniform(0.01, 100.0, (n, n)).astype(np.float32)
    damping = rng.uniform(0.0, 500.0, (n, n)).astype(np.float32)
    return stiffness, damping


def random_preset(n: int, seed: int, name: str = "plate") -> Preset:
    rng = np.random.default_rng(seed + 1)
    stiffness, damping = random_maps(n, seed)
    return Preset(
        name=name,
        stiffness=stiffness,
        damping_per_s=damping,
        size_m=float(rng.uniform(0.3, 2.0)),
        loss_m2_per_s=float(rng.uniform(0.0, 1e-4)),
        boundary=float(rng.uniform(0.0, 1.0)),
        excitation={
            "x": float(rng.uniform(0, 1)),
            "y": float(rng.uniform(0, 1)),
            "width": float(rng.uniform(0.005, 0.5)),
            "contact_time_s": float(rng.uniform(1e-4, 0.05)),
            "kind": str(rng.choice(["strike", "pluck"])),
        },
        pickups={
            "left": [float(v) for v in rng.uniform(0, 1, 2)],
            "right": [float(v) for v in rng.uniform(0, 1, 2)],
        },
        gain_db=float(rng.uniform(-60.0, 40.0)),
        meta={
            "display_name": "Plätte ✓ 板",
            "description": "random test plate",
            "source": "tests",
            "license": "CC0-1.0",
            "made_by": f"random_preset(seed={seed})",
            "extra_field": {"kept": [1, 2, 3]},
        },
    )


def good_meta(n: int = 32) -> dict[str, Any]:
    s = np.ones((n, n), np.float32)
    return Preset(name="plate", stiffness=s, damping_per_s=np.zeros_like(s)).to_meta()


def write_npz(
    path: Path,
    *,
    stiffness: Any = None,
    damping_per_s: Any = None,
    meta: Any = None,
    n: int = 32,
) -> None:
    """Write an npz by hand (bypassing save_preset's checks); unset members get good values."""
    if stiffness is None:
        stiffness = np.full((n, n), 2.0, np.float32)
    if damping_per_s is None:
        damping_per_s = np.full(np.shape(stiffness), 3.0, np.float32)
    if meta is None:
        meta = good_meta(n)
    if isinstance(meta, dict):
        meta = json.dumps(meta)
    if isinstance(meta, str):
        meta = np.array(meta)
    with open(path, "wb") as f:
        np.savez(f, stiffness=stiffness, damping_per_s=damping_per_s, meta=meta)


def with_meta(**changes: Any) -> Callable[[Path], None]:
    """A file whose meta is good_meta() with dotted keys changed (value ``...`` deletes)."""

    def build(path: Path) -> None:
        meta = good_meta()
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node = meta
            for p in parents:
                node = node[p]
            if value is ...:
                del node[last]
            else:
                node[last] = value
        write_npz(path, meta=meta)

    return build


def with_maps(
    stiffness: Any = None, damping: Any = None, meta: Any = None
) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        write_npz(path, stiffness=stiffness, damping_per_s=damping, meta=meta)

    return build


def valid_bytes() -> bytes:
    buf = io.BytesIO()
    s = np.full((64, 64), 5.0, np.float32)
    np.savez(buf, stiffness=s, damping_per_s=np.ones_like(s),
             meta=np.array(json.dumps(good_meta(64))))
    return buf.getvalue()


def with_bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(data() if callable(data) else data)

    return build


def f32(n: int, value: float, *, at: tuple[int, ...] | None = None, bad: float = 0.0) -> np.ndarray:
    arr = np.full((n, n), value, np.float32)
    if at is not None:
        arr[at] = bad
    return arr


def zip_without_members(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a preset")
        zf.writestr("stiffness.txt", "1 2 3")


def zip_with_only_stiffness(path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ones((32, 32), np.float32))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("stiffness.npy", buf.getvalue())


def bare_npy(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ones((32, 32), np.float32))


def huge_sparse(path: Path) -> None:
    path.write_bytes(valid_bytes())
    with open(path, "r+b") as f:
        f.truncate(65 * 2**20)  # sparse: costs no disk


def zip_bomb(path: Path) -> None:
    """Small on disk, but its stiffness member inflates beyond the size limit."""
    rows = MAX_FILE_BYTES // (4096 * 4) + 64
    chunk = bytes(4096 * 4 * 64)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("stiffness.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (rows, 4096)}
            )
            for _ in range(rows // 64):
                member.write(chunk)
        s = np.ones((32, 32), np.float32)
        for name, arr in (("damping_per_s", s), ("meta", np.array(json.dumps(good_meta())))):
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(f"{name}.npy", buf.getvalue())
    assert path.stat().st_size < MAX_FILE_BYTES // 100


class _Canary:
    """Unpickling this touches a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def pickled_object_array(path: Path) -> None:
    marker = path.parent / "UNPICKLED"
    obj = np.empty((32, 32), dtype=object)
    obj[...] = _Canary(marker)
    with open(path, "wb") as f:
        np.savez(f, stiffness=obj, damping_per_s=np.ones((32, 32), np.float32),
                 meta=np.array(json.dumps(good_meta())))


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("n", [32, 64])
def test_round_trip_random_maps(tmp_path: Path, n: int) -> None:
    seed = new_seed()
    preset = random_preset(n, seed)
    path = save_preset(preset, tmp_path / "plate.npz")
    assert path == tmp_path / "plate.npz" and path.is_file(), f"seed={seed}"
    loaded = load_preset(path)

    assert loaded.stiffness.dtype == np.float32, f"seed={seed}"
    assert loaded.damping_per_s.dtype == np.float32, f"seed={seed}"
    assert loaded.stiffness.shape == (n, n) and loaded.grid_n == n, f"seed={seed}"
    np.testing.assert_array_equal(loaded.stiffness, preset.stiffness, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(
        loaded.damping_per_s, preset.damping_per_s, err_msg=f"seed={seed}"
    )

    assert loaded.name == preset.name, f"seed={seed}"
    assert loaded.size_m == preset.size_m, f"seed={seed}"
    assert loaded.loss_m2_per_s == preset.loss_m2_per_s, f"seed={seed}"
    assert loaded.boundary == preset.boundary, f"seed={seed}"
    assert loaded.excitation == preset.excitation, f"seed={seed}"
    assert loaded.pickups == preset.pickups, f"seed={seed}"
    assert loaded.gain_db == preset.gain_db, f"seed={seed}"
    assert loaded.meta == preset.meta, f"seed={seed}"
    assert loaded.to_meta() == preset.to_meta(), f"seed={seed}"
    assert loaded.dx_m == pytest.approx(preset.size_m / n), f"seed={seed}"

    # Saving what was loaded gives the same file contents again.
    again = load_preset(save_preset(loaded, tmp_path / "again.npz"))
    np.testing.assert_array_equal(again.stiffness, preset.stiffness, err_msg=f"seed={seed}")
    assert again.to_meta() == preset.to_meta(), f"seed={seed}"


def test_saved_file_is_a_plain_npz_without_pickles(tmp_path: Path) -> None:
    seed = new_seed()
    preset = random_preset(64, seed)
    path = save_preset(preset, tmp_path / "plate.npz")
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["damping_per_s", "meta", "stiffness"], f"seed={seed}"
        meta = json.loads(str(npz["meta"][()]))
        np.testing.assert_array_equal(npz["stiffness"], preset.stiffness, err_msg=f"seed={seed}")
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["name"] == "plate"
    assert meta["body"]["size_m"] == preset.size_m, f"seed={seed}"


def test_save_converts_float64_maps_to_float32(tmp_path: Path) -> None:
    seed = new_seed()
    s, d = random_maps(32, seed)
    preset = Preset(name="p64", stiffness=s.astype(np.float64), damping_per_s=d.astype(np.float64))
    loaded = load_preset(save_preset(preset, tmp_path / "p64.npz"))
    assert loaded.stiffness.dtype == np.float32, f"seed={seed}"
    np.testing.assert_array_equal(loaded.stiffness, s, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(loaded.damping_per_s, d, err_msg=f"seed={seed}")


def test_save_creates_parent_folders(tmp_path: Path) -> None:
    seed = new_seed()
    path = save_preset(random_preset(32, seed), tmp_path / "a" / "b" / "p.npz")
    assert load_preset(path).name == "plate", f"seed={seed}"


def test_saved_file_gets_a_normal_mode_and_an_overwrite_keeps_it(tmp_path: Path) -> None:
    seed = new_seed()
    path = save_preset(random_preset(32, seed), tmp_path / "p.npz")
    assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)
    path.chmod(0o640)
    save_preset(random_preset(32, seed + 7), path)
    assert path.stat().st_mode & 0o777 == 0o640, oct(path.stat().st_mode)


# ---------------------------------------------------------------- find / list


def test_find_preset_by_file_path(tmp_path: Path) -> None:
    path = save_preset(random_preset(32, new_seed()), tmp_path / "mine.npz")
    assert find_preset(path) == path
    assert find_preset(str(path)) == path
    assert load_preset(find_preset(str(path))).name == "plate"


def test_find_preset_missing_npz_path(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="no such file"):
        find_preset(tmp_path / "absent.npz")


def test_find_preset_by_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "shipped"
    save_preset(random_preset(32, new_seed(), name="bell"), shipped / "bell.npz")
    save_preset(random_preset(64, new_seed(), name="plate"), shipped / "plate.npz")
    monkeypatch.setattr(presets, "PRESET_DIR", shipped)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # no file named "plate" next to us

    assert find_preset("plate") == shipped / "plate.npz"
    assert load_preset(find_preset("bell")).name == "bell"
    assert list_presets() == [shipped / "bell.npz", shipped / "plate.npz"]
    with pytest.raises(PresetError, match=r"no preset named 'gong'; shipped presets: bell, plate$"):
        find_preset("gong")


def test_find_preset_unknown_name_without_shipped_presets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PresetError, match=r"no preset named 'gong'; shipped presets: none"):
        find_preset("gong")


def test_list_presets_sorted_and_only_npz(tmp_path: Path) -> None:
    for name in ("zeta", "alpha", "mid"):
        save_preset(random_preset(32, new_seed(), name=name), tmp_path / f"{name}.npz")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.stem for p in list_presets(tmp_path)] == ["alpha", "mid", "zeta"]


# ---------------------------------------------------------------- atomic save


def _folder(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    seed = new_seed()
    path = save_preset(random_preset(64, seed), tmp_path / "plate.npz")
    old = path.read_bytes()
    calls = []

    def broken_savez(file, *args, **kwargs):
        calls.append(file)
        file.write(b"PK\x03\x04" + b"\0" * 1000)  # a partial archive
        raise error

    monkeypatch.setattr(presets.np, "savez", broken_savez)
    with pytest.raises(type(error)):
        save_preset(random_preset(64, seed + 1), path)
    monkeypatch.undo()

    assert calls, "save_preset did not call np.savez"
    assert path.read_bytes() == old, f"seed={seed}"
    assert _folder(tmp_path) == ["plate.npz"]
    np.testing.assert_array_equal(
        load_preset(path).stiffness, random_preset(64, seed).stiffness, err_msg=f"seed={seed}"
    )


def test_failed_rename_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = new_seed()
    path = save_preset(random_preset(32, seed), tmp_path / "plate.npz")
    old = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(presets.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_preset(random_preset(32, seed + 1), path)
    monkeypatch.undo()
    assert path.read_bytes() == old, f"seed={seed}"
    assert _folder(tmp_path) == ["plate.npz"]


def test_successful_overwrite_replaces_whole_file(tmp_path: Path) -> None:
    seed = new_seed()
    path = save_preset(random_preset(64, seed), tmp_path / "plate.npz")
    newer = random_preset(32, seed + 1)
    save_preset(newer, path)
    loaded = load_preset(path)
    assert loaded.grid_n == 32, f"seed={seed}"
    np.testing.assert_array_equal(loaded.stiffness, newer.stiffness, err_msg=f"seed={seed}")
    assert _folder(tmp_path) == ["plate.npz"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"stiffness": np.full((32, 32), np.nan, np.float32)}, r"stiffness has 1024 NaN or Inf"),
        ({"stiffness": np.zeros((32, 32), np.float32)}, r"stiffness spans \[0, 0\]"),
        ({"damping_per_s": np.full((64, 64), 1.0, np.float32)}, r"differ"),
        ({"loss_m2_per_s": 0.05}, r"loss_m2_per_s=0\.05 .*stability bound"),
        ({"size_m": float("nan")}, r"meta\.body\.size_m=nan is outside"),
        ({"loss_m2_per_s": -1.0}, r"meta\.body\.loss_m2_per_s=-1\.0 is outside"),
        ({"name": ""}, r"meta\.name must be a non-empty string"),
        ({"excitation": {"x": 0.5, "y": 0.5, "width": 0.04, "contact_time_s": 1e-3,
                         "kind": "bow"}}, r"meta\.excitation\.kind='bow'"),
        ({"pickups": {"left": [0.5, 2.0], "right": [0.1, 0.1]}},
         r"meta\.pickups\.left=\[0\.5, 2\.0\] must lie in \[0, 1\]"),
        ({"gain_db": 99.0}, r"meta\.gain_db=99\.0 is outside"),
    ],
    ids=["nan", "stiffness0", "shape-mismatch", "unstable-loss", "nan-size", "negative-loss",
         "empty-name", "kind", "pickup", "gain"],
)
def test_save_refuses_what_load_would_refuse(
    tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    """A bad preset is refused before anything is written; the old file stays."""
    seed = new_seed()
    path = save_preset(random_preset(32, seed), tmp_path / "plate.npz")
    old = path.read_bytes()
    base = {"name": "plate", "stiffness": np.full((32, 32), 50.0, np.float32),
            "damping_per_s": np.ones((32, 32), np.float32)}
    with pytest.raises(PresetError, match=match):
        save_preset(Preset(**{**base, **change}), path)
    assert path.read_bytes() == old, f"seed={seed}"
    assert _folder(tmp_path) == ["plate.npz"]


# ---------------------------------------------------------------- corrupted files on disk

N = 32
BAD_FILES: list[tuple[str, Callable[[Path], None], str]] = [
    # not a (complete) archive
    ("truncated-half", with_bytes(lambda: valid_bytes()[: len(valid_bytes()) // 2]),
     r"not a readable preset archive \(\.npz\): File is not a zip file"),
    ("truncated-100-bytes", with_bytes(lambda: valid_bytes()[:100]),
     r"not a readable preset archive \(\.npz\): File is not a zip file"),
    ("truncated-last-byte", with_bytes(lambda: valid_bytes()[:-1]),
     r"not a readable preset archive \(\.npz\)"),
    ("random-bytes", with_bytes(lambda: b"\x00\xff" + np.random.default_rng().bytes(4094)),
     r"not a readable preset archive \(\.npz\): .*pickled"),
    ("text-file", with_bytes(b"stiffness = 1.0\ndamping = 2.0\n"),
     r"not a readable preset archive \(\.npz\): .*pickled"),
    ("empty-file", with_bytes(b""), r"not a readable preset archive \(\.npz\): No data left"),
    ("bare-npy", bare_npy, r"single \.npy array, not a preset archive"),
    ("zip-without-members", zip_without_members,
     r"lacks \['damping_per_s', 'meta', 'stiffness'\]"),
    ("zip-only-stiffness", zip_with_only_stiffness,
     r"lacks \['damping_per_s', 'meta'\] \(has \['stiffness'\]\)"),
    ("huge-sparse", huge_sparse, rf"is {65 * 2**20} bytes; a preset is at most {MAX_FILE_BYTES}"),
    ("zip-bomb", zip_bomb, rf"unpacks to \d+ bytes; a preset is at most {MAX_FILE_BYTES}"),
    ("pickled-object-array", pickled_object_array,
     r"not a readable preset archive \(\.npz\): .*allow_pickle"),
    # maps
    ("nan-stiffness", with_maps(stiffness=f32(N, 2.0, at=(3, 4), bad=np.nan)),
     r"stiffness has 1 NaN or Inf values"),
    ("inf-damping", with_maps(damping=f32(N, 1.0, at=(0, 31), bad=np.inf)),
     r"damping_per_s has 1 NaN or Inf values"),
    ("minus-inf-damping", with_maps(damping=f32(N, 1.0, at=(5, 5), bad=-np.inf)),
     r"damping_per_s has 1 NaN or Inf values"),
    ("shape-63x64", with_maps(stiffness=np.ones((63, 64), np.float32),
                              damping=np.ones((63, 64), np.float32)),
     r"stiffness has shape \(63, 64\); expected square N×N with N in \(32, 64\)"),
    ("shape-3d", with_maps(stiffness=np.ones((2, 32, 32), np.float32),
                           damping=np.ones((2, 32, 32), np.float32)),
     r"stiffness has shape \(2, 32, 32\); expected square"),
    ("shape-16x16", with_maps(stiffness=np.ones((16, 16), np.float32),
                              damping=np.ones((16, 16), np.float32)),
     r"stiffness has shape \(16, 16\); expected square N×N with N in \(32, 64\)"),
    ("damping-1d", with_maps(damping=np.ones(32 * 32, np.float32)),
     r"damping_per_s has shape \(1024,\)"),
    ("float64", with_maps(stiffness=np.ones((N, N), np.float64)),
     r"stiffness has dtype float64; presets store float32"),
    ("int-dtype", with_maps(damping=np.ones((N, N), np.int32)),
     r"damping_per_s has dtype int32; presets store float32"),
    ("stiffness-zero", with_maps(stiffness=f32(N, 2.0, at=(1, 1), bad=0.0)),
     r"stiffness spans \[0, 2\]; allowed \[0\.01, 100\]"),
    ("stiffness-negative", with_maps(stiffness=f32(N, 2.0, at=(1, 1), bad=-3.0)),
     r"stiffness spans \[-3, 2\]; allowed"),
    ("stiffness-too-big", with_maps(stiffness=f32(N, 2.0, at=(9, 9), bad=150.0)),
     r"stiffness spans \[2, 150\]; allowed \[0\.01, 100\]"),
    ("damping-negative", with_maps(damping=f32(N, 1.0, at=(2, 2), bad=-0.5)),
     r"damping_per_s spans \[-0\.5, 1\] 1/s; allowed \[0, 500\]"),
    ("damping-too-big", with_maps(damping=f32(N, 1.0, at=(2, 2), bad=600.0)),
     r"damping_per_s spans \[1, 600\] 1/s"),
    ("shape-mismatch", with_maps(stiffness=np.ones((64, 64), np.float32),
                                 damping=np.ones((32, 32), np.float32)),
     r"stiffness \(64, 64\) and damping_per_s \(32, 32\) differ"),
    # meta container
    ("meta-not-json", with_maps(meta="{'schema_version': 1,"), r"meta is not valid JSON"),
    ("meta-json-list", with_maps(meta=json.dumps([good_meta()])), r"meta must be a JSON object"),
    ("meta-json-string", with_maps(meta=json.dumps("plate")), r"meta must be a JSON object"),
    ("meta-bytes", with_maps(meta=np.array(json.dumps(good_meta()).encode())),
     r"meta must be a 0-d string array"),
    ("meta-1d", with_maps(meta=np.array([json.dumps(good_meta())])),
     r"meta must be a 0-d string array"),
    # schema version
    ("schema-newer", with_meta(schema_version=99),
     r"schema_version 99 is newer than this NeiroSynth reads \(up to 1\); upgrade NeiroSynth"),
    ("schema-missing", with_meta(schema_version=...),
     r"schema_version must be a positive integer, got None"),
    ("schema-zero", with_meta(schema_version=0),
     r"schema_version must be a positive integer, got 0"),
    ("schema-string", with_meta(schema_version="1"),
     r"schema_version must be a positive integer, got '1'"),
    ("schema-true", with_meta(schema_version=True),
     r"schema_version must be a positive integer, got True"),
    ("schema-float", with_meta(schema_version=1.0),
     r"schema_version must be a positive integer, got 1\.0"),
    # fields
    ("name-missing", with_meta(name=...), r"meta\.name must be a non-empty string.*got None"),
    ("name-number", with_meta(name=7), r"meta\.name must be a non-empty string.*got 7"),
    ("name-too-long", with_meta(name="x" * 65),
     r"meta\.name must be a non-empty string of at most 64"),
    ("body-missing", with_meta(body=...), r"meta\.body must be an object, got None"),
    ("excitation-list", with_meta(excitation=[0.5, 0.5]), r"meta\.excitation must be an object"),
    ("kind-bad", with_meta(excitation__kind="bow"),
     r"meta\.excitation\.kind='bow'; expected 'strike' or 'pluck'"),
    ("excitation-x-outside", with_meta(excitation__x=1.5),
     r"meta\.excitation\.x=1\.5 is outside \[0, 1\]"),
    ("excitation-y-negative", with_meta(excitation__y=-0.01),
     r"meta\.excitation\.y=-0\.01 is outside \[0, 1\]"),
    ("pickup-outside", with_meta(pickups__right=[0.2, 1.01]),
     r"meta\.pickups\.right=\[0\.2, 1\.01\] must lie in \[0, 1\]"),
    ("pickup-not-pair", with_meta(pickups__left=[0.2]),
     r"meta\.pickups\.left must be \[x, y\] fractions, got \[0\.2\]"),
    ("pickup-strings", with_meta(pickups__left=["0.2", "0.3"]),
     r"meta\.pickups\.left must be \[x, y\] fractions"),
    ("size-as-string", with_meta(body__size_m="0.5"),
     r"meta\.body\.size_m must be a number, got '0\.5'"),
    ("width-as-bool", with_meta(excitation__width=True),
     r"meta\.excitation\.width must be a number, got True"),
    ("gain-as-string", with_meta(gain_db="3 dB"), r"meta\.gain_db must be a number, got '3 dB'"),
    ("size-nan", with_meta(body__size_m=float("nan")), r"meta\.body\.size_m=nan is outside"),
    ("loss-inf", with_meta(body__loss_m2_per_s=float("inf")),
     r"meta\.body\.loss_m2_per_s=inf is outside \[0, 1\]"),
    ("contact-time-too-short", with_meta(excitation__contact_time_s=1e-6),
     r"meta\.excitation\.contact_time_s=1e-06 is outside"),
    ("loss-breaks-stability", with_meta(body__loss_m2_per_s=0.5),
     r"loss_m2_per_s=0\.5 with size_m=0\.5 and max\(stiffness\)=2 uses .* of the stability "
     r"bound.*Lower the loss"),
]


@pytest.mark.parametrize("build, match", [(b, m) for _, b, m in BAD_FILES],
                         ids=[i for i, _, _ in BAD_FILES])
def test_corrupted_file_is_refused_and_left_unchanged(
    tmp_path: Path, build: Callable[[Path], None], match: str
) -> None:
    path = tmp_path / "bad.npz"
    build(path)
    before = path.read_bytes()
    before_listing = _folder(tmp_path)
    with pytest.raises(PresetError, match=match) as info:
        load_preset(path)
    assert str(path) in str(info.value)  # the message names the file
    # A failed load loses nothing: the file is byte-for-byte the same, nothing added or removed.
    assert path.read_bytes() == before
    assert _folder(tmp_path) == before_listing


def test_pickled_object_array_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    pickled_object_array(path)
    # Sanity: the canary does fire when the archive is loaded unsafely.
    with np.load(path, allow_pickle=True) as npz:
        npz["stiffness"]
    assert (tmp_path / "UNPICKLED").exists()
    (tmp_path / "UNPICKLED").unlink()

    with pytest.raises(PresetError, match="allow_pickle"):
        load_preset(path)
    assert not (tmp_path / "UNPICKLED").exists(), "load_preset ran pickle"


def test_bad_value_between_good_values_reports_the_count(tmp_path: Path) -> None:
    seed = new_seed()
    s, d = random_maps(64, seed)
    rng = np.random.default_rng(seed)
    idx = rng.choice(s.size, size=5, replace=False)
    s.flat[idx] = np.nan
    write_npz(tmp_path / "p.npz", stiffness=s, damping_per_s=d, meta=good_meta(64))
    with pytest.raises(PresetError, match=r"stiffness has 5 NaN or Inf values"):
        load_preset(tmp_path / "p.npz")


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    with pytest.raises(PresetError, match=r"folder\.npz: is a directory, not a preset file"):
        load_preset(folder)
    assert folder.is_dir() and not any(folder.iterdir())


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"absent\.npz: no such file"):
        load_preset(tmp_path / "absent.npz")
    assert _folder(tmp_path) == []


def test_good_file_loads_after_the_bad_cases(tmp_path: Path) -> None:
    """The helper that builds the bad files builds a loadable one when nothing is changed."""
    with_meta()(tmp_path / "good.npz")
    loaded = load_preset(tmp_path / "good.npz")
    assert loaded.name == "plate" and loaded.grid_n == N
    assert float(loaded.stiffness.max()) == 2.0
    path = tmp_path / "good64.npz"
    path.write_bytes(valid_bytes())
    assert load_preset(path).grid_n == 64


def test_loss_at_the_edge_of_the_budget(tmp_path: Path) -> None:
    """The loss bound is a real threshold: just under it loads, just over it is refused."""
    n, size, smax = 64, 0.5, 100.0
    dt = 1.0 / 44_100.0
    dx = size / n
    # used = 2 * (2 * loss * dt / dx²) * smax; limit 0.5 * 0.5 = 0.25
    edge = 0.25 * dx**2 / (4.0 * dt * smax)
    for factor, ok in ((0.99, True), (1.01, False)):
        meta = good_meta(n)
        meta["body"]["loss_m2_per_s"] = edge * factor
        path = tmp_path / f"edge{factor}.npz"
        write_npz(path, stiffness=np.full((n, n), smax, np.float32), meta=meta, n=n)
        if ok:
            assert load_preset(path).loss_m2_per_s == pytest.approx(edge * factor)
        else:
            with pytest.raises(PresetError, match=r"loss_m2_per_s=.* stability bound"):
                load_preset(path)
