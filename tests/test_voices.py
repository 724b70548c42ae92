"""Voice allocation policy (engine/voices.py): free, retrigger, steal; levels; freeing."""

from __future__ import annotations

import math

import pytest

from engine.voices import FREE_LEVEL, QUIET_MARGIN_DB, Voice, VoicePool

INF = math.inf


def pool_of(specs: list[dict], **kw) -> VoicePool[Voice]:
    """A pool whose voice ``i`` has the fields of ``specs[i]`` (``{}``: inactive)."""
    voices = []
    for i, spec in enumerate(specs):
        v = Voice(slot=i)
        if spec:
            v.active = True
        for name, value in spec.items():
            setattr(v, name, value)
        voices.append(v)
    return VoicePool(voices, **kw)


def held(note: int, started_at: int, level: float = 1.0, channel: int = 0) -> dict:
    return dict(
        note=note, channel=channel, started_at=started_at, struck_at=started_at, level=level
    )


def let_go(note: int, started_at: int, released_at: int, level: float = 1.0) -> dict:
    return dict(held(note, started_at, level), released=True, released_at=released_at)


# (rule, voices, (note, channel), expected slot, expected kind)
ALLOCATION = [
    ("a free voice is taken before any is stolen",
     [held(60, 0, 1e-6), {}, held(62, 5)], (70, 0), 1, "free"),
    ("the first free voice is taken",
     [{}, {}, held(62, 5)], (70, 0), 0, "free"),
    ("the same note on the same channel retriggers its voice, even with a free voice",
     [{}, held(64, 3), held(60, 7)], (60, 0), 2, "retrigger"),
    ("a released voice of the same note is retriggered too",
     [{}, let_go(60, 3, 9)], (60, 0), 1, "retrigger"),
    ("the same note on another channel is another note",
     [held(60, 3, channel=1), {}], (60, 0), 1, "free"),
    ("a voice fading out for good (all sound off) is not retriggered",
     [dict(held(60, 3), released=True, stopping=True, silent_at=200), held(62, 4)], (60, 0),
     0, "steal"),
    ("stealing takes the oldest released voice (earliest release), not the oldest start",
     [held(60, 0, 1e-3), let_go(62, 10, 50), let_go(64, 20, 30), held(65, 30)], (70, 0),
     2, "steal"),
    ("a released voice is stolen before a quieter held one",
     [held(60, 0, 1e-5), let_go(62, 10, 50, level=0.9)], (70, 0), 1, "steal"),
    ("a voice fading out for good goes before released ones",
     [let_go(60, 0, 10), dict(held(62, 5), released=True, released_at=90, stopping=True,
                               silent_at=300)], (70, 0), 1, "steal"),
    ("with none released, the quietest sounding voice goes, even the newest",
     [held(60, 0, 1.0), held(62, 10, 0.8), held(64, 20, 0.01)], (70, 0), 2, "steal"),
    ("levels within the margin count as equal: the oldest of them goes",
     [held(60, 0, 1.0), held(62, 10, 0.9), held(64, 20, 0.5)], (70, 0), 0, "steal"),
    ("only the voices within the margin of the quietest compete on age",
     [held(60, 0, 1.0), held(62, 10, 0.1), held(64, 20, 0.05)], (70, 0), 1, "steal"),
    ("a voice struck since the last block (level unknown) is not taken for quiet",
     [held(60, 0, 1.0), held(62, 10, 1.0), held(64, 20, INF)], (70, 0), 0, "steal"),
    ("when every level is unknown, the oldest goes",
     [held(60, 40, INF), held(62, 10, INF), held(64, 20, INF)], (70, 0), 1, "steal"),
    ("exact ties on level and age: the lowest slot",
     [held(60, 10, 0.5), held(62, 10, 0.5)], (70, 0), 0, "steal"),
]  # fmt: skip


@pytest.mark.parametrize(
    "rule, specs, note_channel, slot, kind", ALLOCATION, ids=[row[0] for row in ALLOCATION]
)
def test_allocation_policy(rule, specs, note_channel, slot, kind):
    pool = pool_of(specs)
    v, got = pool.allocate(*note_channel)
    assert (v.slot, got) == (slot, kind), f"rule broken: {rule}"


def test_a_zero_margin_takes_the_strictly_quietest():
    specs = [held(60, 0, 1.0), held(62, 10, 0.9), held(64, 20, 0.95)]
    assert pool_of(specs, quiet_margin_db=0.0).allocate(70, 0)[0].slot == 1, "strictly quietest"
    assert pool_of(specs).allocate(70, 0)[0].slot == 0, f"within {QUIET_MARGIN_DB} dB: oldest"
    with pytest.raises(ValueError, match="quiet_margin_db=-1.0"):
        pool_of(specs, quiet_margin_db=-1.0)


