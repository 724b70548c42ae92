"""Writes the hand-made presets shipped in this folder (run from the repo root).

``plate`` — a square steel-like plate, 0.4 m a side, with a stiff, lossy rim:
  stiffness s = 1 in the middle, rising smoothly to 2.5 at the edges (s = 1 + 1.5·e^(−r/1.5),
  r the distance to the nearest edge in cells); damping 1.2 1/s in the middle rising to 8 1/s at
  the rim (the rim soaks up energy like a clamped frame); frequency-dependent loss
  σ₁ = 6·10⁻⁵ m²/s, so overtones ten times the fundamental fade in about ten seconds (and the
  highest in a few hundred ms) while the fundamental rings for about five. Struck off-centre so that most low modes sound; two
  pickups on opposite sides give a wide stereo image.

Run: ``.venv/bin/python presets/make_presets.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.presets import Preset, save_preset  # noqa: E402

HERE = Path(__file__).resolve().parent


def plate(n: int = 64) -> Preset:
    idx = np.arange(n)
    edge = np.minimum(idx, n - 1 - idx).astype(np.float64)
    r = np.minimum(edge[:, None], edge[None, :])
    stiffness = 1.0 + 1.5 * np.exp(-r / 1.5)
    damping = 1.2 + 6.8 * np.exp(-r / 1.5)
    return Preset(
        name="plate",
        stiffness=stiffness.astype(np.float32),
        damping_per_s=damping.astype(np.float32),
        size_m=0.4,
        loss_m2_per_s=6e-5,
        boundary=0.0,
        excitation={"x": 0.37, "y": 0.41, "width": 0.03, "contact_time_s": 0.0009, "kind": "strike"},
        pickups={"left": [0.71, 0.33], "right": [0.29, 0.62]},
        gain_db=0.0,
        meta={
            "display_name": "Steel plate, stiff rim",
            "description": "A struck square plate with a stiff, lossy rim; long metallic ring.",
            "source": "hand-made by presets/make_presets.py",
            "license": "CC0-1.0",
            "made_by": "analytic map: s = 1 + 1.5·exp(−r/1.5), d = 1.2 + 6.8·exp(−r/1.5) 1/s",
        },
    )


if __name__ == "__main__":
    for preset in (plate(),):
        path = save_preset(preset, HERE / f"{preset.name}.npz")
        print(f"wrote {path}")
