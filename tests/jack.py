"""A real JACK server for the tests: ``jackd`` with its dummy backend, started and stopped here.

The dummy backend needs no sound card and keeps real time (a 256-frame period at 48 kHz wakes
every 5.33 ms), so MIDI and audio clients in the tests talk to a real server exactly as they
would on a studio machine.

Public API (``__all__``)
------------------------
``JackServer``
    A running server: ``name``, ``sample_rate``, ``period``, ``pid``, ``env`` (the variables a
    client process needs to reach it), ``log_path``; ``stop()``.
``start_jack_server(name=None, sample_rate=48_000, period=256, timeout_s=10.0, realtime=False)``
    Start ``jackd --no-realtime -n NAME -d dummy -r RATE -p PERIOD`` (``--realtime`` if asked)
    and wait until it accepts clients; returns a ``JackServer``.
``dead_registered_servers() -> list[str]``
    This user's servers that JACK2's registry still lists although their process is gone.
``JackError``
    Raised when ``jackd`` is missing, exits, or does not accept clients in time; the message
    says why and what to do.

JACK2 keeps at most 8 servers in a machine-wide registry (``/dev/shm/jack-shm-registry``).
A server killed without a clean exit keeps its slot, and jackd reclaims a dead slot only for a
server of the same name; with unique names, eight kills would lock every later run out
("Too many servers already active"). ``start_jack_server`` then starts each dead name once and
stops it cleanly, which frees its slot, and tries again. (Tests that kill a server to simulate
a crash leak a slot each time; this recovers them.)

How a client finds the server
-----------------------------
libjack reads ``JACK_DEFAULT_SERVER`` when a client opens, so each server gets a unique name
(``neirotest-<pid>-<random>``) and parallel test runs never share one. ``JACK_NO_START_SERVER=1``
stops a client from auto-starting a *different* server from ``~/.jackdrc`` when ours is not up
yet, and ``JACK_NO_AUDIO_RESERVATION=1`` keeps ``jackd`` from asking D-Bus for a sound card it
does not use. ``JackServer.env`` holds all three; the pytest fixture ``jack_server``
(``tests/conftest.py``) puts them into ``os.environ`` for the whole session, so python-rtmidi
and PortAudio clients created in the test process reach this server.

Note for PortAudio (``sounddevice``): PortAudio looks for JACK once, in ``Pa_Initialize``
(when ``sounddevice`` is imported). Import it, or re-initialise it
(``sounddevice._terminate(); sounddevice._initialize()``), after the server is up.

Threads: everything here runs on the test's main thread.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["JackError", "JackServer", "dead_registered_servers", "start_jack_server"]

_DEBIAN_PACKAGE = "jackd2"


class JackError(RuntimeError):
    """The JACK server could not be started or reached; the message says what to do."""


@dataclass
class JackServer:
    """A ``jackd`` process started by :func:`start_jack_server`.

    Attributes:
        name: the server name (``JACK_DEFAULT_SERVER`` of its clients).
        sample_rate: frames per second of the dummy backend.
        period: frames per process cycle.
        pid: the ``jackd`` process id.
        env: ``JACK_DEFAULT_SERVER``, ``JACK_NO_START_SERVER``, ``JACK_NO_AUDIO_RESERVATION``
            as a client process needs them.
        log_path: ``jackd``'s stdout and stderr.
    """

    name: str
    sample_rate: int
    period: int
    pid: int
    env: dict[str, str]
    log_path: Path
    _process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def period_s(self) -> float:
        """Seconds per process cycle (``period / sample_rate``)."""
        return self.period / self.sample_rate

    def running(self) -> bool:
        """True while the ``jackd`` process has not exited."""
        return self._process.poll() is None

    def log_tail(self, n_chars: int = 2000) -> str:
        """The end of ``jackd``'s log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"

    def stop(self, timeout_s: float = 5.0, keep_log: bool = False) -> None:
        """Terminate ``jackd`` (SIGTERM, then SIGKILL after ``timeout_s``); safe to call twice.

        Then removes what this server left in ``/dev/shm`` under its (unique) name (its socket
        after a kill, the semaphores of clients that outlived it) and, unless ``keep_log``, its
        log file.
        """
        proc = self._process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        shm = Path("/dev/shm")
        for pattern in (f"jack_{self.name}_*", f"jack_sem.*_{self.name}_*"):
            for leftover in shm.glob(pattern) if shm.is_dir() else ():
                try:
                    leftover.unlink()
                except OSError:
                    pass
        if not keep_log:
            self.log_path.unlink(missing_ok=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM jackd when the test process dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_jack_server(
    name: str | None = None,
    sample_rate: int = 48_000,
    period: int = 256,
    timeout_s: float = 10.0,
    realtime: bool = False,
) -> JackServer:
    """Start a ``jackd`` with the dummy backend and wait until it accepts clients.

    Args:
        name: the server name; default ``neirotest-<pid>-<6 hex digits>`` (unique per call).
        sample_rate: the dummy backend's rate.
        period: frames per cycle.
        timeout_s: how long to wait for the server to accept a client (``jack_lsp``).
        realtime: run ``jackd`` and its clients' process threads under SCHED_FIFO
            (``--realtime``, as on a studio machine; needs the right to); default
            ``--no-realtime``.

    Returns:
        The running server. The caller must call :meth:`JackServer.stop`.

    Raises:
        JackError: ``jackd`` or ``jack_lsp`` is not installed (install the Debian package
            ``jackd2``), ``jackd`` exited, or it did not accept clients within ``timeout_s``
            (it is killed then); the message carries the end of its log.

    Thread: the caller's (the test's main thread).
    """
    jackd = shutil.which("jackd")
    jack_lsp = shutil.which("jack_lsp")
    if jackd is None or jack_lsp is None:
        missing = "jackd" if jackd is None else "jack_lsp"
        raise JackError(
            f"'{missing}' is not on PATH, so the tests cannot start a JACK server. Install the "
            f"Debian package {_DEBIAN_PACKAGE} (sudo apt-get install {_DEBIAN_PACKAGE}; "
            "scripts/setup.sh does this)."
        )
    name = name or f"neirotest-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        return _launch(jackd, jack_lsp, name, sample_rate, period, timeout_s, realtime)
    except JackError as exc:
        if _REGISTRY_FULL not in str(exc):
            raise
        dead = dead_registered_servers()
        if not dead:
            raise JackError(
                f"{exc}\nJACK's server registry (/dev/shm/jack-shm-registry) holds at most "
                f"{_MAX_SERVERS} servers and they are all running; stop one of them."
            ) from None
    # Servers killed without a clean exit keep their registry slot, and jackd reclaims a dead
    # slot only for a server of the same name: start each dead name once and stop it cleanly.
    for dead_name in dead:
        try:
            _launch(jackd, jack_lsp, dead_name, sample_rate, period, timeout_s).stop()
        except JackError:
            pass
    return _launch(jackd, jack_lsp, name, sample_rate, period, timeout_s, realtime)


_REGISTRY = Path("/dev/shm/jack-shm-registry")
_REGISTRY_FULL = "Too many servers already active"
_MAX_SERVERS = 8  # JACK2's MAX_SERVERS (common/shm.h)


def dead_registered_servers() -> list[str]:
    """Names of this user's servers in JACK2's registry whose process is gone.

    The registry header (JACK2 common/shm.h, Linux): magic u32, protocol u16, type i32, three
    sizes i32, then 8 x {pid_t pid; char name[257]} (264 bytes with padding) from offset 24;
    a name is stored as ``jack-<uid>:<server>:``. Returns [] when there is no registry or it
    does not look like one.
    """
    try:
        data = _REGISTRY.read_bytes()
    except OSError:
        return []
    if len(data) < 24 + _MAX_SERVERS * 264 or struct.unpack_from("<I", data, 0)[0] != 0x4A41434B:
        return []
    prefix = f"jack-{os.getuid()}:".encode()
    dead = []
    for i in range(_MAX_SERVERS):
        off = 24 + 264 * i
        (pid,) = struct.unpack_from("<i", data, off)
        raw = data[off + 4 : off + 4 + 257].split(b"\0", 1)[0]
        if pid <= 0 or not raw.startswith(prefix) or not raw.endswith(b":"):
            continue
        try:
            os.kill(pid, 0)
            continue  # alive (or another user's)
        except ProcessLookupError:
            dead.append(raw[len(prefix) : -1].decode(errors="replace"))
        except PermissionError:
            continue
    return dead


def _launch(
    jackd: str, jack_lsp: str, name: str, sample_rate: int, period: int, timeout_s: float,
    realtime: bool = False,
) -> JackServer:  # fmt: skip
    env_vars = {
        "JACK_DEFAULT_SERVER": name,
        "JACK_NO_START_SERVER": "1",
        "JACK_NO_AUDIO_RESERVATION": "1",
    }
    env = {**os.environ, **env_vars}
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    log_fd, log_name = tempfile.mkstemp(prefix=f"jackd-{safe}-", suffix=".log")
    cmd = [
        jackd, "--realtime" if realtime else "--no-realtime", "--name", name,
        "-d", "dummy", "-r", str(sample_rate), "-p", str(period),
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        os.close(log_fd)
    server = JackServer(name, sample_rate, period, proc.pid, env_vars, Path(log_name), proc)

    deadline = time.monotonic() + timeout_s
    last = ""
    try:
        while True:
            if not server.running():
                raise JackError(
                    f"jackd ({' '.join(cmd)}) exited with status {proc.returncode} before "
                    f"accepting clients. Its log ({log_name}):\n{server.log_tail()}"
                )
            probe = subprocess.run(
                [jack_lsp], env=env, capture_output=True, text=True, timeout=max(1.0, timeout_s)
            )
            if probe.returncode == 0 and "system:" in probe.stdout:
                return server
            last = (probe.stdout + probe.stderr).strip()[-500:]
            if time.monotonic() > deadline:
                raise JackError(
                    f"jackd ({' '.join(cmd)}) did not accept clients within {timeout_s:.0f} s "
                    f"(last jack_lsp said: {last!r}). Its log ({log_name}):\n{server.log_tail()}"
                )
            time.sleep(0.05)
    except BaseException:
        server.stop(keep_log=True)
        raise


def portaudio_jack_output() -> int:
    """Re-scan PortAudio (it looks for JACK only when it initialises) and return the index of
    the JACK server's stereo output. Call :func:`sounddevice._terminate` before the server
    stops: PortAudio's JACK host API asserts when its server is gone."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()
    apis = sd.query_hostapis()
    found = [
        i
        for i, d in enumerate(sd.query_devices())
        if apis[d["hostapi"]]["name"] == "JACK Audio Connection Kit" and d["max_output_channels"] >= 2
    ]
    if not found:
        raise JackError(f"PortAudio sees no JACK output: {sd.query_devices()}")
    return found[0]
