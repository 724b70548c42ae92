"""Live MIDI input: ports through python-rtmidi, a byte parser, MPE, and sample-exact events.

A keyboard (or a sequencer, or any program) sends MIDI bytes; :class:`MidiInput` receives them
through python-rtmidi (JACK or ALSA), stamps each message with ``time.perf_counter_ns()`` the
moment it arrives, parses it (:class:`MidiParser`) into small fixed records and pushes them
into a preallocated single-producer/single-consumer ring. The render thread calls
:meth:`MidiInput.drain` once per block: it gets the events with their sample offsets inside
that block, and :class:`MidiRouter` applies them to the :class:`~engine.synth.Synth` (MPE
expression included, :class:`MpeState`).

Public API (``__all__``)
------------------------
``Kind``
    ``IntEnum`` of event kinds (below); ``Kind.NOTE_ON.label == "note_on"``.
``MidiMessage``
    ``NamedTuple(kind, channel, note, velocity, value)``: one parsed event.
``EVENT_DTYPE``
    The numpy record of a queued/drained event: ``t_ns`` (int64, arrival), ``offset``
    (int32, sample offset in the block, set by ``drain``), ``kind``, ``channel``, ``note``,
    ``velocity`` (uint8), ``value`` (float64).
``MidiParser``
    ``feed(data) -> list[MidiMessage]``: a MIDI 1.0 byte-stream parser, any chunking.
``EventQueue``
    The SPSC ring of ``EVENT_DTYPE`` records (``push``; ``pop_into``, ``drain``).
``BlockClock``
    ``next_block(now_ns) -> block_start_ns`` for a render loop paced by wall time.
``MpeState``
    MPE zones and per-channel/per-note expression: ``apply``, ``expression(channel, note)``,
    ``pitch_semitones(channel)``, ``lower_zone``/``upper_zone``, ``active_notes``.
``Expression``
    ``NamedTuple(pitch_semitones, pressure, slide)``.
``MpeZone``
    ``NamedTuple(manager, members)``.
``MidiRouter``
    ``route(events, synth)``: drained events -> ``Synth`` calls at their offsets.
``MidiInput``
    A python-rtmidi input: ``open(port)``, ``open_virtual(name)``, ``close()``,
    ``poll_ports()``, ``drain(...)``, ``push_bytes(...)``, ``stats``.
``PortChanges``
    What ``poll_ports`` saw: ``added``, ``removed``, ``lost``, ``reopened``, ``error``.
``list_input_ports(api=None) -> list[str]``, ``choose_api() -> int``, ``api_name(api)``
``MidiError``
    A ``RuntimeError``: no MIDI system, no such port, a port that cannot be opened; the
    message says what to do.

Event kinds and values
----------------------
==================== ===================================================================
kind                 from (channel messages; ``channel`` 0..15)
==================== ===================================================================
``note_on``          0x9n with velocity 1..127 (``note``, ``velocity``)
``note_off``         0x8n (``velocity`` = release velocity); 0x9n with velocity 0 becomes
                     ``note_off`` with release velocity 64, as :mod:`engine.midifile` does
``sustain``          CC64; ``value`` 1.0 when >= 64 (down), else 0.0
``mod_wheel``        CC1; ``value`` = CC / 127
``pitch_bend``       0xEn; ``value`` = (raw14 − 8192) / 8192: −1.0 … +8191/8192 of the range
``all_sound_off``    CC120
``all_notes_off``    CC123, and CC124–127 (omni/mono/poly mode changes imply all notes off)
``channel_pressure`` 0xDn; ``value`` = pressure / 127
``poly_pressure``    0xAn; ``note``, ``value`` = pressure / 127
``slide``            CC74 (MPE "timbre"/slide); ``value`` = CC / 127
``mpe_config``       RPN 6 (MCM) data entry on channel 0 or 15 (a zone's manager);
                     ``value`` = number of member channels 0..15
``bend_range``       RPN 0 (pitch-bend sensitivity) data entry; ``value`` = semitones +
                     cents / 100 (CC6 sends the semitones, a following CC38 the cents)
==================== ===================================================================

The parser keeps running status; real-time bytes (0xF8–0xFF: clock, start, stop, active
sensing, reset) are ignored wherever they appear, even inside a message or a sysex; sysex
(0xF0 … 0xF7) is skipped, and any status byte ends it; system common messages and their data
bytes are skipped and cancel running status; data bytes without a status, program change and
other controllers are skipped. Nothing it is fed can make it raise, and every record it makes
is in range (a hypothesis test feeds it arbitrary bytes).

Threads
-------
* **control thread** (GUI or main): ``MidiInput()``, ``open``, ``open_virtual``, ``close``,
  ``poll_ports`` (every ~0.5 s), ``list_ports``, ``list_input_ports``, ``choose_api``.
* **MIDI thread**: python-rtmidi's callback — JACK's process thread, or RtMidi's ALSA input
  thread. It stamps, parses, filters channels and pushes into the ring; nothing else. It is the
  ring's only producer. ``push_bytes`` takes that role for sources other than rtmidi and may
  only be used while no port is open.
* **render thread**: ``drain``, ``MidiRouter.route``, ``MpeState``, ``BlockClock``; it is the
  ring's only consumer and owns the router and its MPE state.

The ring is two integer counters and a numpy record array made once. The producer writes a
record, then advances the write counter; the consumer reads up to the write counter, then
advances the read counter. Each counter has one writer, an int store is atomic under the GIL,
and numpy writes a whole record while holding the GIL, so no lock is needed and neither side
ever waits. (A ``collections.deque(maxlen=...)`` would also be safe under the GIL, but when full
it silently drops the *oldest* event — a note off, say — and it allocates per event; the ring
refuses the newest and counts it in ``stats["dropped"]``.)

Latency model: from arrival time to sample offset
-------------------------------------------------
Every event carries its arrival time ``t_ns`` (``perf_counter_ns`` in the callback). The render
thread, about to render a block of ``B`` frames at rate ``sr``, calls
``drain(now_ns, block_start_ns, sr, B)``. ``block_start_ns`` is the wall-clock time that maps to
the first sample of this block; an event gets ``offset = floor((t_ns − block_start_ns)·sr/1e9)``,
and only events with ``t_ns < block_start_ns + B/sr`` and ``t_ns <= now_ns`` are taken (later
ones stay for the next block). The mapping from time to samples is one straight line, so the
spacing between events is kept to the sample; the price is a constant latency.

With :class:`BlockClock` (a loop paced by wall time), ``block_start_ns`` is ``now − B/sr`` at
the first block and then advances by exactly ``B/sr`` per block: an event that arrived during
the previous block's wall-clock period lands at the same offset one block later — a fixed
latency of one block (5.3 ms for 256 frames at 48 kHz) plus the audio device's own. A loop that
wakes early moves the schedule earlier once (the latency becomes one block plus its worst early
jitter); one that falls more than a block behind re-anchors (``resyncs``).
An audio engine with its own device clock passes its own ``block_start_ns`` (the time its
output frame ``start`` is due, minus its delay) and gets the same guarantee.
An event older than ``block_start_ns`` (the render thread was late) plays at offset 0 and is
counted in ``stats["late"]``.

Over JACK, RtMidi hands over a cycle's MIDI events when JACK's process thread runs, so arrival
stamps are quantised to the JACK period (5.3 ms at 256 frames, 48 kHz); over ALSA they are
stamped as the sequencer delivers them.

MPE
---
The MPE Configuration Message (RPN 6 on channel 0 for the lower zone, channel 15 for the
upper) sets a zone's member channels (lower: 1..n, upper: 14 down to 15−n; 0 switches the zone
off; a new zone shrinks an overlapping one), and sets pitch-bend ranges to 48 semitones on
members and 2 on the manager (both configurable; RPN 0 changes them). A note on a member
channel has its own channel, so per-note expression is that channel's: pitch = member bend ×
member range + manager bend × manager range (semitones), pressure = channel pressure (or poly
pressure of that note, whichever came last), slide = CC74. Manager-channel pressure and CC74
set every member's value, and manager sustain, all-notes-off and all-sound-off act on every
member channel. Without a zone every channel is an ordinary channel with its own bend range.

:class:`MidiRouter` turns this into ``Synth`` calls: ``note_on``/``note_off``/``sustain``/
``pitch_bend``/``all_notes_off``/``all_sound_off`` (``pitch_bend`` gets the channel's total pitch
divided by the synth's ``bend_range_semitones``, clipped to ±1 and counted when clipped), and,
only when the synth has them, ``set_mod_wheel``, ``set_pressure``, ``set_slide`` (value, channel
and offset, matched by parameter name). Poly pressure is kept per note in
``MpeState`` but not routed (the synth has no per-note pressure call yet).

Hot-plug
--------
``poll_ports()`` compares the port list with the last one: new ports are reported (offered);
if the port we opened is gone, it is closed without raising, reported in ``lost``, and a sustain
release plus all-notes-off for every channel is queued so no note hangs; when a port of the
same name comes back it is reopened (``auto_reconnect``, on by default). A virtual port has no
source of its own: senders come and go, and ``poll_ports`` reports them as ports added/removed.

Known limits (RtMidi)
---------------------
* RtMidi's JACK backend treats a JACK event that starts with 0xF0 and does not end with 0xF7 as
  the start of a split sysex and holds back every later event until one ends with 0xF7. A sender
  that emits such a broken sysex silences the input until it ends one; RtMidi gives us no way
  to see or reset that state (closing and reopening the port does).
* Ports are opened by index; a port list that changes between our lookup and the open (within
  microseconds) could connect the neighbour.
* A virtual port cannot be closed and reopened on the same RtMidi object, and python-rtmidi's
  ``close_port`` also removes the callback, so every open makes a fresh ``rtmidi.MidiIn`` (one
  JACK or ALSA client each) and every close destroys it.
* python-rtmidi holds the GIL while it closes, and its callback wrapper takes the GIL from
  RtMidi's thread holding a raw pointer to the ``(callback, data)`` tuple that ``close_port``
  releases. Closing therefore keeps that tuple alive, cancels the callback, sleeps 5 ms so a
  callback already waiting for the GIL can finish (it sees a stale generation and returns),
  then closes and deletes the RtMidi object. A test opens and closes 15 times while a sender
  streams notes.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "EVENT_DTYPE",
    "BlockClock",
    "EventQueue",
    "Expression",
    "Kind",
    "MidiError",
    "MidiInput",
    "MidiMessage",
    "MidiParser",
    "MidiRouter",
    "MpeState",
    "MpeZone",
    "PortChanges",
    "api_name",
    "choose_api",
    "list_input_ports",
]

log = logging.getLogger(__name__)


class MidiError(RuntimeError):
    """MIDI input cannot be set up as asked; the message says why and what to do."""


class Kind(IntEnum):
    """What a parsed MIDI event is (see the module docstring for each kind's values)."""

    NOTE_ON = 1
    NOTE_OFF = 2
    SUSTAIN = 3
    MOD_WHEEL = 4
    PITCH_BEND = 5
    ALL_SOUND_OFF = 6
    ALL_NOTES_OFF = 7
    CHANNEL_PRESSURE = 8
    POLY_PRESSURE = 9
    SLIDE = 10
    MPE_CONFIG = 11
    BEND_RANGE = 12

    @property
    def label(self) -> str:
        """The lower-case name, as :mod:`engine.midifile` spells kinds (``"note_on"``)."""
        return self.name.lower()


class MidiMessage(NamedTuple):
    """One parsed event.

    Attributes:
        kind: what it is.
        channel: MIDI channel 0..15.
        note: key 0..127 (note on/off, poly pressure), else 0.
        velocity: note on 1..127, note off release velocity 0..127, else 0.
        value: the kind's value (module docstring), else 0.0.
    """

    kind: Kind
    channel: int
    note: int = 0
    velocity: int = 0
    value: float = 0.0


#: A queued / drained event (see the module docstring).
EVENT_DTYPE = np.dtype(
    [
        ("t_ns", np.int64),
        ("offset", np.int32),
        ("kind", np.uint8),
        ("channel", np.uint8),
        ("note", np.uint8),
        ("velocity", np.uint8),
        ("value", np.float64),
    ]
)

_NOTE_OFF_DEFAULT_VELOCITY = 64
_SYSTEM_COMMON_DATA = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF4: 0, 0xF5: 0, 0xF6: 0}
_RPN_NULL = (127, 127)
_RPN_BEND_RANGE = (0, 0)
_RPN_MPE_CONFIG = (0, 6)


