"""Notes to sound: voices on a physical body, rendered a block at a time on any backend.

:class:`Synth` owns the voices of one instrument (a :class:`~engine.presets.Preset` resident
in the backend, optionally morphing towards a second one). Performance events — note on and
off, sustain, pitch bend — arrive with a sample offset inside the next block and take effect
at that exact sample: each becomes a new parameter record that the kernel switches to at that
sample (:mod:`engine.block`).

Per voice:

* **Pitch** — the note's frequency (equal temperament, A4 = 440 Hz, plus pitch bend) is
  reached through the exact dispersion relation (:mod:`engine.tuning`) of the morphed map's
  lowest mode. High notes run several FDTD steps per output sample; the fine-rate pickup is
  low-passed (10th-order elliptic, 0.1 dB ripple up to 0.45·fs, 90 dB stop) and decimated.
  Each voice keeps two semitones of headroom above its note for pitch bend.
* **Strike** — a force with a raised-cosine time envelope of the contact time
  (``kind="strike"``) or a linear ramp released at once (``kind="pluck"``), over a Gaussian
  footprint. Its amplitude is scaled by ``sin θ₁`` of the note (``θ₁`` the fundamental's
  phase step), so the fundamental's level does not depend on the note; velocity sets the force
  and shortens the contact (harder, brighter).
* **Release** — note off (or pedal up) adds uniform damping for a 60 dB decay in
  ``release_s``; a released voice below −90 dBFS over a whole block is freed.
* **Stealing** — when every voice is busy the oldest released voice, else the oldest voice,
  is reset and reused.

The mix is summed, scaled by the preset's gain, DC-blocked (a free body can drift) and
soft-limited so it never reaches full scale.

Public API: ``Synth``, ``note_to_hz``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.signal

from .block import RECORD_DTYPE, RECORD_RESET, FdtdBackend
from .presets import Preset
from .tuning import LowestMode, TuningError, choose_steps_per_sample, lowest_mode, solve_c2, CFL_LIMIT, CFL_SAFETY

__all__ = ["Synth", "note_to_hz"]

log = logging.getLogger(__name__)

#: Loudness calibration: the fundamental of a centre strike at full force peaks near this.
_KICK_GAIN = 600.0
#: A released voice quieter than this over a whole block is freed (−90 dBFS).
_FREE_LEVEL = 10.0 ** (-90.0 / 20.0)
#: Soft limiter: linear below this level, tanh above it, never reaching 1.0.
_LIMIT_KNEE = 0.8


def _envelope(t: np.ndarray, contact: int, pluck: bool) -> np.ndarray:
    """Strike (raised cosine over the contact) or pluck (ramp, then let go) at samples ``t``."""
    inside = t < contact
    phase = np.where(inside, t / contact, 1.0)
    if pluck:
        return np.where(inside, phase, 0.0)
    return np.where(inside, 0.5 * (1.0 - np.cos(2.0 * np.pi * phase)), 0.0)


def note_to_hz(note: float, a4_hz: float = 440.0) -> float:
    """Equal-tempered frequency of a (fractional) MIDI note number."""
    return a4_hz * 2.0 ** ((note - 69.0) / 12.0)


@dataclass
class _Voice:
    slot: int
    note: int = -1
    channel: int = 0
    active: bool = False
    released: bool = False
    held_by_pedal: bool = False
    started_at: int = 0
    released_at: int = 0
    steps_per_sample: int = 1
    frequency_hz: float = 0.0
    mode: LowestMode | None = None
    eta: float = 0.0
    gamma_hz: float = 0.0
    record: np.ndarray = field(default_factory=lambda: np.zeros((), RECORD_DTYPE))
    # strike: samples since contact began, contact length, peak kick, kind
    strike_pos: int = 1 << 30
    contact_samples: int = 1
    kick: float = 0.0
    pluck: bool = False
    zi: np.ndarray | None = None
    dispatched: bool = False


@dataclass
class _Pending:
    offset: int
    kind: str
    a: int = 0
    b: int = 0
    value: float = 0.0


class Synth:
    """Voices of one instrument on a backend, rendered block by block.

    Arguments:
        backend: an :class:`~engine.block.FdtdBackend` (GPU, reference, numba).
        preset: the instrument; its grid size must match the backend's.
        sample_rate_hz: output sample rate (44 100, 48 000 or 96 000 typical).
        max_polyphony: voices that may sound at once (≤ the backend's voices).
        release_s: 60 dB decay time after note off.
        bend_range_semitones: pitch-bend range (±).
        morph_to: an optional second preset for morphing; :meth:`set_morph` sets the weight.

    Not thread-safe: a single thread (the render thread) calls every method.
    """

    def __init__(
        self,
        backend: FdtdBackend,
        preset: Preset,
        *,
        sample_rate_hz: int = 48_000,
        max_polyphony: int | None = None,
        release_s: float = 0.25,
        bend_range_semitones: float = 2.0,
        morph_to: Preset | None = None,
    ) -> None:
        if preset.grid_n != backend.grid_n:
            raise ValueError(
                f"preset {preset.name!r} is {preset.grid_n}×{preset.grid_n}; the backend "
                f"simulates {backend.grid_n}×{backend.grid_n}"
            )
        self.backend = backend
        self.preset = preset
        self.sample_rate_hz = int(sample_rate_hz)
        self.block_frames = backend.block_frames
        self.release_s = float(release_s)
        self.bend_range_semitones = float(bend_range_semitones)
        n_voices = min(max_polyphony or backend.max_voices, backend.max_voices)
        self.voices = [_Voice(slot=i) for i in range(n_voices)]
        self.plan = backend.new_plan()
        backend.upload_map(0, preset.stiffness, preset.damping_per_s)
        target = morph_to or preset
        if target.grid_n != preset.grid_n:
            raise ValueError("the morph target must have the same grid size as the preset")
        backend.upload_map(1, target.stiffness, target.damping_per_s)
        self._maps = (
            (np.asarray(preset.stiffness, np.float64), np.asarray(preset.damping_per_s, np.float64)),
            (np.asarray(target.stiffness, np.float64), np.asarray(target.damping_per_s, np.float64)),
        )
        self.morph = 0.0
        self._modes: dict[tuple[float, float], LowestMode] = {}
        self._pending: list[_Pending] = []
        self._bend = np.zeros(16)
        self._sustain = np.zeros(16, bool)
        self._now = 0
        self._sos = {
            os_: scipy.signal.ellip(10, 0.1, 90, 0.9 / os_, output="sos") for os_ in range(2, 17)
        }
        self._gain = 10.0 ** (preset.gain_db / 20.0)
        self._dc_x = np.zeros(2)
        self._dc_y = np.zeros(2)
        self._dc_r = math.exp(-2.0 * math.pi * 8.0 / self.sample_rate_hz)
        self.stats = {"notes": 0, "stolen": 0, "refused": 0, "clamped_bends": 0}

    # ---- performance events (offset = sample inside the next block) ----------------------

    def note_on(self, note: int, velocity: int, channel: int = 0, offset: int = 0) -> None:
        self._queue(_Pending(offset, "on", note, channel, velocity / 127.0))

    def note_off(self, note: int, channel: int = 0, offset: int = 0) -> None:
        self._queue(_Pending(offset, "off", note, channel))

    def sustain(self, down: bool, channel: int = 0, offset: int = 0) -> None:
        self._queue(_Pending(offset, "sustain", 0, channel, 1.0 if down else 0.0))

    def pitch_bend(self, amount: float, channel: int = 0, offset: int = 0) -> None:
        """``amount`` in [-1, 1] of the bend range."""
        self._queue(_Pending(offset, "bend", 0, channel, float(np.clip(amount, -1.0, 1.0))))

    def all_notes_off(self, channel: int = 0, offset: int = 0) -> None:
        self._queue(_Pending(offset, "all_off", 0, channel))

    def set_morph(self, weight: float) -> None:
        """Morph weight towards ``morph_to`` (0..1) for notes struck from now on."""
        self.morph = float(np.clip(weight, 0.0, 1.0))

    @property
    def active_voices(self) -> int:
        return sum(v.active for v in self.voices)

    def _queue(self, ev: _Pending) -> None:
        if not 0 <= ev.offset < self.block_frames:
            raise ValueError(f"offset={ev.offset} outside the block (0..{self.block_frames - 1})")
        self._pending.append(ev)

    # ---- physics of a voice ---------------------------------------------------------------

    def _mode(self, morph: float, boundary: float) -> LowestMode:
        key = (round(morph, 4), round(boundary, 4))
        mode = self._modes.get(key)
        if mode is None:
            s = self._maps[0][0] * (1 - key[0]) + self._maps[1][0] * key[0]
            mode = lowest_mode(s, key[1])
            self._modes[key] = mode
        return mode

    def _damping_hz(self, mode: LowestMode, morph: float) -> float:
        d = self._maps[0][1] * (1 - morph) + self._maps[1][1] * morph
        return mode.weighted_mean(d)

    def _start_voice(self, v: _Voice, note: int, channel: int, velocity: float) -> bool:
        p = self.preset
        n = p.grid_n
        morph = self.morph
        mode = self._mode(morph, p.boundary)
        gamma_hz = self._damping_hz(mode, morph)
        freq = note_to_hz(note + self._bend[channel] * self.bend_range_semitones)
        try:
            steps, c2, eta = choose_steps_per_sample(
                freq,
                mode,
                sample_rate_hz=self.sample_rate_hz,
                loss_m2_per_s=p.loss_m2_per_s,
                dx_m=p.dx_m,
                gamma_per_step_hz=gamma_hz,
                max_steps_per_sample=self.backend.max_steps_per_sample,
                headroom_semitones=self.bend_range_semitones,
            )
        except TuningError as exc:
            self.stats["refused"] += 1
            log.warning("note %d refused: %s", note, exc)
            return False
        dt = 1.0 / (self.sample_rate_hz * steps)
        exc = p.excitation
        width = max(exc["width"] * n, 0.5)
        g = np.exp(-((np.arange(n) - exc["x"] * (n - 1)) ** 2) / (2 * width**2))
        h = np.exp(-((np.arange(n) - exc["y"] * (n - 1)) ** 2) / (2 * width**2))
        r = v.record
        r[...] = 0
        r["c2"] = c2
        r["eta"] = eta
        r["gamma_per_d"] = dt
        r["gamma_add"] = 0.0
        r["morph"] = morph
        r["boundary"] = p.boundary
        r["exc_x"] = exc["x"] * (n - 1)
        r["exc_y"] = exc["y"] * (n - 1)
        r["exc_inv_2w2"] = 1.0 / (2.0 * width**2)
        r["exc_norm"] = 1.0 / (g.sum() * h.sum())
        r["pick_lx"], r["pick_ly"] = (c * (n - 1) for c in p.pickups["left"])
        r["pick_rx"], r["pick_ry"] = (c * (n - 1) for c in p.pickups["right"])
        r["map_a"], r["map_b"] = 0, 1
        # velocity: force ∝ v^1.5, contact shortens up to 3× for a hard hit
        contact_s = exc["contact_time_s"] * (1.8 - 1.2 * velocity)
        contact = max(2, int(round(contact_s * self.sample_rate_hz)))
        theta1 = 2.0 * math.pi * freq * dt
        v.kick = _KICK_GAIN * velocity**1.5 * math.sin(theta1) / (0.5 * contact * steps)
        v.contact_samples = contact
        v.pluck = exc["kind"] == "pluck"
        v.strike_pos = 0
        if v.steps_per_sample != steps or v.zi is None or not v.active:
            v.zi = (
                np.zeros((self._sos[steps].shape[0], 2, 2)) if steps > 1 else None
            )
        v.steps_per_sample = steps
        v.frequency_hz = freq
        v.mode = mode
        v.eta = eta
        v.gamma_hz = gamma_hz
        v.note = note
        v.channel = channel
        v.released = False
        v.held_by_pedal = False
        v.started_at = self._now
        return True

    def _retune(self, v: _Voice) -> None:
        """New C² for the voice's note under the channel's current bend (same steps)."""
        freq = note_to_hz(v.note + self._bend[v.channel] * self.bend_range_semitones)
        dt = 1.0 / (self.sample_rate_hz * v.steps_per_sample)
        c2 = solve_c2(freq, v.mode.mu, v.eta, v.gamma_hz * dt, dt)
        limit = CFL_LIMIT * CFL_SAFETY / v.mode.max_stiffness - 2.0 * v.eta
        if not 0.0 < c2 < limit:
            self.stats["clamped_bends"] += 1
            c2 = float(np.clip(c2, 1e-9, limit * 0.999))
        v.record["c2"] = c2

    def _release(self, v: _Voice) -> None:
        v.released = True
        v.held_by_pedal = False
        v.released_at = self._now
        dt = 1.0 / (self.sample_rate_hz * v.steps_per_sample)
        v.record["gamma_add"] = dt * math.log(1000.0) / self.release_s

    def _allocate(self, note: int, channel: int) -> tuple[_Voice, bool]:
        for v in self.voices:  # the same note retriggered reuses its voice
            if v.active and v.note == note and v.channel == channel:
                return v, False
        for v in self.voices:
            if not v.active:
                return v, True
        released = [v for v in self.voices if v.released]
        victim = min(released or self.voices, key=lambda v: v.released_at if v.released else v.started_at)
        self.stats["stolen"] += 1
        return victim, True

    # ---- one block ------------------------------------------------------------------------

    def render_block(self) -> np.ndarray:
        """Render the next block; returns float32 ``(block_frames, 2)`` in [-1, 1]."""
        plan = self.plan
        plan.clear()
        events: dict[int, list[tuple[int, int]]] = {}
        start_records: dict[int, int] = {}
        for v in self.voices:
            if v.active:
                rec = v.record.copy()
                rec["flags"] = 0
                start_records[v.slot] = plan.add_record(rec)

        # the strike each active voice is in at the block start: (offset, pos, kick, contact, pluck)
        strikes: dict[int, list[tuple[int, int, float, int, bool]]] = {
            v.slot: [(0, v.strike_pos, v.kick, v.contact_samples, v.pluck)]
            for v in self.voices
            if v.active
        }
        for ev in sorted(self._pending, key=lambda e: e.offset):
            touched = self._apply(ev, start_records)
            for v, reset in touched:
                rec = v.record.copy()
                rec["flags"] = RECORD_RESET if reset else 0
                if v.slot not in start_records:
                    # a voice that starts in this block: its first record resets the field
                    rec["flags"] = RECORD_RESET
                    start_records[v.slot] = plan.add_record(rec)
                    strikes[v.slot] = [(0, 1 << 30, 0.0, 1, False)]
                    if ev.offset == 0:
                        strikes[v.slot] = []
                if ev.offset > 0 or strikes.get(v.slot):
                    lst = events.setdefault(v.slot, [])
                    if len(lst) >= plan.max_events_per_voice:
                        plan.records[lst[-1][1]] = rec  # coalesce: keep the newest parameters
                    else:
                        lst.append((ev.offset, plan.add_record(rec)))
                if ev.kind == "on":
                    strikes[v.slot].append((ev.offset, 0, v.kick, v.contact_samples, v.pluck))
        self._pending.clear()

        force = np.zeros(self.block_frames)
        t = np.arange(self.block_frames)
        order = []
        for v in self.voices:
            if not v.active:
                continue
            segments = strikes[v.slot]
            for k, (off, pos, kick, contact, pluck) in enumerate(segments):
                end = segments[k + 1][0] if k + 1 < len(segments) else self.block_frames
                force[off:end] = kick * _envelope(t[off:end] - off + pos, contact, pluck)
            off, pos = segments[-1][0], segments[-1][1]
            v.strike_pos = min(pos + self.block_frames - off, 1 << 30)
            idx = plan.add_voice(
                v.slot,
                v.steps_per_sample,
                start_records[v.slot],
                force,
                events.get(v.slot, []),
            )
            order.append((idx, v))

        out = np.zeros((self.block_frames, 2))
        if order:
            pickups = self.backend.run(plan)
            for idx, v in order:
                fine = plan.voice_pickups(pickups, idx).astype(np.float64)
                if v.steps_per_sample > 1:
                    y, v.zi = scipy.signal.sosfilt(self._sos[v.steps_per_sample], fine, axis=1, zi=v.zi)
                    y = y[:, v.steps_per_sample - 1 :: v.steps_per_sample]
                else:
                    y = fine
                if not np.all(np.isfinite(y)):
                    log.error("voice %d went non-finite; silenced and reset", v.slot)
                    v.active = False
                    continue
                out += y.T
                if v.released and np.max(np.abs(y)) * self._gain < _FREE_LEVEL:
                    v.active = False
        self._now += self.block_frames
        return self._finish(out)

    def _apply(self, ev: _Pending, started: dict[int, int]) -> list[tuple[_Voice, bool]]:
        """Apply one event to the voice state; returns the voices whose record changed."""
        ch = ev.b
        if ev.kind == "on":
            v, fresh = self._allocate(ev.a, ch)
            was_active = v.active
            if not self._start_voice(v, ev.a, ch, ev.value):
                return []
            v.active = True
            self.stats["notes"] += 1
            return [(v, fresh or not was_active)]
        touched = []
        if ev.kind == "off":
            for v in self.voices:
                if v.active and not v.released and v.note == ev.a and v.channel == ch:
                    if self._sustain[ch]:
                        v.held_by_pedal = True
                    else:
                        self._release(v)
                        touched.append((v, False))
        elif ev.kind == "sustain":
            self._sustain[ch] = ev.value > 0.5
            if not self._sustain[ch]:
                for v in self.voices:
                    if v.active and v.held_by_pedal and v.channel == ch:
                        self._release(v)
                        touched.append((v, False))
        elif ev.kind == "bend":
            self._bend[ch] = ev.value
            for v in self.voices:
                if v.active and v.channel == ch:
                    self._retune(v)
                    touched.append((v, False))
        elif ev.kind == "all_off":
            for v in self.voices:
                if v.active and v.channel == ch and not v.released:
                    self._release(v)
                    touched.append((v, False))
        return [(v, r) for v, r in touched if v.slot in started or v.active]

    def _finish(self, mix: np.ndarray) -> np.ndarray:
        mix *= self._gain
        # DC blocker y[n] = x[n] − x[n−1] + r·y[n−1], per channel
        for ch in range(2):
            x = mix[:, ch]
            b = np.array([1.0, -1.0])
            a = np.array([1.0, -self._dc_r])
            zi = np.array([self._dc_r * self._dc_y[ch] - self._dc_x[ch]])
            y, _ = scipy.signal.lfilter(b, a, x, zi=zi)
            self._dc_x[ch] = x[-1]
            self._dc_y[ch] = y[-1]
            mix[:, ch] = y
        over = np.abs(mix) > _LIMIT_KNEE
        if np.any(over):
            head = 1.0 - _LIMIT_KNEE
            mix[over] = np.sign(mix[over]) * (
                _LIMIT_KNEE + head * np.tanh((np.abs(mix[over]) - _LIMIT_KNEE) / head) * 0.999
            )
        return mix.astype(np.float32)
