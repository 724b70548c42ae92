"""Live MIDI (engine/midi.py): the byte parser, the event ring and its sample offsets, MPE, the
router, and real MIDI through a real JACK server (the ``jack_server`` fixture)."""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.midi import (
    EVENT_DTYPE,
    BlockClock,
    EventQueue,
    Kind,
    MidiError,
    MidiInput,
    MidiMessage,
    MidiParser,
    MidiRouter,
    MpeState,
    MpeZone,
    choose_api,
    list_input_ports,
)
from engine.midifile import read_midi_file

RATE = 48_000
BLOCK = 256


def parse(data) -> list[tuple]:
    return [(m.kind.label, m.channel, m.note, m.velocity, m.value) for m in MidiParser().feed(bytes(data))]


def check_well_formed(m: MidiMessage) -> None:
    assert isinstance(m, MidiMessage) and isinstance(m.kind, Kind), m
    assert 0 <= m.channel <= 15 and 0 <= m.note <= 127 and 0 <= m.velocity <= 127, m
    assert isinstance(m.value, float) and math.isfinite(m.value), m
    k, v = m.kind, m.value
    if k == Kind.NOTE_ON:
        assert m.velocity >= 1, m
    if k == Kind.PITCH_BEND:
        assert -1.0 <= v < 1.0, m
    elif k == Kind.SUSTAIN:
        assert v in (0.0, 1.0), m
    elif k in (Kind.MOD_WHEEL, Kind.SLIDE, Kind.CHANNEL_PRESSURE, Kind.POLY_PRESSURE):
        assert 0.0 <= v <= 1.0, m
    elif k == Kind.MPE_CONFIG:
        assert m.channel in (0, 15) and v == int(v) and 0 <= v <= 15, m
    elif k == Kind.BEND_RANGE:
        assert 0.0 <= v < 128.0, m
    else:  # note on/off, all sound/notes off carry no value
        assert v == 0.0, m


# ---- the parser ------------------------------------------------------------------------------


def test_notes_and_running_status():
    got = parse([0x90, 60, 100, 62, 90, 64, 0, 0x80, 60, 33, 61, 0])
    assert got == [
        ("note_on", 0, 60, 100, 0.0),
        ("note_on", 0, 62, 90, 0.0),
        ("note_off", 0, 64, 64, 0.0),  # note-on velocity 0: off, release velocity 64
        ("note_off", 0, 60, 33, 0.0),  # a real note off keeps its release velocity
        ("note_off", 0, 61, 0, 0.0),  # running status of 0x80
    ]


def test_running_status_survives_chunking_and_real_time_bytes_anywhere():
    plain = [0x93, 60, 100, 62, 101, 0xB3, 1, 64, 74, 10, 0xE3, 0, 64, 0x7F, 0x7F, 0xD3, 5, 6]
    expected = parse(plain)
    assert len(expected) == 8
    rt = [0xF8, 0xFE, 0xFA, 0xFC, 0xFF, 0xF9, 0xFD, 0xFB]
    mixed = []
    for i, b in enumerate(plain):
        mixed += [b, rt[i % len(rt)]]
    assert parse(mixed) == expected
    p = MidiParser()  # one byte at a time
    assert [(m.kind.label, m.channel, m.note, m.velocity, m.value) for b in mixed for m in p.feed([b])] == expected


def test_sysex_and_system_common_are_skipped_and_cancel_running_status():
    assert parse([0xF0, 0x7E, 0x7F, 0x09, 0x01, 0xF7, 0x90, 60, 1]) == [("note_on", 0, 60, 1, 0.0)]
    # sysex bytes that look like a note, and a clock inside the sysex
    assert parse([0xF0, 0x10, 60, 0xF8, 100, 0xF7]) == []
    # running status does not survive a sysex or a system common message
    assert parse([0x90, 60, 100, 0xF0, 1, 2, 0xF7, 61, 100]) == [("note_on", 0, 60, 100, 0.0)]
    assert parse([0x90, 60, 100, 0xF2, 10, 20, 62, 100]) == [("note_on", 0, 60, 100, 0.0)]
    assert parse([0xF1, 0x90, 60, 100]) == [("note_on", 0, 60, 100, 0.0)]  # status ends F1 early
    assert parse([0xF3, 5, 0xF6, 0xF4, 0xF5, 61, 100]) == []
    # a status byte ends an unterminated sysex; a data byte with no status is skipped
    assert parse([0xF0, 1, 2, 0x91, 64, 90]) == [("note_on", 1, 64, 90, 0.0)]
    assert parse([60, 100, 0x7F]) == []
    # a message cut short by another status is dropped
    assert parse([0x90, 60, 0x80, 60, 0]) == [("note_off", 0, 60, 0, 0.0)]


def test_pitch_bend_extremes_and_controllers():
    assert parse([0xE0, 0, 0]) == [("pitch_bend", 0, 0, 0, -1.0)]
    assert parse([0xE5, 0x7F, 0x7F]) == [("pitch_bend", 5, 0, 0, 8191 / 8192)]
    assert parse([0xE0, 0, 0x40]) == [("pitch_bend", 0, 0, 0, 0.0)]
    assert parse([0xE0, 1, 0]) == [("pitch_bend", 0, 0, 0, (1 - 8192) / 8192)]  # LSB first
    assert parse([0xB2, 64, 63, 64, 64, 64, 127]) == [
        ("sustain", 2, 0, 0, 0.0), ("sustain", 2, 0, 0, 1.0), ("sustain", 2, 0, 0, 1.0),
    ]  # fmt: skip
    assert parse([0xB0, 1, 127, 74, 0, 7, 100, 120, 0, 123, 0, 124, 0, 127, 0]) == [
        ("mod_wheel", 0, 0, 0, 1.0),
        ("slide", 0, 0, 0, 0.0),
        ("all_sound_off", 0, 0, 0, 0.0),
        ("all_notes_off", 0, 0, 0, 0.0),
        ("all_notes_off", 0, 0, 0, 0.0),  # omni off implies all notes off
        ("all_notes_off", 0, 0, 0, 0.0),  # poly on too
    ]  # CC7 (volume) ignored
    assert parse([0xC0, 5, 0xD1, 127, 0xA2, 60, 64]) == [
        ("channel_pressure", 1, 0, 0, 1.0),
        ("poly_pressure", 2, 60, 0, 64 / 127),
    ]  # program change ignored