# ---- the byte parser ----------------------------------------------------------------------


class MidiParser:
    """A MIDI 1.0 byte-stream parser: feed bytes in any chunking, get :class:`MidiMessage` s.

    State carried between ``feed`` calls: running status, a message in progress, being inside a
    sysex, and per channel the selected RPN and its data-entry MSB.

    Thread: one thread at a time (the MIDI thread, for :class:`MidiInput`'s parser).
    """

    __slots__ = ("_status", "_need", "_d0", "_have", "_sysex", "_rpn_msb", "_rpn_lsb", "_data_msb")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything in progress (running status, a partial message, sysex, RPNs)."""
        self._status = 0  # status of the message being assembled (0: none)
        self._need = 0  # data bytes that message takes
        self._d0 = 0  # its first data byte
        self._have = 0  # data bytes collected
        self._sysex = False
        self._rpn_msb = [127] * 16
        self._rpn_lsb = [127] * 16
        self._data_msb = [0] * 16

    def feed(self, data: bytes | bytearray | memoryview | Sequence[int]) -> list[MidiMessage]:
        """Parse ``data`` (bytes, or ints 0..255; others are masked to 8 bits).

        Returns:
            The events completed by these bytes, in order (often empty).

        Never raises for any byte values.
        """
        out: list[MidiMessage] = []
        for b in data:
            b = int(b) & 0xFF
            if b >= 0xF8:  # real-time: anywhere, changes nothing
                continue
            if b >= 0x80:
                self._have = 0
                if b >= 0xF0:  # system common / sysex: cancel running status
                    self._sysex = b == 0xF0
                    need = _SYSTEM_COMMON_DATA.get(b, -1)  # 0xF0, 0xF7: -1 (no message)
                    self._status = b if need > 0 else 0
                    self._need = max(need, 0)
                else:
                    self._sysex = False
                    self._status = b
                    self._need = 1 if 0xC0 <= b < 0xE0 else 2
                continue
            if self._sysex or not self._status:
                continue  # sysex body, or a data byte with no status: skip
            if self._have == 0 and self._need == 2:
                self._d0 = b
                self._have = 1
                continue
            status = self._status
            self._have = 0
            if status >= 0xF0:  # a system common message complete: ignore, no running status
                self._status = 0
                continue
            d0, d1 = (self._d0, b) if self._need == 2 else (b, 0)
            self._channel_message(status, d0, d1, out)
        return out

    def _channel_message(self, status: int, d0: int, d1: int, out: list[MidiMessage]) -> None:
        ch = status & 0x0F
        hi = status & 0xF0
        if hi == 0x90:
            if d1:
                out.append(MidiMessage(Kind.NOTE_ON, ch, d0, d1))
            else:
                out.append(MidiMessage(Kind.NOTE_OFF, ch, d0, _NOTE_OFF_DEFAULT_VELOCITY))
        elif hi == 0x80:
            out.append(MidiMessage(Kind.NOTE_OFF, ch, d0, d1))
        elif hi == 0xE0:
            out.append(MidiMessage(Kind.PITCH_BEND, ch, value=((d1 << 7 | d0) - 8192) / 8192.0))
        elif hi == 0xD0:
            out.append(MidiMessage(Kind.CHANNEL_PRESSURE, ch, value=d0 / 127.0))
        elif hi == 0xA0:
            out.append(MidiMessage(Kind.POLY_PRESSURE, ch, d0, value=d1 / 127.0))
        elif hi == 0xB0:
            self._control_change(ch, d0, d1, out)
        # 0xC0 program change: ignored

    def _control_change(self, ch: int, cc: int, v: int, out: list[MidiMessage]) -> None:
        if cc == 64:
            out.append(MidiMessage(Kind.SUSTAIN, ch, value=1.0 if v >= 64 else 0.0))
        elif cc == 1:
            out.append(MidiMessage(Kind.MOD_WHEEL, ch, value=v / 127.0))
        elif cc == 74:
            out.append(MidiMessage(Kind.SLIDE, ch, value=v / 127.0))
        elif cc == 120:
            out.append(MidiMessage(Kind.ALL_SOUND_OFF, ch))
        elif cc == 123 or cc >= 124:
            out.append(MidiMessage(Kind.ALL_NOTES_OFF, ch))
        elif cc == 101:
            self._rpn_msb[ch] = v
        elif cc == 100:
            self._rpn_lsb[ch] = v
        elif cc == 99 or cc == 98:  # an NRPN is selected: data entry no longer means an RPN
            self._rpn_msb[ch], self._rpn_lsb[ch] = _RPN_NULL
        elif cc == 6 or cc == 38:
            rpn = (self._rpn_msb[ch], self._rpn_lsb[ch])
            if cc == 6:
                self._data_msb[ch] = v
            if rpn == _RPN_BEND_RANGE:
                cents = v if cc == 38 else 0
                out.append(MidiMessage(Kind.BEND_RANGE, ch, value=self._data_msb[ch] + min(cents, 99) / 100.0))
            elif rpn == _RPN_MPE_CONFIG and cc == 6 and ch in (0, 15):
                out.append(MidiMessage(Kind.MPE_CONFIG, ch, value=float(min(v, 15))))


# ---- the ring -----------------------------------------------------------------------------


class EventQueue:
    """A bounded single-producer/single-consumer ring of :data:`EVENT_DTYPE` records.

    Arguments:
        capacity: events it holds (rounded up to a power of two).

    ``push`` is called by the producer only (the MIDI thread), ``pop_into`` and ``drain`` by
    the consumer only (the render thread); ``__len__`` and the counters ``dropped``, ``late``,
    ``drained`` may be read anywhere. No locks; nothing is allocated per event beyond the tuple
    numpy stores, and ``drain`` returns a view of a buffer made once.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        cap = 1 << (int(capacity) - 1).bit_length()
        self.capacity = cap
        self._mask = cap - 1
        self._buf = np.zeros(cap, EVENT_DTYPE)
        self._write = 0  # written by the producer only
        self._read = 0  # written by the consumer only
        self.dropped = 0  # written by the producer only
        self._out = np.zeros(cap, EVENT_DTYPE)  # drain's result buffer (consumer)
        self.late = 0  # written by the consumer only
        self.drained = 0  # written by the consumer only

    def __len__(self) -> int:
        return self._write - self._read

    def push(self, t_ns: int, kind: int, channel: int, note: int = 0, velocity: int = 0, value: float = 0.0) -> bool:
        """Append one event; False (and ``dropped`` += 1) when the ring is full. Producer only."""
        w = self._write
        if w - self._read >= self.capacity:
            self.dropped += 1
            return False
        self._buf[w & self._mask] = (t_ns, 0, kind, channel, note, velocity, value)
        self._write = w + 1
        return True

    def pop_into(self, out: np.ndarray, before_ns: int) -> int:
        """Move the leading events with ``t_ns < before_ns`` into ``out``; returns how many.

        Stops at the first event at or after ``before_ns`` (timestamps are non-decreasing), or
        when ``out`` is full. Consumer only.
        """
        r = self._read
        n = min(self._write - r, len(out))
        if n <= 0:
            return 0
        start = r & self._mask
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start : start + first]
        if first < n:
            out[first:n] = self._buf[: n - first]
        later = out["t_ns"][:n] >= before_ns
        k = int(np.argmax(later)) if later.any() else n
        self._read = r + k
        return k

    def drain(self, now_ns: int, block_start_ns: int, sample_rate_hz: float, block_frames: int) -> np.ndarray:
        """The events for the block whose first sample is due at wall time ``block_start_ns``.

        Takes, in arrival order, the queued events with ``t_ns <= now_ns`` and
        ``t_ns < block_start_ns + block_frames/sample_rate_hz``, and sets each one's
        ``offset = floor((t_ns − block_start_ns)·sample_rate_hz/1e9)`` clipped to
        ``0..block_frames−1``. An event from before the block start (the render thread was
        late) gets offset 0 and is counted in ``late``.

        Returns:
            :data:`EVENT_DTYPE` records — a view of a buffer that the next ``drain`` reuses.

        Consumer only (the render thread).
        """
        block_ns = block_frames * 1e9 / sample_rate_hz
        before = min(int(now_ns) + 1, int(math.ceil(block_start_ns + block_ns)))
        n = self.pop_into(self._out, before)
        ev = self._out[:n]
        if n:
            rel = ev["t_ns"] - int(block_start_ns)
            self.late += int(np.count_nonzero(rel < 0))
            ev["offset"] = np.clip(np.floor(rel * (sample_rate_hz / 1e9)), 0, block_frames - 1)
            self.drained += n
        return ev


