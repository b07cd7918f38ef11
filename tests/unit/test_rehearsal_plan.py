"""A major upgrade's rehearsal inside a pass: the throwaway copy as rendered and written, the
backup it restores, and its check run on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import plan as planner
from pgherd.controller import postgres
from pgherd.controller import rehearsal as rh
from pgherd.controller import rehearsal_plan as rp
from pgherd.controller.actions import CREATE_ONLY, Apply, Delete, Event
from pgherd.render import names
from pgherd.render.rehearsal import rehearsal_cluster, rehearsal_owner
from tests import upgrade_support as us
from tests.unit.snapshots import SETTINGS, STORE, healthy, snapshot

SPEC: dict[str, Any] = {
    "instances": 3,
    "postgresVersion": 15,
    "synchronousMode": "on",
    "storage": {"size": "20Gi", "reclaimPolicy": "Retain"},
    "postgresql": {"parameters": {"work_mem": "8MB"}},
    "bootstrap": {"database": "shop", "owner": "shopper"},
    "service": {"type": "LoadBalancer"},
    "backup": {"objectStore": STORE},
    "upgrade": {"method": "copy", "rehearsal": {"postgresVersion": 18, "image": "img:18",
                                                "check": {"query": "SELECT true"}}},
}  # fmt: skip
STATUS = {"postgresVersion": 15, "image": "img:15"}


def _backup(name: str, phase: str, end: str, server: str = "db") -> dict[str, Any]:
    return {
        "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {"cluster": "db"},
        "status": {"phase": phase, "serverName": server, "endTime": end},
    }


BACKUPS = (
    _backup("db-old", "Completed", "2026-11-29T01:00:00Z"),
    _backup("db-new", "Completed", "2026-11-30T01:00:00Z"),
    _backup("db-failed", "Failed", "2026-11-30T02:00:00Z"),
    # The system before an earlier major upgrade: restores only onto the old major.
    _backup("db-before", "Completed", "2026-11-30T03:00:00Z", server="db-old-system"),
)


def _cluster(spec: dict[str, Any] = SPEC) -> PostgresCluster:
    return PostgresCluster.model_validate(snapshot(spec, status=STATUS).raw)


def test_the_copy_keeps_what_shapes_the_upgrade_and_nothing_that_reaches_outside() -> None:
    cluster = _cluster()
    copy = rehearsal_cluster(cluster, SPEC, name="db-rehearsal", backup="db-new",
                                version=15, image="img:15", method="copy")  # fmt: skip
    assert copy["spec"] == {
        "instances": 1,
        "postgresVersion": 15,
        "image": "img:15",
        "storage": {"size": "20Gi", "reclaimPolicy": "Delete"},
        "postgresql": {"parameters": {"work_mem": "8MB"}},
        "bootstrap": {"database": "shop", "owner": "shopper",
                      "recovery": {"source": {"backup": "db-new"}}},
        "upgrade": {"method": "copy"},
    }  # fmt: skip
    assert copy["metadata"]["ownerReferences"][0]["uid"] == cluster.metadata.uid
    assert rehearsal_owner(copy) == "db"
    # None of the instances' selector labels: nothing selecting the cluster's pods sees it.
    assert "app.kubernetes.io/instance" not in copy["metadata"]["labels"]
    # It is a valid PostgresCluster.
    PostgresCluster.model_validate({**copy, "metadata": {**copy["metadata"], "uid": "u"}})


def test_the_copys_name_fits_a_clusters_name_limit() -> None:
    assert names.rehearsal("db", 52) == "db-rehearsal"
    long = "a" * 50
    assert len(names.rehearsal(long, 52)) == 52
    assert names.rehearsal("a" * 41 + "-b", 52).endswith("a-rehearsal")


@pytest.mark.parametrize(
    ("rehearsal", "backups", "chosen", "why"),
    [
        ({}, BACKUPS, "db-new", ""),
        ({"backup": "db-old"}, BACKUPS, "db-old", ""),
        ({"backup": "db-failed"}, BACKUPS, None, "is Failed, not Completed"),
        ({"backup": "db-gone"}, BACKUPS, None, "does not exist"),
        ({}, BACKUPS[2:], None, "no Completed PostgresBackup of its current database system"),
    ],
)
def test_the_backup_restored_is_the_latest_completed_of_the_current_system(
    rehearsal: dict[str, Any], backups: tuple[dict[str, Any], ...], chosen: str | None, why: str
) -> None:
    spec = {**SPEC, "upgrade": {"rehearsal": {"postgresVersion": 18, **rehearsal}}}
    s = snapshot(spec, status=STATUS, backups=backups)
    assert s.cluster is not None
    got, reason = rp.backup_to_restore(s.cluster, s)
    assert got == chosen and why in reason


def test_a_cluster_without_backups_cannot_rehearse() -> None:
    spec = {k: v for k, v in SPEC.items() if k != "backup"}
    s = snapshot(spec, status=STATUS, backups=BACKUPS)
    assert s.cluster is not None
    assert rp.backup_to_restore(s.cluster, s)[1].startswith("a rehearsal restores a base backup")


def _copy_live(want: dict[str, Any], **status: Any) -> dict[str, Any]:
    live = {**want, "metadata": {**want["metadata"], "uid": "copy-uid", "resourceVersion": "7",
                                 "generation": 1}}  # fmt: skip
    return {**live, "status": status} if status else live


def _plan(status: dict[str, Any], copy: dict[str, Any] | None = None) -> planner.Plan:
    s = snapshot(SPEC, status={**STATUS, **status}, backups=BACKUPS, rehearsal_copy=copy,
                 pods=healthy(3), leader="db-0")  # fmt: skip
    return planner.plan(s, SETTINGS)


def _rehearsal_writes(decided: planner.Plan) -> list[Any]:
    return [a for a in decided.actions if getattr(a, "kind", None) == "PostgresCluster"
            or (isinstance(a, Event) and a.reason.startswith("Rehearsal"))]  # fmt: skip


def test_a_new_rehearsal_creates_its_copy_at_the_running_major_and_image() -> None:
    decided = _plan({})
    (apply,) = _rehearsal_writes(decided)
    assert isinstance(apply, Apply) and apply.resource_version == CREATE_ONLY
    assert (apply.manifest["spec"]["postgresVersion"], apply.manifest["spec"]["image"]) == (
        15, "img:15",
    )  # fmt: skip
    assert decided.rehearsal is not None and decided.rehearsal.phase == "Restoring"
    assert decided.rehearsal.backup == "db-new" and decided.rehearsal.method == "copy"
    # The cluster's own health is not the rehearsal's; Progressing says what runs.
    assert decided.activity is not None and decided.activity.reason == rh.REHEARSING


def test_a_restored_copy_is_raised_to_the_rehearsed_major_and_image() -> None:
    first = _plan({})
    assert first.rehearsal is not None
    record = first.rehearsal.model_dump(mode="json", by_alias=True, exclude_none=True)
    (create,) = _rehearsal_writes(first)
    healthy = _copy_live(create.manifest, phase="Healthy", observedGeneration=1,
                         postgresVersion=15)  # fmt: skip
    decided = _plan({"rehearsal": record}, healthy)
    (apply,) = _rehearsal_writes(decided)
    assert isinstance(apply, Apply) and apply.resource_version == "7"
    assert (apply.manifest["spec"]["postgresVersion"], apply.manifest["spec"]["image"]) == (
        18, "img:18",
    )  # fmt: skip
    # Applied as asked: the next pass writes nothing more to the copy.
    raised = _copy_live(apply.manifest, phase="Updating", observedGeneration=2)
    upgrading = decided.rehearsal.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[union-attr]
    assert _rehearsal_writes(_plan({"rehearsal": upgrading}, raised)) == []


def test_a_finished_rehearsal_deletes_its_copy_once_and_says_so_once() -> None:
    first = _plan({})
    (create,) = _rehearsal_writes(first)
    record = first.rehearsal.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[union-attr]
    live = _copy_live(create.manifest, phase="Healthy", observedGeneration=1, postgresVersion=15)
    cancelled = _plan({"rehearsal": {**record, "request": "another"}}, live)
    (delete,) = [a for a in _rehearsal_writes(cancelled) if isinstance(a, Delete)]
    assert (delete.name, delete.uid) == ("db-rehearsal", "copy-uid")
    done = {**record, "phase": "Succeeded", "reason": rh.REHEARSAL_SUCCEEDED}
    again = _rehearsal_writes(_plan({"rehearsal": done}, live))
    assert [type(a) for a in again] == [Delete]  # no second Event


# ---- the check, on a real PostgreSQL --------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[us.Server]:
    old, _ = us.binaries()
    pgdata: Path = tmp_path_factory.mktemp("check") / "data"
    us.make_cluster(
        pgdata, sql="CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 50) g"
    )
    with us.Server(old, pgdata) as srv:
        yield srv


@pytest.mark.parametrize(
    ("query", "passed", "result"),
    [
        ("SELECT count(*) = 50 FROM items", True, "True"),
        ("SELECT count(*) = 51 FROM items", False, "False"),
        # Several statements: the last one's row counts.
        ("CREATE TEMP TABLE t AS SELECT 1 AS a; SELECT count(*) = 1 FROM t", True, "True"),
        ("SELECT '{\"a\": 1}'::jsonb ? 'a'", True, "True"),
        ("SELECT 5 % 2 = 1", True, "True"),  # a % is the user's, not a placeholder
        ("SELECT 1 WHERE false", False, "no row"),
        ("SELECT 42", False, "42"),
        ("SELECT NULL::boolean", False, "None"),
        ("SELECT * FROM missing", False, 'error: relation "missing" does not exist'),
        ("DELETE FROM items WHERE id < 0", False, "no row"),
    ],
)
def test_the_check_passes_only_on_a_true_first_value(
    server: us.Server, query: str, passed: bool, result: str
) -> None:
    with server.connect() as conn:
        assert postgres.run_check(conn, query) == (passed, result)


def test_the_check_runs_under_a_statement_timeout(
    server: us.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "CHECK_TIMEOUT_SECONDS", 1)
    with server.connect() as conn:
        passed, result = postgres.run_check(conn, "SELECT pg_sleep(5) IS NULL")
        assert not passed and "statement timeout" in result
        # The session is still usable: a later check runs.
        assert postgres.run_check(conn, "SELECT true") == (True, "True")