def test_rpn_mpe_configuration_and_bend_range():
    mcm_lower = [0xB0, 101, 0, 100, 6, 6, 7]
    assert parse(mcm_lower) == [("mpe_config", 0, 0, 0, 7.0)]
    assert parse([0xBF, 101, 0, 100, 6, 6, 15]) == [("mpe_config", 15, 0, 0, 15.0)]
    assert parse([0xB3, 101, 0, 100, 6, 6, 7]) == []  # RPN 6 off a manager channel: not an MCM
    assert parse([0xB0, 99, 0, 98, 6, 6, 7]) == []  # an NRPN with the same numbers
    assert parse([0xB0, 101, 0, 100, 6, 99, 1, 6, 7]) == []  # NRPN selected after: deselects
    assert parse([0xB0, 101, 127, 100, 127, 6, 7]) == []  # RPN null
    # pitch-bend sensitivity: CC6 semitones, CC38 cents; running status through it all
    assert parse([0xB4, 101, 0, 100, 0, 6, 12, 38, 50]) == [
        ("bend_range", 4, 0, 0, 12.0),
        ("bend_range", 4, 0, 0, 12.5),
    ]
    # the selection stays per channel and across feeds
    p = MidiParser()
    p.feed([0xB0, 101, 0, 100, 6])
    assert p.feed([0xB1, 6, 3]) == []
    assert p.feed([0xB0, 6, 3]) == [MidiMessage(Kind.MPE_CONFIG, 0, value=3.0)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_garbage_never_raises_and_only_makes_well_formed_records(data, cuts):
    whole = MidiParser().feed(data)
    for m in whole:
        check_well_formed(m)
    p = MidiParser()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunked = [m for a, b in zip(bounds, bounds[1:]) for m in p.feed(data[a:b])]
    assert chunked == whole  # any chunking gives the same events
    q = EventQueue(1024)  # and they fit the fixed records exactly
    for m in whole:
        q.push(1, m.kind, m.channel, m.note, m.velocity, m.value)
    out = np.zeros(1024, EVENT_DTYPE)
    n = q.pop_into(out, 2)
    assert [(Kind(r["kind"]), r["channel"], r["note"], r["velocity"], r["value"]) for r in out[:n]] == [
        tuple(m) for m in whole
    ]


_channel_messages = st.one_of(
    st.builds(lambda c, n, v: mido.Message("note_on", channel=c, note=n, velocity=v),
              st.integers(0, 15), st.integers(0, 127), st.integers(0, 127)),
    st.builds(lambda c, n, v: mido.Message("note_off", channel=c, note=n, velocity=v),
              st.integers(0, 15), st.integers(0, 127), st.integers(0, 127)),
    st.builds(lambda c, p: mido.Message("pitchwheel", channel=c, pitch=p),
              st.integers(0, 15), st.integers(-8192, 8191)),
    st.builds(lambda c, cc, v: mido.Message("control_change", channel=c, control=cc, value=v),
              st.integers(0, 15), st.sampled_from([1, 7, 10, 64, 74, 120, 123]), st.integers(0, 127)),
    st.builds(lambda c, v: mido.Message("aftertouch", channel=c, value=v), st.integers(0, 15), st.integers(0, 127)),
    st.builds(lambda c, n, v: mido.Message("polytouch", channel=c, note=n, value=v),
              st.integers(0, 15), st.integers(0, 127), st.integers(0, 127)),
    st.builds(lambda c, p: mido.Message("program_change", channel=c, program=p), st.integers(0, 15), st.integers(0, 127)),
    st.builds(lambda d: mido.Message("sysex", data=d), st.lists(st.integers(0, 127), max_size=6)),
    st.just(mido.Message("clock")),
    st.just(mido.Message("active_sensing")),
)  # fmt: skip


def expected_from_mido(msg: mido.Message) -> list[tuple]:
    """An independent statement of the mapping (module docstring's table), per mido message."""
    t = msg.type
    if t == "note_on":
        if msg.velocity:
            return [("note_on", msg.channel, msg.note, msg.velocity, 0.0)]
        return [("note_off", msg.channel, msg.note, 64, 0.0)]
    if t == "note_off":
        return [("note_off", msg.channel, msg.note, msg.velocity, 0.0)]
    if t == "pitchwheel":
        return [("pitch_bend", msg.channel, 0, 0, msg.pitch / 8192)]
    if t == "aftertouch":
        return [("channel_pressure", msg.channel, 0, 0, msg.value / 127)]
    if t == "polytouch":
        return [("poly_pressure", msg.channel, msg.note, 0, msg.value / 127)]
    if t == "control_change":
        cc, v = msg.control, msg.value
        simple = {1: ("mod_wheel", v / 127), 74: ("slide", v / 127), 120: ("all_sound_off", 0.0),
                  123: ("all_notes_off", 0.0), 64: ("sustain", 1.0 if v >= 64 else 0.0)}  # fmt: skip
        if cc in simple:
            kind, value = simple[cc]
            return [(kind, msg.channel, 0, 0, value)]
    return []


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(_channel_messages, max_size=40), use_running_status=st.booleans())
def test_valid_streams_match_an_independent_mapping(msgs, use_running_status):
    stream = bytearray()
    last_status = None
    for msg in msgs:
        raw = msg.bytes()
        if use_running_status and raw[0] < 0xF0 and raw[0] == last_status:
            raw = raw[1:]  # omit the repeated status byte, as a running-status sender does
        if raw[0] >= 0x80:
            last_status = raw[0] if raw[0] < 0xF0 else (last_status if raw[0] >= 0xF8 else None)
        stream += bytes(raw)
    assert parse(stream) == [e for m in msgs for e in expected_from_mido(m)]


