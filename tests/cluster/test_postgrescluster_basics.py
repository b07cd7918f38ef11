"""A three-instance PostgresCluster on real PostgreSQL and Patroni: replication, credentials,
a quiet resync, drift repair, switchover, parameters, and scaling.

The tests share one cluster and run in file order; each leaves it Healthy.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    RESYNC_SECONDS,
    Cluster,
    Operator,
    audit_writes,
    pod_changes,
    settle_writes,
    wait_for,
    write_diffs,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


@pytest.fixture(scope="module")
def basic(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = "basics"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(kube, ns, "basic")
    cluster.create({"instances": 3, "postgresql": {"parameters": {"work_mem": "4MB"}}})
    cluster.wait_healthy(3)
    yield cluster
    kube.delete("Namespace", None, ns)


def _write(cluster: Cluster, value: str) -> None:
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (v text)")
        conn.execute("INSERT INTO notes VALUES (%s)", (value,))


def _read_on(cluster: Cluster, pod: str) -> list[str]:
    """Rows of notes on one instance; none yet where the table has not replicated."""
    with cluster.connect(pod) as conn:
        try:
            rows = conn.execute("SELECT v FROM notes ORDER BY v").fetchall()
        except psycopg.errors.UndefinedTable:
            return []
    return [r[0] for r in rows]


def _start_times(cluster: Cluster) -> dict[str, Any]:
    out = {}
    for pod in cluster.pods():
        name = pod["metadata"]["name"]
        with cluster.connect(name) as conn:
            out[name] = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]  # type: ignore[index]
    return out


def test_one_primary_two_streaming_replicas(basic: Cluster) -> None:
    status = basic.status()
    roles = sorted(i["role"] for i in status["instancesStatus"])
    assert roles == ["primary", "replica", "replica"]
    primary = basic.primary()

    def senders() -> bool:
        # Rows are visible to any role; their columns only to privileged ones.
        with basic.connect(primary) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone() == (2,)

    wait_for("two WAL senders on the primary", senders, timeout=30)
    _write(basic, "first")
    replica = next(i["name"] for i in status["instancesStatus"] if i["role"] == "replica")
    wait_for("the row on a replica", lambda: _read_on(basic, replica) == ["first"], timeout=30)
    assert status["endpoints"]["readWrite"] == "basic-rw.basics.svc:5432"


def test_application_secret_carries_a_working_connection(basic: Cluster, kube: Kube) -> None:
    secret = kube.get("Secret", basic.namespace, "basic-app")
    assert secret is not None
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["host"] == "basic-rw.basics.svc"
    assert data["port"] == "5432"
    assert data["dbname"] == "app"
    assert len(data["password"]) >= 24
    assert data["uri"].startswith(f"postgresql://{data['user']}:")
    with basic.connect(basic.primary()) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")


def test_services_follow_the_primary(basic: Cluster, kube: Kube) -> None:
    pods = {p["status"]["podIP"]: p["metadata"]["name"] for p in basic.pods()}

    def endpoints(service: str) -> set[str]:
        slices = kube.request(  # EndpointSlices are read only here, by the test
            "GET",
            f"/apis/discovery.k8s.io/v1/namespaces/{basic.namespace}/endpointslices",
            query=[("labelSelector", f"kubernetes.io/service-name={service}")],
        )["items"]
        return {
            pods[a]
            for s in slices
            for e in s.get("endpoints") or []
            for a in e["addresses"]
            if e.get("conditions", {}).get("ready")
        }

    primary = basic.primary()
    wait_for("-rw to select the primary", lambda: endpoints("basic-rw") == {primary}, 30)
    assert endpoints("basic-ro") == set(pods.values()) - {primary}


def test_resync_that_changes_nothing_writes_nothing(
    basic: Cluster, control_plane: ControlPlane
) -> None:
    # A pod turning unready on a busy machine, or Patroni changing a member's state, is a
    # real change that status must show. So the window measured is one in which no pod
    # changed (up to three tries); writes in it are the defect this test is about.
    for _ in range(3):
        settled = settle_writes(
            control_plane, OPERATOR_USER, RESYNC_SECONDS, namespace=basic.namespace, periods=20
        )
        assert settled is not None, "the operator kept writing for 20 resync periods:\n" + (
            write_diffs(
                control_plane,
                audit_writes(control_plane, OPERATOR_USER, time.time() - 6, basic.namespace),
            )
        )
        since = time.time()
        time.sleep(4 * RESYNC_SECONDS)
        writes = audit_writes(control_plane, OPERATOR_USER, since, basic.namespace)
        changes = pod_changes(control_plane, basic.namespace, since - RESYNC_SECONDS)
        if not changes:
            break
    assert not changes, "pods kept changing in every window:\n" + "\n".join(changes)
    assert writes == [], write_diffs(control_plane, writes)


def test_child_deleted_or_edited_by_hand_is_restored(basic: Cluster, kube: Kube) -> None:
    kube.delete("Service", basic.namespace, "basic-ro")
    kube.patch(
        "Service",
        basic.namespace,
        "basic-rw",
        {"spec": {"selector": {"pgherd.io/role": "replica"}}},
    )
    kube.patch("Role", basic.namespace, "basic-instance", {"rules": []})

    def restored() -> bool:
        ro = kube.get("Service", basic.namespace, "basic-ro")
        rw = kube.get("Service", basic.namespace, "basic-rw")
        role = kube.get("Role", basic.namespace, "basic-instance")
        return bool(
            ro
            and rw
            and role
            and rw["spec"]["selector"]["pgherd.io/role"] == "primary"
            and role.get("rules")
        )

    wait_for("hand edits to be undone", restored, timeout=2 * RESYNC_SECONDS + 5)


def test_patroni_refuses_unsafe_requests_without_credentials(basic: Cluster) -> None:
    """Only holders of the `<cluster>-restapi` Secret may switch over or restart; the
    operator's own switchovers and restarts (the tests below) prove it holds them."""
    primary = basic.primary()
    pod = next(p for p in basic.pods() if p["metadata"]["name"] == primary)
    api_url = json.loads(pod["metadata"]["annotations"]["status"])["api_url"]
    base = api_url.rsplit("/", 1)[0] if api_url.endswith("/patroni") else api_url.rstrip("/")
    secret = basic.kube.get("Secret", basic.namespace, "basic-restapi")
    assert secret is not None
    assert base64.b64decode(secret["data"]["username"]).decode() == "pgherd"
    # Over TLS, verified against the cluster's CA (not the name: api_url holds the pod IP).
    tls = basic.kube.get("Secret", basic.namespace, "basic-tls")
    assert tls is not None and base.startswith("https://")
    context = ssl.create_default_context(cadata=base64.b64decode(tls["data"]["ca.crt"]).decode())
    context.check_hostname = False
    for auth in (None, "Basic " + base64.b64encode(b"pgherd:wrong").decode()):
        req = urllib.request.Request(  # noqa: S310 - the instance's own REST API on a pod IP
            base + "/restart",
            data=b"{}",
            method="POST",
            headers=({"Authorization": auth} if auth else {}),
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10, context=context)  # noqa: S310
        assert refused.value.code == 401
    with urllib.request.urlopen(base + "/patroni", timeout=10, context=context) as resp:  # noqa: S310
        assert json.loads(resp.read())["role"] in ("master", "primary")


