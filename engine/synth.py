r"""Notes to sound: voices on a physical body, rendered a block at a time on any backend.

:class:`Synth` owns the voices of one instrument (a :class:`~engine.presets.Preset` resident
in the backend, optionally with a second map to morph towards). Performance events — note on
and off, sustain, pitch bend, mod wheel, MPE pressure and slide — arrive with a sample offset
inside the next block and take effect at that exact sample: each becomes a new parameter
record that the kernel switches to at that sample (:mod:`engine.block`).

**Parameters.** Every note is described by the 25 physical parameters of
:mod:`engine.params`. ``note_on(..., params=p)`` plays a given vector; otherwise the Synth's
*parameter source* (by default :meth:`engine.kan.KAN.default` centred on the preset's values,
:func:`engine.params.preset_params`) turns ``(note, velocity, mod wheel, pressure, slide)`` into
one. ``set_mod_wheel``, ``set_pressure`` and ``set_slide`` re-evaluate the source for that
channel's sounding notes and switch them to the new parameters at the event's sample. Where each
parameter goes (``dt = 1/(fs·steps)``, ``n`` the grid size):

=======================  ======================================================================
pitch                    ``f = 440·2^((note + detune/100 + bend·range + glide/100 − 69)/12)``,
                         reached exactly: ``C² = solve_c2(f, μ, η, γ, dt)`` (:mod:`engine.tuning`)
                         for the lowest mode ``μ`` of the morphed map with the note's boundary
``glide_cents``          the starting offset; it decays with the fundamental's energy,
                         ``glide·e^{−2αt}``, ``α = d + σ₁μ/Δx²``, retuned every 64 samples
``damping_scale``        ``record.gamma_per_d = dt·scale`` (γ = gamma_per_d·d[i,j] + gamma_add)
``damping_add_per_s``    ``record.gamma_add = dt·(add + release)``
``loss_scale``           ``record.eta = 2·σ₁·scale·dt/Δx²``
``release_s``            note off adds ``ln(1000)/release_s`` to the uniform damping (ramped
                         in over 5 ms)
``release_loss_scale``   note off multiplies σ₁ by it as well
``thump_db``             note off strikes the body once more at this level
``morph``, ``boundary``  ``record.morph``, ``record.boundary``, quantised to 1/128 (the
                         lowest mode is cached per pair)
``excite_x/y/width``     the Gaussian footprint: ``exc_x = x·(n−1)``, radius ``max(w·n, ½)``
``force_db``,            the strike: peak ``600·(N/64)²·10^(dB/20)·sin θ₁/(½·contact·steps)`` (θ₁ the
``contact_time_s``,      fundamental's phase step, so the fundamental's level does not depend
``pluck``                on the note), envelope ``(1−pluck)·raised cosine + pluck·ramp``
``drive_db``             white-noise force while the key is down, ``σ ∝ sin θ₁·√(2α/fs)``:
                         its steady fundamental is about that of a strike of the same level
``pickup_l/r_x/y``       ``record.pick_*`` (bilinear reads)
``pickup_velocity``      ``y ← (1−m)·y + m·Δy/(2 sin(πf/fs))`` after decimation
``gain_db``, ``pan``,    the voice's 2×2 output matrix ``g·diag(√2 cos φ, √2 sin φ)·W``,
``stereo_width``         ``φ = π(1+pan)/4``, ``W`` the mid/side width
=======================  ======================================================================

Changes of the output matrix and of ``pickup_velocity`` ramp over 2 ms; the rest take effect
at the event's sample (a moved pickup jumps).

Per voice:

* **Oversampling** — high notes run several FDTD steps per output sample (the fewest that
  keep the note, two semitones of bend headroom and the larger of the held and released loss
  stable); the fine-rate pickup is low-passed (10th-order elliptic, 0.1 dB ripple up to
  0.45·fs, 90 dB stop) and decimated. A voice keeps its oversampling while it sounds: a
  mid-note change (bend, re-evaluation, retrigger) that no longer fits is clamped to the
  stability bound (counted in ``stats["clamped"]``), or, for a retrigger, restarted as a steal.
* **Release** — note off (or pedal up) raises the damping and loss to their release values
  over a 5 ms ramp (a new record every 16 samples); a released voice below
  −90 dBFS over a whole block is freed.
* **Stealing** — when every voice is busy the oldest released voice, else the quietest (then
  oldest) sounding voice is taken (the policy and the voices' bookkeeping are
  :class:`engine.voices.VoicePool`'s: "quietest" is the peak over the voice's last block, levels
  within 10 dB of the quietest count as equal, a note struck since counts as loud). It is not
  cut: its output fades to zero over 3 ms (linear gain ramp) from the note-on
  sample, and the new note's RESET and strike come at the end of the fade. When the new note
  needs another oversampling factor the start waits further, for the first block boundary after
  the fade (the decimation filter cannot change rate under a sounding voice). A stolen note
  therefore starts 3 ms late (at most 3 ms + one block); every other event is sample-exact.
* **All sound off** (CC120, :meth:`Synth.all_sound_off`) — every voice of the channel fades to
  zero over the same 3 ms from the event's sample (a voice already fading keeps its fade), its
  pending note is dropped, the channel's pedal is lifted, and the voice is freed at the first
  block boundary after the fade. All notes off (CC123) only releases.
* **Shedding** (:meth:`Synth.shed_voice`, :meth:`Synth.set_voice_limit`) — when the live engine
  finds the machine cannot render every voice in time it fades out, the same way, the voice a
  steal would take, and lowers the number of voices a new note may add to (beyond it, a note
  steals); ``stats["shed"]`` counts them.

The mix is summed, DC-blocked (a free body can drift) and soft-limited so it never reaches
full scale.

Public API: ``Synth``, ``ParamSource``, ``constant_source``, ``note_to_hz``, ``STEAL_FADE_S``.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import params as P
from .block import RECORD_DTYPE, RECORD_RESET, FdtdBackend
from .kan import KAN, inputs
from .mixdown import MixInput, MixState, decimation_sos, master_bus, mix_voices
from .mixdown import warm_up as _warm_up_mixdown
from .presets import Preset
from .scala import Tuning
from .tuning import (
    CFL_LIMIT,
    CFL_SAFETY,
    LowestMode,
    TuningError,
    choose_steps_per_sample,
    solve_c2,
)
from .modes import Body, BodyModes
from .voices import Voice, VoicePool

__all__ = ["Synth", "ParamSource", "constant_source", "note_to_hz", "STEAL_FADE_S"]

log = logging.getLogger(__name__)

#: A parameter source: KAN inputs ``(note/127, velocity, mod, pressure, slide)`` → 25 values.
ParamSource = Callable[[np.ndarray], np.ndarray]

#: Loudness calibration: the fundamental of a centre strike at full force peaks near this.
_KICK_GAIN = 600.0
#: ... on a grid this size; a mode's shape at the strike and at the pickup (unit-norm over N²
#: cells) each scale as 1/N, so the kick scales as (N/64)² and loudness does not depend on
#: the resolution (a 32×32 body sounds as loud as its 64×64 twin: coarse-to-fine training).
_KICK_GRID_N = 64
#: Soft limiter: linear below this level, tanh above it, never reaching 1.0.
_LIMIT_KNEE = 0.8
#: A stolen voice fades out over this long before the new note starts.
STEAL_FADE_S = 0.003
#: Output-matrix and pickup-velocity changes ramp over this long.
_RAMP_S = 0.002
#: Morph and boundary are quantised to this many steps (the lowest mode is cached per pair).
_BODY_STEPS = 128
_MODE_CACHE_SIZE = 256
#: Glide: retune every this many output samples while the offset exceeds _GLIDE_FLOOR cents.
_GLIDE_TICK = 64
_GLIDE_FLOOR = 0.05
#: A drive or thump quieter than this (relative to full force, −120 dB) is off.
_LEVEL_FLOOR = 1e-6
#: Slowest energy decay the drive is calibrated for (1/s): an undamped body still gets a level.
_DRIVE_MIN_DECAY = 1.0
_LN1000 = math.log(1000.0)
#: Note off raises the damping (and loss) to their release values over this long, in steps of
#: _RELEASE_TICK samples.
_RELEASE_RAMP_S = 0.005
_RELEASE_TICK = 16
#: Most output-coefficient changes (and field resets) one voice applies in one block.
_MAX_CHANGES = 32

_I = {name: P.index(name) for name in P.NAMES}


def _envelope(t: np.ndarray, contact: int, pluck: float) -> np.ndarray:
    """``(1−pluck)·raised cosine + pluck·ramp`` over the contact, zero after, at samples ``t``."""
    inside = t < contact
    phase = np.where(inside, t / contact, 1.0)
    strike = 0.5 * (1.0 - np.cos(2.0 * np.pi * phase))
    return np.where(inside, (1.0 - pluck) * strike + pluck * phase, 0.0)


def note_to_hz(note: float, a4_hz: float = 440.0) -> float:
    """Equal-tempered frequency of a (fractional) MIDI note number."""
    return a4_hz * 2.0 ** ((note - 69.0) / 12.0)


@dataclass
class _Tone:
    """One note's physics: its parameters and what the engine derived from them."""

    note: int
    channel: int
    velocity: float
    params: np.ndarray
    explicit: bool  # given to note_on: never re-evaluated
    morph: float
    boundary: float
    mode: LowestMode
    d_mode_hz: float  # mode-weighted mean of the morphed map's d (before damping_scale)
    steps: int = 1
    released: bool = False
    release_at: int = 0  # absolute sample of the note off
    release_frac: float = 0.0  # how far the release damping has ramped in (0..1)
    glide_cents: float = 0.0
    glide_at: int = 0  # absolute sample of the last glide update
    frequency_hz: float = 0.0
    body_key: tuple[int, int] = (0, 0)  # engine.modes.BodyModes.key
    body_exact: bool = True  # False: tuned on a stand-in body until its own arrives
    record: np.ndarray = field(default_factory=lambda: np.zeros((), RECORD_DTYPE))


