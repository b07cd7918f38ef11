"""Every alm-example of the CSV, created as a user creates it from the console, reaches its good
state with the operator running: the clusters Healthy (the backed-up one archiving), the
backup Completed, the pooler Ready, the database applied.

What a user prepares first, as the CSV's description says: the bucket (on a real S3-compatible
server on 127.0.0.1, tests/s3_server.py) and the credentials Secret the example names, opted in
with the label `pgherd.io/use: "true"`. The one change made to an example: the backed-up
cluster's object store gets the local server's endpoint (the example has none: AWS S3).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd.api import v1alpha1
from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from pgherd_packaging import bundle, manifests
from tests import s3_server
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def alm_examples() -> list[dict[str, Any]]:
    csv = yaml.safe_load((REPO / "bundle" / "manifests" / bundle.CSV_FILE).read_text())
    examples: list[dict[str, Any]] = json.loads(csv["metadata"]["annotations"]["alm-examples"])
    return examples


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    with s3_server.running(control_plane.log_dir / "moto-alm-examples.log") as server:
        yield server


def _prepare_store(
    kube: Kube, namespace: str, s3: s3_server.S3Server, cluster: dict[str, Any]
) -> None:
    store = cluster["spec"]["backup"]["objectStore"]
    s3.create_bucket(store["bucket"])
    refs = store["credentials"]
    (secret,) = {ref["name"] for ref in refs.values()}
    assert secret == manifests.EXAMPLE_BACKUP_SECRET
    values = {
        refs["accessKeyId"]["key"]: s3.access_key,
        refs["secretAccessKey"]["key"]: s3.secret_key,
    }
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret,
                "namespace": namespace,
                "labels": {"pgherd.io/use": "true"},
            },
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }
    )
    store["endpointURL"] = s3.url


def test_every_alm_example_reaches_its_good_state(
    operator: Operator, kube: Kube, namespace: str, s3: s3_server.S3Server
) -> None:
    examples = alm_examples()
    assert examples == manifests.samples()
    kinds = [e["kind"] for e in examples]
    assert set(kinds) == {
        v1alpha1.KIND,
        v1alpha1.BACKUP_KIND,
        v1alpha1.POOLER_KIND,
        v1alpha1.DATABASE_KIND,
    }
    clusters: list[tuple[Cluster, dict[str, Any]]] = []
    poolers: list[dict[str, Any]] = []
    for example in examples:
        obj = copy.deepcopy(example)
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] == v1alpha1.POOLER_KIND:
            kube.create(obj)
            poolers.append(obj)
        elif obj["kind"] == v1alpha1.KIND:
            if "backup" in obj["spec"]:
                _prepare_store(kube, namespace, s3, obj)
            kube.create(obj)
            clusters.append((Cluster(kube, namespace, obj["metadata"]["name"]), obj))
        elif obj["kind"] == v1alpha1.DATABASE_KIND:
            _database_example(kube, namespace, obj, clusters)
        else:
            # As a console user does: the backup once its cluster is up and archiving.
            cluster = obj["spec"]["cluster"]
            (target,) = [c for c, o in clusters if o["metadata"]["name"] == cluster]
            assert "backup" in next(o for c, o in clusters if c is target)["spec"]
            target.wait_healthy(_instances(clusters, cluster), timeout=300)
            wait_for(
                f"{cluster} ContinuousArchiving True",
                lambda t=target: t.condition("ContinuousArchiving").get("status") == "True",
                timeout=120,
            )
            kube.create(obj)
            name = obj["metadata"]["name"]

            def finished(name: str = name) -> dict[str, Any] | None:
                got = kube.get(v1alpha1.BACKUP_KIND, namespace, name) or {}
                status: dict[str, Any] = got.get("status") or {}
                return status if status.get("phase") in ("Completed", "Failed") else None

            status = wait_for(f"PostgresBackup {name} finished", finished, timeout=240)
            assert status["phase"] == "Completed", status
            assert status["backupId"] and status["endTime"], status
            bucket = next(o for c, o in clusters if c is target)["spec"]["backup"]["objectStore"]
            assert s3.keys(bucket["bucket"], bucket["path"] + "/"), "nothing in the bucket"
    for cluster, obj in clusters:
        status = cluster.wait_healthy(obj["spec"]["instances"], timeout=300)
        assert status["conditions"], status
        assert status["secrets"]["app"] == f"{obj['metadata']['name']}-app"
    for pooler in poolers:
        name = pooler["metadata"]["name"]

        def ready(name: str = name) -> dict[str, Any] | None:
            got = kube.get(v1alpha1.POOLER_KIND, namespace, name) or {}
            status: dict[str, Any] = got.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            return status if conditions.get("Ready") == "True" else None

        status = wait_for(f"PostgresPooler {name} Ready", ready, timeout=180)
        assert status["readyInstances"] == pooler["spec"]["instances"], status
    for cluster, _ in clusters:
        kube.delete(v1alpha1.KIND, namespace, cluster.name)


def _database_example(
    kube: Kube, namespace: str, obj: dict[str, Any], clusters: list[tuple[Cluster, dict[str, Any]]]
) -> None:
    """A PostgresDatabase: created at once (it waits for its cluster), then applied."""
    kube.create(obj)
    cluster = obj["spec"]["cluster"]
    (target,) = [c for c, o in clusters if o["metadata"]["name"] == cluster]
    target.wait_healthy(_instances(clusters, cluster), timeout=300)
    name = obj["metadata"]["name"]

    def applied() -> dict[str, Any] | None:
        got = kube.get(v1alpha1.DATABASE_KIND, namespace, name) or {}
        status: dict[str, Any] = got.get("status") or {}
        return status if status.get("applied") else None

    status = wait_for(f"PostgresDatabase {name} applied", applied, timeout=120)
    assert not status.get("error"), status
    with target.connect_superuser(dbname=obj["spec"]["name"]) as conn:
        extensions = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
    assert {e["name"] for e in obj["spec"]["extensions"]} <= extensions


def _instances(clusters: list[tuple[Cluster, dict[str, Any]]], name: str) -> int:
    (count,) = [o["spec"]["instances"] for _, o in clusters if o["metadata"]["name"] == name]
    return int(count)
