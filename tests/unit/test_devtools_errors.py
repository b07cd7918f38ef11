"""Bad input to the developer tooling gives one clear message with advice, not a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pgherd_dev import processes
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.tools import tool_path, versions


def test_missing_tool_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHERD_TOOLS_CACHE", str(tmp_path))
    with pytest.raises(DevError) as e:
        tool_path("kube-apiserver")
    assert "make tools" in str(e.value)
    assert versions()["KUBE_VERSION"] in str(e.value)


def test_busy_port_names_the_port_and_the_way_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DevError) as e:
            processes.ensure_port_free(port, "kube-apiserver", "PGHERD_APISERVER_PORT")
    assert str(port) in str(e.value)
    assert "PGHERD_APISERVER_PORT" in str(e.value)


def _write_state(workdir: Path, pid: int, start_time: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "state.json").write_text(
        json.dumps(
            {
                "processes": [
                    {
                        "name": "etcd",
                        "pid": pid,
                        "start_time": start_time,
                        "log": str(workdir / "x.log"),
                    }
                ]
            }
        )
    )


def test_stale_working_directory_is_reported(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    start = processes.process_start_time(gone.pid) or 1
    gone.wait()
    _write_state(tmp_path, gone.pid, start)
    with pytest.raises(DevError, match=r"stale.*cluster-down"):
        ControlPlane(tmp_path).up()


def test_second_start_while_running_is_refused(tmp_path: Path) -> None:
    # This very test process stands in for a running component: it is alive and ours.
    me = os.getpid()
    _write_state(tmp_path, me, processes.process_start_time(me) or 0)
    with pytest.raises(DevError, match="already running"):
        ControlPlane(tmp_path).up()


def test_down_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    me = os.getpid()
    # Same pid, different start time: must be treated as someone else's process.
    _write_state(tmp_path, me, (processes.process_start_time(me) or 0) + 1)
    ControlPlane(tmp_path).down()  # would kill pytest if it ignored the start time


def test_cli_prints_one_message_and_no_traceback(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env = {
            **os.environ,
            "PGHERD_APISERVER_PORT": str(s.getsockname()[1]),
            "PGHERD_CLUSTER_DIR": str(tmp_path),
        }
        out = subprocess.run(
            [sys.executable, "-m", "pgherd_dev.cli", "cluster", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ")
    assert out.stderr.count("error:") == 1


def test_cli_rejects_a_port_that_is_not_a_number(tmp_path: Path) -> None:
    env = {**os.environ, "PGHERD_APISERVER_PORT": "http", "PGHERD_CLUSTER_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "pgherd_dev.cli", "cluster", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "PGHERD_APISERVER_PORT" in out.stderr
    assert "Traceback" not in out.stderr
