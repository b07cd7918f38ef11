"""Raising spec.postgresVersion on a running cluster starts a major upgrade with its preflight:
until the data is carried over the cluster keeps its major and image and restarts nothing;
status records the major the data is at."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import status
from pgherd.controller.actions import Apply, Switchover
from pgherd.controller.plan import plan
from tests.unit.snapshots import (
    SETTINGS,
    cluster_raw,
    config_of,
    healthy,
    live_children,
    pod,
    snapshot,
)

STUCK_AFTER = timedelta(seconds=SETTINGS.stuck_after_seconds)
RUNNING = "registry.example/pg:15-a"
MAJOR = "PGHERD_POSTGRES_MAJOR"


def _env(sts: dict[str, Any]) -> dict[str, Any]:
    container = sts["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]} | {"image": container["image"]}


@pytest.mark.parametrize(
    ("want", "recorded", "upgrading", "rendered"),
    [
        # Asked for 18 while the data is at 15: the upgrade's preflight starts, the instances
        # stay at 15 with the running image, nothing restarts.
        (18, 15, True, ("15", RUNNING)),
        # The same major: nothing to upgrade.
        (15, 15, False, ("15", RUNNING)),
        # Never ran (nothing is at any major, no image recorded): the spec's major and the
        # operator's image for it.
        (18, None, False, ("18", "quay.io/pgherd/postgres:18-0.2.0")),
    ],
)
def test_a_raised_major_starts_the_upgrade_and_restarts_nothing(
    want: int, recorded: int | None, upgrading: bool, rendered: tuple[str, str]
) -> None:
    spec = {"instances": 3, "postgresVersion": want}
    st = {"phase": "Healthy", "observedGeneration": 1, "currentPrimary": "db-0",
          "postgresVersion": recorded, **({"image": RUNNING} if recorded else {})}  # fmt: skip
    running = PostgresCluster.model_validate(cluster_raw({"instances": 3, "postgresVersion": 15}))
    s = snapshot(
        spec,
        status=st,
        pods=healthy(3, report={contract.REPORT_MAJOR: 15} if recorded else None),
        children=live_children(running, image=RUNNING),
        dcs_config=config_of(spec),
        leader="db-0",
    )
    decided = plan(s, SETTINGS)
    sts = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "StatefulSet"]
    jobs = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "Job"]
    if upgrading:
        # Nothing restarts: the StatefulSet is what runs now; the preflight Job runs 18's
        # image with 15's binaries copied in.
        assert sts == []
        (job,) = jobs
        assert job.name == "db-upgrade-check"
        pod = job.manifest["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "quay.io/pgherd/postgres:18-0.2.0"
        assert pod["initContainers"][0]["image"] == RUNNING
        new = status.compute(s, decided, stuck_after=STUCK_AFTER)
        assert new is not None and new.upgrade is not None
        assert (new.upgrade.phase, new.upgrade.from_version, new.upgrade.to_version) == (
            "Preflight", 15, 18,
        )  # fmt: skip
        conds = {x.type: x for x in new.conditions or []}
        assert (conds["Progressing"].status, conds["Progressing"].reason) == (
            "True", "MajorUpgrade",
        )  # fmt: skip
        # The instances running 15 on purpose are no VersionMismatch.
        assert conds["Degraded"].status == "False", conds["Degraded"].message
        assert new.postgres_version == 15
        return
    assert jobs == []
    if sts:
        env = _env(sts[0].manifest)
        assert (env[MAJOR], env["image"]) == rendered


@pytest.mark.parametrize(
    ("ready", "reported", "recorded", "expected"),
    [
        (True, 15, None, 15),  # a ready instance says what the data is at
        (True, 15, 18, 15),
        (False, 18, 15, 15),  # an 18 image failing on 15's data: not ready, not believed
        (False, None, 15, 15),  # nobody ready (all restarting): the last known major kept
        (False, None, None, None),
    ],
)
def test_status_records_the_major_the_data_is_at(
    ready: bool, reported: int | None, recorded: int | None, expected: int | None
) -> None:
    spec = {"instances": 1, "postgresVersion": 18}
    report = {contract.REPORT_MAJOR: reported} if reported else None
    s = snapshot(
        spec,
        status={"observedGeneration": 1, "postgresVersion": recorded},
        pods=healthy(1, ready=ready, report=report),
        dcs_config=config_of(spec),
        leader="db-0",
    )
    new = status.compute(s, plan(s, SETTINGS), stuck_after=STUCK_AFTER)
    assert new is not None
    assert new.postgres_version == expected


STOPPING = {
    "phase": "Stopping", "fromVersion": 15, "toVersion": 18, "method": "link", "generation": 1,
    "startedAt": "2026-01-01T00:00:00Z", "fromImage": RUNNING, "toImage": "img:18",
}  # fmt: skip


@pytest.mark.parametrize(
    ("primary", "switchover_to", "replicas"),
    [
        # The primary above ordinal 0: it moves there first, the StatefulSet keeps its size.
        (2, "db-0", None),
        # At ordinal 0: the others go.
        (0, None, 1),
    ],
)
def test_stopping_for_the_upgrade_scales_down_to_the_primary_at_ordinal_0(
    primary: int, switchover_to: str | None, replicas: int | None
) -> None:
    spec = {"instances": 3, "postgresVersion": 18, "image": "img:18"}
    st = {"phase": "Updating", "observedGeneration": 1, "currentPrimary": f"db-{primary}",
          "postgresVersion": 15, "image": RUNNING, "upgrade": STOPPING}  # fmt: skip
    running = PostgresCluster.model_validate(cluster_raw({"instances": 3, "postgresVersion": 15}))
    pods = [
        pod(i, role="primary" if i == primary else "replica", report={contract.REPORT_MAJOR: 15})
        for i in range(3)
    ]
    s = snapshot(
        spec,
        status=st,
        pods=pods,
        children=live_children(running, image=RUNNING),
        dcs_config=config_of(spec),
        leader=f"db-{primary}",
    )
    decided = plan(s, SETTINGS)
    moves = [a.candidate for a in decided.actions if isinstance(a, Switchover)]
    assert moves == ([switchover_to] if switchover_to else [])
    sts = [a for a in decided.actions if isinstance(a, Apply) and a.kind == "StatefulSet"]
    if replicas is None:
        assert sts == []
    else:
        (apply,) = sts
        assert apply.manifest["spec"]["replicas"] == replicas
        # Still the old major in its image: nothing else changes on the way down.
        assert _env(apply.manifest)[MAJOR] == "15" and _env(apply.manifest)["image"] == RUNNING
