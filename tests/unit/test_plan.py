"""The plan's decisions, table-driven, without I/O: what one pass does for a snapshot."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import conditions as c
from pgherd.controller.actions import (
    CREATE_ONLY,
    Action,
    Apply,
    Create,
    Delete,
    Patch,
    PatroniConfig,
    Restart,
    Switchover,
)
from pgherd.controller.plan import plan
from pgherd.controller.snapshot import Snapshot
from pgherd.settings import Settings
from tests.unit.snapshots import (
    NOW,
    SETTINGS,
    STORE,
    STS_UID,
    cluster_raw,
    config_of,
    dcs,
    healthy,
    live_children,
    pod,
    snapshot,
)


def what(action: Action) -> str:
    """A short name of an action, for the tables."""
    if isinstance(action, Apply | Delete | Patch):
        verb = type(action).__name__.lower()
        return f"{verb} {action.kind}/{action.name}"
    if isinstance(action, Create):
        return f"create {action.manifest['kind']}/{action.manifest['metadata']['name']}"
    if isinstance(action, Switchover):
        return f"switchover {action.primary}->{action.candidate}"
    if isinstance(action, Restart | PatroniConfig):
        return f"{type(action).__name__.lower()} {action.member}"
    return action.describe()


def planned(s: Snapshot, settings: Settings = SETTINGS) -> list[str]:
    return [what(a) for a in plan(s, settings, new_password=lambda: "generated").actions]


def running(spec: dict[str, Any] | None = None, **kw: Any) -> Snapshot:
    """A cluster whose children and Patroni configuration match its spec."""
    kw.setdefault("pods", healthy())
    kw.setdefault("leader", "db-0")
    kw.setdefault("status", {"phase": "Healthy"})
    return snapshot(spec, dcs_config=config_of(spec), **kw)


def test_a_cluster_that_matches_its_spec_plans_nothing() -> None:
    assert planned(running()) == []


def test_a_new_cluster_applies_every_child_in_order() -> None:
    s = snapshot({"instances": 3}, children={})
    assert planned(s) == [
        "event Normal CertificateAuthorityCreated",
        "event Normal CertificateIssued",
        "event Normal CertificateIssued",
        "apply ServiceAccount/db-instance",
        "apply Role/db-instance",
        "apply RoleBinding/db-instance",
        "apply Secret/db-ca",
        "apply Secret/db-tls",
        "apply Secret/db-vault",
        "apply Secret/db-superuser",
        "apply Secret/db-replication",
        "apply Secret/db-app",
        "apply Secret/db-restapi",
        "apply ConfigMap/db-patroni",
        "apply Service/db-headless",
        "apply Service/db-rw",
        "apply Service/db-ro",
        "apply Service/db-r",
        "apply StatefulSet/db",
        "apply PodDisruptionBudget/db",
        "apply PodDisruptionBudget/db-primary",
    ]


def test_a_changed_child_is_applied_conditionally_on_the_version_seen() -> None:
    s = running({"service": {"type": "NodePort"}})
    cluster = PostgresCluster.model_validate(cluster_raw())
    s = running({"service": {"type": "NodePort"}}, children=live_children(cluster))
    actions = [a for a in plan(s, SETTINGS).actions if isinstance(a, Apply)]
    assert [what(a) for a in actions] == [
        "apply Service/db-rw",
        "apply Service/db-ro",
        "apply Service/db-r",
    ]
    assert {a.resource_version for a in actions} == {"7"}


# ---- rolling updates and restarts: replicas first, then a switchover, then the primary ----
def _rev(*revs: str, ready: tuple[bool, ...] = (True, True, True)) -> list[dict[str, Any]]:
    return [
        pod(i, role="primary" if i == 0 else "replica", revision=r, ready=ok)
        for i, (r, ok) in enumerate(zip(revs, ready, strict=True))
    ]


def _rolling(pods: list[dict[str, Any]]) -> Snapshot:
    cluster = PostgresCluster.model_validate(cluster_raw())
    return running(pods=pods, children=live_children(cluster, update_revision="rev2"))


@pytest.mark.parametrize(
    ("pods", "expected", "activity"),
    [
        # every instance outdated: the first replica goes first
        (_rev("rev1", "rev1", "rev1"), ["delete Pod/db-1"], "updating replica db-1"),
        (_rev("rev1", "rev2", "rev1"), ["delete Pod/db-2"], "updating replica db-2"),
        # only the primary is left: switch over to an updated replica, never delete it yet
        (_rev("rev1", "rev2", "rev2"), ["switchover db-0->db-1"], "switching over from db-0"),
        # nothing disruptive while an instance is not ready
        (_rev("rev1", "rev2", "rev1", ready=(True, False, True)), [], "waiting for every"),
        # a down replica is updated at once: the new template may be its cure
        (_rev("rev1", "rev2", "rev1", ready=(True, True, False)), ["delete Pod/db-2"], "db-2"),
        # the primary outdated and no updated replica ready: wait
        (_rev("rev1", "rev2", "rev2", ready=(True, False, False)), [], "waiting for an updated"),
        # the replica deleted last pass is still shutting down: not deleted a second time
        (
            [
                pod(0, role="primary", revision="rev1"),
                pod(1, revision="rev1", ready=False, deleting=True),
                pod(2, revision="rev1"),
            ],
            [],
            "waiting for db-1 to be re-created",
        ),
        # ... and once it is gone, before its StatefulSet has re-created it
        (
            [pod(0, role="primary", revision="rev1"), pod(2, revision="rev1")],
            [],
            "waiting for db-1 to be re-created",
        ),
    ],
)
def test_rolling_update_order(
    pods: list[dict[str, Any]], expected: list[str], activity: str
) -> None:
    decided = plan(_rolling(pods), SETTINGS)
    assert [what(a) for a in decided.actions] == expected
    assert decided.activity is not None and decided.activity.reason == c.ROLLING_UPDATE
    assert activity in decided.activity.message
    assert len(decided.disruptive) <= 1


def test_a_single_instance_is_updated_in_place() -> None:
    cluster = PostgresCluster.model_validate(cluster_raw({"instances": 1}))
    s = running({"instances": 1}, pods=[pod(0, role="primary")],
                children=live_children(cluster, update_revision="rev2"))  # fmt: skip
    assert planned(s) == ["delete Pod/db-0"]


def test_a_pod_not_of_the_clusters_statefulset_is_never_deleted() -> None:
    pods = _rev("rev1", "rev1", "rev1")
    pods[1]["metadata"]["ownerReferences"] = [{"uid": "someone-else", "controller": True}]
    assert "delete Pod/db-1" not in planned(_rolling(pods))


@pytest.mark.parametrize(
    ("pending", "states", "expected"),
    [
        ((False, True, True), ("running", "streaming", "streaming"), ["restart db-1"]),
        ((True, False, False), ("running", "streaming", "streaming"), ["switchover db-0->db-1"]),
        # a server that does not run is not restarted: Patroni starts it with the new settings
        ((False, True, False), ("running", "start failed", "streaming"), []),
        ((False, False, False), ("running", "streaming", "streaming"), []),
    ],
)
def test_restarts_for_parameters(
    pending: tuple[bool, ...], states: tuple[str, ...], expected: list[str]
) -> None:
    pods = [
        pod(i, role="primary" if i == 0 else "replica", pending_restart=p, state=st,
            ready=st in ("running", "streaming"))
        for i, (p, st) in enumerate(zip(pending, states, strict=True))
    ]  # fmt: skip
    assert planned(running(pods=pods)) == expected


# ---- Patroni's configuration ------------------------------------------------------------
def test_a_reload_parameter_is_patched_through_the_primary_and_restarts_nothing() -> None:
    spec = {"postgresql": {"parameters": {"work_mem": "8MB"}}}
    s = snapshot(spec, dcs_config=config_of({}), status={}, pods=healthy(), leader="db-0")
    decided = plan(s, SETTINGS)
    (config,) = decided.actions
    assert isinstance(config, PatroniConfig) and config.member == "db-0"
    assert config.patch == {"postgresql": {"parameters": {"work_mem": "8MB"}}}
    assert decided.disruptive == []
    assert decided.activity is not None and decided.activity.reason == c.RESTARTING


def test_configuration_goes_through_any_member_when_no_primary_runs() -> None:
    pods = [pod(0, role="replica", state="start failed", ready=False)]
    s = snapshot({"instances": 1}, dcs_config=config_of({"postgresql": {"parameters":
                 {"huge_pages": "on"}}}), status={}, pods=pods)  # fmt: skip
    (config,) = plan(s, SETTINGS).actions
    assert isinstance(config, PatroniConfig) and config.member == "db-0"
    assert config.patch == {"postgresql": {"parameters": {"huge_pages": None}}}


def test_patronis_own_keys_outside_the_spec_are_kept() -> None:
    current = {**config_of({}), "check_timeline": True}
    s = snapshot({}, dcs_config=current, status={}, pods=healthy(), leader="db-0")
    assert planned(s) == []


# ---- switchover requests ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "handled", "pods", "expected", "handled_after"),
    [
        ("db-2", None, healthy(), ["switchover db-0->db-2"], None),
        ("db-2", None, [*healthy(2), pod(2, ready=False)], [], None),  # target not ready
        ("db-7", None, healthy(), [], None),  # no such instance: waits, never guesses
        ("db-2", "db-2", healthy(), [], "db-2"),  # carried out already: not repeated
        ("db-0", None, healthy(), [], "db-0"),  # already primary: done
    ],
)
def test_switchover_requests(
    target: str,
    handled: str | None,
    pods: list[dict[str, Any]],
    expected: list[str],
    handled_after: str | None,
) -> None:
    spec = {"switchover": {"targetInstance": target}}
    status = {"switchoverHandled": handled} if handled else {"phase": "Healthy"}
    s = snapshot(spec, dcs_config=config_of(spec), status=status, pods=pods, leader="db-0")
    decided = plan(s, SETTINGS)
    assert [what(a) for a in decided.actions] == expected
    assert decided.switchover_handled == handled_after
    if expected:
        (switch,) = decided.actions
        assert isinstance(switch, Switchover) and switch.announce


def test_one_disruptive_step_per_pass() -> None:
    # A switchover requested during a rolling update: only one of them this pass.
    spec = {"switchover": {"targetInstance": "db-2"}}
    cluster = PostgresCluster.model_validate(cluster_raw(spec))
    s = running(spec, pods=_rev("rev1", "rev1", "rev1"),
                children=live_children(cluster, update_revision="rev2"))  # fmt: skip
    assert len(plan(s, SETTINGS).disruptive) == 1


# ---- scaling ----------------------------------------------------------------------------
def test_scaling_down_moves_the_primary_below_the_new_size_first() -> None:
    pods = [pod(0), pod(1), pod(2, role="primary")]
    s = running({"instances": 2}, pods=pods, leader="db-2",
                children=live_children(PostgresCluster.model_validate(cluster_raw())))  # fmt: skip
    decided = plan(s, SETTINGS)
    # The replicas' budget follows the instance count (minAvailable: replicas - 1).
    assert [what(a) for a in decided.actions] == [
        "apply PodDisruptionBudget/db",
        "switchover db-2->db-0",
    ]
    assert decided.activity is not None and decided.activity.reason == c.SCALING


def test_scaling_down_shrinks_the_statefulset_once_the_primary_stays() -> None:
    s = running({"instances": 2}, children=live_children(
        PostgresCluster.model_validate(cluster_raw())))  # fmt: skip
    applies = {a.kind: a for a in plan(s, SETTINGS).actions if isinstance(a, Apply)}
    assert sorted(applies) == ["PodDisruptionBudget", "StatefulSet"]
    assert applies["PodDisruptionBudget"].manifest["spec"]["minAvailable"] == 0
    apply = applies["StatefulSet"]
    assert apply.manifest["spec"]["replicas"] == 2


def test_scaling_up_applies_the_statefulset() -> None:
    s = running({"instances": 5}, children=live_children(
        PostgresCluster.model_validate(cluster_raw())))  # fmt: skip
    decided = plan(s, SETTINGS)
    assert sorted(what(a) for a in decided.actions) == [
        "apply PodDisruptionBudget/db",
        "apply StatefulSet/db",
    ]
    assert decided.activity is not None and decided.activity.reason == c.SCALING


# ---- storage ----------------------------------------------------------------------------
def test_storage_growth_expands_claims_and_recreates_the_statefulset_without_pods() -> None:
    claims = tuple(
        {"kind": "PersistentVolumeClaim", "metadata": {
            "name": f"pgdata-db-{i}", "labels": {
                "app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "db",
                "pgherd.io/cluster": "db"}}}
        for i in range(3)
    )  # fmt: skip
    s = running({"storage": {"size": "2Gi"}}, claims=claims, children=live_children(
        PostgresCluster.model_validate(cluster_raw())))  # fmt: skip
    actions = plan(s, SETTINGS).actions
    assert [what(a) for a in actions] == [
        "patch PersistentVolumeClaim/pgdata-db-0",
        "patch PersistentVolumeClaim/pgdata-db-1",
        "patch PersistentVolumeClaim/pgdata-db-2",
        "delete StatefulSet/db",
    ]
    delete = actions[-1]
    assert isinstance(delete, Delete) and delete.propagation == "Orphan" and delete.uid


# ---- ownership --------------------------------------------------------------------------
def test_a_neighbours_object_is_never_applied_and_holds_the_instances_back() -> None:
    s = snapshot({}, children={}, foreign=frozenset({("Service", "db-rw")}))
    decided = plan(s, SETTINGS)
    applied = [what(a) for a in decided.actions]
    assert "apply Service/db-rw" not in applied
    assert "apply StatefulSet/db" not in applied
    assert "apply Service/db-ro" in applied
    assert [p.reason for p in decided.problems] == [c.CHILD_NAME_CONFLICT]


def test_a_child_not_cached_yet_is_left_for_the_next_pass() -> None:
    s = snapshot({}, children={}, unsynced=frozenset({("Service", "db-rw")}))
    assert "apply Service/db-rw" not in planned(s)
    assert plan(s, SETTINGS).problems == ()


def test_stale_dcs_configmaps_of_a_deleted_namesake_are_removed_before_bootstrap() -> None:
    from tests.unit.snapshots import dcs  # noqa: PLC0415

    s = snapshot({}, children={}, extra=[dcs("config", {}), dcs("leader", {})])
    assert planned(s)[:2] == ["delete ConfigMap/db-config", "delete ConfigMap/db-leader"]


# ---- images -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "settings", "image"),
    [
        ({}, Settings(), "quay.io/pgherd/postgres:15-0.2.0"),
        ({}, Settings(default_image="mirror.example/pg@sha256:aa"), "mirror.example/pg@sha256:aa"),
        ({"postgresVersion": 16}, Settings(images={16: "x/pg:16"}), "x/pg:16"),
        ({"postgresVersion": 16, "image": "mine:16"}, Settings(), "mine:16"),
        # the old CRD default stored in clusters of 0.1.0 pins nothing
        ({"image": "pgherd/postgres:15-0.1.0"}, Settings(default_image="m/pg:15"), "m/pg:15"),
    ],
)
def test_the_image_follows_the_postgres_version(
    spec: dict[str, Any], settings: Settings, image: str
) -> None:
    s = snapshot(spec, children={})
    sts = next(a for a in plan(s, settings).actions if isinstance(a, Apply) and a.kind ==
               "StatefulSet")  # fmt: skip
    assert sts.manifest["spec"]["template"]["spec"]["containers"][0]["image"] == image


def _sts_image(s: Snapshot, settings: Settings) -> str | None:
    decided = plan(s, settings)
    applied = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "StatefulSet"]
    assert decided.image is not None
    if applied:
        assert applied[0].manifest["spec"]["template"]["spec"]["containers"][0]["image"] == (
            decided.image
        )
    return decided.image


UPGRADED = Settings(default_image="quay.io/pgherd/postgres:15-0.3.0")


@pytest.mark.parametrize(
    ("spec", "status", "image"),
    [
        # an operator upgrade (a new default image) restarts nothing: the cluster keeps its own
        ({}, {"image": "quay.io/pgherd/postgres:15-0.2.0"}, "quay.io/pgherd/postgres:15-0.2.0"),
        # ... unless it asked to follow the operator
        ({"imageUpdatePolicy": "FollowOperator"}, {"image": "quay.io/pgherd/postgres:15-0.2.0"},
         "quay.io/pgherd/postgres:15-0.3.0"),
        # a cluster of 0.1.0 (spec.image holding that release's default, no status.image):
        # what its StatefulSet runs
        ({"image": "quay.io/pgherd/postgres:15-0.1.0"}, {}, "quay.io/pgherd/postgres:15-0.1.0"),
        # an explicit image always wins
        ({"image": "mine:15"}, {"image": "quay.io/pgherd/postgres:15-0.2.0"}, "mine:15"),
    ],
)  # fmt: skip
def test_an_operator_upgrade_never_changes_a_pinned_clusters_image(
    spec: dict[str, Any], status: dict[str, Any], image: str
) -> None:
    # The live StatefulSet runs what 0.1.0's operator rendered (the stored spec.image then).
    cluster = PostgresCluster.model_validate(cluster_raw())
    kids = live_children(cluster, image="quay.io/pgherd/postgres:15-0.1.0")
    s = running(spec, status=status, children=kids)
    assert _sts_image(s, UPGRADED) == image


def test_no_image_for_the_version_is_degraded_and_creates_no_instance() -> None:
    decided = plan(snapshot({"postgresVersion": 17}, children={}), Settings())
    assert "apply StatefulSet/db" not in [what(a) for a in decided.actions]
    assert [p.reason for p in decided.problems] == [c.NO_IMAGE]
    assert "RELATED_IMAGE_POSTGRES_17" in decided.problems[0].message


# ---- restore gating ---------------------------------------------------------------------
S3 = {"metadata": {"name": "s3", "labels": {"pgherd.io/use": "true"}},
      "data": {"id": "aWQ=", "secret": "c2VjcmV0"}}  # fmt: skip


def _backup(phase: str) -> dict[str, Any]:
    return {
        "kind": "PostgresBackup",
        "metadata": {"name": "b1", "namespace": "prod", "resourceVersion": "5", "uid": "b"},
        "spec": {"cluster": "src"},
        "status": {"phase": phase, "backupId": "20261130T100000", "serverName": "src"},
    }


SOURCE = cluster_raw({"backup": {"objectStore": STORE}}, name="src")


@pytest.mark.parametrize(
    ("spec", "backup", "source", "reason"),
    [
        ({}, None, None, c.RECOVERY_SOURCE_NOT_READY),  # no such PostgresBackup
        ({}, _backup("Running"), SOURCE, c.RECOVERY_SOURCE_NOT_READY),
        ({}, _backup("Completed"), None, c.RECOVERY_SOURCE_NOT_READY),  # source cluster gone
        # its own archive would be its source's: refused, never overwritten
        ({"backup": {"objectStore": STORE, "serverName": "src"}}, _backup("Completed"),
         SOURCE, c.ARCHIVE_WOULD_OVERWRITE_SOURCE),
        ({}, _backup("Completed"), SOURCE, None),
    ],
)  # fmt: skip
def test_restore_gating(
    spec: dict[str, Any], backup: dict[str, Any] | None, source: Any, reason: str | None
) -> None:
    full = {**spec, "bootstrap": {"recovery": {"source": {"backup": "b1"}}}}
    s = snapshot(full, children={}, recovery_backup=backup, recovery_cluster=source,
                 usable_secrets={"s3": S3})  # fmt: skip
    decided = plan(s, SETTINGS)
    sts = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "StatefulSet"]
    assert [p.reason for p in decided.problems] == ([reason] if reason else [])
    assert bool(sts) is (reason is None)
    if reason is None:
        assert decided.restored_from is not None
        assert decided.restored_from.backup_id == "20261130T100000"


# ---- backups: placement, schedule, history ----------------------------------------------
def _pgbackup(name: str, phase: str | None = None, **status: Any) -> dict[str, Any]:
    return {
        "kind": "PostgresBackup",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": f"uid-{name}",
            "resourceVersion": "9",
            "creationTimestamp": f"2026-11-30T0{len(name) % 10}:00:00Z",
            "labels": {"pgherd.io/cluster": "db", "pgherd.io/scheduled": "true"},
        },
        "spec": {"cluster": "db"},
        **({"status": {"phase": phase, **status}} if phase else {}),
    }


BACKUP_SPEC = {"backup": {"objectStore": STORE}}


@pytest.mark.parametrize(
    ("target", "pods", "instance"),
    [
        ("primary", healthy(), "db-0"),
        ("prefer-standby", [pod(0, role="primary"), pod(1, lsn=5), pod(2, lsn=9)], "db-2"),
        ("prefer-standby", [pod(0, role="primary"), pod(1, ready=False)], "db-0"),
        ("primary", [pod(0, role="primary", ready=False), pod(1)], None),
    ],
)
def test_backup_placement(target: str, pods: list[dict[str, Any]], instance: str | None) -> None:
    spec = {"backup": {**BACKUP_SPEC["backup"], "target": target}}
    s = running(spec, pods=pods, backups=(_pgbackup("b"),), usable_secrets={"s3": S3})
    (patch,) = [a for a in plan(s, SETTINGS).actions if isinstance(a, Patch)]
    assert patch.body["status"].get("instance") == instance
    assert patch.body["metadata"]["resourceVersion"] == "9"  # never over an agent's write


@pytest.mark.parametrize(
    ("status", "silent", "failed"),
    [
        ({"instance": "db-0", "instanceUid": "pod-uid-0"}, 10, False),
        ({"instance": "db-0", "instanceUid": "pod-uid-0"}, 120, True),  # heartbeat stale
        ({"instance": "db-0", "instanceUid": "a-replaced-pod"}, 0, True),
    ],
)
def test_a_running_backup_fails_when_its_instance_stops_reporting(
    status: dict[str, Any], silent: int, failed: bool
) -> None:
    begun = (NOW - timedelta(seconds=silent)).strftime("%Y-%m-%dT%H:%M:%SZ")
    s = running(BACKUP_SPEC, backups=(_pgbackup("b", "Running", beginTime=begun, **status),),
                usable_secrets={"s3": S3})  # fmt: skip
    patches = [a for a in plan(s, SETTINGS).actions if isinstance(a, Patch)]
    assert bool(patches) is failed
    if failed:
        assert patches[0].body["status"]["phase"] == "Failed"


def test_the_schedule_creates_the_backup_due() -> None:
    spec = {"backup": {**BACKUP_SPEC["backup"], "schedule": "0 * * * *"}}
    last = (NOW - timedelta(minutes=90)).isoformat()
    s = running(spec, status={"backup": {"lastScheduleTime": last}}, usable_secrets={"s3": S3})
    decided = plan(s, SETTINGS)
    assert "create PostgresBackup/db-20261130110000" in [what(a) for a in decided.actions]
    assert decided.last_schedule_time == NOW


def test_history_beyond_the_limit_is_pruned_oldest_first() -> None:
    spec = {"backup": {**BACKUP_SPEC["backup"], "schedule": "0 3 * * *",
                       "scheduleHistoryLimit": 1}}  # fmt: skip
    done = (_pgbackup("a", "Completed"), _pgbackup("bb", "Failed"), _pgbackup("ccc", "Completed"))
    s = running(spec, backups=done, usable_secrets={"s3": S3},
                status={"backup": {"lastScheduleTime": NOW.isoformat()}})  # fmt: skip
    assert [what(a) for a in plan(s, SETTINGS).actions] == [
        "delete PostgresBackup/a",
        "delete PostgresBackup/bb",
    ]


def test_missing_children_are_created_only_if_the_name_is_free() -> None:
    decided = plan(snapshot({}, children={}), SETTINGS)
    applies = [a for a in decided.actions if isinstance(a, Apply)]
    assert {a.resource_version for a in applies} == {CREATE_ONLY}
    sts = next(a for a in applies if a.kind == "StatefulSet")
    # No pod may start unless every child it uses (Secrets above all) was created as ours.
    assert ("Secret", "db-superuser") in sts.requires
    assert sts.requires == {a.key for a in applies if a.kind != "StatefulSet"} - {
        ("PodDisruptionBudget", "db"),
        ("PodDisruptionBudget", "db-primary"),
    }


# ---- synchronous mode: a planned switchover goes to Patroni's synchronous standby ------------
# (issue 16, the operator killed mid-step: a scale-down in synchronous mode "on" never finished
# when the synchronous standby was not the lowest ordinal, Patroni refusing every switchover.)
@pytest.mark.parametrize(
    ("step", "sync_standby", "expected"),
    [
        ("scale-down", None, "switchover db-2->db-0"),
        ("scale-down", "db-0", "switchover db-2->db-0"),
        ("scale-down", "db-1", "switchover db-2->db-1"),
        ("rollout", None, "switchover db-0->db-1"),
        ("rollout", "db-1", "switchover db-0->db-1"),
        ("rollout", "db-2", "switchover db-0->db-2"),
    ],
)
def test_a_planned_switchover_goes_to_the_synchronous_standby(
    step: str, sync_standby: str | None, expected: str
) -> None:
    sync = [dcs("sync", {"sync_standby": sync_standby})] if sync_standby else []
    base = PostgresCluster.model_validate(cluster_raw())
    if step == "scale-down":
        s = running({"instances": 2, "synchronousMode": "on"}, leader="db-2", extra=sync,
                    pods=[pod(0), pod(1), pod(2, role="primary")],
                    children=live_children(base))  # fmt: skip
    else:
        s = running({"synchronousMode": "on"}, extra=sync, pods=_rev("rev1", "rev2", "rev2"),
                    children=live_children(base, update_revision="rev2"))  # fmt: skip
    switchovers = [what(a) for a in plan(s, SETTINGS).actions if isinstance(a, Switchover)]
    assert switchovers == [expected]


# ---- storage growth with the operator killed: what is left is done once, nothing orphaned ---
def _claim(i: int, size: str = "1Gi", owned: bool = True) -> dict[str, Any]:
    owner = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": STS_UID,
              "controller": True, "blockOwnerDeletion": True}]  # fmt: skip
    return {
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": f"pgdata-db-{i}", "resourceVersion": f"{40 + i}",
            "labels": {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "db",
                       "pgherd.io/cluster": "db"},
            **({"ownerReferences": owner} if owned else {}),
        },
        "spec": {"resources": {"requests": {"storage": size}}},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "claims", "expected"),
    [
        # a pass cut short grew db-0 already: the others, then the StatefulSet's re-creation
        ({"storage": {"size": "2Gi"}}, [_claim(0, "2Gi"), _claim(1), _claim(2)],
         ["patch PersistentVolumeClaim/pgdata-db-1", "patch PersistentVolumeClaim/pgdata-db-2",
          "delete StatefulSet/db"]),
        # every claim grown, the StatefulSet not re-created yet: only that is left
        ({"storage": {"size": "2Gi"}}, [_claim(i, "2Gi") for i in range(3)],
         ["delete StatefulSet/db"]),
        # its deletion under way (orphaning its pods takes the garbage collector a moment):
        # nothing again, it is created once gone
        ({"storage": {"size": "2Gi"}, "deleting": True}, [_claim(i, "2Gi") for i in range(3)],
         []),
        # re-created: the claim of an instance scaled away lost its owner; it gets it back
        ({"instances": 2, "storage": {"reclaimPolicy": "Delete"}},
         [_claim(0), _claim(1), _claim(2, owned=False)],
         ["patch PersistentVolumeClaim/pgdata-db-2"]),
        # a claim of a live ordinal is the StatefulSet controller's to adopt
        ({"instances": 2, "storage": {"reclaimPolicy": "Delete"}},
         [_claim(0, owned=False), _claim(1), _claim(2)], []),
        # reclaimPolicy Retain: claims have no owner, by design
        ({"instances": 2}, [_claim(0), _claim(1), _claim(2, owned=False)], []),
    ],
)  # fmt: skip
def test_storage_growth_resumes_from_the_claims(
    spec: dict[str, Any], claims: list[dict[str, Any]], expected: list[str]
) -> None:
    instances = spec.get("instances", 3)
    base = PostgresCluster.model_validate(
        cluster_raw(
            {
                "instances": instances,
                "storage": {
                    "reclaimPolicy": spec.get("storage", {}).get("reclaimPolicy", "Retain")
                },
            }
        )
    )
    children = live_children(base)
    if spec.pop("deleting", False):
        children[("StatefulSet", "db")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    s = running(spec, pods=healthy(instances), claims=tuple(claims),
                children=children)  # fmt: skip
    assert [what(a) for a in plan(s, SETTINGS).actions] == expected
    for action in plan(s, SETTINGS).actions:
        if isinstance(action, Patch) and "ownerReferences" in str(action.body):
            meta = action.body["metadata"]
            assert meta["resourceVersion"] == "42"
            assert meta["ownerReferences"][0]["uid"] == STS_UID
