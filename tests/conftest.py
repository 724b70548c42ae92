"""Shared fixtures: the real wgpu adapter (lavapipe on CI), fresh random seeds."""

from __future__ import annotations

import secrets

import numpy as np
import pytest


@pytest.fixture(scope="session")
def adapter():
    """The wgpu adapter the engine would choose (a real GPU, else Mesa's lavapipe).

    No adapter is a failure, not a skip: CI installs mesa-vulkan-drivers.
    """
    from engine.gpu import choose_adapter

    return choose_adapter()


@pytest.fixture
def seed() -> int:
    """A fresh seed per test; assertion messages name it so a failure can be replayed."""
    return secrets.randbits(63)


def smooth_map(rng: np.random.Generator, n: int, lo: float, hi: float, terms: int = 6) -> np.ndarray:
    """A random smooth positive map in [lo, hi]: a few low-order cosine modes."""
    i = np.arange(n)[:, None] / (n - 1)
    j = np.arange(n)[None, :] / (n - 1)
    field = np.zeros((n, n))
    for _ in range(terms):
        kx, ky = rng.integers(0, 4, size=2)
        field += rng.normal() * np.cos(np.pi * kx * j + rng.uniform(0, np.pi)) * np.cos(
            np.pi * ky * i + rng.uniform(0, np.pi)
        )
    field -= field.min()
    if field.max() > 0:
        field /= field.max()
    return lo + (hi - lo) * field


@pytest.fixture(scope="module")
def cpu_backend_64():
    """The numba backend (float32, the real-time one) on a 64×64 grid, one voice."""
    from engine.cpu import CpuFdtd

    return CpuFdtd(64, 1, 256, dtype=np.float32)


@pytest.fixture(scope="session")
def jack_server():
    """A real JACK server for the session: ``jackd --realtime -d dummy -r 48000 -p 256``.

    Real-time as on a studio machine: where the process may use SCHED_FIFO (root, or the
    audio group's rtprio) the server's cycle and its clients' process threads (PortAudio's,
    which calls our audio callback) run at real-time priority, so the engine's own load on a
    small machine does not stall the device; where it may not, jackd says so and runs at
    normal priority (checked as an unprivileged user).

    Yields a :class:`tests.jack.JackServer` (``name``, ``sample_rate``, ``period``, ``env``...).
    While it runs, ``os.environ`` carries ``JACK_DEFAULT_SERVER`` (a unique name, so parallel
    runs never share a server), ``JACK_NO_START_SERVER=1`` and ``JACK_NO_AUDIO_RESERVATION=1``,
    so JACK clients made in this process (python-rtmidi, PortAudio) reach this server; the old
    values come back and ``jackd`` is terminated (killed if it hangs) at the end.

    A missing ``jackd`` is a failure, not a skip: CI installs the Debian package jackd2.
    """
    from jack import JackError, start_jack_server  # tests/jack.py (tests/ is on sys.path)

    failure = None
    try:
        server = start_jack_server(sample_rate=48_000, period=256, realtime=True)
    except JackError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in server.env.items():
                mp.setenv(key, value)
            yield server
    finally:
        server.stop()
