"""The declarative major upgrade, end to end in the operand images (the test kubelet's image
mode).

- A rehearsal (spec.upgrade.rehearsal) restores the cluster's backup into a throwaway copy,
  upgrades the copy, runs the user's check on it as the application owner, reports the
  durations and deletes the copy; the cluster's own pods are not touched.
- Raising spec.postgresVersion (with spec.image, as these clusters name their image) runs the
  preflight Job, takes a base backup first (spec.upgrade.backupFirst), switches the primary
  (placed at ordinal 1 beforehand) over to ordinal 0 and stops the instances, runs pg_upgrade
  in a Job on the primary's volume, hands Patroni the new system, starts 18, rebuilds
  statistics, re-creates the replicas from the new primary, and archives under the new
  system's name with a first base backup. The operator is killed (SIGKILL) once the outage
  has begun, and a new one carries the upgrade through.
- A preflight that finds an extension the new major lacks (and method clone on a filesystem
  without reflinks) changes nothing, and the version may be set back.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.operand_image import OperandImage
from tests import s3_server
from tests.cluster.test_backup import (
    BUCKET,
    CREDS,
    _secret,
    backup_spec,
    create_backup,
    wait_backup,
)
from tests.cluster.test_image_rootfs import PATRONI, _image
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

DATA = """
CREATE EXTENSION pg_trgm;
CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
INSERT INTO items SELECT g, 'label-' || g FROM generate_series(1, 5000) g;
CREATE INDEX items_label_trgm ON items USING gin (label gin_trgm_ops);
CREATE SEQUENCE counter;
SELECT setval('counter', 4242);
CREATE VIEW cheap AS SELECT id, label FROM items WHERE id < 100;
GRANT SELECT ON items TO app;
"""
# The rehearsal's check, run as the application owner on the upgraded copy.
CHECK = {"database": "postgres", "query": "SELECT count(*) = 5000 FROM items"}
# Phases of an upgrade under way after the outage began, where the operator is killed.
KILL_IN = ("Stopping", "Upgrading", "Resetting", "Starting")


@pytest.fixture(scope="module")
def images(control_plane: ControlPlane) -> tuple[OperandImage, OperandImage]:
    return _image(control_plane, 15), _image(control_plane, 18)


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    with s3_server.running(control_plane.log_dir / "moto-upgrade.log", BUCKET) as server:
        yield server


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    name = f"t-up-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.delete("Namespace", None, name)


def _upgrade(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.status().get("upgrade") or {})


def _read_back(cluster: Cluster, pod: str) -> tuple[Any, ...] | None:
    """What the pod serves of the data (None while it cannot: starting, not caught up)."""
    try:
        return _read(cluster, pod)
    except psycopg.Error:
        return None


def _read(cluster: Cluster, pod: str) -> tuple[Any, ...]:
    with cluster.connect_superuser(pod) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]  # type: ignore[index]
        # The trigram index answers (an index scan on the upgraded index).
        conn.execute("SET enable_seqscan = off")
        like = conn.execute("SELECT count(*) FROM items WHERE label LIKE '%bel-4999'").fetchone()
        seq = conn.execute("SELECT last_value FROM counter").fetchone()[0]  # type: ignore[index]
        view = conn.execute("SELECT count(*) FROM cheap").fetchone()[0]  # type: ignore[index]
    return version.split(".")[0], count, like[0] if like else None, seq, view


def test_a_cluster_is_upgraded_from_15_to_18_with_its_data_on_every_instance(
    operator: Operator,
    kube: Kube,
    ns: str,
    images: tuple[OperandImage, OperandImage],
    s3: s3_server.S3Server,
) -> None:
    image15, image18 = images
    _secret(kube, ns, CREDS, s3.access_key, s3.secret_key)
    cluster = Cluster(kube, ns, "up")
    cluster.create({"instances": 3, "image": image15.reference, "patroni": PATRONI,
                    "backup": backup_spec(s3.url)})  # fmt: skip
    cluster.wait_healthy(3, timeout=300)
    primary = cluster.primary()
    with cluster.connect_superuser(primary) as conn:
        for statement in filter(str.strip, DATA.split(";")):
            conn.execute(statement)
    expected = ("15", 5000, 1, 4242, 99)
    for pod in sorted(p["metadata"]["name"] for p in cluster.pods()):
        wait_for(f"the data on {pod}", lambda p=pod: _read_back(cluster, p) == expected, 60)

    _rehearse(cluster, kube, image18)
    if cluster.primary() == "up-0":
        # The upgrade moves the primary to ordinal 0 before it stops: make it do so.
        cluster.patch_spec({"switchover": {"targetInstance": "up-1"}})
        wait_for("up-1 to be the primary", lambda: cluster.status().get("currentPrimary")
                 == "up-1" and cluster.primary() == "up-1", timeout=120)  # fmt: skip
        cluster.wait_healthy(3, timeout=120)

    begin = time.monotonic()
    # With a base backup first (spec.upgrade.backupFirst), waited for before anything stops.
    cluster.patch_spec({"postgresVersion": 18, "image": image18.reference,
                        "upgrade": {"backupFirst": True}})  # fmt: skip
    phases: list[str] = []
    killed: list[str] = []

    def completed() -> dict[str, Any] | None:
        up = _upgrade(cluster)
        if up.get("phase") and (not phases or phases[-1] != up["phase"]):
            phases.append(up["phase"])
        if up.get("phase") in KILL_IN and not killed:
            # Mid-way, with nothing running: a crashed operator pod, and its replacement.
            assert operator.proc is not None
            operator.proc.send_signal(signal.SIGSTOP)
            operator.stop(signal.SIGKILL)
            operator.start()
            killed.append(up["phase"])
        return up if up.get("phase") in ("Completed", "Failed", "PreflightFailed") else None

    up = wait_for("the upgrade to end", completed, timeout=900, interval=1)
    took = time.monotonic() - begin
    print(f"upgrade 15 -> 18 of 3 instances: {took:.1f}s, phases {phases}, operator killed in "
          f"{killed}, status {up}")  # fmt: skip
    assert up["phase"] == "Completed", up
    assert killed, phases  # the kill landed mid-way
    assert phases.index("BackingUp") < phases.index(killed[0]), phases
    before = kube.get("PostgresBackup", ns, up["backup"]) or {}
    assert before.get("status", {}).get("phase") == "Completed", before
    assert (up["fromVersion"], up["toVersion"], up["method"]) == (15, 18, "link")
    assert up["outageSeconds"] > 0 and up["systemIdentifier"], up
    status = cluster.wait_healthy(3, timeout=300)
    assert status["postgresVersion"] == 18 and status["image"] == image18.reference
    pods = sorted(p["metadata"]["name"] for p in cluster.pods())
    assert len(pods) == 3
    for pod in pods:
        wait_for(f"the data on {pod} at 18", lambda p=pod: _read_back(cluster, p) == (
            "18", *expected[1:]), 120)  # fmt: skip
    # The new system archives under its own name, and its first base backup is taken.
    backup = status["backup"]
    assert backup["serverName"] == f"up-{up['systemIdentifier']}", backup
    first = f"up-upgraded-18-g{up['generation']}"
    done = wait_for(
        f"PostgresBackup {first}",
        lambda: (
            (kube.get("PostgresBackup", ns, first) or {}).get("status", {}).get("phase")
            in ("Completed", "Failed")
        ),
        timeout=240,
    )
    assert done
    got = kube.get("PostgresBackup", ns, first) or {}
    assert got["status"]["phase"] == "Completed", got
    # The upgrade's Jobs are gone with their pods.
    assert kube.list("Job", ns) == []


def _rehearse(cluster: Cluster, kube: Kube, image18: OperandImage) -> None:
    """A backup, then a rehearsal of the upgrade to 18 on a copy restored from it, checked;
    the cluster's own pods stay as they were, on 15."""
    create_backup(kube, cluster.namespace, "up-before", cluster.name)
    assert wait_backup(kube, cluster.namespace, "up-before", timeout=240)["phase"] == "Completed"
    pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    begin = time.monotonic()
    cluster.patch_spec({"upgrade": {"rehearsal": {
        "postgresVersion": 18, "image": image18.reference, "check": CHECK}}})  # fmt: skip

    def ended() -> dict[str, Any] | None:
        got = dict(cluster.status().get("rehearsal") or {})
        return got if got.get("phase") in ("Succeeded", "Failed") else None

    rehearsal = wait_for("the rehearsal to end", ended, timeout=900, interval=1)
    print(f"rehearsal 15 -> 18: {time.monotonic() - begin:.1f}s, status {rehearsal}")
    assert rehearsal["phase"] == "Succeeded", rehearsal
    assert (rehearsal["backup"], rehearsal["fromVersion"], rehearsal["toVersion"]) == (
        "up-before", 15, 18,
    )  # fmt: skip
    assert (rehearsal["checkPassed"], rehearsal["checkResult"]) == (True, "True")
    assert rehearsal["restoreSeconds"] > 0 and rehearsal["upgradeSeconds"] > 0
    assert rehearsal["outageSeconds"] > 0
    copy = rehearsal["cluster"]
    wait_for(
        f"the copy {copy} to be gone",
        lambda: kube.get("PostgresCluster", cluster.namespace, copy) is None,
        timeout=120,
    )
    # With its volume and Secrets: nothing of it is left behind.
    wait_for(f"{copy}'s claims and Secrets to be gone", lambda: not [
        o["metadata"]["name"] for kind in ("PersistentVolumeClaim", "Secret", "Pod")
        for o in kube.list(kind, cluster.namespace) if copy in o["metadata"]["name"]
    ], timeout=120)  # fmt: skip
    # The cluster itself: the same pods, still 15, no upgrade of its own.
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()} == pods
    assert "upgrade" not in cluster.status() or not cluster.status()["upgrade"]
    with cluster.connect_superuser() as conn:
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("15.")  # type: ignore[index]