# ---- timing -------------------------------------------------------------------------------


class BlockClock:
    """Wall-clock time of each block's first sample, for a render loop paced by wall time.

    Arguments:
        sample_rate_hz, block_frames: the render format.
        latency_blocks: how far behind arrival the blocks run (1: an event that arrived during
            the previous block's period lands at the same offset in this one).
        max_error_blocks: re-anchor (``resyncs``) when the loop falls behind its schedule by
            more than this.

    Block starts advance by exactly ``block_frames / sample_rate_hz``, so events keep their
    spacing to the sample. A call that comes *early* (its block's window has not fully passed
    yet, so events could still arrive for it) moves the schedule earlier by that much
    (``adjustments``): the latency grows to one block plus the loop's worst early jitter, and
    no event is ever late because the loop ran early.

    Thread: the render thread only.
    """

    def __init__(self, sample_rate_hz: float, block_frames: int, latency_blocks: float = 1.0,
                 max_error_blocks: float = 1.0) -> None:
        self.block_ns = block_frames * 1e9 / sample_rate_hz
        self.latency_ns = latency_blocks * self.block_ns
        self.max_error_ns = max_error_blocks * self.block_ns
        self._anchor_ns: float | None = None
        self._k = 0
        self.resyncs = 0
        self.adjustments = 0

    def next_block(self, now_ns: int) -> int:
        """``block_start_ns`` for the block about to be rendered at wall time ``now_ns``."""
        target = now_ns - self.latency_ns
        if self._anchor_ns is not None:
            self._k += 1
            start = self._anchor_ns + self._k * self.block_ns
            if start <= target <= start + self.max_error_ns:
                return int(start)
            if start - self.max_error_ns <= target < start:  # early: this window is not over
                self._anchor_ns -= start - target
                self.adjustments += 1
                return int(target)
            self.resyncs += 1
        self._anchor_ns = float(target)
        self._k = 0
        return int(target)


