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
a worker *process* (one, started with ``spawn`` by a helper thread at the first miss —
starting it blocks ~2 s, which the render thread must not; the maps are sent once); the most recent
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
import threading
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
        self._pool: ProcessPoolExecutor | None = None  # set by the starter thread when up
        self._starting = False
        self._start_failed = False
        self._epoch = 0  # close() moves it on: a worker started before is shut down
        self.background = False
        self.solves = 0  # done in this thread (misses with background off)
        self.background_solves = 0
        self.failures = 0

    def key(self, morph: float, boundary: float) -> tuple[int, int]:
        """The quantised body of a morph weight and a boundary value (both in [0, 1])."""
        m = int(round(morph * self.steps)) if self.morph_matters else 0
        return m, int(round(boundary * self.steps))

    def start_background(self) -> None:
        """Answer misses with stand-ins from now on and solve them in a worker process.

        The process is started at the first miss, by a helper thread, not by the caller:
        starting it blocks until the new interpreter has imported numpy and scipy and read the
        maps (~2 s measured on the 2-core VM), which in the render thread would be a 2 s
        dropout. Misses wait for it meanwhile (their stand-ins play); a session that never
        morphs starts no process."""
        self.background = True

    def _start_worker(self, epoch: int) -> None:
        """(helper thread) Start the worker process and wait until it answers."""
        try:
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=_worker_init, initargs=(self.maps,)
            )
            pool.submit(int).result(timeout=60)  # the worker is up and has the maps
        except Exception as exc:  # noqa: BLE001 - bodies are then solved in the synth
            log.error("the body worker did not start (%s); bodies are solved in the synth", exc)
            self._start_failed = True
            return
        if epoch != self._epoch:  # closed meanwhile
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            self._pool = pool
        self._starting = False

    def close(self) -> None:
        """Stop the worker (misses are solved on the spot again)."""
        self.background = False
        self._epoch += 1
        self._starting = False
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
        if not self.background or not self._solved or self._start_failed:
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
    def ready(self) -> bool:
        """The worker process is up (background solves can start)."""
        return self._pool is not None

    @property
    def busy(self) -> bool:
        """A solve is running or waiting."""
        return self._running is not None or bool(self._waiting)

    def _lost_worker(self, exc: Exception) -> None:
        """The worker failed or is gone: count it, and solve in the synth from now on."""
        self.failures += 1
        if self._pool is not None and getattr(self._pool, "_broken", False):
            self._pool = None
            self.background = False
            self._waiting.clear()
            log.error("the body worker is gone (%s); bodies are solved in the synth again", exc)

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
        if self._pool is None and not self._starting and not self._start_failed:
            self._starting = True
            threading.Thread(
                target=self._start_worker,
                args=(self._epoch,),
                name="neirosynth-body-worker-start",
                daemon=True,
            ).start()
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
                log.error("solving the body %s in the worker failed (%s); its stand-in stays", key, exc)
                self._lost_worker(exc)
        if self._start_failed:
            self._waiting.clear()
            self.background = False
        pool = self._pool  # None while the starter thread brings it up
        while self._waiting and self._running is None and self.background and pool is not None:
            key, _ = self._waiting.popitem(last=True)  # the latest request first
            if key in self._solved:
                continue
            try:
                self._running = (key, pool.submit(_worker_solve, key, self.steps))
            except Exception as exc:  # noqa: BLE001 - a broken pool: solve in the synth
                self._lost_worker(exc)
