"""The major upgrade inside a pass: Jobs read as the state machine sees them, its intents as
writes, and the archive's new name for the upgraded system."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import backups
from pgherd.controller import major_upgrade as mu
from pgherd.controller import major_upgrade_plan as mup
from pgherd.controller.actions import Apply, Create, Delete, Patch
from pgherd.render import backup as render_backup
from tests.unit.snapshots import STORE, cluster_raw, dcs, pod, snapshot

T = "2026-12-01T12:00:00Z"


def _job(name: str, **meta: Any) -> dict[str, Any]:
    conditions = meta.pop("conditions", [])
    return {
        "kind": "Job",
        "metadata": {"name": name, "namespace": "prod", "uid": f"uid-{name}", **meta},
        "status": {"conditions": conditions},
    }


def _pod(job: str, code: int | None, message: str = "", created: str = T) -> dict[str, Any]:
    state = {"terminated": {"exitCode": code, "message": message}} if code is not None else {
        "running": {"startedAt": T}
    }  # fmt: skip
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-abcde",
            "creationTimestamp": created,
            "labels": {mup.JOB_NAME_LABEL: job},
        },
        "status": {"containerStatuses": [{"name": "upgrade", "state": state}]},
    }


ERROR = json.dumps({"ok": False, "error": "pg_upgrade failed: see the log"})
PROBLEMS = json.dumps(
    {"ok": False, "problems": [{"check": "extension", "subject": "adminpack", "message": "m",
                                "hint": "h", "severity": "error"}]}
)  # fmt: skip
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "x"}]


@pytest.mark.parametrize(
    ("jobs", "pods", "state", "has_report"),
    [
        ([], [], "absent", False),
        ([_job("db-upgrade")], [], "running", False),
        ([_job("db-upgrade")], [_pod("db-upgrade", None)], "running", False),
        # Being deleted (foreground): its pod may still run, so it is not gone yet.
        ([_job("db-upgrade", deletionTimestamp=T)], [_pod("db-upgrade", 0, "{}")], "running",
         False),
        ([_job("db-upgrade")], [_pod("db-upgrade", 0, json.dumps({"ok": True}))], "succeeded",
         True),
        ([_job("db-upgrade")], [_pod("db-upgrade", 3, PROBLEMS)], "problems", True),
        ([_job("db-upgrade")], [_pod("db-upgrade", 2, ERROR)], "failed", True),
        # Killed (no summary): no report, so it is run again.
        ([_job("db-upgrade")], [_pod("db-upgrade", 137)], "failed", False),
        # The pod deleted, the Job failed by its controller: no report either.
        ([_job("db-upgrade", conditions=FAILED)], [], "failed", False),
        # The newest pod counts.
        ([_job("db-upgrade")], [_pod("db-upgrade", 137, created="2026-12-01T11:00:00Z"),
                               _pod("db-upgrade", 0, "{}")], "succeeded", False),
    ],
)  # fmt: skip
def test_a_job_is_read_as_the_machine_needs_it(
    jobs: list[dict[str, Any]], pods: list[dict[str, Any]], state: str, has_report: bool
) -> None:
    s = snapshot(
        {"postgresVersion": 18},
        jobs={j["metadata"]["name"]: j for j in jobs},
        job_pods=tuple(pods),
    )
    seen = mup.job_seen(s, "db-upgrade")
    assert seen.state == state
    assert bool(seen.report) == has_report
    if state == "problems":
        assert seen.report["problems"][0]["subject"] == "adminpack"


def _progress(**kw: Any) -> mu.Progress:
    return mu.Progress(
        phase=mu.UPGRADING, from_version=15, to_version=18, method="link", generation=2,
        started_at=datetime(2026, 12, 1, tzinfo=UTC), from_image="pg:15", to_image="pg:18",
        primary="db-0", **kw,
    )  # fmt: skip


def test_intents_become_writes_of_exactly_the_objects_seen() -> None:
    claims = tuple(
        {"kind": "PersistentVolumeClaim", "metadata": {"name": f"pgdata-db-{i}", "uid": f"c{i}"}}
        for i in range(3)
    )
    config = dcs("config", {"initialize": "1", "history": "[]"})
    config["metadata"]["resourceVersion"] = "42"
    s = snapshot(
        {"postgresVersion": 18},
        extra=[config, dcs("leader", {"leader": "x"}),
               dcs("sync", {})],
        jobs={"db-upgrade-check": _job("db-upgrade-check")},
        claims=claims,
    )  # fmt: skip
    assert s.cluster is not None
    step = mu.Step(
        _progress(),
        intents=(
            mu.RunJob("upgrade", "pgdata-db-0"),
            mu.DeleteJob("preflight"),
            mu.DeleteJob("rollback"),  # none exists: nothing to delete
            mu.CreateBackup("db-upgraded-18-g2"),
            mu.DeleteClaims(("pgdata-db-1", "pgdata-db-2")),
            mu.ResetDcs("7448"),
        ),
        reason=mu.UPGRADING_REASON,
        message="Resetting",
    )
    actions = mup.actions_of(step, s.cluster, s)
    described = [a.describe() for a in actions]
    assert described == [
        "apply Job/db-upgrade",
        "delete Job/db-upgrade-check",
        "create PostgresBackup/db-upgraded-18-g2",
        "delete PersistentVolumeClaim/pgdata-db-1",
        "delete PersistentVolumeClaim/pgdata-db-2",
        "patch ConfigMap/db-config",
        "delete ConfigMap/db-leader",
        "delete ConfigMap/db-sync",
    ]
    apply, delete_job, create, *_rest = actions
    assert isinstance(apply, Apply)
    volumes = apply.manifest["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": "pgdata-db-0"} in [v.get("persistentVolumeClaim") for v in volumes]
    assert isinstance(delete_job, Delete) and delete_job.propagation == "Foreground"
    assert delete_job.uid == "uid-db-upgrade-check"
    assert isinstance(create, Create) and create.manifest["spec"] == {"cluster": "db"}
    patch = next(a for a in actions if isinstance(a, Patch))
    assert patch.body["metadata"]["annotations"] == {"initialize": "7448", "history": None}
    # Conditional on the key as read: Patroni never runs meanwhile, nor does anyone else write.
    assert patch.body["metadata"]["resourceVersion"] == "42"


def test_the_upgraded_system_archives_under_a_name_of_its_own() -> None:
    spec = {"postgresVersion": 18, "backup": {"objectStore": STORE}}
    before = PostgresCluster.model_validate(
        cluster_raw(spec, status={"backup": {"lastArchivedWal": "000000010000000000000009"}})
    )
    s = snapshot(spec)
    assert render_backup.server_name(before) == "db"
    unchanged = backups.cluster_backup_status(before, s, restored_from=None,
                                              last_schedule_time=None)  # fmt: skip
    assert unchanged is not None and unchanged.server_name is None
    upgraded = backups.cluster_backup_status(
        before, s, restored_from=None, last_schedule_time=None, upgraded_system="7448"
    )
    assert upgraded is not None and upgraded.server_name == "db-7448"
    # The old system's archive says nothing of the new one's.
    assert upgraded.last_archived_wal is None
    after = PostgresCluster.model_validate(
        cluster_raw(spec, status={"backup": upgraded.model_dump(by_alias=True, exclude_none=True)})
    )
    assert render_backup.server_name(after) == "db-7448"
    env = {e["name"]: e.get("value") for e in render_backup.env(after)}
    assert "db-7448" in env.values()
    # It stays once recorded, also after the upgrade's record moves on.
    kept = backups.cluster_backup_status(after, s, restored_from=None, last_schedule_time=None)
    assert kept is not None and kept.server_name == "db-7448"


@pytest.mark.parametrize(
    ("role", "state", "primary"),
    [
        ("primary", "streaming", "db-0"),  # promoted: Patroni runs it as primary
        # A switchover's candidate holds the leader key while it is still a standby: stopped
        # there, its data directory would be a standby's (standby.signal).
        ("replica", "streaming", None),
        ("primary", "starting", None),
        # Labelled primary, but Patroni's promotion is still under way.
        ("promoted", "streaming", None),
    ],
)
def test_the_primary_counts_only_once_promoted(role: str, state: str, primary: str | None) -> None:
    seen = pod(0, role="primary" if role == "promoted" else role, state=state)
    if role == "promoted":
        status = json.loads(seen["metadata"]["annotations"]["status"])
        seen["metadata"]["annotations"]["status"] = json.dumps({**status, "role": "promoted"})
    s = snapshot({"postgresVersion": 18, "instances": 1}, status={"postgresVersion": 15},
                 pods=[seen], leader="db-0")  # fmt: skip
    assert s.cluster is not None
    assert mup.view_of(s.cluster, s, "img:18").primary == primary
