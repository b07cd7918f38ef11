"""Shared fixtures: the real local control plane (session-wide) and a namespace per test.

Tests marked `cluster` use the control plane; when one fails, the tail of every
component's log is attached to its report so the cause is visible without digging.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from pgherd_dev import processes
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError

_control_plane: ControlPlane | None = None


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    global _control_plane  # noqa: PLW0603 - the report hook needs the live instance
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), die_with_parent=True)
    try:
        cp.up()
    except DevError as e:
        pytest.fail(f"local control plane did not start: {e}", pytrace=False)
    _control_plane = cp
    yield cp
    _control_plane = None
    cp.down()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return control_plane.api_client()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll check() until it returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _control_plane is not None and item.get_closest_marker("cluster"):
        for name, path in _control_plane.logs().items():
            report.sections.append((f"log: {name} (last lines)", processes.tail(path, 30)))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    cp = _control_plane
    seconds = cp.startup_seconds if cp else None
    if seconds is not None:
        terminalreporter.write_line(f"local control plane start-up: {seconds:.1f}s")
