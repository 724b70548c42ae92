r"""Voice allocation: which voice a note plays on, which one is stolen, when one is freed.

A :class:`VoicePool` keeps the bookkeeping of a fixed set of voices (the maximum polyphony)
and decides, for each note on, which voice it takes. It knows nothing of the physics: the
synth (:mod:`engine.synth`) renders the voices, reports each voice's output level after every
block (:meth:`VoicePool.observe`) and does what the pool's answer means (a fade, a reset, a
strike).

**Allocation** (:meth:`VoicePool.allocate`), in this order:

1. *retrigger* — a sounding voice already playing the same note on the same channel is reused
   (the synth restrikes it);
2. *free* — else the first inactive voice;
3. *steal* — else a busy voice is taken (:meth:`VoicePool.victim`): a voice fading out for good
   (all sound off) if there is one, else the oldest released voice (earliest release), else the
   quietest sounding voice, ties broken by age (earliest start). "Quietest" compares each
   voice's :attr:`Voice.level`, its peak output over the last block rendered entirely after
   its (re)strike; a voice struck since has level ``+inf`` (never taken for quiet before it
   has been heard). Levels within ``quiet_margin_db`` (10 dB by default) of the quietest count
   as equally quiet, so a few dB of difference between notes (a restruck note, a pickup
   position) do not overrule age; pass ``quiet_margin_db=0`` for the strictly quietest.

**Release and freeing.** :meth:`VoicePool.release` marks a voice released (the synth raises its
damping); :meth:`VoicePool.observe` frees a released voice whose peak over a whole block is
below −90 dBFS (:data:`FREE_LEVEL`), unless the synth says it may not be freed yet (a stolen
voice whose next note has not started). :meth:`VoicePool.stop` marks a voice fading out for
good (all sound off): it is not retriggered, is the first to be stolen, and is freed at the
first block boundary at or after the sample where its fade ends.

Times are absolute sample numbers (the synth's clock). Not thread-safe: the render thread
only.

**Shedding.** When the machine cannot render every voice in time, the engine fades out the
voice :meth:`VoicePool.shed_candidate` names (the one stealing would take, among voices not
already fading) and passes a lower ``limit`` to :meth:`VoicePool.allocate` for a while.

Public API: ``Voice``, ``VoicePool``, ``AllocKind``, ``FREE_LEVEL``, ``QUIET_MARGIN_DB``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["Voice", "VoicePool", "AllocKind", "FREE_LEVEL", "QUIET_MARGIN_DB"]

#: A released voice quieter than this over a whole block is freed (−90 dBFS).
FREE_LEVEL = 10.0 ** (-90.0 / 20.0)
#: When stealing by level, voices within this many dB of the quietest count as equally quiet.
QUIET_MARGIN_DB = 10.0

#: What :meth:`VoicePool.allocate` decided.
AllocKind = Literal["retrigger", "free", "steal"]


@dataclass
class Voice:
    """The bookkeeping of one voice (the synth subclasses it to add the physics)."""

    slot: int
    active: bool = False
    #: The newest note on this voice (the next one, while a stolen voice fades).
    note: int = -1
    channel: int = 0
    released: bool = False
    held_by_pedal: bool = False
    #: Sample of the newest note on (the note that owns the voice).
    started_at: int = 0
    released_at: int = 0
    #: Sample where the voice's sound last (re)started (a strike, a retrigger).
    struck_at: int = -1
    #: Peak output over the last block rendered entirely after the strike (+inf until then).
    level: float = math.inf
    #: Fading out for good (all sound off); freed once the block reaches ``silent_at``.
    stopping: bool = False
    silent_at: int = 0
    #: Counts starts and frees: work begun for an older owner of the voice can tell (the synth
    #: begins a block before it has finished the one before).
    generation: int = 0


V = TypeVar("V", bound=Voice)


class VoicePool(Generic[V]):
    """Allocation policy and bookkeeping over ``voices`` (their count is the polyphony).

    Arguments:
        voices: the voice records, one per slot, all inactive.
        quiet_margin_db: when stealing by level, levels within this many dB of the quietest
            count as a tie (broken by age); 0 takes the strictly quietest.
    """

    def __init__(self, voices: Sequence[V], *, quiet_margin_db: float = QUIET_MARGIN_DB) -> None:
        if not voices:
            raise ValueError("a voice pool needs at least one voice")
        if not (quiet_margin_db >= 0.0 and math.isfinite(quiet_margin_db)):
            raise ValueError(f"quiet_margin_db={quiet_margin_db!r}; expected a finite value >= 0")
        self.voices: list[V] = list(voices)
        self._margin = 10.0 ** (quiet_margin_db / 20.0)

    def __iter__(self) -> Iterator[V]:
        return iter(self.voices)

    def __len__(self) -> int:
        return len(self.voices)

    def __getitem__(self, slot: int) -> V:
        return self.voices[slot]

    @property
    def active_count(self) -> int:
        return sum(v.active for v in self.voices)

    # ---- choosing a voice -------------------------------------------------------------------

    def allocate(self, note: int, channel: int, limit: int | None = None) -> tuple[V, AllocKind]:
        """The voice for a new ``note`` on ``channel`` and how it is taken (module docstring).
        With ``limit`` voices or more sounding, a busy voice is stolen even if others are free
        (the engine lowers the limit when the machine cannot keep up: engine/overload.py).

        Changes nothing: the caller calls :meth:`start` once the note is placed.
        """
        for v in self.voices:  # the same note retriggered reuses its voice
            if v.active and not v.stopping and v.note == note and v.channel == channel:
                return v, "retrigger"
        if limit is None or self.active_count < limit:
            for v in self.voices:
                if not v.active:
                    return v, "free"
        return self.victim(), "steal"

    def victim(self) -> V:
        """The voice to steal when every voice is busy: stopping, else the oldest released,
        else the quietest (within the margin), then the oldest, sounding voice."""
        busy = [v for v in self.voices if v.active] or self.voices
        stopping = [v for v in busy if v.stopping]
        if stopping:
            return min(stopping, key=lambda v: v.silent_at)
        return self._least_missed(busy)

    def shed_candidate(self) -> V | None:
        """The sounding voice to fade out for good when the machine cannot keep up (the
        oldest released, else the quietest, then oldest); ``None`` if every active voice is
        already fading out."""
        busy = [v for v in self.voices if v.active and not v.stopping]
        return self._least_missed(busy) if busy else None

    def _least_missed(self, busy: list[V]) -> V:
        """Of ``busy`` voices: the oldest released, else the quietest (within the margin),
        then the oldest."""
        released = [v for v in busy if v.released]
        if released:
            return min(released, key=lambda v: v.released_at)
        quietest = min(v.level for v in busy)
        if math.isinf(quietest):
            quiet = busy
        else:
            quiet = [v for v in busy if v.level <= quietest * self._margin]
        return min(quiet, key=lambda v: v.started_at)

    # ---- what happened to a voice -----------------------------------------------------------

    def start(self, v: V, note: int, channel: int, at: int) -> None:
        """``note`` on ``channel`` now owns ``v`` (from sample ``at``); its level is unknown
        until the new sound has been heard for a whole block."""
        v.active = True
        v.generation += 1
        v.note, v.channel = note, channel
        v.released = v.held_by_pedal = v.stopping = False
        v.started_at = at
        v.level = math.inf

    def struck(self, v: V, at: int) -> None:
        """The voice's sound (re)starts at sample ``at`` (a strike or restrike)."""
        v.struck_at = at
        v.level = math.inf

    def release(self, v: V, at: int) -> None:
        """The note was let go (key up, or pedal up after key up) at sample ``at``."""
        v.released = True
        v.held_by_pedal = False
        v.released_at = at

    def stop(self, v: V, at: int, silent_at: int) -> None:
        """All sound off at sample ``at``: the voice fades out and is silent from
        ``silent_at``; it is freed at the first block boundary from then on."""
        if not v.released:
            self.release(v, at)
        v.held_by_pedal = False
        v.stopping = True
        v.silent_at = silent_at

    def free(self, v: V) -> None:
        """The voice is inactive (silent, or silenced by the caller)."""
        v.active = False
        v.generation += 1
        v.stopping = False
        v.level = math.inf

    def observe(
        self, v: V, peak: float, block_start: int, block_end: int, *, may_free: bool = True
    ) -> bool:
        """Record the voice's ``peak`` output over the block ``[block_start, block_end)`` and
        free it if its time has come; returns whether it was freed.

        ``may_free=False`` keeps a released voice that the caller still needs (a stolen voice
        whose next note has not started).
        """
        if v.struck_at >= v.started_at and block_start > v.struck_at:
            v.level = float(peak)
        if v.stopping and block_end >= v.silent_at:
            self.free(v)
            return True
        if may_free and v.released and peak < FREE_LEVEL:
            self.free(v)
            return True
        return False