def test_a_preflight_that_finds_a_missing_extension_changes_nothing(
    operator: Operator, kube: Kube, ns: str, images: tuple[OperandImage, OperandImage]
) -> None:
    image15, image18 = images
    cluster = Cluster(kube, ns, "pre")
    cluster.create({"instances": 1, "image": image15.reference, "patroni": PATRONI})
    cluster.wait_healthy(1, timeout=300)
    (pod,) = [p["metadata"]["name"] for p in cluster.pods()]
    uid = (kube.get("Pod", ns, pod) or {})["metadata"]["uid"]
    with cluster.connect_superuser(pod) as conn:
        conn.execute("CREATE EXTENSION adminpack")  # gone from PostgreSQL 17 on
    # clone needs reflinks, which this machine's filesystem lacks: the preflight says so too.
    cluster.patch_spec({"postgresVersion": 18, "image": image18.reference,
                        "upgrade": {"method": "clone"}})  # fmt: skip
    up = wait_for(
        "the preflight to fail",
        lambda: u if (u := _upgrade(cluster)).get("phase") == "PreflightFailed" else None,
        timeout=300,
    )
    assert any("adminpack" in p["subject"] for p in up["problems"]), up
    assert any(p["check"] == "method" for p in up["problems"]), up
    degraded = cluster.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "UpgradePreflightFailed")
    assert "adminpack" in degraded["message"] and "Nothing was changed" in degraded["message"]
    # Nothing restarted: the same pod, on 15.
    assert (kube.get("Pod", ns, pod) or {})["metadata"]["uid"] == uid
    with cluster.connect_superuser(pod) as conn:
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("15.")  # type: ignore[index]
    # The way back the API allows after a failed preflight.
    cluster.patch_spec({"postgresVersion": 15, "image": image15.reference})
    wait_for(
        "Degraded to clear",
        lambda: cluster.condition("Degraded").get("status") == "False",
        timeout=120,
    )
    assert (kube.get("Pod", ns, pod) or {})["metadata"]["uid"] == uid
