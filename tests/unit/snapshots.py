"""Snapshots for the decision tests: a cluster and the world it observes, built from plain
values (pods with Patroni's annotations, its StatefulSet, Patroni's DCS ConfigMaps, backups),
the way the caches hold them."""

from __future__ import annotations

import copy
import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import certificates
from pgherd.controller.diff import stamped
from pgherd.controller.snapshot import Snapshot, member_from_pod
from pgherd.render import labels, names
from pgherd.render.children import desired_children
from pgherd.settings import Settings
from tests.unit.clusters import PASSWORDS, UID

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
# An object store with credentials from Secret s3.
STORE = {
    "bucket": "bkt",
    "credentials": {
        "accessKeyId": {"name": "s3", "key": "id"},
        "secretAccessKey": {"name": "s3", "key": "secret"},
    },
}
STS_UID = "5e7a3c1d-0000-4000-8000-000000000001"
SETTINGS = Settings()
Manifest = dict[str, Any]


def cluster_raw(
    spec: dict[str, Any] | None = None,
    *,
    status: dict[str, Any] | None = None,
    name: str = "db",
    namespace: str = "prod",
    generation: int = 1,
) -> Manifest:
    raw: Manifest = {
        "apiVersion": "pgherd.io/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": UID,
            "generation": generation,
            "resourceVersion": "100",
        },
        "spec": copy.deepcopy(spec or {}),
    }
    if status is not None:
        raw["status"] = status
    return raw


def pod(
    ordinal: int,
    *,
    role: str = "replica",
    state: str = "streaming",
    ready: bool = True,
    revision: str = "rev1",
    pending_restart: bool = False,
    lsn: int = 100_000_000,
    report: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    cluster: str = "db",
    ready_since: datetime | None = None,
    created: datetime | None = None,
    deleting: bool = False,
) -> Manifest:
    name = f"{cluster}-{ordinal}"
    status = {
        "role": "primary" if role == "primary" else "replica",
        "state": "running" if role == "primary" and state == "streaming" else state,
        "api_url": f"http://10.0.0.{ordinal}:8008/patroni",
        "conn_url": f"postgres://10.0.0.{ordinal}:5432/postgres",
        "xlog_location": lsn,
        "timeline": 1,
    }
    if pending_restart:
        status["pending_restart"] = True
    notes = {"status": json.dumps(status), **(annotations or {})}
    if report is not None:
        notes[contract.INSTANCE_ANNOTATION] = json.dumps(report)
    since = (ready_since or NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": f"pod-uid-{ordinal}",
            "creationTimestamp": (created or NOW - timedelta(days=1)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "labels": {
                **labels.common_labels(cluster),
                labels.ROLE: "primary" if role == "primary" else "replica",
                "controller-revision-hash": revision,
            },
            "annotations": notes,
            "ownerReferences": [{"kind": "StatefulSet", "uid": STS_UID, "controller": True}],
            **({"deletionTimestamp": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")} if deleting else {}),
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False",
                 "lastTransitionTime": since}
            ],
        },
    }  # fmt: skip


def dcs(name: str, annotations: dict[str, str], cluster: str = "db") -> Manifest:
    return {
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{cluster}-{name}",
            "namespace": "prod",
            "uid": f"dcs-{name}",
            "labels": labels.selector_labels(cluster),
            "annotations": annotations,
        },
    }


@functools.cache
def tls_data(name: str = "db", namespace: str = "prod") -> tuple[dict[str, str], dict[str, str]]:
    """Real certificates of cluster namespace/name, issued at NOW by the default policy
    (one set per test session: minting is the only slow part of a plan)."""
    cluster = PostgresCluster.model_validate({"metadata": {"name": name, "namespace": namespace}})
    outcome = certificates.plan_tls(
        cluster, None, None, {}, refused=False, now=NOW, policy=certificates.Policy(),
        mint=certificates.Mint(),
    )  # fmt: skip
    assert outcome.ca is not None and outcome.tls is not None
    return outcome.ca, outcome.tls


def live_children(
    cluster: PostgresCluster, *, update_revision: str = "rev1", image: str | None = None
) -> dict[tuple[str, str], Manifest]:
    """Every child as the API would hold it after an apply of exactly what is rendered now."""
    out = {}
    tls = tls_data(cluster.metadata.name, cluster.metadata.namespace)
    for child in desired_children(cluster, PASSWORDS, tls=tls, image=image):
        live = copy.deepcopy(stamped(child))
        live["metadata"]["resourceVersion"] = "7"
        live["metadata"]["uid"] = STS_UID if child["kind"] == "StatefulSet" else "child-uid"
        if child["kind"] == "StatefulSet":
            live["status"] = {"updateRevision": update_revision}
        out[(child["kind"], child["metadata"]["name"])] = live
    return out


def snapshot(
    spec: dict[str, Any] | None = None,
    *,
    status: dict[str, Any] | None = None,
    pods: list[Manifest] | None = None,
    children: dict[tuple[str, str], Manifest] | None = None,
    dcs_config: dict[str, Any] | None = None,
    leader: str | None = None,
    extra: list[Manifest] | None = None,
    now: datetime = NOW,
    generation: int = 1,
    **fields: Any,
) -> Snapshot:
    """A snapshot of cluster prod/db; children default to what is rendered (nothing to do)."""
    raw = cluster_raw(spec, status=status, generation=generation)
    cluster = PostgresCluster.model_validate(raw)
    kids = live_children(cluster) if children is None else dict(children)
    if dcs_config is not None:
        kids[("ConfigMap", "db-config")] = dcs("config", {"config": json.dumps(dcs_config)})
    if leader is not None:
        kids[("ConfigMap", "db-leader")] = dcs("leader", {"leader": leader, "optime": "100000000"})
    for obj in extra or []:
        kids[(obj["kind"], obj["metadata"]["name"])] = obj
    members = tuple(sorted((member_from_pod(p) for p in pods or []), key=lambda m: m.ordinal))
    return Snapshot(
        "prod",
        "db",
        now,
        raw=raw,
        cluster=cluster,
        children=kids,
        members=members,
        **fields,
    )


def healthy(n: int = 3, **kw: Any) -> list[Manifest]:
    """n ready instances, db-0 the primary."""
    return [pod(i, role="primary" if i == 0 else "replica", **kw) for i in range(n)]


def config_of(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Patroni's dynamic configuration as the operator renders it for spec."""
    from pgherd.render.patroni_config import dynamic_config  # noqa: PLC0415

    return dynamic_config(PostgresCluster.model_validate(cluster_raw(spec)))


def names_of(cluster: str = "db") -> list[str]:
    return [names.pod(cluster, i) for i in range(3)]
