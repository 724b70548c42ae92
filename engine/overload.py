"""Overload detection: when the machine cannot render every voice in time, play fewer voices
instead of dropping out.

A machine that is too slow for the notes being played (two CPU cores and sixteen high,
oversampled voices; a GPU shared with training) misses deadline after deadline: every miss is a
gap of silence. Hardware and commercial software synthesizers do what a player expects
instead — they drop the least-missed voices (Pianoteq's "CPU overload detection" reduces the
polyphony while the CPU is overloaded). :class:`OverloadGuard` tells
:class:`engine.audio.LiveEngine` when to:

* it keeps the render thread's **utilisation** over the last ``window`` blocks: the time spent
  rendering them over the time they last, where a block's time is its duration or, if smaller,
  the render budget (a block must be ready that soon). Each block's render time counts at most
  twice that, so a single host stall (a VM waking the thread 20 ms late) does not count as
  overload; sustained load does;
* above ``high`` (0.85: the thread busy 85% of the time, nothing left for a slow block) it
  says **shed**: the engine fades out the voice a steal would take (3 ms, no click) and lets
  new notes add to one voice fewer than are sounding (beyond that they steal). It judges
  again on a window of blocks all rendered after the shed (the fade's 3 ms among them);
* after ``relax_s`` in a row below ``low`` (0.5) it says **grow**: one more voice is allowed,
  up to the polyphony.

Not thread-safe: the render thread only. Allocation-free per block (a fixed ring of times).

Public API: ``OverloadGuard``, ``SHED``, ``GROW``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OverloadGuard", "SHED", "GROW"]

#: :meth:`OverloadGuard.observe`'s verdicts (0: carry on).
SHED = -1
GROW = 1


class OverloadGuard:
    """Watches block render times and says when to shed a voice or allow one more.

    Arguments:
        block_ns: the time a block may take on average: its duration, or the render budget
            if that is shorter.
        window: blocks the utilisation is taken over.
        high: utilisation above which a voice is shed.
        low: utilisation below which, for ``relax_blocks`` blocks in a row, one more voice is
            allowed.
        relax_blocks: see ``low``.
    """

    def __init__(
        self,
        block_ns: float,
        *,
        window: int = 32,
        high: float = 0.85,
        low: float = 0.5,
        relax_blocks: int = 750,
    ) -> None:
        if not block_ns > 0:
            raise ValueError(f"block_ns={block_ns!r}: expected > 0")
        if not 0.0 < low < high:
            raise ValueError(f"low={low}, high={high}: expected 0 < low < high")
        if window < 1 or relax_blocks < 1:
            raise ValueError(f"window={window}, relax_blocks={relax_blocks}: expected >= 1")
        self.block_ns = float(block_ns)
        self.high, self.low = float(high), float(low)
        self.relax_blocks = int(relax_blocks)
        self._times = np.zeros(int(window))
        self._sum = 0.0
        self._count = 0
        self._wait = 0
        self._calm = 0

    @property
    def utilisation(self) -> float:
        """Render time over block time across the blocks in the window (clipped as above)."""
        n = min(self._count, len(self._times))
        return self._sum / (n * self.block_ns) if n else 0.0

    def observe(self, render_ns: float) -> int:
        """Count one block that took ``render_ns`` to render; returns :data:`SHED`,
        :data:`GROW` or 0."""
        times = self._times
        i = self._count % len(times)
        t = min(float(render_ns), 2.0 * self.block_ns)
        self._sum += t - times[i]
        times[i] = t
        self._count += 1
        if self._wait > 0:  # the last shed's fade and a fresh window first
            self._wait -= 1
            return 0
        if self._count < len(times):
            return 0
        load = self._sum / (len(times) * self.block_ns)
        if load > self.high:
            self._wait = len(times)
            self._calm = 0
            return SHED
        if load < self.low:
            self._calm += 1
            if self._calm >= self.relax_blocks:
                self._calm = 0
                return GROW
        else:
            self._calm = 0
        return 0