# ---- the ring and sample offsets ---------------------------------------------------------------


def test_queue_order_wraparound_and_overflow():
    q = EventQueue(5)
    assert q.capacity == 8
    for round_ in range(3):  # wraps around the ring
        for i in range(6):
            assert q.push(100 * round_ + i, Kind.NOTE_ON, 0, i, 1)
        out = np.zeros(8, EVENT_DTYPE)
        assert q.pop_into(out, 100 * round_ + 3) == 3  # stops at the first event not before
        assert q.pop_into(out[3:], 10**9) == 3
        assert out["note"][:6].tolist() == list(range(6))
    for i in range(10):
        q.push(i, Kind.NOTE_OFF, 1, i, 0)
    assert len(q) == 8 and q.dropped == 2  # the newest are refused and counted


def test_drain_places_events_at_their_sample_offsets():
    q = EventQueue(64)
    block_ns = BLOCK * 1e9 / RATE
    start = 1_000_000_000
    times = [start - 10_000, start, start + 1, start + int(20.5e9 / RATE), start + int(block_ns) - 1,
             start + int(block_ns) + 1, start + 3 * int(block_ns)]  # fmt: skip
    for i, t in enumerate(times):
        q.push(t, Kind.NOTE_ON, 0, 60 + i, 100)
    now = start + int(block_ns) + 100
    ev = q.drain(now, start, RATE, BLOCK)
    assert ev["note"].tolist() == [60, 61, 62, 63, 64]  # the rest belong to later blocks
    assert ev["offset"].tolist() == [0, 0, 0, 20, BLOCK - 1]
    assert q.late == 1  # the first arrived before this block's start
    ev = q.drain(now, start + block_ns, RATE, BLOCK)  # not yet arrived by `now`: stays
    assert ev["note"].tolist() == [65]
    assert ev["offset"].tolist() == [0]
    ev = q.drain(start + 10 * int(block_ns), start + 3 * block_ns, RATE, BLOCK)
    assert ev["note"].tolist() == [66] and ev["offset"].tolist() == [0]


def test_block_clock_keeps_the_spacing_between_events_exact(seed):
    """Arrival times -> (block, offset) through BlockClock: a fixed latency, exact spacing."""
    rng = np.random.default_rng(seed)
    q = EventQueue(4096)
    clock = BlockClock(RATE, BLOCK)
    block_ns = clock.block_ns
    t0 = 5_000_000_000
    arrivals = np.sort(t0 + rng.integers(0, int(40 * block_ns), 300))
    placed = []
    first = None
    i = 0
    for k in range(45):
        now = int(t0 + (k + 1) * block_ns + (k > 0) * rng.uniform(0, 0.6) * block_ns)  # a late-jittery loop
        while i < len(arrivals) and arrivals[i] <= now:
            q.push(int(arrivals[i]), Kind.NOTE_ON, 0, i % 128, 1)
            i += 1
        start = clock.next_block(now)
        first = start if first is None else first
        block_index = round((start - first) / block_ns)
        placed += [block_index * BLOCK + int(r["offset"]) for r in q.drain(now, start, RATE, BLOCK)]
    assert clock.resyncs == 0 and clock.adjustments == 0, f"seed={seed}"
    assert len(placed) == len(arrivals) and q.late == 0, f"seed={seed}"
    exact = (arrivals - arrivals[0]) * RATE / 1e9
    got = np.array(placed) - placed[0]
    assert np.max(np.abs(got - exact)) <= 1.0, f"seed={seed}: spacing off by {np.max(np.abs(got - exact))} samples"


def test_block_clock_resyncs_when_behind_and_moves_earlier_when_early():
    clock = BlockClock(RATE, BLOCK)
    b = clock.block_ns
    t = 10**9

    def at(blocks: float) -> int:
        return clock.next_block(int(t + blocks * b))

    def near(start: int, blocks: float) -> bool:
        return abs(start - (t + blocks * b)) <= 1  # within a nanosecond (integer truncation)

    assert near(at(0), -1)
    assert near(at(1.5), 0)  # half a block late: on schedule
    assert near(at(1.8), 0.8) and clock.adjustments == 1  # 0.2 blocks early: moves earlier
    assert near(at(2.8), 1.8)  # and stays there
    assert near(at(12), 11) and clock.resyncs == 1  # a stall of 8 blocks: re-anchor


def test_an_early_loop_never_makes_late_events(seed):
    """A loop that wakes up to 0.4 blocks early or late: the schedule moves earlier instead."""
    rng = np.random.default_rng(seed)
    q = EventQueue(4096)
    clock = BlockClock(RATE, BLOCK)
    b = clock.block_ns
    t0 = 10**9
    # events from after the first block's window starts (older ones are late by definition)
    arrivals = np.sort(t0 + rng.integers(int(0.5 * b), int(30 * b), 200))
    i = 0
    for k in range(40):
        now = int(t0 + (k + 1) * b + rng.uniform(-0.4, 0.4) * b)
        while i < len(arrivals) and arrivals[i] <= now:
            q.push(int(arrivals[i]), Kind.NOTE_ON, 0, 0, 1)
            i += 1
        q.drain(now, clock.next_block(now), RATE, BLOCK)
    # every block's window has fully passed when it is rendered, so nothing is ever late
    assert q.drained == len(arrivals) and clock.resyncs == 0, f"seed={seed}"
    assert q.late == 0, f"seed={seed}: {q.late} late events ({clock.adjustments} adjustments)"


# ---- MPE and the router ------------------------------------------------------------------------


