"""Starts, checks and stops the local control plane's processes.

Each process gets its own session (so a stop reaches anything it spawned), its output
in a log file, and is recorded with its start time so that a later `cluster-down` stops
exactly the processes this tool started and never a recycled pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from pgherd_dev.errors import DevError

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Started:
    """What is needed to find a process again: its id and kernel start time."""

    name: str
    pid: int
    start_time: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Started:
        return Started(
            str(data["name"]), int(data["pid"]), int(data["start_time"]), str(data["log"])
        )

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def process_start_time(pid: int) -> int | None:
    """Kernel start time of pid (field 22 of /proc/pid/stat), or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def set_parent_death_signal() -> None:
    """preexec_fn: the child gets SIGKILL when the process that started it dies."""
    # Children of a long-lived parent (a test run) must not outlive it, even on SIGKILL.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
    cwd: Path | None = None,
) -> Started:
    """Start argv in its own session, output appended to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=set_parent_death_signal if die_with_parent else None,  # noqa: PLW1509
        )
    started_at = process_start_time(proc.pid)
    if started_at is None:
        raise DevError(f"{name} exited at once; see its log: {log}")
    return Started(name, proc.pid, started_at, str(log))


def stop(procs: Sequence[Started], timeout: float = 10.0) -> list[str]:
    """Stop processes (and their sessions) gracefully, then forcibly. Returns what was stopped."""
    stopped: list[str] = []
    live = [p for p in procs if p.alive()]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    _wait_gone(live, timeout)
    for p in live:
        if p.alive():
            _signal_group(p, signal.SIGKILL)
        stopped.append(p.name)
    # SIGKILL is delivered asynchronously; wait so callers see the processes gone.
    _wait_gone(live, 5.0)
    return stopped


def kill(procs: Sequence[Started]) -> list[str]:
    """SIGKILL processes (and their sessions) at once, as a crash; returns what was killed."""
    live = [p for p in procs if p.alive()]
    for p in live:
        _signal_group(p, signal.SIGKILL)
    _wait_gone(live, 5.0)
    return [p.name for p in live]


def _wait_gone(procs: Sequence[Started], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _reap(procs)
        if not any(p.alive() for p in procs) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _signal_group(p: Started, sig: signal.Signals) -> None:
    # The process leads its own session, so its group id is its pid; checking
    # start_time first means a recycled pid is never signalled.
    if not p.alive():
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(p.pid, sig)


def _reap(procs: Sequence[Started]) -> None:
    for p in procs:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)


def api_down(e: BaseException) -> str | None:
    """One line when e says the API server is down or (re)starting (an outage test), so a
    controller's failed pass logs that instead of a traceback per pass; None otherwise."""
    if isinstance(e, ApiException):
        if e.status in (429, 500, 502, 503, 504):
            return f"the API server answered {e.status} {e.reason}"
        return None
    if isinstance(e, urllib3.exceptions.HTTPError):
        return f"the API server is unreachable ({getattr(e, 'reason', None) or e})"
    return None


def _port_free_now() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortBook:
    """Local ports handed out by one process, each at most once.

    A port free right now is free only until someone binds it: the test kubelet names a pod's
    ports before the pod's processes bind them, and the kernel can give the same free port to
    the next pod in that window (a CI run saw two pods' PostgreSQL on one port, the second
    crash-looping). So a port once handed out is never handed out again by this book; the
    ephemeral range holds far more ports than a run's pods use.
    """

    def __init__(self, source: Callable[[], int] = _port_free_now, attempts: int = 100) -> None:
        self._source = source
        self._attempts = attempts
        self._given: set[int] = set()

    def take(self) -> int:
        for _ in range(self._attempts):
            port = self._source()
            if port not in self._given:
                self._given.add(port)
                return port
        raise DevError(f"no free local port not handed out before in {self._attempts} tries")


_BOOK = PortBook()


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now and that this process has not handed out."""
    return _BOOK.take()


def ensure_port_free(port: int, what: str, env_var: str) -> None:
    """Fail with advice when a port the user chose is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise DevError(
                f"port {port} on 127.0.0.1 (for {what}) is already in use by another process. "
                f"Free it, or pick another port with {env_var}=<port> "
                "(unset it to use a free port)."
            ) from None


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages and failed-test reports."""
    try:
        data = path.read_bytes()[-64 * 1024 :].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class Server:
    """A background process used as a context manager: `_serve` starts it and waits for it
    to answer; leaving the context (or failing to start) stops it."""

    proc: Started | None = None

    def _await_ready(
        self, proc: Started, ready: Callable[[], bool], timeout: float, failure: str
    ) -> None:
        """Poll ready() until it holds; stop the process and raise if it dies or times out."""
        self.proc = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except OSError:
                pass
            if not proc.alive():
                break
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise DevError(failure)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            stop([self.proc])
            self.proc = None
