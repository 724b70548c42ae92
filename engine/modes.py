"""The lowest mode of each morphed body, solved off the render thread.

Tuning a note exactly needs the lowest eigenvalue of its body (:func:`engine.tuning.lowest_mode`:
a shift-invert Lanczos solve, 40–70 ms at 64×64). A body is the blend of the two resident
maps at a morph weight, with a boundary value, each quantised to ``1/steps``. A sound designer
sweeping the morph knob while playing asks for a new body every few blocks; solving it in the
render thread stalled it ~50 ms (about 19 blocks of underruns at 128 frames), and in a thread of
the same process the solve holds the GIL for up to ~4 ms at a time (measured: SuperLU's
factorisation), which the audio callback needs every 2.7 ms.

:class:`BodyModes` keeps solved bodies in an LRU cache. With ``background`` on, a miss is
answered at once with the nearest solved body, flagged inexact, and the exact one is solved in
a worker *process* (one, started with ``spawn`` at the first miss; the maps are sent once); the most recent
request is solved first and stale ones are dropped, so a sweep costs one solve at a time and
ends on the body where the knob stopped. :meth:`BodyModes.take_solved` hands the render thread
the bodies solved since its last call, and the synth retunes the voices that used a stand-in.
With ``background`` off (offline renders, tests) a miss is solved on the spot, so renders stay
deterministic. Two identical maps make the morph irrelevant: every weight is the same body.

Public API: ``BodyModes``, ``Body``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .tuning import LowestMode, lowest_mode

__all__ = ["BodyModes", "Body"]

log = logging.getLogger(__name__)

#: requests waiting for the worker; older ones are dropped (a sweep moved past them)
_MAX_WAITING = 8


@dataclass(frozen=True)
class Body:
    """A solved (or stand-in) body: its lowest mode and the mode-weighted mean damping."""

    key: tuple[int, int]  # (morph, boundary) in 1/steps
    mode: LowestMode
    d_mode_hz: float
    exact: bool  # False: a stand-in for ``key`` until its own solve arrives


def _blend(maps: tuple[tuple[np.ndarray, np.ndarray], ...], w: float) -> tuple[np.ndarray, ...]:
    (s0, d0), (s1, d1) = maps
    return s0 * (1.0 - w) + s1 * w, d0 * (1.0 - w) + d1 * w


def _solve(maps, key: tuple[int, int], steps: int) -> tuple[LowestMode, float]:
    s, d = _blend(maps, key[0] / steps)
    mode = lowest_mode(s, key[1] / steps)
    return mode, mode.weighted_mean(d)


# ---- the worker process (module-level so that spawn can import it) ---------------------------
_worker_maps = None


def _worker_init(maps) -> None:
    global _worker_maps
    _worker_maps = maps


def _worker_solve(key: tuple[int, int], steps: int) -> tuple[LowestMode, float]:
    return _solve(_worker_maps, key, steps)


class BodyModes:
    """Lowest modes of the bodies between two maps.

    Arguments:
        maps: ``((stiffness_a, damping_a), (stiffness_b, damping_b))``, float64 ``(N, N)``.
        steps: quantisation of morph and boundary (``key = round(x · steps)``).
        cache_size: bodies kept (least recently used dropped).

    Methods are called from one thread (the synth's); the worker is another process.
    """

    def __init__(self, maps, steps: int = 128, cache_size: int = 256) -> None:
        self.maps = tuple((np.asarray(s, np.float64), np.asarray(d, np.float64)) for s, d in maps)
        self.steps = steps
        self.cache_size = cache_size
        (s0, d0), (s1, d1) = self.maps
        #: both maps are the same body: the morph weight changes nothing
        self.morph_matters = not (np.array_equal(s0, s1) and np.array_equal(d0, d1))
        self._solved: OrderedDict[tuple[int, int], tuple[LowestMode, float]] = OrderedDict()
        self._waiting: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._running: tuple[tuple[int, int], Future] | None = None
        self._new: list[tuple[int, int]] = []
        self._pool: ProcessPoolExecutor | None = None
        self.background = False
        self.solves = 0  # done in this thread (misses with background off)
        self.background_solves = 0
        self.failures = 0

    def key(self, morph: float, boundary: float) -> tuple[int, int]:
        """The quantised body of a morph weight and a boundary value (both in [0, 1])."""
        m = int(round(morph * self.steps)) if self.morph_matters else 0
        return m, int(round(boundary * self.steps))

    def start_background(self) -> None:
        """Answer misses with stand-ins from now on and solve them in a worker process, started
        at the first miss (launching it takes a few ms here; it then spends ~0.5 s importing
        numpy and scipy on its own, while the stand-in plays)."""
        self.background = True

    def close(self) -> None:
        """Stop the worker (misses are solved on the spot again)."""
        self.background = False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._running = None
        self._waiting.clear()

    def get(self, key: tuple[int, int]) -> Body:
        """The body ``key``: solved, or (background on, a miss) the nearest solved one as a
        stand-in while ``key`` is solved in the worker."""
        hit = self._solved.get(key)
        if hit is not None:
            self._solved.move_to_end(key)
            return Body(key, hit[0], hit[1], True)
        if not self.background or not self._solved:
            mode, d = _solve(self.maps, key, self.steps)
            self.solves += 1
            self._store(key, mode, d)
            return Body(key, mode, d, True)
        self._request(key)
        near = min(self._solved, key=lambda k: abs(k[0] - key[0]) + abs(k[1] - key[1]))
        mode, d = self._solved[near]
        return Body(key, mode, d, False)

    def take_solved(self) -> list[tuple[int, int]]:
        """Keys solved in the background since the last call (non-blocking); starts the next
        waiting solve."""
        self._collect()
        new, self._new = self._new, []
        return new

    @property
    def busy(self) -> bool:
        """A solve is running or waiting."""
        return self._running is not None or bool(self._waiting)

    def _store(self, key, mode: LowestMode, d: float) -> None:
        self._solved[key] = (mode, d)
        self._solved.move_to_end(key)
        while len(self._solved) > self.cache_size:
            self._solved.popitem(last=False)

    def _request(self, key: tuple[int, int]) -> None:
        if self._running is not None and self._running[0] == key:
            return
        self._waiting[key] = None
        self._waiting.move_to_end(key)
        while len(self._waiting) > _MAX_WAITING:
            self._waiting.popitem(last=False)
        self._collect()

    def _collect(self) -> None:
        if self._running is not None:
            key, future = self._running
            if not future.done():
                return
            self._running = None
            try:
                mode, d = future.result()
                self._store(key, mode, d)
                self._new.append(key)
                self.background_solves += 1
            except Exception as exc:  # noqa: BLE001 - a lost worker must not stop the music
                self.failures += 1
                log.error("solving the body %s in the worker failed (%s); its stand-in stays", key, exc)
                if self._pool is not None and getattr(self._pool, "_broken", False):
                    self._pool = None
                    self.background = False  # solve on the spot from now on
                    self._waiting.clear()
                    log.error("the body worker is gone; bodies are solved in the synth again")
        while self._waiting and self._running is None and self.background:
            key, _ = self._waiting.popitem(last=True)  # the latest request first
            if key in self._solved:
                continue
            if self._pool is None:
                ctx = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=ctx, initializer=_worker_init, initargs=(self.maps,)
                )
            self._running = (key, self._pool.submit(_worker_solve, key, self.steps))