class RecordingSynth:
    """The Synth's event methods, recorded (the real one is tested at the end of this part)."""

    block_frames = BLOCK

    def __init__(self, bend_range_semitones: float = 2.0) -> None:
        self.bend_range_semitones = bend_range_semitones
        self.calls: list[tuple] = []

    def note_on(self, note, velocity, channel=0, offset=0):
        self.calls.append(("note_on", note, velocity, channel, offset))

    def note_off(self, note, channel=0, offset=0):
        self.calls.append(("note_off", note, channel, offset))

    def sustain(self, down, channel=0, offset=0):
        self.calls.append(("sustain", down, channel, offset))

    def pitch_bend(self, amount, channel=0, offset=0):
        self.calls.append(("pitch_bend", amount, channel, offset))

    def all_notes_off(self, channel=0, offset=0):
        self.calls.append(("all_notes_off", channel, offset))

    def all_sound_off(self, channel=0, offset=0):
        self.calls.append(("all_sound_off", channel, offset))


class ExpressiveSynth(RecordingSynth):
    """With the methods another engineer is adding (called only when present)."""

    def set_pressure(self, channel, value, offset=0):
        self.calls.append(("set_pressure", channel, value, offset))

    def set_slide(self, value, channel=0, offset=0, params=None):  # the Synth's own order
        self.calls.append(("set_slide", channel, value, offset))

    def set_mod_wheel(self, value, offset=0):
        self.calls.append(("set_mod_wheel", value, offset))


def events(*rows: tuple) -> np.ndarray:
    """(offset, bytes) rows -> drained-style records."""
    p = MidiParser()
    recs = [(0, off, m.kind, m.channel, m.note, m.velocity, m.value) for off, data in rows for m in p.feed(bytes(data))]
    return np.array(recs, EVENT_DTYPE)


def test_mpe_zones_from_configuration_messages():
    mpe = MpeState()
    assert mpe.lower_zone is None and mpe.upper_zone is None
    mpe.configure(0, 10)
    assert mpe.lower_zone == MpeZone(0, tuple(range(1, 11)))
    assert mpe.bend_range[1] == 48.0 and mpe.bend_range[0] == 2.0 and mpe.bend_range[11] == 2.0
    mpe.configure(15, 6)  # overlaps: the lower zone shrinks to 1..8
    assert mpe.upper_zone == MpeZone(15, (14, 13, 12, 11, 10, 9))
    assert mpe.lower_zone == MpeZone(0, tuple(range(1, 9)))
    assert mpe.manager_of(9) == 15 and mpe.manager_of(8) == 0 and mpe.manager_of(0) is None
    mpe.configure(0, 0)  # lower zone off: its channels are ordinary again
    assert mpe.lower_zone is None and mpe.bend_range[1] == 2.0 and mpe.manager_of(1) is None
    mpe.configure(15, 15)
    assert mpe.upper_zone.members == tuple(range(14, -1, -1)) and mpe.lower_zone is None


def test_mpe_per_note_bends_on_two_member_channels():
    router = MidiRouter()
    synth = RecordingSynth(bend_range_semitones=48.0)
    router.route(
        events(
            (0, [0xB0, 101, 0, 100, 6, 6, 15]),  # MCM: lower zone, members 1..15
            (10, [0xE1, 0x00, 0x60]),  # ch 1: +0.5 of 48 = +24 semitones
            (10, [0xE2, 0x00, 0x30]),  # ch 2: -0.25 of 48 = -12
            (11, [0xD1, 100, 0xB2, 74, 20]),  # pressure on 1, slide on 2
            (12, [0x91, 60, 90, 0x92, 64, 80]),
            (13, [0xA2, 64, 127]),  # poly pressure on the note of ch 2
            (20, [0xE0, 0x7F, 0x7F]),  # manager bend: +8191/8192 of 2 semitones for all
        ),
        synth,
    )
    mpe = router.mpe
    assert mpe.active_notes() == [(1, 60), (2, 64)]
    e1, e2 = mpe.expression(1, 60), mpe.expression(2, 64)
    up = 2.0 * 8191 / 8192
    assert e1.pitch_semitones == pytest.approx(24.0 + up) and e2.pitch_semitones == pytest.approx(-12.0 + up)
    assert e1.pressure == pytest.approx(100 / 127) and e2.pressure == 1.0  # poly pressure wins on ch 2
    assert e1.slide == pytest.approx(64 / 127) and e2.slide == pytest.approx(20 / 127)
    bends = [c for c in synth.calls if c[0] == "pitch_bend"]
    assert bends[:2] == [("pitch_bend", 0.5, 1, 10), ("pitch_bend", -0.25, 2, 10)]
    manager = {c[2]: c[1] for c in bends[2:]}  # one bend per zone channel at offset 20
    assert all(c[3] == 20 for c in bends[2:])
    assert manager[1] == pytest.approx((24 + up) / 48) and manager[2] == pytest.approx((-12 + up) / 48)
    assert manager[0] == pytest.approx(up / 48) and set(manager) == set(range(16))
    assert ("note_on", 60, 90, 1, 12) in synth.calls and ("note_on", 64, 80, 2, 12) in synth.calls
    assert router.stats["ignored"] == 2  # pressure and slide: this synth has no such methods


def test_manager_channel_messages_apply_to_every_member():
    router = MidiRouter()
    synth = ExpressiveSynth()
    router.route(
        events(
            (0, [0xBF, 101, 0, 100, 6, 6, 3]),  # upper zone: members 14, 13, 12
            (5, [0xBF, 64, 127]),  # manager sustain
            (6, [0xDF, 64]),  # manager pressure
            (7, [0xBF, 74, 127, 1, 64]),  # manager slide, mod wheel
            (8, [0xBF, 123, 0, 120, 0]),
        ),
        synth,
    )
    calls = synth.calls
    assert [c for c in calls if c[0] == "sustain"] == [("sustain", True, ch, 5) for ch in (15, 14, 13, 12)]
    assert [c[1] for c in calls if c[0] == "set_pressure"] == [15, 14, 13, 12]
    assert [c[1] for c in calls if c[0] == "set_slide"] == [15, 14, 13, 12]
    assert [c for c in calls if c[0] == "set_mod_wheel"] == [("set_mod_wheel", 64 / 127, 7)]  # no channel: once
    assert [c for c in calls if c[0] == "all_notes_off"] == [("all_notes_off", ch, 8) for ch in (15, 14, 13, 12)]
    assert [c for c in calls if c[0] == "all_sound_off"] == [("all_sound_off", ch, 8) for ch in (15, 14, 13, 12)]
    assert router.mpe.pressure[13] == pytest.approx(64 / 127) and router.stats["ignored"] == 0


