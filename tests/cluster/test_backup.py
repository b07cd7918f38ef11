"""Backups on real PostgreSQL + Patroni instances and a real S3-compatible server (moto) on
127.0.0.1: WAL archiving, an on-demand base backup, point-in-time and end-of-archive restores
into new clusters, and clear failures for a broken object store."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd.operand.wal import timeline_of
from pgherd_dev.controlplane import ControlPlane
from tests import s3_server
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BUCKET = "pgherd-backups"
# A bucket that never exists: the missing-bucket case's "typo".
MISSING_BUCKET = "pgherd-backups-typo"
TERMINAL = ("Completed", "Failed")
# Enough data that a base backup runs for several seconds on a small machine.
FAILOVER_FILL_MIB = 128
CREDS = "s3-creds"
PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    with s3_server.running(control_plane.log_dir / "moto.log", BUCKET) as server:
        yield server


def _secret(kube: Kube, namespace: str, name: str, key_id: str, secret: str) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            # Opted in to pgherd: a Secret the spec names is used only with this label.
            "metadata": {"name": name, "namespace": namespace, "labels": {"pgherd.io/use": "true"}},
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


def create_backup(
    kube: Kube, namespace: str, name: str, cluster: str, target: str | None = None
) -> None:
    kube.create(
        {
            "apiVersion": "pgherd.io/v1alpha1",
            "kind": "PostgresBackup",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"cluster": cluster, **({"target": target} if target else {})},
        }
    )


def backup_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    got = kube.get("PostgresBackup", namespace, name)
    assert got is not None
    return dict(got.get("status") or {})


def wait_backup(kube: Kube, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        s = backup_status(kube, namespace, name)
        return s if s.get("phase") in TERMINAL else None

    result: dict[str, Any] = wait_for(f"backup {name} to finish", done, timeout)
    return result


def wait_archived(cluster: Cluster, wal: str, timeout: float = 120) -> None:
    """Until the cluster's status reports `wal` (or a later one) archived."""

    def archived() -> str | None:
        last = (cluster.status().get("backup") or {}).get("lastArchivedWal") or ""
        return last if last[:24] >= wal[:24] and last else None

    wait_for(f"{wal} archived", archived, timeout)


def superuser(cluster: Cluster) -> psycopg.Connection[Any]:
    """An autocommit connection to the primary as postgres (pg_switch_wal needs it)."""
    return cluster.connect_superuser(autocommit=True)


def switch_wal(cluster: Cluster) -> str:
    with superuser(cluster) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    return str(row[0])


def rows(cluster: Cluster) -> list[int]:
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id").fetchall()]


def test_backup_and_point_in_time_restore(
    operator: Operator,
    kube: Kube,
    namespace: str,
    s3: s3_server.S3Server,
    control_plane: ControlPlane,
) -> None:
    started = time.monotonic()
    _secret(kube, namespace, CREDS, s3.access_key, s3.secret_key)
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
    assert b1["instance"] == source.primary(), b1  # target primary, the default
    # After a backup the primary applies the retention policy (nothing is old enough yet).
    log = source.instance_log(b1["instance"], control_plane)
    wait_for("retention applied", lambda: "retention (7d) applied" in log.read_text(), 60)
    assert "retention (7d) failed" not in log.read_text()

    # prefer-standby takes it from the streaming replica.
    create_backup(kube, namespace, "b-standby", "src", target="prefer-standby")
    standby = wait_backup(kube, namespace, "b-standby")
    assert standby["phase"] == "Completed", standby
    assert standby["instance"] != source.primary(), standby

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
    _secret(kube, namespace, CREDS, s3.access_key, s3.secret_key)
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
    # In this order: the last case also proves the missing-bucket case created no bucket.
    [
        ("unreachable", "could not connect to the endpoint"),
        ("missing-bucket", f'bucket "{MISSING_BUCKET}" does not exist at'),
        ("wrong-credentials", "InvalidAccessKeyId"),
    ],
    ids=["unreachable", "missing-bucket", "wrong-credentials"],
)
def test_broken_store_is_reported_and_cluster_keeps_serving(
    operator: Operator,
    kube: Kube,
    namespace: str,
    s3: s3_server.S3Server,
    control_plane: ControlPlane,
    case: str,
    expect: str,
) -> None:
    """A broken object store shows in ContinuousArchiving (reason ArchiveFailing, a message
    naming the cause and what to fix) and in a Failed PostgresBackup's error; the cluster
    keeps serving writes; pgherd creates no bucket; the secret key appears nowhere."""
    endpoint, bucket, key = s3.url, BUCKET, s3.access_key
    fix = "spec.backup.objectStore"
    if case == "wrong-credentials":
        key = "AKIAWRONGKEY00000000"
        fix = "spec.backup.objectStore.credentials"
    elif case == "missing-bucket":
        bucket = MISSING_BUCKET
        fix = "pgherd does not create buckets: create it or fix spec.backup.objectStore.bucket"
    else:
        endpoint = s3_server.unused_endpoint()
    _secret(kube, namespace, "bad-creds", key, s3.secret_key)
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
    assert fix in cond["message"], cond["message"]
    create_backup(kube, namespace, "bad", "broken")
    failed = wait_backup(kube, namespace, "bad")
    assert failed["phase"] == "Failed", failed
    assert expect.lower() in failed["error"].lower() and fix in failed["error"], failed
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE still_serving (x int)")
        conn.execute("INSERT INTO still_serving SELECT generate_series(1, 1000)")
    assert s3.buckets() == [BUCKET], "pgherd created a bucket"
    log = cluster.instance_log(cluster.primary(), control_plane).read_text(errors="replace")
    for text in (cond["message"], failed["error"], log):
        assert s3.secret_key not in text, "the secret key leaked"


