"""The controller core against the real API server: the operand image comes from the
operator's settings (RELATED_IMAGE_POSTGRES, what OLM mirrors and pins), and a cluster in
steady state costs the API nothing: no read and no write per pass.

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