def test_optional_methods_are_matched_by_parameter_name():
    got = []

    class Odd(RecordingSynth):
        def set_pressure(self, offset, amount, ch):  # any order, other names
            got.append(("pressure", ch, amount, offset))

        def set_slide(self, *args):  # no signature to read: the Synth's (value, channel, offset)
            got.append(("slide", *args))

    router = MidiRouter()
    router.route(events((7, [0xD2, 127]), (9, [0xB3, 74, 0])), Odd())
    assert got == [("pressure", 2, 1.0, 7), ("slide", 0.0, 3, 9)]


def test_bend_range_rpn_and_clipping_to_the_synth_range():
    router = MidiRouter(bend_range_semitones=2.0)
    synth = RecordingSynth(bend_range_semitones=2.0)
    router.route(events((0, [0xE3, 0, 0x60])), synth)  # +0.5 of 2
    assert synth.calls[-1] == ("pitch_bend", 0.5, 3, 0)
    router.route(events((1, [0xB3, 101, 0, 100, 0, 6, 12])), synth)  # range 12: +6 semitones
    assert synth.calls[-1] == ("pitch_bend", 1.0, 3, 1) and router.stats["clipped_bends"] == 1
    router.route(events((2, [0xE3, 0, 0x40])), synth)
    assert synth.calls[-1] == ("pitch_bend", 0.0, 3, 2)
    n = len(synth.calls)
    router.route(events((3, [0xE3, 0, 0x40])), synth)  # the same bend again: nothing to send
    assert len(synth.calls) == n


def test_plain_channels_route_like_the_midi_file_reader(tmp_path):
    """Without MPE, the router makes the calls the file renderer makes, values included."""
    path = write_performance(tmp_path / "perf.mid")
    router = MidiRouter()
    synth = RecordingSynth()
    raw = [m.bytes() for m in mido.MidiFile(path) if not m.is_meta]
    router.route(events(*[(0, b) for b in raw]), synth)
    # channel 0 (channel 1 becomes an MPE member later in the file, with a 48-semitone range)
    got_bends = [c[1] for c in synth.calls if c[0] == "pitch_bend" and c[2] == 0]
    score = read_midi_file(path, RATE)
    want_bends = [e.value for e in score.events if e.kind == "pitch_bend" and e.channel == 0]
    assert got_bends == want_bends == [-1.0, 8191 / 8192, 0.0]
    # channel 1's bend, +0.5 of 48 semitones, is beyond the synth's 2: clipped to +1
    assert [c[1:] for c in synth.calls if c[0] == "pitch_bend" and c[2] == 1] == [(1.0, 1, 0)]
    ons = [(c[1], c[2], c[3]) for c in synth.calls if c[0] == "note_on"]
    assert ons == [(e.note, e.velocity, e.channel) for e in score.events if e.kind == "note_on"]
    offs = [(c[1], c[2]) for c in synth.calls if c[0] == "note_off"]
    assert offs == [(e.note, e.channel) for e in score.events if e.kind == "note_off"]
    assert router.stats["clipped_bends"] == 1


def test_route_drives_the_real_synth_at_the_sample_offset(seed):
    from engine.cpu import CpuFdtd
    from engine.presets import Preset
    from engine.synth import Synth

    rng = np.random.default_rng(seed)
    n = 32
    preset = Preset(name="t", stiffness=np.full((n, n), 1.0, np.float32),
                    damping_per_s=np.full((n, n), 3.0, np.float32), size_m=0.2, loss_m2_per_s=3e-5)  # fmt: skip
    synth = Synth(CpuFdtd(n, 2, 128, dtype=np.float64), preset, sample_rate_hz=RATE)
    offset = int(rng.integers(1, 120))
    router = MidiRouter()
    router.route(events((offset, [0x90, 60, 100]), (999, [0xE0, 0, 0x50]), (offset, [0xB0, 64, 127])), synth)
    out = np.concatenate([synth.render_block(), synth.render_block()])
    assert np.all(out[:offset] == 0.0), f"seed={seed}: sound before sample {offset}"
    assert np.any(out[offset : offset + 64] != 0.0), f"seed={seed}: no sound after {offset}"
    router.route(events((5, [0xB0, 123, 0, 120, 0, 0x80, 60, 0, 0xD0, 3, 0xB0, 74, 9, 1, 2])), synth)
    synth.render_block()  # offsets were in range and every call was accepted