# ---- MPE and expression -------------------------------------------------------------------


class MpeZone(NamedTuple):
    """An MPE zone: its manager channel (0 or 15) and member channels."""

    manager: int
    members: tuple[int, ...]


class Expression(NamedTuple):
    """Per-note expression: pitch offset in semitones, pressure 0..1, slide 0..1."""

    pitch_semitones: float
    pressure: float
    slide: float


_SLIDE_DEFAULT = 64 / 127.0  # CC74's centre, the value before any CC74 arrives


class MpeState:
    """MPE zones and the expression of every channel and sounding note.

    Arguments:
        bend_range_semitones: pitch-bend range of ordinary and manager channels (±).
        member_bend_range_semitones: range set on member channels by an MCM (MPE: 48).

    Thread: the render thread only (it owns the router that owns this).
    """

    def __init__(self, bend_range_semitones: float = 2.0, member_bend_range_semitones: float = 48.0) -> None:
        self.default_bend_range = float(bend_range_semitones)
        self.member_bend_range = float(member_bend_range_semitones)
        self.bend = np.zeros(16)  # -1..1 of each channel's range
        self.bend_range = np.full(16, self.default_bend_range)
        self.pressure = np.zeros(16)
        self.slide = np.full(16, _SLIDE_DEFAULT)
        self.poly_pressure = np.full((16, 128), np.nan)  # NaN: use the channel's pressure
        self.notes = np.zeros((16, 128), bool)
        self._lower = 0  # member channels of the lower zone (manager 0): 1..n
        self._upper = 0  # of the upper zone (manager 15): 14 down to 15 - n

    # -- zones --
    @property
    def lower_zone(self) -> MpeZone | None:
        """The lower zone (manager channel 0), or None."""
        return MpeZone(0, tuple(range(1, 1 + self._lower))) if self._lower else None

    @property
    def upper_zone(self) -> MpeZone | None:
        """The upper zone (manager channel 15), or None."""
        return MpeZone(15, tuple(range(14, 14 - self._upper, -1))) if self._upper else None

    def manager_of(self, channel: int) -> int | None:
        """The manager channel of the zone ``channel`` is a member of, else None."""
        if self._lower and 1 <= channel <= self._lower:
            return 0
        if self._upper and 15 - self._upper <= channel <= 14:
            return 15
        return None

    def members_of(self, channel: int) -> tuple[int, ...]:
        """Member channels when ``channel`` manages a zone, else ``()``."""
        zone = self.lower_zone if channel == 0 else self.upper_zone if channel == 15 else None
        return zone.members if zone else ()

    def affected(self, channel: int) -> tuple[int, ...]:
        """``channel`` and, when it is a zone's manager, all its members."""
        return (channel,) + self.members_of(channel)

    def configure(self, manager: int, members: int) -> tuple[int, ...]:
        """Apply an MPE Configuration Message; returns the channels whose range changed."""
        members = max(0, min(int(members), 15))
        before = set(self.affected(0) + self.affected(15))
        if manager == 0:
            self._lower = members
            if members >= 15:
                self._upper = 0
            else:
                self._upper = min(self._upper, 14 - members)
        elif manager == 15:
            self._upper = members
            if members >= 15:
                self._lower = 0
            else:
                self._lower = min(self._lower, 14 - members)
        else:
            return ()
        changed = before | set(self.affected(0) + self.affected(15))
        for ch in changed:
            self.bend_range[ch] = self.default_bend_range
        for zone in (self.lower_zone, self.upper_zone):
            if zone:
                for ch in zone.members:
                    self.bend_range[ch] = self.member_bend_range
        return tuple(sorted(changed))

    # -- expression --
    def pitch_semitones(self, channel: int) -> float:
        """The pitch offset of notes on ``channel``: its bend, plus its manager's bend."""
        pitch = self.bend[channel] * self.bend_range[channel]
        mgr = self.manager_of(channel)
        if mgr is not None:
            pitch += self.bend[mgr] * self.bend_range[mgr]
        return float(pitch)

    def expression(self, channel: int, note: int) -> Expression:
        """Pitch (semitones), pressure and slide of ``note`` on ``channel``."""
        poly = self.poly_pressure[channel, note]
        pressure = self.pressure[channel] if math.isnan(poly) else poly
        return Expression(self.pitch_semitones(channel), float(pressure), float(self.slide[channel]))

    def active_notes(self) -> list[tuple[int, int]]:
        """(channel, note) of every note that is on (not released by a note off)."""
        chans, notes = np.nonzero(self.notes)
        return list(zip(chans.tolist(), notes.tolist()))

    def expressions(self) -> dict[tuple[int, int], Expression]:
        """:meth:`expression` of every active note, keyed by (channel, note)."""
        return {(c, n): self.expression(c, n) for c, n in self.active_notes()}

    def apply(self, kind: int, channel: int, note: int = 0, velocity: int = 0, value: float = 0.0) -> tuple[int, ...]:
        """Update the state with one event; returns the channels whose expression it changed."""
        ch = channel
        if kind == Kind.NOTE_ON:
            self.notes[ch, note] = True
            self.poly_pressure[ch, note] = np.nan
            return ()
        if kind == Kind.NOTE_OFF:
            self.notes[ch, note] = False
            return ()
        if kind == Kind.PITCH_BEND:
            self.bend[ch] = value
            return self.affected(ch)
        if kind == Kind.BEND_RANGE:
            self.bend_range[ch] = value
            return self.affected(ch)
        if kind == Kind.CHANNEL_PRESSURE:
            chans = self.affected(ch)
            for c in chans:
                self.pressure[c] = value
                self.poly_pressure[c, :] = np.nan
            return chans
        if kind == Kind.POLY_PRESSURE:
            self.poly_pressure[ch, note] = value
            return ()
        if kind == Kind.SLIDE:
            chans = self.affected(ch)
            for c in chans:
                self.slide[c] = value
            return chans
        if kind in (Kind.ALL_NOTES_OFF, Kind.ALL_SOUND_OFF):
            for c in self.affected(ch):
                self.notes[c, :] = False
            return ()
        if kind == Kind.MPE_CONFIG:
            return self.configure(ch, int(value))
        return ()


