"""engine/modes.py: bodies solved in a worker process match the float64 solve in this one;
a miss is answered at once with a stand-in; the latest request is solved first; a morph
sweep while playing retunes the voices to exactly what a synchronous synth plays."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import smooth_map
from engine.cpu import CpuFdtd
from engine.modes import BodyModes
from engine.synth import Synth
from engine.tuning import lowest_mode
from test_synth import RATE, preset


def maps(rng: np.random.Generator, n: int = 24):
    return tuple(
        (smooth_map(rng, n, 0.7, 1.6), rng.uniform(1.0, 8.0) * smooth_map(rng, n, 0.5, 1.5))
        for _ in range(2)
    )


def wait_solved(bodies: BodyModes, timeout_s: float = 60.0) -> list[tuple[int, int]]:
    """Poll ``take_solved`` until the worker is idle (the synth does it once a block)."""
    got: list[tuple[int, int]] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got += bodies.take_solved()
        if not bodies.busy:
            return got
        time.sleep(0.01)
    raise AssertionError(f"the body worker did not finish within {timeout_s} s: {got}")


def wait_ready(bodies: BodyModes, timeout_s: float = 60.0) -> None:
    """Wait for the worker process (started by the first miss) to be up: its start takes
    ~2 s on a small machine."""
    end = time.monotonic() + timeout_s
    while not bodies.ready and time.monotonic() < end:
        time.sleep(0.01)
    assert bodies.ready, f"the body worker did not start within {timeout_s} s"


def test_a_miss_gets_a_stand_in_at_once_and_the_exact_body_from_the_worker(seed):
    rng = np.random.default_rng(seed)
    m = maps(rng)
    bodies = BodyModes(m, steps=16)
    first = bodies.get(bodies.key(0.0, 0.0))  # solved here: nothing to stand in yet
    assert first.exact and bodies.solves == 1
    bodies.start_background()
    try:
        key = bodies.key(float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.0, 1.0)))
        stand_in = bodies.get(key)
        assert not stand_in.exact and stand_in.key == key
        assert stand_in.mode is first.mode  # the nearest (only) solved body
        assert bodies.solves == 1  # nothing solved in this thread
        assert wait_solved(bodies) == [key]
        exact = bodies.get(key)
        assert exact.exact and bodies.background_solves == 1
    finally:
        bodies.close()
    # the float64 twin: the same body solved in this process
    w, b = key[0] / 16, key[1] / 16
    s = m[0][0] * (1 - w) + m[1][0] * w
    d = m[0][1] * (1 - w) + m[1][1] * w
    ref = lowest_mode(s, b)
    assert exact.mode.mu == pytest.approx(ref.mu, rel=1e-10), seed
    np.testing.assert_allclose(np.abs(exact.mode.shape), np.abs(ref.shape), atol=1e-8)
    assert exact.d_mode_hz == pytest.approx(ref.weighted_mean(d), rel=1e-9)


def test_a_sweep_solves_the_latest_request_first_and_drops_stale_ones(seed):
    rng = np.random.default_rng(seed)
    bodies = BodyModes(maps(rng, 16), steps=64)
    bodies.get((0, 0))
    bodies.start_background()
    try:
        assert not bodies.get((30, 5)).exact and not bodies.ready  # the miss starts the worker
        assert wait_solved(bodies) == [(30, 5)]
        sweep = [(k, 0) for k in range(1, 13)]  # 12 knob positions faster than one solve
        for key in sweep:
            assert not bodies.get(key).exact
        solved = wait_solved(bodies)
    finally:
        bodies.close()
    # the first went to the worker at once; of the 11 that waited, the 8 latest were kept
    # and solved newest first; the 3 oldest were dropped (the knob had moved on)
    assert solved == [sweep[0]] + sweep[:3:-1], solved


def test_identical_maps_make_every_morph_the_same_body(seed):
    rng = np.random.default_rng(seed)
    one = maps(rng)[0]
    bodies = BodyModes((one, one), steps=128)
    assert not bodies.morph_matters
    assert bodies.key(0.0, 0.5) == bodies.key(0.77, 0.5) == (0, 64)
    assert BodyModes(maps(rng)).morph_matters


def test_a_live_morph_sweep_retunes_to_what_a_synchronous_synth_plays(seed):
    """A note struck after the morph moved: with bodies solved in the background the synth
    plays it at once (on a stand-in body, nothing solved in the render thread) and, once the
    worker answers, plays exactly the records of a synth that solved on the spot."""
    rng = np.random.default_rng(seed)
    a, b = preset(rng), preset(rng)
    synths = [
        Synth(CpuFdtd(32, 2, 128, dtype=np.float64), a, morph_to=b, sample_rate_hz=RATE)
        for _ in range(2)
    ]
    live, offline = synths
    live.bodies.start_background()
    try:
        for s in synths:
            s.set_morph(0.62)
            s.note_on(57, 100, 0, 5)
            s.render_block()
        tone = next(v.tone for v in live.voices if v.active)
        assert not tone.body_exact and live.stats["stand_in_bodies"] >= 1
        assert live.bodies.solves == 1  # only the preset's own body, at construction
        end = time.monotonic() + 60
        while not tone.body_exact and time.monotonic() < end:
            live.render_block()
            time.sleep(0.01)
        assert tone.body_exact, "the worker's body never reached the voice"
        live.render_block()
        offline.render_block()
        exact = next(v.tone for v in offline.voices if v.active)
        assert tone.body_key == exact.body_key
        assert tone.mode.mu == pytest.approx(exact.mode.mu, rel=1e-10)
        for field in ("c2", "eta", "gamma_per_d", "gamma_add", "morph"):
            assert float(tone.record[field]) == pytest.approx(float(exact.record[field]), rel=1e-9), field
    finally:
        live.bodies.close()


def test_a_killed_worker_leaves_the_stand_in_and_later_bodies_are_solved_here(seed):
    """The worker process dies (killed) with a request waiting for it: the synth's thread
    learns it without raising, keeps the stand-in, and solves later misses itself."""
    import os
    import signal

    rng = np.random.default_rng(seed)
    bodies = BodyModes(maps(rng, 16), steps=16)
    bodies.get((0, 0))
    bodies.start_background()
    try:
        assert not bodies.get((5, 3)).exact
        wait_ready(bodies)
        for pid in list(bodies._pool._processes):  # the worker: kill it (it cannot be unplugged)
            os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 60
        while bodies.busy and time.monotonic() < end:
            bodies.take_solved()
            time.sleep(0.01)
        assert bodies.failures == 1 and not bodies.background
        assert bodies.get((5, 3)).exact and bodies.solves == 2  # now solved in this thread
        assert bodies.get((9, 1)).exact and bodies.solves == 3
    finally:
        bodies.close()