def test_cc120_from_raw_bytes_silences_the_real_synth_within_the_fade(seed):
    """[0xB0, 120, 0] reaches Synth.all_sound_off: channel 0's voices fade out over 3 ms and are
    freed at the first block boundary after it (all notes off would leave them ringing for their
    release), while channel 1's note sounds on."""
    from engine.cpu import CpuFdtd
    from engine.presets import Preset
    from engine.synth import STEAL_FADE_S, Synth

    rng = np.random.default_rng(seed)
    n = 32
    preset = Preset(name="t", stiffness=np.full((n, n), 1.0, np.float32),
                    damping_per_s=np.full((n, n), 3.0, np.float32), size_m=0.2, loss_m2_per_s=3e-5)  # fmt: skip
    synth = Synth(CpuFdtd(n, 3, 128, dtype=np.float64), preset, sample_rate_hz=RATE)
    router = MidiRouter()
    router.route(events((0, [0x90, 60, 100, 64, 90]), (0, [0x91, 67, 80])), synth)
    for _ in range(4):
        synth.render_block()
    assert synth.active_voices == 3
    offset = int(rng.integers(0, 128))
    router.route(events((offset, [0xB0, 120, 0])), synth)
    fade = int(round(STEAL_FADE_S * RATE))
    blocks = -(-(offset + fade) // 128)  # up to the first block boundary after the fade
    for _ in range(blocks):
        synth.render_block()
    assert [(v.note, v.channel) for v in synth.voices if v.active] == [(67, 1)], f"seed={seed}"
    assert router.stats["ignored"] == 0


# ---- real MIDI through a real JACK server ------------------------------------------------------


def uid() -> str:
    return secrets.token_hex(3)


def wait_for(pred: Callable[[], object], timeout_s: float = 3.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


class Sender:
    """A JACK MIDI output (another program) connected to one of our ports, or virtual."""

    def __init__(self, client: str, connect_to: str | None = None, virtual: str | None = None) -> None:
        import rtmidi

        self.out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, client)
        if virtual is not None:
            self.out.open_virtual_port(virtual)
        else:
            ports = self.out.get_ports()
            index = ports.index(connect_to)
            self.out.open_port(index, "out")
        self.name = f"{client}:{virtual or 'out'}"
        self.deleted = False

    def send(self, data) -> None:
        self.out.send_message(list(data))

    def delete(self) -> None:
        """The program quits (or the device is unplugged): its JACK client and port go."""
        if not self.deleted:
            self.deleted = True
            self.out.close_port()
            self.out.delete()


class JackMidi:
    """Makes senders and inputs on the session's JACK server, and removes them after the test."""

    def __init__(self) -> None:
        self._senders: list[Sender] = []
        self._inputs: list[MidiInput] = []

    def sender(self, client: str, connect_to: str | None = None, virtual: str | None = None) -> Sender:
        self._senders.append(Sender(f"{client}-{uid()}", connect_to, virtual))
        return self._senders[-1]

    def input(self, **kw) -> MidiInput:
        self._inputs.append(MidiInput("jack", client_name=f"neiro-{uid()}", **kw))
        return self._inputs[-1]

    def close(self) -> None:
        for inp in self._inputs:
            inp.close()
        for sender in self._senders:
            sender.delete()


@pytest.fixture
def jack_midi(jack_server):
    helper = JackMidi()
    yield helper
    helper.close()


def sync(sender: Sender, inp: MidiInput, timeout_s: float = 5.0) -> None:
    """Wait until the JACK connection carries messages (a new connection takes effect a cycle
    or more later; on a loaded machine, more): send program changes, which the parser ignores,
    until one arrives."""
    before = inp.stats["messages"]
    deadline = time.monotonic() + timeout_s
    while inp.stats["messages"] == before:
        if time.monotonic() > deadline:
            raise AssertionError(f"no message got through the JACK connection in {timeout_s} s")
        sender.send([0xCF, 0])
        time.sleep(0.005)
    time.sleep(0.02)  # the last probes in flight arrive too


def drain_all(inp: MidiInput) -> list[tuple]:
    now = time.perf_counter_ns()
    ev = inp.drain(now, now - 10**9, RATE, 1 << 20)
    return [(Kind(r["kind"]).label, int(r["channel"]), int(r["note"]), int(r["velocity"]), float(r["value"]))
            for r in ev]  # fmt: skip


def write_performance(path):
    """A type-1 file, ~1.1 s: notes, pedal, bends, wheel, panic CCs, MPE on channels 1-2."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)  # 120 bpm: 96 ticks = 0.1 s
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000),
                           mido.MetaMessage("time_signature", numerator=3, denominator=4)])  # fmt: skip
    plain = [
        (0, mido.Message("note_on", channel=0, note=60, velocity=100)),
        (0, mido.Message("note_on", channel=0, note=64, velocity=80)),  # a chord: same tick
        (48, mido.Message("control_change", channel=0, control=64, value=127)),
        (48, mido.Message("note_off", channel=0, note=60, velocity=40)),
        (24, mido.Message("pitchwheel", channel=0, pitch=-8192)),
        (24, mido.Message("pitchwheel", channel=0, pitch=8191)),
        (24, mido.Message("pitchwheel", channel=0, pitch=0)),
        (24, mido.Message("control_change", channel=0, control=1, value=64)),
        (24, mido.Message("program_change", channel=0, program=5)),
        (24, mido.Message("sysex", data=[0x7E, 0x7F, 0x09, 0x01])),
        (24, mido.Message("note_on", channel=0, note=64, velocity=0)),
        (24, mido.Message("control_change", channel=0, control=64, value=0)),
        (24, mido.Message("note_on", channel=3, note=67, velocity=127)),
        (24, mido.Message("control_change", channel=3, control=123, value=0)),
        (24, mido.Message("control_change", channel=0, control=120, value=0)),
    ]
    mpe = [
        (384, mido.Message("control_change", channel=0, control=101, value=0)),
        (0, mido.Message("control_change", channel=0, control=100, value=6)),
        (0, mido.Message("control_change", channel=0, control=6, value=3)),
        (24, mido.Message("control_change", channel=1, control=74, value=30)),
        (0, mido.Message("aftertouch", channel=1, value=50)),
        (0, mido.Message("pitchwheel", channel=1, pitch=4096)),
        (0, mido.Message("note_on", channel=1, note=62, velocity=90)),
        (24, mido.Message("note_on", channel=2, note=65, velocity=70)),
        (24, mido.Message("polytouch", channel=2, note=65, value=100)),
        (48, mido.Message("note_off", channel=1, note=62, velocity=0)),
        (0, mido.Message("note_off", channel=2, note=65, velocity=0)),
        (24, mido.Message("control_change", channel=0, control=101, value=0)),
        (0, mido.Message("control_change", channel=0, control=100, value=0)),
        (0, mido.Message("control_change", channel=0, control=6, value=12)),
        (0, mido.Message("control_change", channel=0, control=38, value=0)),
    ]
    for track in (plain, mpe):
        mid.tracks.append(mido.MidiTrack(m.copy(time=dt) for dt, m in track))
    mid.tracks.insert(0, meta)
    mid.save(path)
    return path


EXTRA_EXPECTED = [  # the MPE track's events that the file reader does not know
    ("mpe_config", 0, 0, 0, 3.0),
    ("slide", 1, 0, 0, 30 / 127),
    ("channel_pressure", 1, 0, 0, 50 / 127),
    ("poly_pressure", 2, 65, 0, 100 / 127),
    ("bend_range", 0, 0, 0, 12.0),
    ("bend_range", 0, 0, 0, 12.0),
]


def test_choose_api_finds_the_jack_server(jack_server):
    import rtmidi

    assert choose_api() == rtmidi.API_UNIX_JACK


def test_no_midi_system_is_a_clear_error(monkeypatch):
    import os

    import rtmidi

    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"no-such-server-{uid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    if os.path.exists("/dev/snd/seq"):
        assert choose_api() == rtmidi.API_LINUX_ALSA
        return
    with pytest.raises(MidiError, match=r"no MIDI system.*jackd.*snd-seq"):
        choose_api()
    with pytest.raises(MidiError, match="JACK server 'no-such-server"):
        MidiInput("jack")


def test_jack_performance_from_a_midi_file_arrives_as_the_right_events(jack_midi, tmp_path):
    """A real MIDI file played as real MIDI bytes through JACK into our virtual port."""
    path = write_performance(tmp_path / "performance.mid")
    score = read_midi_file(path, RATE)
    inp = jack_midi.input()
    port = inp.open_virtual("NeiroSynth")
    sender = jack_midi.sender("player", connect_to=port)
    sync(sender, inp)

    # the render thread: drains every block, paced by wall time through BlockClock
    placed: list[tuple] = []
    stop = threading.Event()
    clock = BlockClock(RATE, BLOCK)

    def render_loop() -> None:
        first = None
        next_t = time.perf_counter_ns()
        while not stop.is_set():
            now = time.perf_counter_ns()
            start = clock.next_block(now)
            first = start if first is None else first
            for r in inp.drain(now, start, RATE, BLOCK):
                sample = round((start - first) * RATE / 1e9) + int(r["offset"])
                placed.append((Kind(r["kind"]).label, int(r["channel"]), int(r["note"]),
                               int(r["velocity"]), float(r["value"]), sample, int(r["t_ns"])))  # fmt: skip
            next_t += clock.block_ns
            time.sleep(max(0.0, (next_t - time.perf_counter_ns()) / 1e9))

    render = threading.Thread(target=render_loop, daemon=True)
    render.start()
    # play the file: its messages as real MIDI bytes, with the original spacing
    t0 = time.perf_counter() + 0.02
    at = 0.0
    for msg in mido.MidiFile(path):
        at += msg.time
        if msg.is_meta:
            continue
        while (left := t0 + at - time.perf_counter()) > 0:
            time.sleep(min(left, 0.002))
        sender.send(msg.bytes())
    n_expected = len(score.events) + len(EXTRA_EXPECTED)
    try:
        wait_for(lambda: len(placed) >= n_expected, 2.0, f"{n_expected} events")
    finally:
        stop.set()
        render.join(2.0)

    common = {"note_on", "note_off", "sustain", "pitch_bend", "mod_wheel", "all_notes_off", "all_sound_off"}
    got = [p for p in placed if p[0] in common]
    want = [(e.kind, e.channel, e.note, e.velocity, e.value) for e in score.events]
    assert [g[:5] for g in got] == want
    assert [p[:5] for p in placed if p[0] not in common] == EXTRA_EXPECTED
    assert len(placed) == n_expected and inp.stats["dropped"] == 0 and inp.stats["callback_errors"] == 0
    # timing: arrival stamps and sample positions keep the file's spacing (JACK delivers per
    # 5.3 ms period; the sender is a Python loop on a shared machine: generous bounds)
    file_s = np.array([e.sample for e in score.events]) / RATE
    arrival_s = np.array([g[6] for g in got]) / 1e9
    pos_s = np.array([g[5] for g in got]) / RATE
    err_arrival = np.abs((arrival_s - arrival_s[0]) - (file_s - file_s[0]))
    err_samples = np.abs((pos_s - pos_s[0]) - (file_s - file_s[0]))
    assert err_arrival.max() < 0.030, f"arrival spacing off by up to {err_arrival.max() * 1e3:.1f} ms"
    assert err_samples.max() < 0.030, f"sample spacing off by up to {err_samples.max() * 1e3:.1f} ms"
    if clock.resyncs == 0 and clock.adjustments == 0:
        # a steady render loop: sample positions follow the arrival stamps to the sample
        drift = (pos_s - pos_s[0]) - (arrival_s - arrival_s[0])
        assert np.abs(drift).max() <= 1.5 / RATE, f"offsets off arrival times by {np.abs(drift).max() * RATE} samples"


def test_running_status_across_jack_events(jack_midi):
    inp = jack_midi.input()
    sender = jack_midi.sender("rs", connect_to=inp.open_virtual("NeiroSynth"))
    sync(sender, inp)
    for msg in ([0x90, 60, 100], [62, 100], [0xF8], [64, 0], [0xE0, 0, 0], [0x7F, 0x7F]):
        sender.send(msg)  # JACK carries each as one event; RtMidi passes them through as sent
    expected = [("note_on", 0, 60, 100, 0.0), ("note_on", 0, 62, 100, 0.0), ("note_off", 0, 64, 64, 0.0),
                ("pitch_bend", 0, 0, 0, -1.0), ("pitch_bend", 0, 0, 0, 8191 / 8192)]  # fmt: skip
    got: list[tuple] = []
    wait_for(lambda: got.extend(drain_all(inp)) or len(got) >= len(expected), 2.0, "5 events")
    assert got == expected


def test_sender_vanishing_mid_play_is_survived_and_a_new_one_connects(jack_midi):
    inp = jack_midi.input()
    port = inp.open_virtual("NeiroSynth")
    a = jack_midi.sender("vanish", connect_to=port)
    sync(a, inp)
    changes = inp.poll_ports()
    assert a.name in changes.added  # a new port is offered
    played = threading.Event()

    def play_then_vanish() -> None:
        for i in range(20):
            a.send([0x90, 48 + i, 100])
            time.sleep(0.003)
            if i == 12:
                a.send([0xB0, 64, 127])
                a.delete()  # mid-phrase: notes held, pedal down, the port gone
                break
            a.send([0x80, 48 + i, 0])
        played.set()

    threading.Thread(target=play_then_vanish, daemon=True).start()
    polls = []
    while not played.is_set():
        polls.append(inp.poll_ports())  # the control thread keeps polling meanwhile
        time.sleep(0.005)
    polls.append(inp.poll_ports())
    assert any(a.name in p.removed for p in polls), polls
    assert all(p.error is None and p.lost is None for p in polls)  # the virtual port stays
    assert inp.is_open
    # what the sender wrote in its last JACK period before vanishing may never be sent
    got = [g[2] for g in drain_all(inp) if g[0] == "note_on"]
    assert len(got) >= 8 and got == list(range(48, 48 + len(got))), got
    # a new sender connects to the same virtual port and is heard
    b = jack_midi.sender("after", connect_to=port)
    sync(b, inp)
    b.send([0x91, 72, 99])
    b.send([0x81, 72, 0])
    late: list[tuple] = []
    wait_for(lambda: late.extend(drain_all(inp)) or len(late) >= 2, 2.0, "the new sender's notes")
    assert late == [("note_on", 1, 72, 99, 0.0), ("note_off", 1, 72, 0, 0.0)]
    assert inp.stats["callback_errors"] == 0


def test_opened_port_vanishes_is_closed_released_and_reopened_when_it_returns(jack_midi):
    kbd = jack_midi.sender("kbd", virtual="out")
    kbd_client = kbd.name.split(":")[0]
    inp = jack_midi.input(channels=[0, 2])
    assert kbd.name in list_input_ports("jack") and kbd.name in inp.list_ports()
    assert inp.open(kbd_client) == kbd.name  # by a unique part of its name
    sync(kbd, inp)
    kbd.send([0x90, 60, 100])
    kbd.send([0xB0, 64, 127])
    kbd.send([0x91, 61, 100])  # channel 1: filtered out
    got: list[tuple] = []
    wait_for(lambda: got.extend(drain_all(inp)) or len(got) >= 2, 2.0, "the held note")
    assert got == [("note_on", 0, 60, 100, 0.0), ("sustain", 0, 0, 0, 1.0)]
    kbd.delete()  # unplugged with a note held and the pedal down
    changes = inp.poll_ports()
    assert changes.lost == kbd.name and kbd.name in changes.removed and changes.error is None
    assert not inp.is_open and inp.stats["filtered"] == 1
    released = drain_all(inp)  # pedal up and all notes off on the listened channels
    assert released == [(k, ch, 0, 0, 0.0) for ch in (0, 2) for k in ("sustain", "all_notes_off")]
    assert inp.poll_ports() == ((), (), None, None, None)
    # plugged in again (same client and port name): offered and reopened
    kbd2 = Sender(kbd_client, virtual="out")
    jack_midi._senders.append(kbd2)
    changes = inp.poll_ports()
    assert kbd2.name in changes.added and changes.reopened == kbd2.name and inp.port_name == kbd2.name
    sync(kbd2, inp)
    kbd2.send([0x92, 62, 70])
    again: list[tuple] = []
    wait_for(lambda: again.extend(drain_all(inp)) or again, 2.0, "a note after reconnecting")
    assert again == [("note_on", 2, 62, 70, 0.0)]
    # after an explicit close, a port that comes back is offered but not reopened
    kbd2.delete()
    assert inp.poll_ports().lost == kbd2.name
    inp.close()
    kbd3 = Sender(kbd_client, virtual="out")
    jack_midi._senders.append(kbd3)
    changes = inp.poll_ports()
    assert kbd3.name in changes.added and changes.reopened is None and not inp.is_open


def test_open_by_index_and_clear_errors(jack_midi):
    s1 = jack_midi.sender("amb", virtual="out")
    tag = s1.name.split(":")[0]
    s2 = Sender(tag + "x", virtual="out")  # a second port whose name contains the first's
    jack_midi._senders.append(s2)
    inp = jack_midi.input()
    with pytest.raises(MidiError, match="matches several"):
        inp.open(tag[:-1])
    assert inp.open(s1.name) == s1.name  # an exact name wins over substring matches
    with pytest.raises(MidiError, match="no MIDI input port matches 'nothing-like-this'"):
        inp.open("nothing-like-this")
    assert inp.port_name == s1.name and inp.is_open  # a failed open keeps the open port
    with pytest.raises(MidiError, match="no MIDI input port 999"):
        inp.open(999)
    index = inp.list_ports().index(s2.name)
    assert inp.open(index) == s2.name and inp.port_name == s2.name
    with pytest.raises(MidiError, match="second producer"):
        inp.push_bytes([0x90, 60, 1])
    inp.close()
    inp.close()  # idempotent
    inp.push_bytes([0x90, 60, 1], t_ns=5)  # closed: another source may feed it
    assert drain_all(inp) == [("note_on", 0, 60, 1, 0.0)]
    with pytest.raises(ValueError, match="channels"):
        jack_midi.input(channels=[16])


def test_closing_and_reopening_while_messages_stream(jack_midi):
    """Teardown while the JACK thread delivers callbacks: no crash, no hang, no exception."""
    src = jack_midi.sender("stream", virtual="out")
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            src.send([0x90 | (i % 16), i % 128, 1 + i % 127])
            i += 1
            time.sleep(0.0003)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    inp = jack_midi.input()
    total = 0
    try:
        for cycle in range(15):
            inp.open(src.name)
            time.sleep(0.01 + 0.002 * (cycle % 5))
            inp.close()
            total += len(drain_all(inp))
    finally:
        stop.set()
        thread.join(2.0)
    assert total > 0 and inp.stats["callback_errors"] == 0