# ---- routing to the synth -----------------------------------------------------------------


def _optional_method(obj: Any, name: str) -> tuple[Callable[[int, float, int], Any], bool] | None:
    """``obj.name`` as ``call(channel, value, offset)``, and whether it takes a channel.

    Parameters are matched by name (``channel``/``ch``, ``offset``); the first other one gets
    the value, so ``set_pressure(value, channel, offset)``, ``set_pressure(channel, value,
    offset)``, ``set_mod_wheel(value, offset)`` and ``set_mod_wheel(amount)`` all work. Without
    a readable signature the call is ``(value, channel, offset)``, the Synth's order. None when
    ``obj`` has no such method.
    """
    meth = getattr(obj, name, None)
    if meth is None or not callable(meth):
        return None
    try:
        all_params = list(inspect.signature(meth).parameters.values())
    except (TypeError, ValueError):
        all_params = None
    params = [p for p in all_params or () if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if all_params is None or (not params and any(p.kind == p.VAR_POSITIONAL for p in all_params)):
        # no usable signature (a C function, a *args wrapper): Synth's own order
        return (lambda channel, value, offset: meth(value, channel, offset)), True
    roles: list[str] = []
    for p in params:
        if p.name in ("channel", "ch"):
            roles.append("channel")
        elif p.name in ("offset", "sample_offset"):
            roles.append("offset")
        elif "value" not in roles:
            roles.append("value")
        elif p.default is p.empty:
            roles.append("value")  # an unknown required parameter: best effort
        else:
            break

    def call(channel: int, value: float, offset: int) -> Any:
        args = {"channel": channel, "value": value, "offset": offset}
        return meth(*(args[r] for r in roles))

    return call, "channel" in roles


class MidiRouter:
    """Applies drained events to a :class:`~engine.synth.Synth` at their sample offsets.

    Arguments:
        bend_range_semitones: bend range of ordinary and MPE manager channels.
        member_bend_range_semitones: bend range an MCM gives MPE member channels.

    Attributes:
        mpe: the :class:`MpeState` (zones, per-note expression).
        stats: ``events``, ``clipped_bends`` (bends sent clipped: the channel's pitch was
            beyond the synth's ``bend_range_semitones``), ``ignored`` (no synth method for the
            kind).

    Thread: the render thread only (the one that calls the synth).
    """

    def __init__(self, bend_range_semitones: float = 2.0, member_bend_range_semitones: float = 48.0) -> None:
        self.mpe = MpeState(bend_range_semitones, member_bend_range_semitones)
        self.stats = {"events": 0, "clipped_bends": 0, "ignored": 0}
        self._sent_bend = np.zeros(16)
        self._synth: Any = None
        self._optional: dict[str, tuple[Callable[[int, float, int], Any], bool] | None] = {}

    def _bind(self, synth: Any) -> None:
        if self._synth is synth:
            return
        self._synth = synth
        self._optional = {
            name: _optional_method(synth, name)
            for name in ("set_mod_wheel", "set_pressure", "set_slide")
        }
        self._sent_bend[:] = 0.0  # a synth starts unbent

    def route(self, events: np.ndarray | Iterable[tuple], synth: Any) -> None:
        """Call ``synth`` for each event, in order, at its ``offset`` (clipped into the block).

        Args:
            events: :data:`EVENT_DTYPE` records (what :meth:`MidiInput.drain` returns), or tuples
                ``(t_ns, offset, kind, channel, note, velocity, value)``.
            synth: a :class:`~engine.synth.Synth` (or anything with its methods).
        """
        self._bind(synth)
        rows = events.tolist() if isinstance(events, np.ndarray) else events
        last = int(getattr(synth, "block_frames", 1 << 30)) - 1
        for _t, offset, kind, ch, note, velocity, value in rows:
            self.apply(synth, int(kind), int(ch), int(note), int(velocity), float(value), min(max(int(offset), 0), last))

    def apply(self, synth: Any, kind: int, ch: int, note: int, velocity: int, value: float, offset: int) -> None:
        """Route one event (``offset`` must lie inside the synth's block)."""
        self._bind(synth)
        self.stats["events"] += 1
        mpe = self.mpe
        changed = mpe.apply(kind, ch, note, velocity, value)
        if kind == Kind.NOTE_ON:
            self._send_bend(synth, ch, offset)
            synth.note_on(note, velocity, ch, offset)
        elif kind == Kind.NOTE_OFF:
            synth.note_off(note, ch, offset)
        elif kind == Kind.SUSTAIN:
            for c in mpe.affected(ch):
                synth.sustain(value >= 0.5, c, offset)
        elif kind in (Kind.PITCH_BEND, Kind.BEND_RANGE, Kind.MPE_CONFIG):
            for c in changed:
                self._send_bend(synth, c, offset)
        elif kind == Kind.ALL_NOTES_OFF:
            for c in mpe.affected(ch):
                synth.all_notes_off(c, offset)
        elif kind == Kind.ALL_SOUND_OFF:
            for c in mpe.affected(ch):
                synth.all_sound_off(c, offset)
        elif kind == Kind.MOD_WHEEL:
            self._call_optional("set_mod_wheel", mpe.affected(ch), value, offset)
        elif kind == Kind.CHANNEL_PRESSURE:
            self._call_optional("set_pressure", changed, value, offset)
        elif kind == Kind.SLIDE:
            self._call_optional("set_slide", changed, value, offset)
        # POLY_PRESSURE: kept in self.mpe only

    def _call_optional(self, name: str, channels: Sequence[int], value: float, offset: int) -> None:
        opt = self._optional.get(name)
        if opt is None:
            self.stats["ignored"] += 1
            return
        call, per_channel = opt
        for c in channels if per_channel else channels[:1]:
            call(c, value, offset)

    def _send_bend(self, synth: Any, ch: int, offset: int) -> None:
        synth_range = float(getattr(synth, "bend_range_semitones", 2.0)) or 2.0
        wanted = self.mpe.pitch_semitones(ch) / synth_range
        amount = min(max(wanted, -1.0), 1.0)
        if amount != self._sent_bend[ch]:
            self._sent_bend[ch] = amount
            self.stats["clipped_bends"] += amount != wanted
            synth.pitch_bend(amount, ch, offset)


# ---- APIs and ports -----------------------------------------------------------------------

_API_NAMES = {"jack": "API_UNIX_JACK", "alsa": "API_LINUX_ALSA", "coremidi": "API_MACOSX_CORE",
              "winmm": "API_WINDOWS_MM"}


def _rtmidi() -> Any:
    try:
        import rtmidi
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise MidiError(
            f"python-rtmidi is not importable ({exc}); reinstall the project: "
            ".venv/bin/pip install -e ."
        ) from exc
    return rtmidi


def api_name(api: int) -> str:
    """``"jack"``, ``"alsa"``... for an rtmidi API constant. Thread: any."""
    rtmidi = _rtmidi()
    for name, const in _API_NAMES.items():
        if getattr(rtmidi, const, None) == api:
            return name
    return rtmidi.get_api_name(api)


def _resolve_api(api: int | str | None) -> int:
    rtmidi = _rtmidi()
    if api is None:
        return choose_api()
    if isinstance(api, str):
        const = _API_NAMES.get(api.lower())
        if const is None:
            raise MidiError(f"unknown MIDI API {api!r}; use one of {sorted(_API_NAMES)} or None (choose)")
        api = getattr(rtmidi, const)
    if api not in rtmidi.get_compiled_api():
        names = [api_name(a) for a in rtmidi.get_compiled_api()]
        raise MidiError(f"python-rtmidi was built without the {api_name(api)} API; it has {names}")
    return int(api)


def _jack_server_name() -> str:
    return os.environ.get("JACK_DEFAULT_SERVER") or "default"


def _jack_running() -> bool:
    """True when a JACK server accepts a client (tried without auto-starting one)."""
    rtmidi = _rtmidi()
    # Skip the try (and libjack's lines on stderr) when there is plainly no server: no JACK2
    # socket or JACK1 directory in /dev/shm, and no PipeWire (whose libjack needs neither).
    shm = "/dev/shm"
    pipewire = os.path.exists(os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent", "pipewire-0"))
    if os.path.isdir(shm) and not pipewire:
        name = re.escape(_jack_server_name())
        if not any(re.fullmatch(rf"jack_{name}_\d+_\d+|jack-\d+", f) for f in os.listdir(shm)):
            return False
    try:
        probe = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, "NeiroSynth probe")
    except rtmidi.RtMidiError:
        return False
    probe.delete()
    return True


def choose_api() -> int:
    """The MIDI API to use: JACK when a JACK server runs, else ALSA, else CoreMIDI/WinMM.

    Raises:
        MidiError: none of them is available (the message says how to get one).

    Thread: the control thread (it may open and close a client).
    """
    rtmidi = _rtmidi()
    compiled = rtmidi.get_compiled_api()
    if rtmidi.API_UNIX_JACK in compiled and _jack_running():
        return int(rtmidi.API_UNIX_JACK)
    if rtmidi.API_LINUX_ALSA in compiled and os.path.exists("/dev/snd/seq"):
        try:
            rtmidi.MidiIn(rtmidi.API_LINUX_ALSA, "NeiroSynth probe").delete()
            return int(rtmidi.API_LINUX_ALSA)
        except rtmidi.RtMidiError:
            pass
    for const in ("API_MACOSX_CORE", "API_WINDOWS_MM"):
        api = getattr(rtmidi, const, None)
        if api is not None and api in compiled:
            return int(api)
    raise MidiError(
        f"no MIDI system is available: no JACK server is running (server "
        f"'{_jack_server_name()}'; start one, e.g. `jackd -d alsa`, qjackctl, or PipeWire's JACK) "
        "and the ALSA sequencer is missing (/dev/snd/seq: `sudo modprobe snd-seq`). "
        "Start one of them and try again."
    )


def _new_midi_in(api: int, client_name: str) -> Any:
    rtmidi = _rtmidi()
    try:
        return rtmidi.MidiIn(api, client_name)
    except rtmidi.RtMidiError as exc:
        hint = (
            f" Is the JACK server '{_jack_server_name()}' running (JACK_DEFAULT_SERVER)?"
            if api == rtmidi.API_UNIX_JACK
            else " Is the ALSA sequencer loaded (`sudo modprobe snd-seq`)?"
            if api == getattr(rtmidi, "API_LINUX_ALSA", None)
            else ""
        )
        raise MidiError(f"cannot open a {api_name(api)} MIDI client: {exc}.{hint}") from exc


def _get_ports(midi_in: Any) -> list[str]:
    """Port names, retried when a port vanishes while RtMidi walks the list."""
    rtmidi = _rtmidi()
    for attempt in range(3):
        try:
            return [p for p in midi_in.get_ports() if p]
        except rtmidi.RtMidiError:
            if attempt == 2:
                raise
    return []  # pragma: no cover


def list_input_ports(api: int | str | None = None) -> list[str]:
    """Names of the MIDI ports we could receive from (other programs' and devices' outputs).

    Raises:
        MidiError: no MIDI system (``api=None``), or the API's client cannot be opened.

    Thread: the control thread.
    """
    midi_in = _new_midi_in(_resolve_api(api), "NeiroSynth ports")
    try:
        return _get_ports(midi_in)
    finally:
        midi_in.delete()


_ALSA_ADDRESS = re.compile(r"\s+\d+:\d+$")


def _port_key(name: str) -> str:
    """A port's identity across re-plugging: ALSA appends ``client:port`` numbers that change."""
    return _ALSA_ADDRESS.sub("", name)


class PortChanges(NamedTuple):
    """What :meth:`MidiInput.poll_ports` saw since the last poll.

    Attributes:
        added: ports that appeared (offer them to the user).
        removed: ports that vanished.
        lost: the port we had open, when it vanished (it is now closed), else None.
        reopened: the port we reopened because it came back, else None.
        error: why the port list could not be read this time, else None.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    lost: str | None = None
    reopened: str | None = None
    error: str | None = None


class MidiInput:
    """A MIDI input through python-rtmidi that queues timestamped events for the render thread.

    Arguments:
        api: an rtmidi API constant, ``"jack"``/``"alsa"``/..., or None: :func:`choose_api`.
        client_name: the MIDI client's name (JACK: ``client_name:port``).
        channels: a channel 0..15 or several to listen to; None = omni (all). Keep omni for MPE.
        capacity: events the ring holds (a render thread stalled that long drops the newest).
        auto_reconnect: reopen a lost port when a port of the same name comes back.

    Raises:
        MidiError: no MIDI system, or the API's client cannot be opened.

    Thread: the control thread makes it and calls ``open``/``open_virtual``/``close``/
    ``poll_ports``/``list_ports``; the render thread calls ``drain``; the rtmidi callback runs on
    the MIDI thread (module docstring).
    """

    def __init__(
        self,
        api: int | str | None = None,
        *,
        client_name: str = "NeiroSynth",
        channels: int | Iterable[int] | None = None,
        capacity: int = 4096,
        auto_reconnect: bool = True,
    ) -> None:
        self.api = _resolve_api(api)
        self.client_name = client_name
        self.auto_reconnect = auto_reconnect
        mask = np.ones(16, bool)
        if channels is not None:
            chans = [channels] if isinstance(channels, int) else list(channels)
            bad = [c for c in chans if not (isinstance(c, int) and 0 <= c <= 15)]
            if bad or not chans:
                raise ValueError(f"channels must be MIDI channels 0..15 (or None for omni), got {channels!r}")
            mask[:] = False
            mask[chans] = True
        self._channel_ok = mask.tolist()
        self.queue = EventQueue(capacity)
        self.parser = MidiParser()
        self._midi_in: Any = _new_midi_in(self.api, client_name)  # None after a close
        self._opened = False  # self._midi_in has (had) a port or a callback
        self._callback_ref: Any = None
        self._generation = 0
        self._port_name: str | None = None  # the source we opened (None: virtual or closed)
        self._virtual_name: str | None = None
        self._lost: str | None = None
        try:
            self._known: tuple[str, ...] = tuple(self._list())
        except Exception:  # noqa: BLE001 - the first poll_ports will report every port
            self._known = ()
        self._messages = 0  # MIDI thread
        self._callback_errors = 0  # MIDI thread
        self._filtered = 0  # MIDI thread

    # -- control thread --
    def list_ports(self) -> list[str]:
        """Ports we could open (other clients' outputs). Control thread."""
        return self._list()

    def _list(self) -> list[str]:
        return _get_ports(self._instance())

    def _instance(self) -> Any:
        """The current rtmidi object, made anew after a close."""
        if self._midi_in is None:
            self._midi_in = _new_midi_in(self.api, self.client_name)
        return self._midi_in

    @property
    def port_name(self) -> str | None:
        """The source port we opened, the virtual port's name, or None when closed."""
        return self._port_name or self._virtual_name

    @property
    def is_open(self) -> bool:
        """True while a port (or the virtual port) is open."""
        return self._port_name is not None or self._virtual_name is not None

    def _resolve_port(self, port: int | str) -> tuple[int, str]:
        names = self._list()
        if isinstance(port, bool) or not isinstance(port, (int, str)):
            raise TypeError(f"port must be an index or a name, got {port!r}")
        if isinstance(port, int):
            if not 0 <= port < len(names):
                raise MidiError(f"no MIDI input port {port}: there are {len(names)} ({names}); "
                                "pick an index from list_ports()")
            return port, names[port]
        exact = [i for i, n in enumerate(names) if n == port or _port_key(n) == _port_key(port)]
        if exact:
            return exact[0], names[exact[0]]
        matches = [i for i, n in enumerate(names) if port.lower() in n.lower()]
        if not matches:
            raise MidiError(f"no MIDI input port matches {port!r}; the ports are {names}. "
                            "Is the device plugged in (or the program running)?")
        if len(matches) > 1:
            raise MidiError(f"{port!r} matches several MIDI input ports: "
                            f"{[names[i] for i in matches]}; give more of the name, or an index")
        return matches[0], names[matches[0]]

    def _fresh_instance(self) -> Any:
        """The unopened rtmidi object, making a new one if the current one was used."""
        if self._opened:
            self._retire()
        return self._instance()

    def _arm(self, midi_in: Any) -> None:
        self._generation += 1
        self.parser.reset()
        midi_in.set_callback(self._on_message, self._generation)
        # Keep python-rtmidi's (func, data) tuple alive ourselves: close_port() drops its own
        # reference while a callback already past RtMidi's check may still be waiting for the
        # GIL with a raw pointer to that tuple.
        self._callback_ref = next(
            (o for o in gc.get_referents(midi_in)
             if type(o) is tuple and len(o) == 2 and type(o[1]) is int and o[1] == self._generation),
            None,
        )  # fmt: skip
        self._opened = True

    def open(self, port: int | str) -> str:
        """Listen to a port: an index into :meth:`list_ports`, or (part of) its name.

        A name matches exactly first, then as a case-insensitive substring (which must be
        unique). Once the port is found, what was open before is closed.

        Returns:
            The full name of the opened port.

        Raises:
            MidiError: no such port, an ambiguous name, or the port cannot be opened.
        """
        rtmidi = _rtmidi()
        index, name = self._resolve_port(port)  # an error here leaves the open port as it is
        self.close()
        midi_in = self._fresh_instance()
        self._arm(midi_in)
        try:
            midi_in.open_port(index, "in")
        except rtmidi.RtMidiError as exc:
            self._retire()
            raise MidiError(f"cannot open MIDI input {name!r}: {exc}. Try again, or pick another port.") from exc
        self._port_name = name
        self._lost = None
        log.info("MIDI input: %s (%s)", name, api_name(self.api))
        return name

    def open_virtual(self, name: str = "NeiroSynth") -> str:
        """Open a virtual input port other programs connect to (JACK/ALSA/CoreMIDI).

        Returns:
            The port's name as others see it (JACK: ``client_name:name``).

        Raises:
            MidiError: the API has no virtual ports (WinMM) or the port cannot be made.
        """
        rtmidi = _rtmidi()
        self.close()
        midi_in = self._fresh_instance()
        self._arm(midi_in)
        try:
            midi_in.open_virtual_port(name)
        except (rtmidi.RtMidiError, NotImplementedError) as exc:
            self._retire()
            raise MidiError(f"cannot open a virtual MIDI input {name!r} with {api_name(self.api)}: {exc}. "
                            "Open a device port instead (open()).") from exc
        self._virtual_name = name
        self._lost = None
        full = f"{self.client_name}:{name}" if self.api == rtmidi.API_UNIX_JACK else name
        log.info("MIDI input: virtual port %s (%s)", full, api_name(self.api))
        return full

    def close(self) -> None:
        """Close the port and the MIDI client (idempotent); queued events stay for ``drain``.

        A later call that needs a client (``list_ports``, ``poll_ports``, ``open``) makes one.
        """
        self._port_name = None
        self._virtual_name = None
        self._lost = None  # an explicit close also stops auto-reconnect
        if self._opened:
            self._retire()
        elif self._midi_in is not None:
            self._midi_in.delete()
            self._midi_in = None

    def _retire(self) -> None:
        """Stop callbacks, close and destroy the rtmidi object (the next use makes a new one)."""
        midi_in, keep = self._midi_in, self._callback_ref
        self._generation += 1  # a callback still in flight returns at once
        try:
            midi_in.cancel_callback()
            time.sleep(0.005)  # let a callback that was waiting for the GIL run (and return)
            midi_in.close_port()
        except Exception as exc:  # noqa: BLE001 - closing a vanished port must not raise
            log.warning("closing MIDI input: %s", exc)
        finally:
            midi_in.delete()  # joins RtMidi's thread / closes the JACK client
            del keep
            self._callback_ref = None
            self._opened = False
            self._midi_in = None

    def poll_ports(self) -> PortChanges:
        """Look for ports that appeared or vanished; call it every ~0.5 s (control thread).

        If the opened port vanished it is closed (no exception), and a sustain release and
        all-notes-off for every listened channel is queued. With ``auto_reconnect``, a lost port
        that reappears is reopened.
        """
        try:
            now = tuple(self._list())
        except Exception as exc:  # noqa: BLE001 - a hot-plug poll must never raise
            return PortChanges(error=f"cannot list MIDI ports: {exc}")
        prev = set(self._known)
        added = tuple(p for p in now if p not in prev)
        removed = tuple(p for p in self._known if p not in set(now))
        self._known = now
        lost = reopened = error = None
        keys = {_port_key(p) for p in now}
        if self._port_name is not None and _port_key(self._port_name) not in keys:
            lost = self._port_name
            self.close()
            self._lost = lost
            self._release_all(time.perf_counter_ns())
            log.warning("MIDI input %s vanished; closed it", lost)
        elif self._lost is not None and self.auto_reconnect and _port_key(self._lost) in keys:
            try:
                reopened = self.open(self._lost)
            except MidiError as exc:
                error = str(exc)
        return PortChanges(added, removed, lost, reopened, error)

    def _release_all(self, t_ns: int) -> None:
        """Queue pedal up + all notes off on every listened channel (no producer is running)."""
        for ch in range(16):
            if self._channel_ok[ch]:
                self.queue.push(t_ns, Kind.SUSTAIN, ch, 0, 0, 0.0)
                self.queue.push(t_ns, Kind.ALL_NOTES_OFF, ch, 0, 0, 0.0)

    def __enter__(self) -> MidiInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- MIDI thread --
    def _on_message(self, event: tuple[list[int], float], generation: int) -> None:
        t_ns = time.perf_counter_ns()
        if generation != self._generation:
            return
        try:
            self._messages += 1
            self._push(event[0], t_ns)
        except Exception:  # noqa: BLE001 - never let an exception into RtMidi's thread
            self._callback_errors += 1

    def _push(self, data: Sequence[int] | bytes, t_ns: int) -> None:
        ok = self._channel_ok
        push = self.queue.push
        for m in self.parser.feed(data):
            if ok[m.channel]:
                push(t_ns, m.kind, m.channel, m.note, m.velocity, m.value)
            else:
                self._filtered += 1

    def push_bytes(self, data: bytes | Sequence[int], t_ns: int | None = None) -> None:
        """Parse and queue bytes as if they arrived at ``t_ns`` (default: now).

        For sources other than rtmidi (tests, a file player). Only while no port is open —
        the ring has one producer.

        Raises:
            MidiError: a port is open (its callback is the producer).
        """
        if self._opened:
            raise MidiError("push_bytes() while a MIDI port is open would make a second producer "
                            "for the event ring; close() the port first")
        self._push(data, time.perf_counter_ns() if t_ns is None else int(t_ns))

    # -- render thread --
    def drain(self, now_ns: int, block_start_ns: int, sample_rate_hz: float, block_frames: int) -> np.ndarray:
        """The events for the block whose first sample is due at ``block_start_ns``, with offsets.

        See :meth:`EventQueue.drain` and "Latency model" in the module docstring.

        Thread: the render thread only.
        """
        return self.queue.drain(now_ns, block_start_ns, sample_rate_hz, block_frames)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``messages`` received, ``queued`` now, ``dropped`` (ring full), ``late``,
        ``filtered`` (other channels), ``drained``, ``callback_errors``. Any thread (a snapshot)."""
        return {
            "messages": self._messages,
            "queued": len(self.queue),
            "dropped": self.queue.dropped,
            "late": self.queue.late,
            "filtered": self._filtered,
            "drained": self.queue.drained,
            "callback_errors": self._callback_errors,
        }
