"""Shared fixtures: the real local control plane (session-wide) and a namespace per test.

Tests marked `cluster` use the control plane; when one fails, the tail of every
component's log is attached to its report so the cause is visible without digging.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pgherd.controller.client import Client as Kube
from pgherd_dev import processes
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.tools import tool_path
from tests.operator_harness import (
    Operator,
    install_crds_and_rbac,
    operator_kubeconfig,
    wait_for,
)

_control_plane: ControlPlane | None = None
_startup_seconds: list[float] = []


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject.toml: it belongs with require_tool below.
    config.addinivalue_line(
        "markers", "tools: runs pinned tool binaries (opm, operator-sdk, ...); fails if missing"
    )


def require_tool(name: str) -> Path:
    """Path of a pinned tool; a missing one fails the test (never skips) saying how to build it."""
    try:
        return tool_path(name)
    except DevError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    global _control_plane  # noqa: PLW0603 - the report hook needs the live instance
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), die_with_parent=True)
    try:
        cp.up()
    except DevError as e:
        pytest.fail(f"local control plane did not start: {e}", pytrace=False)
    _control_plane = cp
    _startup_seconds[:] = [cp.startup_seconds or 0.0]
    yield cp
    _control_plane = None
    cp.down()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return control_plane.api_client()


@pytest.fixture(scope="session")
def kube(api: client.ApiClient) -> Kube:
    return Kube(api)


TEST_NAMESPACES = ("t-*", "basics", "bench-*")


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane,
    api: client.ApiClient,
    kube: Kube,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """The real operator, running as its own ServiceAccount with the RBAC of manifests/."""
    install_crds_and_rbac(kube)
    wait_for("the CRD to be established", lambda: _established(api), timeout=30)
    directory = tmp_path_factory.mktemp("operator")
    op = Operator(
        operator_kubeconfig(control_plane, api, directory / "kubeconfig"),
        control_plane.log_dir / "operator.log",
        # The namespaces the PostgresCluster tests use; OLM's tests run their own operator.
        args=[f"--namespace={p}" for p in TEST_NAMESPACES],
    )
    op.start()
    yield op
    op.stop()


def _established(api: client.ApiClient) -> bool:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(
        "postgresclusters.pgherd.io"
    )
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


@contextlib.contextmanager
def new_namespace(api: client.ApiClient) -> Iterator[str]:
    """A namespace of its own (t-..., which the test operator watches), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    with new_namespace(api) as name:
        yield name


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _control_plane is not None and item.get_closest_marker("cluster"):
        for name, path in _control_plane.logs().items():
            report.sections.append((f"log: {name} (last lines)", processes.tail(path, 30)))
        pods = _control_plane.workdir / "pods"
        for log in sorted(pods.glob("*/*/current/container.log")) if pods.exists() else []:
            namespace, pod = log.parents[2].name, log.parents[1].name
            report.sections.append(
                (f"instance: {namespace}/{pod} (last lines)", processes.tail(log, 20))
            )
            # Patroni's loop fills the tail; the backup agent's lines and what it last
            # published say whether archiving or its reporting stalled.
            agent = [x for x in processes.tail(log, 2000).splitlines() if "backup-agent" in x]
            if agent:
                report.sections.append((f"agent: {namespace}/{pod}", "\n".join(agent[-15:])))
            report.sections.append(
                (f"annotations: {namespace}/{pod}", _annotations(namespace, pod))
            )
    return report


def _annotations(namespace: str, pod: str) -> str:
    assert _control_plane is not None
    try:
        obj = client.CoreV1Api(_control_plane.api_client()).read_namespaced_pod(pod, namespace)
    except Exception as e:  # the report must not fail on a pod that is gone
        return f"not read: {e}"
    notes = obj.metadata.annotations or {}
    return "\n".join(f"{k}: {v}" for k, v in sorted(notes.items()) if k.startswith("pgherd.io/"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    seconds = _startup_seconds[0] if _startup_seconds else None
    if seconds is not None:
        terminalreporter.write_line(f"local control plane start-up: {seconds:.1f}s")