@dataclass
class _Voice(Voice):
    """A voice's physics on top of its bookkeeping (:class:`engine.voices.Voice`)."""

    tone: _Tone | None = None
    pending: _Tone | None = None
    pending_at: int = 0
    fade_end: int = -1
    # strike in progress: samples since contact began, contact length, peak kick, pluck blend
    strike_pos: int = 1 << 30
    contact_samples: int = 1
    kick: float = 0.0
    pluck: float = 0.0
    drive: float = 0.0
    # (the output stage's state — decimator, last sample, coefficient ramp — is in
    # Synth._mix_state at this slot)
    rng: np.random.Generator | None = None

    @property
    def steps_per_sample(self) -> int:
        return self.tone.steps if self.tone is not None else 1

    @property
    def frequency_hz(self) -> float:
        return self.tone.frequency_hz if self.tone is not None else 0.0


@dataclass
class _Pending:
    offset: int
    kind: str
    a: int = 0
    b: int = 0
    value: float = 0.0
    params: np.ndarray | None = None


@dataclass
class _InFlight:
    """A block begun and not yet finished: its voices (with their generation when it was
    begun), its output stage input, and its pickups where the backend ran at once."""

    mix_in: MixInput
    order: list = field(default_factory=list)  # (voice, generation)
    t0: int = 0
    pickups: np.ndarray | None = None
    n_out: int = 0


class _Block:
    """What the events of one block did to each voice (filled while the events are applied)."""

    def __init__(self, t0: int) -> None:
        self.t0 = t0
        self.records: dict[int, list[list]] = {}  # slot → [[offset, record bytes, flags]]
        self.strikes: dict[int, list[tuple[int, int, float, int, float]]] = {}
        self.drives: dict[int, list[tuple[int, float]]] = {}
        self.coefs: dict[int, list[tuple[int, np.ndarray, int]]] = {}
        self.resets: dict[int, list[int]] = {}
        self.queue: list[tuple[int, int, int, object]] = []  # (offset, priority, seq, item)
        self.seq = 0

    def push(self, offset: int, priority: int, item: object) -> None:
        heapq.heappush(self.queue, (offset, priority, self.seq, item))
        self.seq += 1


