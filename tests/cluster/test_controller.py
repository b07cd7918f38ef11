"""The controller core against the real API server: the operand image comes from the
operator's settings (RELATED_IMAGE_POSTGRES, what OLM mirrors and pins), a cluster in
steady state costs the API nothing: no read and no write per pass, and the operator's
/metrics tell what it did.

These run a second operator process of their own, serving one namespace the session's
operator does not watch, with settings of their own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    Cluster,
    Operator,
    audit_requests,
    operator_kubeconfig,
    settle_writes,
    wait_for,
)

pytestmark = [pytest.mark.cluster]

USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
MIRRORED = "registry.example/pgherd/postgres@sha256:" + "ab" * 32
RESYNC = 2


def _passes(op: Operator) -> int | None:
    """How many passes the operator made (its /healthz report), or None before it answers."""
    report = op.health() or {}
    passes = (report.get("controller") or {}).get("passes")
    return int(passes) if passes is not None else None


# Parked: no node has this label, so the instances stay Pending and no PostgreSQL runs.
PARKED = {"scheduling": {"nodeSelector": {"pgherd.io/test": "parked"}}}


@pytest.fixture(scope="module")
def own_operator(
    operator: Operator,  # installs the CRDs and RBAC
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Operator, str]]:
    ns = f"core-{uuid.uuid4().hex[:6]}"  # outside the session operator's patterns
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    directory: Path = tmp_path_factory.mktemp("own-operator")
    op = Operator(
        operator_kubeconfig(control_plane, api, directory / "kubeconfig"),
        control_plane.log_dir / "operator-core.log",
        extra_env={
            "RELATED_IMAGE_POSTGRES": MIRRORED,
            "PGHERD_RESYNC_SECONDS": str(RESYNC),
            "PGHERD_STUCK_AFTER_SECONDS": "86400",
        },
        args=[f"--namespace={ns}"],
    )
    op.start()
    wait_for("the operator's health endpoint", lambda: _passes(op) is not None, 60)
    yield op, ns
    op.stop()
    kube.delete("Namespace", None, ns)


def test_the_default_operand_image_is_the_one_the_operator_is_given(
    own_operator: tuple[Operator, str], kube: Kube
) -> None:
    _, ns = own_operator
    Cluster(kube, ns, "mirrored").create({"instances": 1, **PARKED})
    sts = wait_for("the StatefulSet", lambda: kube.get("StatefulSet", ns, "mirrored"), 60)
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == MIRRORED


def test_a_cluster_in_steady_state_is_neither_read_nor_written(
    own_operator: tuple[Operator, str], kube: Kube, control_plane: ControlPlane
) -> None:
    op, ns = own_operator
    cluster = Cluster(kube, ns, "quiet")
    cluster.create({"instances": 2, **PARKED})
    wait_for("its status", lambda: cluster.status().get("phase"), 60)
    began = settle_writes(control_plane, USER, RESYNC, namespace=ns)
    assert began is not None, "the operator never stopped writing"
    since, before = time.time(), _passes(op)
    assert before is not None
    # At least three resyncs, each a full pass over the cluster (waited for, not slept: a
    # loaded machine may take longer than 3 * RESYNC for them).
    wait_for(
        "three more passes",
        lambda: (p := _passes(op)) is not None and p - before >= 3,
        timeout=20 * RESYNC,
    )
    calls = audit_requests(
        control_plane, USER, since, ns, verbs=frozenset({"get", "create", "update", "patch",
                                                          "delete"})
    )  # fmt: skip
    assert [f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name')}"
            for e in calls] == []  # fmt: skip


def _scrape(op: Operator) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """The operator's /metrics: name -> labels -> value."""
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def _sum(series: dict[frozenset[tuple[str, str]], float], **labels: str) -> float:
    return sum(v for ls, v in series.items() if set(labels.items()) <= ls)


def test_the_operators_metrics_tell_what_it_did(
    own_operator: tuple[Operator, str], kube: Kube
) -> None:
    op, ns = own_operator
    assert op.metrics_url is not None
    cluster = Cluster(kube, ns, "scraped")
    cluster.create({"instances": 1})
    cluster.wait_healthy(1, timeout=300)
    # A parameter changed: the operator patches Patroni's configuration through its REST API.
    cluster.patch_spec({"postgresql": {"parameters": {"work_mem": "8MB"}}})
    patched = dict(operation="patch_config", outcome="success")
    wait_for("a PATCH /config", lambda: _sum(_scrape(op).get(
        "pgherd_patroni_requests_total", {}), **patched), 120)  # fmt: skip
    wait_for("the cluster Healthy again", lambda: cluster.status().get("phase") == "Healthy", 120)
    m = _scrape(op)
    passes = m["pgherd_reconcile_duration_seconds_count"]
    assert _sum(passes, kind="PostgresCluster", result="success") > 0
    # At the next scrape: the phase is read from the cache, which kopf's watch feeds.
    wait_for("Healthy counted", lambda: _sum(_scrape(op)["pgherd_clusters"], phase="Healthy") >= 1)
    assert _sum(m["pgherd_actions_total"], action="apply", outcome="done") > 0
    assert _sum(m["pgherd_actions_total"], action="patroni_config", outcome="done") >= 1
    assert _sum(m["pgherd_patroni_request_duration_seconds_count"], operation="patch_config") >= 1
    for kind in ("Pod", "StatefulSet", "PostgresCluster"):
        assert _sum(m["pgherd_watch_events_total"], kind=kind) > 0, kind
    assert _sum(m["pgherd_informer_lists_total"], kind="Pod", reason="initial") >= 1
    assert _sum(m["pgherd_informer_synced"], kind="Pod") == 1
    assert _sum(m["pgherd_operator_build_info"]) == 1
    assert _sum(m["process_resident_memory_bytes"]) > 0
