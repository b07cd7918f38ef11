"""Backups on real PostgreSQL + Patroni instances and a real S3-compatible server (moto) on
127.0.0.1: WAL archiving, an on-demand base backup, point-in-time and end-of-archive restores
into new clusters, and clear failures for a broken object store."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgherd.kube import Kube
from pgherd_dev.controlplane import ControlPlane
from tests import s3_server
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BUCKET = "pgherd-backups"
CREDS = "s3-creds"
PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    server = s3_server.start(control_plane.log_dir / "moto.log")
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def _secret(kube: Kube, namespace: str, name: str, key_id: str, secret: str) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {
                "id": base64.b64encode(key_id.encode()).decode(),
                "secret": base64.b64encode(secret.encode()).decode(),
            },
        }
    )


def backup_spec(
    endpoint: str, *, bucket: str = BUCKET, creds: str = CREDS, **extra: Any
) -> dict[str, Any]:
    return {
        "objectStore": {
            "endpointURL": endpoint,
            "bucket": bucket,
            "path": "pg",
            "region": s3_server.REGION,
            "credentials": {
                "accessKeyId": {"name": creds, "key": "id"},
                "secretAccessKey": {"name": creds, "key": "secret"},
            },
        },
        **extra,
    }


def create_backup(kube: Kube, namespace: str, name: str, cluster: str) -> None:
    kube.create(
        {
            "apiVersion": "pgherd.io/v1alpha1",
            "kind": "PostgresBackup",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"cluster": cluster},
        }
    )


def backup_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    got = kube.get("PostgresBackup", namespace, name)
    assert got is not None
    return dict(got.get("status") or {})


def wait_backup(kube: Kube, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        s = backup_status(kube, namespace, name)
        return s if s.get("phase") in ("Completed", "Failed") else None

    result: dict[str, Any] = wait_for(f"backup {name} to finish", done, timeout)
    return result


def wait_archived(cluster: Cluster, wal: str, timeout: float = 120) -> None:
    """Until the cluster's status reports `wal` (or a later one) archived."""

    def archived() -> str | None:
        last = (cluster.status().get("backup") or {}).get("lastArchivedWal") or ""
        return last if last[:24] >= wal[:24] and last else None

    wait_for(f"{wal} archived", archived, timeout)


def switch_wal(cluster: Cluster) -> str:
    secret = cluster.kube.get("Secret", cluster.namespace, f"{cluster.name}-superuser")
    assert secret is not None
    password = base64.b64decode(secret["data"]["password"]).decode()
    # pg_switch_wal is for superusers; the test connects as the cluster's postgres role.
    with psycopg.connect(
        host="127.0.0.1",
        port=cluster.port(cluster.primary()),
        user="postgres",
        password=password,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    return str(row[0])


def rows(cluster: Cluster) -> list[int]:
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id").fetchall()]


def test_backup_and_point_in_time_restore(
    operator: Operator, kube: Kube, namespace: str, s3: s3_server.S3Server
) -> None:
    started = time.monotonic()
    _secret(kube, namespace, "s3-creds", s3_server.ACCESS_KEY, s3_server.SECRET_KEY)
    source = Cluster(kube, namespace, "src")
    source.create(
        {"instances": 2, "patroni": PATRONI, "backup": backup_spec(s3.url, retentionPolicy="7d")}
    )
    source.wait_healthy(2)
    wait_for(
        "ContinuousArchiving True",
        lambda: source.condition("ContinuousArchiving").get("status") == "True",
        timeout=90,
    )
    with source.connect(source.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 10)")

    create_backup(kube, namespace, "b1", "src")
    b1 = wait_backup(kube, namespace, "b1")
    assert b1["phase"] == "Completed", b1
    assert b1["backupId"] and b1["beginWal"] and b1["endWal"] and b1["endTime"], b1

    with source.connect(source.primary(), autocommit=True) as conn:
        conn.execute("INSERT INTO t SELECT generate_series(11, 20)")
        time.sleep(1.5)
        (target,) = conn.execute("SELECT now()").fetchone() or (None,)
        time.sleep(1.5)
        conn.execute("INSERT INTO t SELECT generate_series(21, 30)")
    wait_archived(source, switch_wal(source))
    setup = time.monotonic() - started

    pit = Cluster(kube, namespace, "pit")
    pit.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "bootstrap": {
                "recovery": {"source": {"backup": "b1"}, "target": {"time": target.isoformat()}}
            },
            "backup": backup_spec(s3.url),  # archives under pg/pit, its own folder
        }
    )
    pit.wait_healthy(1, timeout=240)
    assert rows(pit) == list(range(1, 21))
    restored_pit = time.monotonic() - started - setup

    end = Cluster(kube, namespace, "end")
    end.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "bootstrap": {"recovery": {"source": {"backup": "b1"}}},
        }
    )
    end.wait_healthy(1, timeout=240)
    assert rows(end) == list(range(1, 31))

    # The restored cluster archives to its own folder, never to the source's.
    wait_for(
        "pit archiving",
        lambda: pit.condition("ContinuousArchiving").get("status") == "True",
        timeout=90,
    )
    assert any(k.startswith("pg/pit/wals/") for k in s3.keys(BUCKET, "pg/pit/"))
    print(f"setup+backup {setup:.1f}s, PITR restore {restored_pit:.1f}s")