class Synth:
    """Voices of one instrument on a backend, rendered block by block.

    Arguments:
        backend: an :class:`~engine.block.FdtdBackend` (GPU, reference, numba).
        preset: the instrument; its grid size must match the backend's.
        sample_rate_hz: output sample rate (44 100, 48 000 or 96 000 typical).
        max_polyphony: voices that may sound at once (≤ the backend's voices).
        release_s: the default source's release time (``None``: the parameter's default);
            only with the default source.
        bend_range_semitones: pitch-bend range (±).
        morph_to: an optional second preset, the map that ``morph`` moves towards.
        param_source: a callable (a :class:`~engine.kan.KAN`, say) from the five KAN inputs
            to the 25 parameters; ``None``: :meth:`KAN.default` centred on the preset's values.
        tuning: a Scala tuning (:func:`engine.scala.load_tuning`) giving each key's frequency;
            ``None``: 12-tone equal temperament, A4 = 440 Hz. A key the tuning leaves unmapped
            does not sound (counted in ``stats["refused"]``).

    Not thread-safe: a single thread (the render thread) calls every method.
    """

    def __init__(
        self,
        backend: FdtdBackend,
        preset: Preset,
        *,
        sample_rate_hz: int = 48_000,
        max_polyphony: int | None = None,
        release_s: float | None = None,
        bend_range_semitones: float = 2.0,
        morph_to: Preset | None = None,
        param_source: ParamSource | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        if preset.grid_n != backend.grid_n:
            raise ValueError(
                f"preset {preset.name!r} is {preset.grid_n}×{preset.grid_n}; the backend "
                f"simulates {backend.grid_n}×{backend.grid_n}"
            )
        if release_s is not None and param_source is not None:
            raise ValueError(
                "release_s sets the default parameter source's release; with param_source "
                "given, the source decides release_s"
            )
        self.backend = backend
        self.preset = preset
        self.sample_rate_hz = int(sample_rate_hz)
        self.block_frames = backend.block_frames
        self.bend_range_semitones = float(bend_range_semitones)
        self.tuning = tuning
        n_voices = min(max_polyphony or backend.max_voices, backend.max_voices)
        self._pool: VoicePool[_Voice] = VoicePool(
            [_Voice(slot=i, rng=np.random.default_rng(0x5EED + i)) for i in range(n_voices)]
        )
        self.voices = self._pool.voices
        self.plan = backend.new_plan()
        backend.upload_map(0, preset.stiffness, preset.damping_per_s)
        target = morph_to or preset
        if target.grid_n != preset.grid_n:
            raise ValueError("the morph target must have the same grid size as the preset")
        backend.upload_map(1, target.stiffness, target.damping_per_s)
        self._maps = (
            (
                np.asarray(preset.stiffness, np.float64),
                np.asarray(preset.damping_per_s, np.float64),
            ),
            (
                np.asarray(target.stiffness, np.float64),
                np.asarray(target.damping_per_s, np.float64),
            ),
        )
        #: The preset's parameter vector (with ``release_s`` if given): the default source's centre.
        self.base_params = P.preset_params(preset)
        if release_s is not None:
            self.base_params[_I["release_s"]] = P.spec("release_s").check(release_s)
        self.param_source: ParamSource = (
            param_source if param_source is not None else KAN.default(self.base_params)
        )
        self.release_s = float(self.base_params[_I["release_s"]])
        self._morph_override: float | None = None
        #: the lowest mode of each (morph, boundary) body; LiveEngine solves misses in the
        #: background (engine/modes.py)
        self.bodies = BodyModes(self._maps, _BODY_STEPS, _MODE_CACHE_SIZE)
        self._pending: list[_Pending] = []
        self._bend = np.zeros(16)
        self._mod = np.zeros(16)
        self._pressure = np.zeros(16)
        self._slide = np.full(16, 0.5)
        self._sustain = np.zeros(16, bool)
        self._now = 0
        self._sos = decimation_sos(max(2, backend.max_steps_per_sample))
        self._mix_state = MixState.allocate(n_voices, self._sos.shape[1])
        # the blocks begun and not finished yet (at most two), and their preallocated slots
        self._in_flight_slots = [
            _InFlight(MixInput.allocate(n_voices, n_voices * _MAX_CHANGES)) for _ in range(2)
        ]
        self._next_slot = 0
        self._in_flight: deque[_InFlight] = deque()
        self._submits = hasattr(backend, "submit") and hasattr(backend, "collect")
        self._mix = np.zeros((self.block_frames, 2))
        #: The voices' float64 sum of the last block, before the master bus (DC blocker,
        #: limiter): ``(block_frames, 2)``, overwritten by the next block (live view, tests).
        self.voice_mix = self._mix
        self._peak = np.zeros(n_voices)
        self._finite = np.zeros(n_voices, bool)
        self._frame_t = np.arange(self.block_frames)
        self._force = np.zeros(self.block_frames)
        self._fade = max(1, int(round(STEAL_FADE_S * self.sample_rate_hz)))
        self._ramp = max(1, int(round(_RAMP_S * self.sample_rate_hz)))
        self._glide_every = max(_GLIDE_TICK, -(-self.block_frames // 16))
        self._release_ramp = max(1, int(round(_RELEASE_RAMP_S * self.sample_rate_hz)))
        self._kick_gain = _KICK_GAIN * (preset.grid_n / _KICK_GRID_N) ** 2
        self._dc_x = np.zeros(2)
        self._dc_y = np.zeros(2)
        self._dc_r = math.exp(-2.0 * math.pi * 8.0 / self.sample_rate_hz)
        self._blk: _Block | None = None
        self.stats = {"notes": 0, "stolen": 0, "refused": 0, "clamped": 0, "stand_in_bodies": 0,
                      "shed": 0}
        #: at most this many voices sound (a new note beyond it steals); ``None``: the polyphony
        self.voice_limit: int | None = None
        # the body's lowest mode for the preset's own morph and boundary (an eigen-solve of
        # ~50 ms): now, not at the first note
        self._body(self.base_params)
        _warm_up_mixdown()  # the output stage's kernels: compiled now, not at the first note

    # ---- performance events (offset = sample inside the next block) ----------------------

    def note_on(
        self,
        note: int,
        velocity: int,
        channel: int = 0,
        offset: int = 0,
        params: np.ndarray | None = None,
    ) -> None:
        """Strike ``note`` (MIDI 0..127) at ``velocity`` (0..127).

        ``params``: the note's 25 parameters (:mod:`engine.params`), used as given (velocity
        then only labels the note) and never re-evaluated; ``None``: the parameter source's.

        Raises:
            ValueError: an offset outside the block; :class:`~engine.params.ParamError` for a
                parameter vector of the wrong shape or with a value outside its range.
        """
        p = None if params is None else P.validate(np.array(params, np.float64))
        self._queue(_Pending(offset, "on", note, channel, velocity / 127.0, p))

    def note_off(self, note: int, channel: int = 0, offset: int = 0) -> None:
        self._queue(_Pending(offset, "off", note, channel))

    def sustain(self, down: bool, channel: int = 0, offset: int = 0) -> None:
        self._queue(_Pending(offset, "sustain", 0, channel, 1.0 if down else 0.0))

    def pitch_bend(self, amount: float, channel: int = 0, offset: int = 0) -> None:
        """``amount`` in [-1, 1] of the bend range."""
        self._queue(_Pending(offset, "bend", 0, channel, float(np.clip(amount, -1.0, 1.0))))

    def set_mod_wheel(self, value: float, channel: int = 0, offset: int = 0) -> None:
        """Mod wheel (0..1) of ``channel``; its sounding notes take the re-evaluated parameters."""
        self._queue(_Pending(offset, "mod", 0, channel, _unit(value, "mod wheel")))

    def set_pressure(self, value: float, channel: int = 0, offset: int = 0) -> None:
        """Pressure (channel or MPE per-note aftertouch, 0..1) of ``channel``; re-evaluates."""
        self._queue(_Pending(offset, "pressure", 0, channel, _unit(value, "pressure")))

    def set_slide(self, value: float, channel: int = 0, offset: int = 0) -> None:
        """MPE slide (CC74, 0..1, rest ½) of ``channel``; re-evaluates its sounding notes."""
        self._queue(_Pending(offset, "slide", 0, channel, _unit(value, "slide")))

    def all_notes_off(self, channel: int = 0, offset: int = 0) -> None:
        """Release every note of ``channel`` (CC123): they ring out with their release."""
        self._queue(_Pending(offset, "all_off", 0, channel))

    def all_sound_off(self, channel: int = 0, offset: int = 0) -> None:
        """Silence ``channel`` now (CC120): its voices fade to zero over :data:`STEAL_FADE_S`
        from ``offset`` (no click) and are then freed; notes waiting to start on them are
        dropped and the channel's sustain pedal is lifted."""
        self._queue(_Pending(offset, "sound_off", 0, channel))

    def shed_voice(self, offset: int = 0) -> None:
        """Fade out for good, from ``offset``, the voice a steal would take (the oldest released,
        else the quietest): what the live engine does when the machine cannot render every
        voice in time (engine/overload.py). Nothing happens if every voice is fading already."""
        self._queue(_Pending(offset, "shed", 0, 0))

    def set_voice_limit(self, limit: int | None) -> None:
        """Let at most ``limit`` voices sound: a note struck with that many sounding steals
        one (as at full polyphony) instead of taking a free voice. ``None``: the polyphony.
        Voices sounding beyond a new limit play on; :meth:`shed_voice` fades them."""
        if limit is not None and not 1 <= int(limit) <= len(self.voices):
            raise ValueError(f"voice limit {limit}: expected 1..{len(self.voices)} or None")
        self.voice_limit = None if limit is None or int(limit) >= len(self.voices) else int(limit)

    def set_morph(self, weight: float | None, offset: int = 0) -> None:
        """Override the ``morph`` parameter (0..1: from the preset's map to the morph target's)
        from sample ``offset`` of the next block: the notes sounding then (unless their
        parameters were given explicitly) move to the new body, and notes struck from then on
        start on it. ``None`` gives every note back the morph its parameter source says. A
        body not tuned yet plays at once on the nearest tuned one while it is solved
        (:mod:`engine.modes`)."""
        value = math.nan if weight is None else _unit(weight, "morph")
        self._queue(_Pending(offset, "morph", 0, 0, value))

    def set_param_source(self, source: ParamSource) -> None:
        """Use ``source`` for notes struck and re-evaluated from now on."""
        self.param_source = source

    @property
    def morph(self) -> float:
        return (
            self._morph_override
            if self._morph_override is not None
            else float(self.base_params[_I["morph"]])
        )

    @property
    def active_voices(self) -> int:
        return self._pool.active_count

    def _queue(self, ev: _Pending) -> None:
        if not 0 <= ev.offset < self.block_frames:
            raise ValueError(f"offset={ev.offset} outside the block (0..{self.block_frames - 1})")
        if not 0 <= ev.b < 16:
            raise ValueError(f"channel={ev.b} outside 0..15")
        self._pending.append(ev)

    # ---- physics of a tone ----------------------------------------------------------------

    def _source_params(self, note: int, channel: int, velocity: float) -> np.ndarray:
        x = inputs(
            note, velocity, self._mod[channel], self._pressure[channel], self._slide[channel]
        )
        p = P.clip(np.asarray(self.param_source(x), np.float64))
        if self._morph_override is not None:
            p[_I["morph"]] = self._morph_override
        return p

    def _body(self, params: np.ndarray) -> tuple[int, int, Body]:
        """Quantised morph and boundary, and the body's lowest mode with its weighted damping
        (a stand-in while the exact one is solved in the background: ``Body.exact``)."""
        mq = int(round(params[_I["morph"]] * _BODY_STEPS))
        bq = int(round(params[_I["boundary"]] * _BODY_STEPS))
        body = self.bodies.get(self.bodies.key(mq / _BODY_STEPS, bq / _BODY_STEPS))
        if not body.exact:
            self.stats["stand_in_bodies"] += 1
        return mq, bq, body

    def _new_tone(
        self, note: int, channel: int, velocity: float, params: np.ndarray, explicit: bool
    ) -> _Tone:
        mq, bq, body = self._body(params)
        return _Tone(
            note,
            channel,
            velocity,
            params.copy(),
            explicit,
            mq / _BODY_STEPS,
            bq / _BODY_STEPS,
            body.mode,
            body.d_mode_hz,
            body_key=body.key,
            body_exact=body.exact,
            glide_cents=_initial_glide(params),
            glide_at=self._now,
        )

    def _sigma(self, t: _Tone, released: bool | None = None) -> float:
        """σ₁ of the tone in m²/s: now (``None``: partly released during the release ramp),
        or fully held / fully released."""
        if released is None:
            frac = t.release_frac if t.released else 0.0
        else:
            frac = 1.0 if released else 0.0
        rls = float(t.params[_I["release_loss_scale"]])
        scale = float(t.params[_I["loss_scale"]]) * (1.0 + frac * (rls - 1.0))
        return self.preset.loss_m2_per_s * scale

    def _damping_hz(self, t: _Tone) -> tuple[float, float]:
        """``(mode-weighted d·damping_scale, uniform add incl. release)`` in 1/s."""
        add = float(t.params[_I["damping_add_per_s"]])
        if t.released:
            add += t.release_frac * _LN1000 / float(t.params[_I["release_s"]])
        return t.d_mode_hz * float(t.params[_I["damping_scale"]]), add

    def _decay_hz(self, t: _Tone) -> float:
        """Amplitude decay rate of the fundamental, ``d + σ₁μ/Δx²`` (1/s)."""
        d_map, add = self._damping_hz(t)
        return d_map + add + self._sigma(t) * t.mode.mu / self.preset.dx_m**2

    def _pitch_hz(self, t: _Tone) -> float:
        p = t.params
        semis = (
            p[_I["detune_cents"]] / 100.0
            + self._bend[t.channel] * self.bend_range_semitones
            + t.glide_cents / 100.0
        )
        if self.tuning is not None:
            return self.tuning.note_to_hz(t.note, float(semis))
        return note_to_hz(t.note + float(semis))

    def _fits(self, t: _Tone, steps: int) -> bool:
        """Whether the tone (with bend headroom, held or released loss) is stable at ``steps``."""
        dt = 1.0 / (self.sample_rate_hz * steps)
        top = self._pitch_hz(t) * 2.0 ** (self.bend_range_semitones / 12.0)
        if 2.0 * math.pi * top * dt >= math.pi:
            return False
        eta = 2.0 * max(self._sigma(t, False), self._sigma(t, True)) * dt / self.preset.dx_m**2
        d_map, add = self._damping_hz(t)
        c2_top = solve_c2(top, t.mode.mu, eta, (d_map + add) * dt, dt)
        return 0.0 < c2_top and (c2_top + 2.0 * eta) * t.mode.max_stiffness < CFL_LIMIT * CFL_SAFETY

    def _choose_steps(self, t: _Tone) -> int:
        """The fewest steps per sample for the tone (raises :class:`TuningError`)."""
        d_map, add = self._damping_hz(t)
        steps, _, _ = choose_steps_per_sample(
            self._pitch_hz(t),
            t.mode,
            sample_rate_hz=self.sample_rate_hz,
            loss_m2_per_s=max(self._sigma(t, False), self._sigma(t, True)),
            dx_m=self.preset.dx_m,
            gamma_per_step_hz=d_map + add,
            max_steps_per_sample=self.backend.max_steps_per_sample,
            headroom_semitones=self.bend_range_semitones,
        )
        return steps

    def _fill_record(self, t: _Tone) -> None:
        """Derive the tone's record at its steps: exact C² for its pitch, clamped if unstable."""
        n = self.preset.grid_n
        p = t.params
        dt = 1.0 / (self.sample_rate_hz * t.steps)
        eta = 2.0 * self._sigma(t) * dt / self.preset.dx_m**2
        d_map, add = self._damping_hz(t)
        freq = self._pitch_hz(t)
        limit = CFL_LIMIT * CFL_SAFETY / t.mode.max_stiffness - 2.0 * eta
        try:
            c2 = solve_c2(freq, t.mode.mu, eta, (d_map + add) * dt, dt)
        except TuningError:
            c2 = limit
        if not 0.0 < c2 < limit:
            self.stats["clamped"] += 1
            c2 = float(np.clip(c2, 1e-9, limit * 0.999))
        t.frequency_hz = freq
        width = max(float(p[_I["excite_width"]]) * n, 0.5)
        ex = float(p[_I["excite_x"]]) * (n - 1)
        ey = float(p[_I["excite_y"]]) * (n - 1)
        k = np.arange(n)
        gx = np.exp(-((k - ex) ** 2) / (2 * width**2))
        gy = np.exp(-((k - ey) ** 2) / (2 * width**2))
        r = t.record
        r[...] = 0
        r["c2"] = c2
        r["eta"] = eta
        r["gamma_per_d"] = dt * float(p[_I["damping_scale"]])
        r["gamma_add"] = dt * add
        r["morph"] = t.morph
        r["boundary"] = t.boundary
        r["exc_x"] = ex
        r["exc_y"] = ey
        r["exc_inv_2w2"] = 1.0 / (2.0 * width**2)
        r["exc_norm"] = 1.0 / (gx.sum() * gy.sum())
        r["pick_lx"] = p[_I["pickup_l_x"]] * (n - 1)
        r["pick_ly"] = p[_I["pickup_l_y"]] * (n - 1)
        r["pick_rx"] = p[_I["pickup_r_x"]] * (n - 1)
        r["pick_ry"] = p[_I["pickup_r_y"]] * (n - 1)
        r["map_a"], r["map_b"] = 0, 1

    def _kick(self, t: _Tone, amplitude: float, contact: int) -> float:
        """Peak force per step of a strike of ``amplitude`` (1 = full force) over ``contact``."""
        theta1 = 2.0 * math.pi * t.frequency_hz / (self.sample_rate_hz * t.steps)
        return self._kick_gain * amplitude * math.sin(theta1) / (0.5 * contact * t.steps)

    def _contact(self, t: _Tone) -> int:
        return max(2, int(round(float(t.params[_I["contact_time_s"]]) * self.sample_rate_hz)))

    def _drive_sigma(self, t: _Tone) -> float:
        """Standard deviation of the drive force per output sample (0 when off or released)."""
        amp = P.level_amplitude(float(t.params[_I["drive_db"]]), "drive_db")
        if t.released or amp < _LEVEL_FLOOR:
            return 0.0
        theta1 = 2.0 * math.pi * t.frequency_hz / (self.sample_rate_hz * t.steps)
        alpha = max(self._decay_hz(t), _DRIVE_MIN_DECAY)
        return (
            self._kick_gain
            * amp
            * math.sin(theta1)
            * math.sqrt(2.0 * alpha / self.sample_rate_hz)
            / t.steps
        )

    def _coefs(self, t: _Tone) -> np.ndarray:
        """Output coefficients ``[c_u, c_d, a11, a12, a21, a22]`` of the tone (module docstring)."""
        p = t.params
        m = float(p[_I["pickup_velocity"]])
        norm = max(2.0 * math.sin(math.pi * min(t.frequency_hz / self.sample_rate_hz, 0.5)), 1e-4)
        g = 10.0 ** (float(p[_I["gain_db"]]) / 20.0)
        phi = 0.25 * math.pi * (1.0 + float(p[_I["pan"]]))
        gl, gr = math.sqrt(2.0) * math.cos(phi), math.sqrt(2.0) * math.sin(phi)
        w = float(p[_I["stereo_width"]])
        same, cross = 0.5 * (1.0 + w), 0.5 * (1.0 - w)
        return np.array(
            [1.0 - m, m / norm, g * gl * same, g * gl * cross, g * gr * cross, g * gr * same]
        )

    def _plan(
        self,
        note: int,
        channel: int,
        velocity: float,
        params: np.ndarray | None,
        steps: int | None = None,
    ) -> _Tone | None:
        """A tone for a new note at ``steps`` (``None``: the fewest); ``None`` if it cannot play."""
        explicit = params is not None
        p = params if explicit else self._source_params(note, channel, velocity)
        t = self._new_tone(note, channel, velocity, p, explicit)
        if not math.isfinite(self._pitch_hz(t)):
            self.stats["refused"] += 1
            log.info("note %d refused: the tuning leaves this key unmapped", note)
            return None
        if steps is None:
            try:
                t.steps = self._choose_steps(t)
            except TuningError as exc:
                self.stats["refused"] += 1
                log.warning("note %d refused: %s", note, exc)
                return None
        elif self._fits(t, steps):
            t.steps = steps
        else:
            return None
        self._fill_record(t)
        return t

    # ---- what an event does to the block --------------------------------------------------

    def _blk_record(self, v: _Voice, offset: int, reset: bool = False) -> None:
        blk = self._blk
        rec = v.tone.record.tobytes()
        flags = RECORD_RESET if reset else 0
        lst = blk.records.get(v.slot)
        if lst is None:  # a voice that starts in this block: its first record resets the field
            blk.records[v.slot] = [[0, rec, RECORD_RESET]]
        elif lst[-1][0] == offset:
            lst[-1][1] = rec
            lst[-1][2] |= flags
        else:
            lst.append([offset, rec, flags])

    def _blk_strike(self, v: _Voice, offset: int, kick: float, contact: int, pluck: float) -> None:
        lst = self._blk.strikes.setdefault(v.slot, [(0, 1 << 30, 0.0, 1, 0.0)])
        if lst[-1][0] == offset:
            lst.pop()
        lst.append((offset, 0, kick, contact, pluck))
        v.kick, v.contact_samples, v.pluck = kick, contact, pluck

    def _blk_drive(self, v: _Voice, offset: int, sigma: float) -> None:
        lst = self._blk.drives.setdefault(v.slot, [(0, 0.0)])
        if lst[-1][0] == offset:
            lst.pop()
        lst.append((offset, sigma))
        v.drive = sigma

    def _blk_coefs(self, v: _Voice, offset: int, target: np.ndarray, ramp: int) -> None:
        self._blk.coefs.setdefault(v.slot, []).append((offset, target, ramp))

    def _fresh_output(self, v: _Voice) -> None:
        self._mix_state.clear(v.slot)

    def _install(self, v: _Voice, t: _Tone, offset: int, reset: bool) -> None:
        """Start tone ``t`` on voice ``v`` at ``offset``: with a RESET of the field, or as a
        restrike of the ringing field (a retrigger)."""
        blk = self._blk
        in_block = v.slot in blk.records
        v.tone, v.pending = t, None
        v.active = True
        self._pool.struck(v, blk.t0 + offset)
        t.glide_cents = _initial_glide(t.params)
        t.glide_at = blk.t0 + offset
        self._fill_record(t)
        self._blk_record(v, offset, reset)
        coefs = self._coefs(t)
        if reset:
            if in_block:
                blk.resets.setdefault(v.slot, []).append(offset)
                self._blk_coefs(v, offset, coefs, 0)
            else:
                self._fresh_output(v)
                ms = self._mix_state
                ms.coef_now[v.slot] = ms.coef_target[v.slot] = coefs
                ms.coef_left[v.slot] = 0
                blk.coefs.pop(v.slot, None)
            v.fade_end = -1
        else:
            self._blk_coefs(v, offset, coefs, self._ramp)
        contact = self._contact(t)
        amp = 10.0 ** (float(t.params[_I["force_db"]]) / 20.0)
        self._blk_strike(
            v, offset, self._kick(t, amp, contact), contact, float(t.params[_I["pluck"]])
        )
        self._blk_drive(v, offset, self._drive_sigma(t))

    def _note_on(self, ev: _Pending, offset: int) -> None:
        note, ch, vel = ev.a, ev.b, ev.value
        blk = self._blk
        at = blk.t0 + offset
        v, kind = self._pool.allocate(note, ch, self.voice_limit)
        stolen = kind == "steal" and not v.stopping  # a voice fading out for good is no loss
        if kind == "retrigger" and v.pending is not None:
            t = self._plan(note, ch, vel, ev.params, v.pending.steps)
            if t is not None:
                v.pending = t
                self._mark_started(v, note, ch, at)
                return
            kind = "steal"
        elif kind == "retrigger":
            t = self._plan(note, ch, vel, ev.params, v.tone.steps)
            if t is not None:
                self._install(v, t, offset, reset=False)
                self._mark_started(v, note, ch, at)
                return
            kind = "steal"
        t = self._plan(note, ch, vel, ev.params)
        if t is None:
            return
        if kind == "free":
            self._install(v, t, offset, reset=True)
            self._mark_started(v, note, ch, at)
            return
        # steal (or a retrigger that no longer fits the voice's oversampling): fade the old
        # sound out, then reset and strike
        self.stats["stolen"] += stolen
        if v.fade_end < 0:
            v.fade_end = at + self._fade
            self._blk_coefs(v, offset, np.zeros(6), self._fade)
        start = max(v.fade_end, at)
        if t.steps != v.tone.steps:
            start = -(-(start - blk.t0) // self.block_frames) * self.block_frames + blk.t0
        v.pending, v.pending_at = t, start
        self._mark_started(v, note, ch, at)
        if start - blk.t0 < self.block_frames:
            blk.push(start - blk.t0, 0, ("start", v))

    def _mark_started(self, v: _Voice, note: int, ch: int, at: int) -> None:
        self._pool.start(v, note, ch, at)
        self.stats["notes"] += 1

    def _start_pending(self, v: _Voice, offset: int) -> None:
        t = v.pending
        if t is None or v.pending_at != self._blk.t0 + offset:
            return
        released = t.released
        t.released = False
        self._install(v, t, offset, reset=True)
        if released:
            self._release_tone(v, offset, thump=False)

    def _release(self, v: _Voice, offset: int) -> None:
        self._pool.release(v, self._blk.t0 + offset)
        if v.pending is not None:
            v.pending.released = True
        else:
            self._release_tone(v, offset, thump=True)

    def _release_tone(self, v: _Voice, offset: int, thump: bool) -> None:
        t = v.tone
        self._decay_glide(t, self._blk.t0 + offset)
        t.released = True
        t.release_at = self._blk.t0 + offset
        t.release_frac = 0.0
        self._fill_record(t)
        self._blk_record(v, offset)
        self._push_release_ticks(v, offset + 1)
        self._blk_drive(v, offset, 0.0)
        amp = P.level_amplitude(float(t.params[_I["thump_db"]]), "thump_db")
        if thump and amp >= _LEVEL_FLOOR:
            contact = self._contact(t)
            self._blk_strike(v, offset, self._kick(t, amp, contact), contact, 0.0)

    def _update(self, v: _Voice, t: _Tone, offset: int, params: np.ndarray | None) -> None:
        """Retune (new bend) or re-parameterise (``params``) a tone mid-note, at its steps."""
        if params is not None:
            mq, bq, body = self._body(params)
            t.params = params.copy()
            t.morph, t.boundary, t.mode, t.d_mode_hz = (
                mq / _BODY_STEPS,
                bq / _BODY_STEPS,
                body.mode,
                body.d_mode_hz,
            )
            t.body_key, t.body_exact = body.key, body.exact
        if t is not v.tone:
            return  # a pending tone: derived when it starts
        self._decay_glide(t, self._blk.t0 + offset)
        self._advance_release(t, self._blk.t0 + offset)
        self._fill_record(t)
        self._blk_record(v, offset)
        if v.fade_end < 0:
            self._blk_coefs(v, offset, self._coefs(t), self._ramp)
        if params is not None:
            self._blk_drive(v, offset, self._drive_sigma(t))

    def _decay_glide(self, t: _Tone, at: int) -> None:
        if t.glide_cents != 0.0 and at > t.glide_at:
            t.glide_cents *= math.exp(
                -2.0 * self._decay_hz(t) * (at - t.glide_at) / self.sample_rate_hz
            )
            if abs(t.glide_cents) < _GLIDE_FLOOR:
                t.glide_cents = 0.0
        t.glide_at = max(t.glide_at, at)

    def _apply(self, ev: _Pending, offset: int) -> None:
        ch = ev.b
        if ev.kind == "on":
            self._note_on(ev, offset)
        elif ev.kind == "off":
            for v in self.voices:
                if v.active and not v.released and v.note == ev.a and v.channel == ch:
                    if self._sustain[ch]:
                        v.held_by_pedal = True
                    else:
                        self._release(v, offset)
        elif ev.kind == "sustain":
            self._sustain[ch] = ev.value > 0.5
            if not self._sustain[ch]:
                for v in self.voices:
                    if v.active and v.held_by_pedal and v.channel == ch:
                        self._release(v, offset)
        elif ev.kind == "all_off":
            for v in self.voices:
                if v.active and v.channel == ch and not v.released:
                    self._release(v, offset)
        elif ev.kind == "sound_off":
            self._sustain[ch] = False
            for v in self.voices:
                if v.active and v.channel == ch and not v.stopping:
                    self._sound_off(v, offset)
        elif ev.kind == "shed":
            v = self._pool.shed_candidate()
            if v is not None:
                self.stats["shed"] += 1
                self._sound_off(v, offset)
        elif ev.kind == "morph":
            self._morph_override = None if math.isnan(ev.value) else ev.value
            for v in self.voices:
                if not v.active:
                    continue
                for t in (v.tone, v.pending):
                    if t is None or t.explicit:
                        continue
                    params = t.params.copy()
                    if self._morph_override is not None:  # no KAN pass: only the morph moves
                        params[_I["morph"]] = self._morph_override
                    else:
                        params = self._source_params(t.note, t.channel, t.velocity)
                    self._update(v, t, offset, params)
        elif ev.kind in ("bend", "mod", "pressure", "slide"):
            {
                "bend": self._bend,
                "mod": self._mod,
                "pressure": self._pressure,
                "slide": self._slide,
            }[ev.kind][ch] = ev.value
            for v in self.voices:
                if not v.active:
                    continue
                for t in (v.tone, v.pending):
                    if t is None or t.channel != ch:
                        continue
                    params = None
                    if ev.kind != "bend" and not t.explicit:
                        params = self._source_params(t.note, ch, t.velocity)
                    self._update(v, t, offset, params)

    def _sound_off(self, v: _Voice, offset: int) -> None:
        """Fade the voice out for good from ``offset`` (as a steal fades), drop its pending
        note; the pool frees it once the fade is over."""
        at = self._blk.t0 + offset
        if v.fade_end < 0:
            v.fade_end = at + self._fade
            self._blk_coefs(v, offset, np.zeros(6), self._fade)
        v.pending = None
        self._pool.stop(v, at, v.fade_end)

    def _glide_tick(self, offset: int) -> None:
        for v in self.voices:
            t = v.tone
            if v.active and t is not None and t.glide_cents != 0.0 and v.slot in self._blk.records:
                self._decay_glide(t, self._blk.t0 + offset)
                self._advance_release(t, self._blk.t0 + offset)
                self._fill_record(t)
                self._blk_record(v, offset)

    def _advance_release(self, t: _Tone, at: int) -> None:
        """The release ramp's progress at absolute sample ``at``."""
        if t.released and t.release_frac < 1.0:
            t.release_frac = min(max((at - t.release_at) / self._release_ramp, 0.0), 1.0)

    def _push_release_ticks(self, v: _Voice, first: int) -> None:
        """Steps of the voice's release ramp from ``first`` to the block's end."""
        tick = _RELEASE_TICK
        for off in range(-(-first // tick) * tick, self.block_frames, tick):
            self._blk.push(off, 2, ("release", v))

    def _release_tick(self, v: _Voice, offset: int) -> None:
        t = v.tone
        if not v.active or t is None or not t.released or t.release_frac >= 1.0:
            return
        at = self._blk.t0 + offset
        self._decay_glide(t, at)
        self._advance_release(t, at)
        self._fill_record(t)
        self._blk_record(v, offset)

    # ---- one block ------------------------------------------------------------------------

    def render_block(self) -> np.ndarray:
        """Render the next block; returns float32 ``(block_frames, 2)`` in [-1, 1]
        (:meth:`begin_block` then :meth:`finish_block`)."""
        self.begin_block()
        return self.finish_block()

    def begin_block(self) -> None:
        """Apply the next block's events and start its physics (on the GPU: submitted, not
        waited for); :meth:`finish_block` mixes it. One more block may be begun before the
        last is finished — the live engine begins block k and then finishes block k−1, whose
        physics the GPU completed meanwhile, so only the last block before an audio callback
        waits for the GPU. A voice freed or re-struck in between is left alone by the older
        block's bookkeeping (its generation changed).

        Raises:
            RuntimeError: two blocks are begun and not finished.
        """
        if len(self._in_flight) >= len(self._in_flight_slots):
            raise RuntimeError("two blocks begun and not finished: finish_block() first")
        n_frames = self.block_frames
        blk = self._blk = _Block(self._now)
        for v in self.voices:
            if v.active:
                blk.records[v.slot] = [[0, v.tone.record.tobytes(), 0]]
                blk.strikes[v.slot] = [(0, v.strike_pos, v.kick, v.contact_samples, v.pluck)]
                blk.drives[v.slot] = [(0, v.drive)]
                if v.pending is not None and v.pending_at < blk.t0 + n_frames:
                    blk.push(max(v.pending_at - blk.t0, 0), 0, ("start", v))
                if v.tone.released and v.tone.release_frac < 1.0:
                    self._push_release_ticks(v, 0)
        if self.bodies.background:
            for key in self.bodies.take_solved():
                self._retune_body(key)
        for ev in self._pending:
            blk.push(ev.offset, 1, ev)
        self._pending.clear()
        for off in range(self._glide_every, n_frames, self._glide_every):
            blk.push(off, 2, ("glide", None))
        while blk.queue:
            off, _, _, item = heapq.heappop(blk.queue)
            if isinstance(item, _Pending):
                self._apply(item, off)
            elif item[0] == "start":
                self._start_pending(item[1], off)
            elif item[0] == "release":
                self._release_tick(item[1], off)
            else:
                self._glide_tick(off)

        plan = self.plan
        plan.clear()
        slot = self._in_flight_slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._in_flight_slots)
        order = slot.order
        order.clear()
        for v in self.voices:
            lst = blk.records.get(v.slot)
            if not v.active or lst is None:
                continue
            lst = _coalesce(lst, plan.max_events_per_voice)
            first = plan.add_record(lst[0][1], lst[0][2])
            events = [(off, plan.add_record(rec, fl)) for off, rec, fl in lst[1:]]
            plan.add_voice(v.slot, v.tone.steps, first, self._voice_force(v, blk), events)
            order.append((v, v.generation))
        slot.t0 = blk.t0
        if order:
            self._fill_mix_input(order, blk, slot.mix_in)
            if self._submits:
                self.backend.submit(plan)
            else:  # a backend that runs at once: keep its pickups for finish_block
                out = self.backend.run(plan)
                if slot.pickups is None or len(slot.pickups) < plan.max_out:
                    slot.pickups = np.zeros(plan.max_out, out.dtype)  # once per slot
                slot.pickups[: len(out)] = out
                slot.n_out = len(out)
        self._in_flight.append(slot)
        self._blk = None
        self._now += n_frames

    def finish_block(self) -> np.ndarray:
        """Mix the oldest begun block (waiting for its physics if needed) and return it:
        float32 ``(block_frames, 2)`` in [-1, 1].

        Raises:
            RuntimeError: no block was begun.
        """
        if not self._in_flight:
            raise RuntimeError("finish_block() without begin_block()")
        slot = self._in_flight.popleft()
        n_frames = self.block_frames
        mix = self._mix
        if slot.order:
            pickups = self.backend.collect() if self._submits else slot.pickups[: slot.n_out]
            mix_voices(
                pickups, slot.mix_in, self._mix_state, self._sos, n_frames, mix,
                self._peak, self._finite,
            )  # fmt: skip
            for i, (v, generation) in enumerate(slot.order):
                if v.generation != generation:
                    continue  # freed or given to another note since this block was begun
                if not self._finite[i]:
                    log.error("voice %d went non-finite; silenced", v.slot)
                    self._pool.free(v)
                    v.pending = None
                else:
                    self._pool.observe(
                        v, self._peak[i], slot.t0, slot.t0 + n_frames, may_free=v.pending is None
                    )
        else:
            mix[:] = 0.0
        return self._finish(mix)

    def drop_in_flight(self) -> None:
        """Forget begun blocks that will not be finished (after an error)."""
        self._in_flight.clear()
        drop = getattr(self.backend, "drop_in_flight", None)
        if drop is not None:
            drop()

    def _retune_body(self, key: tuple[int, int]) -> None:
        """The exact body ``key`` arrived: tones tuned on a stand-in for it take it now (at
        the block's first sample; a pending tone when it starts)."""
        for v in self.voices:
            for t in (v.tone, v.pending):
                if t is None or t.body_exact or t.body_key != key:
                    continue
                body = self.bodies.get(key)
                t.mode, t.d_mode_hz, t.body_exact = body.mode, body.d_mode_hz, True
                if t is v.tone and v.active:
                    self._update(v, t, 0, None)

    def _voice_force(self, v: _Voice, blk: _Block) -> np.ndarray | None:
        """The voice's force for the block (strike envelopes and drive noise), ``None`` if
        there is none; advances its strike position."""
        n_frames = self.block_frames
        segments = blk.strikes[v.slot]
        drives = blk.drives[v.slot]
        off, pos = segments[-1][0], segments[-1][1]
        v.strike_pos = min(pos + n_frames - off, 1 << 30)
        if len(segments) == 1 and len(drives) == 1:  # no event in this block: the usual case
            _, pos, kick, contact, _ = segments[0]
            if (kick == 0.0 or pos >= contact) and drives[0][1] <= 0.0:
                return None
        force = self._force
        force[:] = 0.0
        t = self._frame_t
        for k, (off, pos, kick, contact, pluck) in enumerate(segments):
            end = segments[k + 1][0] if k + 1 < len(segments) else n_frames
            if kick != 0.0 and pos < contact:  # else the contact is over: no force
                force[off:end] = kick * _envelope(t[off:end] - off + pos, contact, pluck)
        for k, (off, sigma) in enumerate(drives):
            end = drives[k + 1][0] if k + 1 < len(drives) else n_frames
            if sigma > 0.0 and end > off:
                force[off:end] += sigma * v.rng.standard_normal(end - off)
        return force

    def _fill_mix_input(
        self, order: list[tuple[_Voice, int]], blk: _Block, mi: MixInput
    ) -> None:
        """The output stage's view of the block: each voice's slot, pickups, resets and
        coefficient changes, in the plan's voice order."""
        n = len(order)
        headers = self.plan.headers
        mi.n = n
        mi.offsets[:n] = headers["out_offset"][:n]
        mi.steps[:n] = headers["steps_per_sample"][:n]
        r = c = 0
        for i, (v, _) in enumerate(order):
            mi.slots[i] = v.slot
            mi.reset_first[i] = r
            resets = blk.resets.get(v.slot)
            if resets:
                for at in sorted(set(resets))[-_MAX_CHANGES:]:
                    mi.reset_at[r] = at
                    r += 1
            mi.change_first[i] = c
            changes = blk.coefs.get(v.slot)
            if changes:
                for at, target, ramp in _coalesce_changes(changes, _MAX_CHANGES):
                    mi.change_at[c] = at
                    mi.change_ramp[c] = ramp
                    mi.change_coef[c] = target
                    c += 1
        mi.reset_first[n] = r
        mi.change_first[n] = c

    def _finish(self, mix: np.ndarray) -> np.ndarray:
        out = np.empty((self.block_frames, 2), np.float32)
        master_bus(mix, self._dc_x, self._dc_y, self._dc_r, _LIMIT_KNEE, out)
        return out


def constant_source(params: np.ndarray) -> ParamSource:
    """A parameter source that plays ``params`` whatever the note, velocity and controllers
    (e.g. ``constant_source(synth.base_params)``: the preset's values, velocity ignored)."""
    fixed = P.validate(np.array(params, np.float64))
    return lambda x: fixed.copy()


def _initial_glide(params: np.ndarray) -> float:
    g = float(params[_I["glide_cents"]])
    return g if abs(g) >= _GLIDE_FLOOR else 0.0


def _unit(value: float, what: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what}={value!r}; expected a number in [0, 1]")
    return min(max(v, 0.0), 1.0)


def _coalesce(lst: list[list], max_events: int) -> list[list]:
    """At most ``max_events`` switches after the first record: drop the earliest non-reset
    switches that a later one supersedes (their parameters then start a little late)."""
    if len(lst) - 1 <= max_events:  # the usual case: nothing to drop
        return lst
    lst = list(lst)
    i = 1
    while len(lst) - 1 > max_events and i < len(lst) - 1:
        if lst[i][2] & RECORD_RESET:
            i += 1
        else:
            del lst[i]
    return lst


def _coalesce_changes(
    changes: list[tuple[int, np.ndarray, int]], max_changes: int
) -> list[tuple[int, np.ndarray, int]]:
    """At most ``max_changes`` output-coefficient changes: drop the earliest ramps that a later
    change supersedes (a flood of bends in one block glides to the last one's target)."""
    changes = list(changes)
    i = 0
    while len(changes) > max_changes and i < len(changes) - 1:
        if changes[i][2] > 0:
            del changes[i]
        else:
            i += 1
    return changes[-max_changes:]