def _fill(cluster: Cluster, mib: int) -> None:
    """About mib MiB of table data (1 KiB rows of md5 text: gzip shrinks it only ~2x)."""
    with cluster.connect(cluster.primary(), autocommit=True) as conn:
        conn.execute("CREATE TABLE filler (id bigint, pad text)")
        conn.execute(
            "INSERT INTO filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, %s) g",
            (mib * 1024,),
        )


def _writable(cluster: Cluster, pod: str) -> bool:
    try:
        with cluster.connect(pod, autocommit=True) as conn:
            return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)
    except psycopg.Error:
        return False


def test_backup_during_failover_fails_cleanly_and_archiving_follows(
    operator: Operator,
    kube: Kube,
    namespace: str,
    s3: s3_server.S3Server,
    control_plane: ControlPlane,
) -> None:
    """The primary's pod dies (and stays down, a lost node) while it takes a base backup:
    the backup ends Failed with a message naming the instance (the operator notices the
    agent's heartbeat stopped; nothing else could finish it), the replica takes over and
    the cluster is Healthy again once the old primary is back, WAL archiving continues from
    the new primary on the new timeline, and a new backup completes."""
    t0 = time.monotonic()
    took: dict[str, float] = {}
    _secret(kube, namespace, CREDS, s3.access_key, s3.secret_key)
    cluster = Cluster(kube, namespace, "fo")
    cluster.create({"instances": 2, "patroni": PATRONI, "backup": backup_spec(s3.url)})
    cluster.wait_healthy(2)
    wait_for(
        "ContinuousArchiving True",
        lambda: cluster.condition("ContinuousArchiving").get("status") == "True",
        timeout=90,
    )
    _fill(cluster, FAILOVER_FILL_MIB)
    wait_archived(cluster, switch_wal(cluster), timeout=300)
    took["setup and fill"] = time.monotonic() - t0

    old = cluster.primary()
    create_backup(kube, namespace, "doomed", "fo", target="primary")
    running = wait_for(
        "the backup to run",
        lambda: (s := backup_status(kube, namespace, "doomed")).get("phase") != "Pending" and s,
        timeout=60,
        interval=0.2,
    )
    assert running["phase"] == "Running" and running["instance"] == old, running
    time.sleep(2)  # into barman's copy
    assert backup_status(kube, namespace, "doomed")["phase"] == "Running", (
        f"the backup ended before the kill; raise FAILOVER_FILL_MIB ({FAILOVER_FILL_MIB})"
    )
    killed = time.monotonic()
    cluster.kill(old, control_plane, hold=True)

    new = wait_for(
        "the replica to be promoted", lambda: (p := cluster.primary()) != old and p, timeout=120
    )
    # The leader key moves before promotion ends: wait for a read-write primary.
    wait_for("the new primary to accept writes", lambda: _writable(cluster, new), timeout=60)
    took["kill -> writes on the new primary"] = time.monotonic() - killed
    # The new primary archives, on the new timeline.
    wal = switch_wal(cluster)
    assert timeline_of(wal) >= 2, wal
    wait_archived(cluster, wal, timeout=120)
    cond = wait_for(
        "ContinuousArchiving True on the new primary",
        lambda: (c := cluster.condition("ContinuousArchiving")).get("status") == "True" and c,
        timeout=90,
    )
    assert wal[:24] <= cond["message"].split()[2][:24], cond
    took["kill -> archiving on the new primary"] = time.monotonic() - killed

    # Bounded: the agent's heartbeat goes stale after a minute, then one resync.
    doomed = wait_backup(kube, namespace, "doomed", timeout=180)
    took["kill -> backup finished"] = time.monotonic() - killed
    if doomed["phase"] == "Failed":
        assert old in doomed["error"] and "create a new PostgresBackup" in doomed["error"], doomed
    else:
        assert doomed["phase"] == "Completed" and doomed["backupId"], doomed

    # The old primary's node comes back; it rejoins as a replica.
    cluster.release(old)
    cluster.wait_healthy(2, timeout=240)
    took["kill -> Healthy"] = time.monotonic() - killed

    started = time.monotonic()
    create_backup(kube, namespace, "after", "fo", target="primary")
    after = wait_backup(kube, namespace, "after", timeout=300)
    assert after["phase"] == "Completed", after
    assert after["instance"] == new and after["timeline"] >= 2, after
    took["backup after failover"] = time.monotonic() - started
    print(
        f"backup during failover ({FAILOVER_FILL_MIB} MiB): "
        + ", ".join(f"{k} {v:.1f}s" for k, v in took.items())
        + f"; doomed backup: {doomed['phase']}: {doomed.get('error')}"
    )


