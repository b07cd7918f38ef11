"""Processes started by the tooling are stopped completely, also when their parent dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pgherd_dev import processes
from pgherd_dev.errors import DevError


def _wait_gone(pid: int, start: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if processes.process_start_time(pid) != start:
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_the_process_and_what_it_spawned(tmp_path: Path) -> None:
    # A shell that ignores SIGTERM and has a child: both must be gone after stop().
    script = "trap '' TERM; sleep 300 & echo $! > child.pid; wait"
    p = processes.start("sh", ["sh", "-c", script], tmp_path / "sh.log", cwd=tmp_path)
    pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 5
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    child_start = processes.process_start_time(child)
    assert child_start is not None
    processes.stop([p], timeout=1.0)
    assert not p.alive()
    assert _wait_gone(child, child_start)


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    parent_code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pgherd_dev import processes
        p = processes.start("sleeper", ["sleep", "300"], Path({str(tmp_path)!r}) / "s.log",
                            die_with_parent=True)
        print(p.pid, p.start_time, flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    pid, start = map(int, parent.stdout.readline().split())
    parent.kill()  # SIGKILL: no cleanup code of the parent runs
    parent.wait()
    assert _wait_gone(pid, start)


# ---- issue 16: an API-server outage -------------------------------------------------------
def test_kill_is_immediate(tmp_path: Path) -> None:
    p = processes.start("sleeper", ["sleep", "300"], tmp_path / "s.log")
    began = time.monotonic()
    assert processes.kill([p]) == ["sleeper"]
    assert not p.alive() and time.monotonic() - began < 5


def test_an_unreachable_or_restarting_api_server_is_one_line() -> None:
    import urllib3  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    refused = urllib3.exceptions.MaxRetryError(None, "/api/v1/pods", OSError("refused"))  # type: ignore[arg-type]
    assert "unreachable" in str(processes.api_down(refused))
    assert "429" in str(processes.api_down(ApiException(status=429, reason="Too Many")))
    # Anything else is a real error, logged with its traceback.
    assert processes.api_down(ApiException(status=403, reason="Forbidden")) is None
    assert processes.api_down(ValueError("bad")) is None


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([5001, 5002, 5003], [5001, 5002, 5003]),
        # The kernel offers a port again before the first taker bound it: skipped.
        ([5001, 5001, 5002], [5001, 5002]),
        ([5001, 5002, 5001, 5002, 5003], [5001, 5002, 5003]),
    ],
)
def test_a_port_book_never_hands_out_a_port_twice(offered: list[int], expected: list[int]) -> None:
    source = iter(offered)
    book = processes.PortBook(source=lambda: next(source))
    assert [book.take() for _ in expected] == expected


def test_a_port_book_that_is_only_offered_taken_ports_says_so() -> None:
    book = processes.PortBook(source=lambda: 5001, attempts=3)
    assert book.take() == 5001
    with pytest.raises(DevError, match="no free local port"):
        book.take()