def test_restore_refuses_to_archive_into_its_source(
    operator: Operator, kube: Kube, namespace: str, s3: s3_server.S3Server
) -> None:
    _secret(kube, namespace, "s3-creds", s3_server.ACCESS_KEY, s3_server.SECRET_KEY)
    clash = Cluster(kube, namespace, "clash")
    clash.create(
        {
            "instances": 1,
            "bootstrap": {
                "recovery": {
                    "source": {
                        "objectStore": backup_spec(s3.url)["objectStore"],
                        "serverName": "src",
                    }
                }
            },
            "backup": backup_spec(s3.url, serverName="src"),
        }
    )
    degraded = wait_for(
        "Degraded ArchiveWouldOverwriteSource",
        lambda: (
            (d := clash.condition("Degraded")).get("reason") == "ArchiveWouldOverwriteSource" and d
        ),
        timeout=60,
    )
    assert "overwrite" in degraded["message"]
    assert kube.get("StatefulSet", namespace, "clash") is None


@pytest.mark.parametrize(
    ("case", "expect"),
    # Not covered here: wrong credentials (moto's server accepts any key unless its IAM
    # authentication is set up) and a missing bucket (barman-cloud creates it when allowed).
    [("unreachable", "connect")],
)
def test_broken_store_is_reported_and_cluster_keeps_serving(
    operator: Operator,
    kube: Kube,
    namespace: str,
    s3: s3_server.S3Server,
    case: str,
    expect: str,
) -> None:
    endpoint, bucket, key = s3.url, BUCKET, s3_server.ACCESS_KEY
    if case == "wrong-credentials":
        key = "wrong"
    elif case == "missing-bucket":
        bucket = "no-such-bucket"
    else:
        endpoint = f"http://127.0.0.1:{s3_server._free_port()}"
    _secret(kube, namespace, "bad-creds", key, s3_server.SECRET_KEY)
    cluster = Cluster(kube, namespace, "broken")
    cluster.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "backup": backup_spec(endpoint, bucket=bucket, creds="bad-creds"),
        }
    )
    cluster.wait_healthy(1)
    cond = wait_for(
        "ContinuousArchiving False",
        lambda: (c := cluster.condition("ContinuousArchiving")).get("status") == "False" and c,
        timeout=120,
    )
    assert cond["reason"] == "ArchiveFailing"
    assert expect.lower() in cond["message"].lower(), cond["message"]
    create_backup(kube, namespace, "bad", "broken")
    failed = wait_backup(kube, namespace, "bad")
    assert failed["phase"] == "Failed" and failed["error"], failed
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE still_serving (x int)")