def test_scheduled_backups_keep_the_history_limit(
    operator: Operator, kube: Kube, namespace: str, s3: s3_server.S3Server
) -> None:
    """schedule "* * * * *" creates a labelled PostgresBackup each minute, which completes;
    with scheduleHistoryLimit 1 the older finished one is deleted once a newer one has
    finished."""
    _secret(kube, namespace, CREDS, s3.access_key, s3.secret_key)
    cluster = Cluster(kube, namespace, "sched")
    cluster.create(
        {
            "instances": 1,
            "patroni": PATRONI,
            "backup": backup_spec(s3.url, schedule="* * * * *", scheduleHistoryLimit=1),
        }
    )
    cluster.wait_healthy(1)

    def scheduled() -> list[dict[str, Any]]:
        items = kube.list("PostgresBackup", namespace, "pgherd.io/scheduled=true")
        return sorted(items, key=lambda b: b["metadata"]["name"])

    first = wait_for("a scheduled backup", scheduled, timeout=150)[0]
    name = first["metadata"]["name"]
    assert name.startswith("sched-") and first["spec"]["cluster"] == "sched", first
    assert first["metadata"]["labels"]["pgherd.io/cluster"] == "sched", first
    assert wait_backup(kube, namespace, name)["phase"] == "Completed"

    # The next run a minute later; once it has finished, the first one is gone.
    def pruned() -> list[dict[str, Any]] | None:
        items = scheduled()
        names = [b["metadata"]["name"] for b in items]
        finished = all((b.get("status") or {}).get("phase") in TERMINAL for b in items)
        return items if items and name not in names and finished else None

    second = wait_for("the next run to finish with the first pruned", pruned, timeout=150)
    assert len(second) == 1 and second[0]["status"]["phase"] == "Completed", second
    last = (cluster.status().get("backup") or {}).get("lastScheduleTime")
    assert last, cluster.status()


def _backdate(s3: s3_server.S3Server, server: str, backup_id: str, when: datetime) -> None:
    """Rewrite a backup's times in its backup.info in the store, as if it had been taken
    at `when`: the recovery window is days long and a test cannot wait for it."""
    key = f"pg/{server}/base/{backup_id}/backup.info"
    store = s3.client()
    info = store.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    stamp = when.strftime("%Y-%m-%d %H:%M:%S+00:00")
    info = re.sub(r"(?m)^(begin_time|end_time)=.*$", rf"\1={stamp}", info)
    store.put_object(Bucket=BUCKET, Key=key, Body=info.encode())


def test_retention_deletes_only_backups_the_window_no_longer_needs(
    operator: Operator, kube: Kube, namespace: str, s3: s3_server.S3Server
) -> None:
    """With a 7-day recovery window, backups of 20 and 10 days ago and one of now: the
    10-day-old one is still needed (it is the base for recovering to 7 days ago) and
    stays; the 20-day-old one is needed by nothing and leaves the store."""
    _secret(kube, namespace, CREDS, s3.access_key, s3.secret_key)
    cluster = Cluster(kube, namespace, "ret")
    cluster.create(
        {"instances": 1, "patroni": PATRONI, "backup": backup_spec(s3.url, retentionPolicy="7d")}
    )
    cluster.wait_healthy(1)
    now = datetime.now(UTC)
    ids = {}
    for name, age in (("r-old", 20), ("r-needed", 10), ("r-new", None)):
        create_backup(kube, namespace, name, "ret")
        done = wait_backup(kube, namespace, name)
        assert done["phase"] == "Completed", done
        ids[name] = done["backupId"]
        if age is not None:
            _backdate(s3, "ret", ids[name], now - timedelta(days=age))

    def kept() -> set[str]:
        return {k.split("/")[3] for k in s3.keys(BUCKET, "pg/ret/base/")}

    wait_for("the 20-day-old backup deleted", lambda: ids["r-old"] not in kept(), 60)
    assert {ids["r-needed"], ids["r-new"]} <= kept()

    # Status follows the store (refreshed after retention ran): recoverable from the
    # oldest backup left, the 10-day-old one.
    def first_point() -> datetime | None:
        raw = (cluster.status().get("backup") or {}).get("firstRecoverabilityPoint")
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None

    wait_for(
        "first recoverability point at the backup kept",
        lambda: (p := first_point()) and now - timedelta(days=11) < p < now - timedelta(days=9),
        timeout=60,
    )
