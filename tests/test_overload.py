"""Overload detection (engine/overload.py): when to shed a voice and when to allow one more."""

from __future__ import annotations

import numpy as np
import pytest

from engine.overload import GROW, SHED, OverloadGuard

BLOCK_NS = 2_666_667.0


def verdicts(guard: OverloadGuard, loads) -> list[int]:
    return [guard.observe(x * BLOCK_NS) for x in loads]


def test_utilisation_against_a_float64_window(seed):
    """The running utilisation equals the clipped mean of the last ``window`` render times,
    recomputed from scratch, for fresh random times (some far beyond the block)."""
    rng = np.random.default_rng(seed)
    guard = OverloadGuard(BLOCK_NS, window=16, high=1e9, low=1e-9)  # never decides
    times = rng.exponential(0.6, 500) * BLOCK_NS
    times[rng.integers(0, 500, 20)] *= 50.0  # host stalls
    for k, t in enumerate(times):
        assert guard.observe(t) == 0
        last = np.minimum(times[max(0, k - 15) : k + 1], 2.0 * BLOCK_NS)
        want = last.sum() / (len(last) * BLOCK_NS)
        assert abs(guard.utilisation - want) < 1e-9 * max(1.0, want), f"seed={seed}, block {k}"


def test_sustained_load_sheds_once_a_window_and_a_single_stall_does_not():
    guard = OverloadGuard(BLOCK_NS, window=32)
    got = verdicts(guard, [1.2] * 200)
    # the first full window, then each time a window of blocks all rendered after the shed
    assert [k for k, v in enumerate(got) if v] == [31, 64, 97, 130, 163, 196]
    assert all(v in (0, SHED) for v in got)
    calm = OverloadGuard(BLOCK_NS, window=32)
    loads = [0.4] * 100
    loads[50] = 40.0  # a thread woken 100 ms late: counts as two blocks' worth
    assert verdicts(calm, loads) == [0] * 100
    assert calm.utilisation == pytest.approx(0.4), "the stall has left the window"
    busy = OverloadGuard(BLOCK_NS, window=32)
    assert SHED not in verdicts(busy, [0.84] * 300), "84% busy is still keeping up"


def test_a_long_calm_allows_one_more_voice_at_a_time():
    guard = OverloadGuard(BLOCK_NS, window=8, relax_blocks=20)
    got = verdicts(guard, [0.2] * 100)
    assert [k for k, v in enumerate(got) if v] == [26, 46, 66, 86]
    assert {got[k] for k in (26, 46, 66, 86)} == {GROW}
    middling = OverloadGuard(BLOCK_NS, window=8, relax_blocks=20)
    assert verdicts(middling, [0.6] * 100) == [0] * 100, "between low and high: hold"
    broken = OverloadGuard(BLOCK_NS, window=8, relax_blocks=20)
    loads = ([0.2] * 15 + [0.7] * 8) * 5  # the calm never lasts 20 blocks in a row
    assert GROW not in verdicts(broken, loads)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="block_ns=0"):
        OverloadGuard(0)
    with pytest.raises(ValueError, match="low=0.9, high=0.85"):
        OverloadGuard(BLOCK_NS, low=0.9)
    with pytest.raises(ValueError, match="window=0"):
        OverloadGuard(BLOCK_NS, window=0)