def test_planned_switchover_to_a_named_instance(basic: Cluster) -> None:
    old = basic.primary()
    target = next(p["metadata"]["name"] for p in basic.pods() if p["metadata"]["name"] != old)
    basic.patch_spec({"switchover": {"targetInstance": target}})
    wait_for(f"{target} to become primary", lambda: basic.primary() == target, timeout=60)
    basic.wait_healthy(3)
    _write(basic, "after-switchover")
    wait_for(
        f"{old} to follow the new primary",
        lambda: "after-switchover" in _read_on(basic, old),
        timeout=60,
    )


def test_reload_only_parameter_applies_without_restart(basic: Cluster) -> None:
    before = _start_times(basic)
    basic.patch_spec({"postgresql": {"parameters": {"work_mem": "8MB"}}})

    def applied() -> bool:
        for pod in before:
            with basic.connect(pod) as conn:
                if conn.execute("SHOW work_mem").fetchone() != ("8MB",):
                    return False
        return True

    wait_for("work_mem=8MB on every instance", applied, timeout=60)
    basic.wait_healthy(3)
    assert _start_times(basic) == before
    assert basic.status()["pendingRestart"] is False


def test_restart_parameter_rolls_replicas_first_then_switches_over(basic: Cluster) -> None:
    old_primary = basic.primary()
    before = _start_times(basic)
    basic.patch_spec({"postgresql": {"parameters": {"work_mem": "8MB", "max_connections": "120"}}})

    def restarted() -> bool:
        try:
            for pod in before:
                with basic.connect(pod) as conn:
                    if conn.execute("SHOW max_connections").fetchone() != ("120",):
                        return False
        except psycopg.OperationalError:
            return False  # an instance is restarting right now
        return True

    wait_for("max_connections=120 on every instance", restarted, timeout=240)
    basic.wait_healthy(3)
    after = _start_times(basic)
    assert all(after[p] > before[p] for p in before), "every instance restarted"
    replicas = [p for p in before if p != old_primary]
    assert all(after[r] < after[old_primary] for r in replicas), "replicas before the primary"
    assert basic.primary() != old_primary, "a switchover moved the primary off first"
    assert basic.status()["pendingRestart"] is False


def test_scale_up_then_down_never_removes_the_primary(basic: Cluster) -> None:
    basic.patch_spec({"instances": 5})
    basic.wait_healthy(5, timeout=240)
    basic.patch_spec({"switchover": {"targetInstance": "basic-4"}})
    wait_for("basic-4 to become primary", lambda: basic.primary() == "basic-4", timeout=60)
    basic.wait_healthy(5)
    _write(basic, "before-scale-down")
    basic.patch_spec({"instances": 2, "switchover": None})
    basic.wait_healthy(2, timeout=240)
    assert basic.primary() in {"basic-0", "basic-1"}
    assert "before-scale-down" in _read_on(basic, basic.primary())