def test_allocate_changes_nothing_and_start_takes_the_voice():
    pool = pool_of([let_go(60, 0, 10, 1e-3), dict(held(62, 5), stopping=True, released=True)])
    before = [vars(v).copy() for v in pool]
    v, kind = pool.allocate(70, 3)
    assert [vars(v) for v in pool] == before, "allocate must only choose"
    assert (v.slot, kind) == (1, "steal")
    pool.start(v, 70, 3, at=400)
    assert (v.active, v.note, v.channel, v.started_at) == (True, 70, 3, 400)
    assert not (v.released or v.stopping or v.held_by_pedal) and v.level == INF
    assert pool.allocate(70, 3) == (v, "retrigger"), "the new note now owns the voice"


def test_level_is_measured_only_over_whole_blocks_after_the_strike():
    pool = pool_of([{}])
    v = pool[0]
    pool.start(v, 60, 0, at=100)
    pool.struck(v, 100)
    pool.observe(v, 0.2, 0, 128)  # the strike lies inside this block: not yet a level
    assert v.level == INF, "a block that holds the strike is not the voice's level"
    pool.observe(v, 0.7, 128, 256)
    assert v.level == 0.7
    pool.start(v, 62, 0, at=300)  # stolen: the old sound fades, the new strike comes later
    pool.observe(v, 1e-3, 256, 384)
    assert v.level == INF, "a fading voice's level is not its new note's"
    pool.struck(v, 400)
    pool.observe(v, 0.5, 384, 512)
    assert v.level == INF
    pool.observe(v, 0.4, 512, 640)
    assert v.level == 0.4


def test_a_released_voice_below_minus_90_dbfs_is_freed():
    pool = pool_of([held(60, 0, 0.5), let_go(62, 0, 10, 0.5)])
    held_v, released_v = pool
    assert not pool.observe(held_v, FREE_LEVEL / 10, 128, 256), "a held voice is never freed"
    assert not pool.observe(released_v, FREE_LEVEL * 1.01, 128, 256), "above −90 dBFS"
    assert not pool.observe(released_v, 0.0, 256, 384, may_free=False), "the caller said wait"
    assert released_v.active
    assert pool.observe(released_v, FREE_LEVEL * 0.99, 384, 512)
    assert not released_v.active and pool.active_count == 1
    assert pool.allocate(70, 0) == (released_v, "free")


def test_a_stopped_voice_is_freed_at_the_first_block_boundary_after_its_fade():
    pool = pool_of([held(60, 0, 0.5), held(64, 0, 0.5)])
    v = pool[0]
    pool.stop(v, at=200, silent_at=344)
    assert v.released and v.stopping and v.released_at == 200
    assert not pool.observe(v, 0.3, 128, 256), "the fade has not ended by this block's end"
    assert pool.observe(v, 0.3, 256, 384), "this block reaches the end of the fade"
    assert not v.active and not v.stopping
    assert pool.allocate(60, 0) == (v, "free")


def test_a_voice_limit_steals_before_taking_a_free_voice():
    pool = pool_of([held(60, 0, 1.0), held(62, 10, 0.01), {}, {}])
    assert pool.allocate(70, 0) == (pool[2], "free")
    assert pool.allocate(70, 0, limit=3) == (pool[2], "free"), "two sounding: room for a third"
    assert pool.allocate(70, 0, limit=2) == (pool[1], "steal"), "at the limit the quietest goes"
    assert pool.allocate(62, 0, limit=1) == (pool[1], "retrigger"), "a retrigger adds no voice"


def test_the_voice_to_shed_is_the_one_a_steal_would_take_among_those_not_fading():
    fading = dict(held(60, 0), released=True, released_at=5, stopping=True, silent_at=300)
    pool = pool_of([fading, held(64, 20, 0.01), let_go(62, 10, 50), held(65, 30, 0.9), {}])
    assert pool.victim() is pool[0], "a steal takes the fading voice first"
    assert pool.shed_candidate() is pool[2], "shedding skips it: the released voice"
    pool.stop(pool[2], at=60, silent_at=204)
    assert pool.shed_candidate() is pool[1], "then the quietest"
    pool.stop(pool[1], at=70, silent_at=214)
    assert pool.shed_candidate() is pool[3]
    pool.stop(pool[3], at=80, silent_at=224)
    assert pool.shed_candidate() is None, "every voice is fading already"
