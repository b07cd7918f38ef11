"""Disks that do not fill (pgherd.controller.storage, pgherd.operand.report): what the
instance publishes and when, how the snapshot parses it, the volume status and its growth
rate, the StorageNearlyFull condition and its Events, table-driven."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pgherd import contract
from pgherd.api.v1alpha1 import InstanceStatus, PostgresClusterStatus, VolumeStatus
from pgherd.controller import conditions as c
from pgherd.controller import status as st
from pgherd.controller import storage
from pgherd.controller.plan import Plan
from pgherd.controller.snapshot import InstanceReport
from pgherd.controller.storage import VolumeUsage
from pgherd.operand import report
from tests.unit.snapshots import NOW, STORE, pod, snapshot

MIB = 2**20
VOL = {"sizeBytes": 100 * MIB, "usedBytes": 40 * MIB, "availableBytes": 60 * MIB,
       "walBytes": 16 * MIB}  # fmt: skip


def _vol(**kw: int) -> dict[str, Any]:
    return {**VOL, **{k + "Bytes": v * MIB for k, v in kw.items()}}


@pytest.mark.parametrize(
    ("before", "now", "age", "publish"),
    [
        (VOL, VOL, 1000.0, False),  # unchanged: never
        (None, VOL, 0.0, True),  # first measurement
        (VOL, None, 0.0, True),  # the volume became unreadable
        (VOL, _vol(used=40) | {"usedBytes": 40 * MIB + MIB // 2}, 5.0, False),  # 0.5 %: wait
        (VOL, _vol(used=40) | {"usedBytes": 40 * MIB + MIB // 2}, 60.0, True),  # ...until 60 s
        (VOL, _vol(used=42, available=58), 5.0, True),  # 2 %: at once
        (VOL, _vol(wal=18), 5.0, True),  # pg_wal moved 2 %
        (VOL, _vol(size=200, available=160), 0.0, True),  # grown: at once
    ],
)  # fmt: skip
def test_volume_changes_are_published_when_worth_it(
    before: dict[str, Any] | None, now: dict[str, Any] | None, age: float, publish: bool
) -> None:
    assert report.worth_publishing(before, now, age, 60.0) is publish


def test_volume_measures_the_filesystem_and_pg_wal(tmp_path: Path) -> None:
    wal = tmp_path / "pgdata" / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / "000000010000000000000001").write_bytes(b"x" * 4096)
    (wal / "000000010000000000000002").write_bytes(b"x" * 1000)
    got = report.volume(tmp_path, wal)
    assert got is not None
    fs = os.statvfs(tmp_path)
    assert got["sizeBytes"] == fs.f_blocks * fs.f_frsize
    assert got["walBytes"] == 5096
    missing_wal = report.volume(tmp_path, tmp_path / "none")
    assert missing_wal is not None
    assert missing_wal["walBytes"] is None
    assert report.volume(tmp_path / "missing", wal) is None


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (VOL, VolumeUsage(100 * MIB, 40 * MIB, 60 * MIB, 16 * MIB)),
        ({**VOL, "walBytes": None}, VolumeUsage(100 * MIB, 40 * MIB, 60 * MIB, None)),
        ({**VOL, "sizeBytes": 0}, None),
        ({**VOL, "usedBytes": "40"}, None),
        (None, None),
        ("x", None),
    ],
)
def test_the_snapshot_parses_the_volume(raw: Any, parsed: VolumeUsage | None) -> None:
    text = json.dumps({contract.REPORT_MAJOR: 15, contract.REPORT_VOLUME: raw})
    got = InstanceReport.from_annotation(text)
    assert got is not None
    assert got.volume == parsed


def _status(used: int, wal: int = 16, rate: int | None = None, size: int = 100) -> VolumeStatus:
    usage = VolumeUsage(size * MIB, used * MIB, (size - used) * MIB, wal * MIB)
    return VolumeStatus(
        size_bytes=usage.size, used_bytes=usage.used, available_bytes=usage.available,
        wal_bytes=usage.wal, used_percent=usage.used_percent, growth_bytes_per_second=rate,
        measured_at=NOW - timedelta(seconds=60),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("usage", "previous", "rate", "moved"),
    [
        (None, None, None, False),
        (VolumeUsage(100 * MIB, 40 * MIB, 60 * MIB, 16 * MIB), None, None, True),
        # the same figures: the previous status as it was (no write)
        (VolumeUsage(100 * MIB, 40 * MIB, 60 * MIB, 16 * MIB), _status(40, rate=7), 7, False),
        # 6 MiB more in 60 s
        (VolumeUsage(100 * MIB, 46 * MIB, 54 * MIB, 22 * MIB), _status(40), round(MIB / 10), True),
        # resized: no rate across a resize
        (VolumeUsage(200 * MIB, 46 * MIB, 154 * MIB, 22 * MIB), _status(40), None, True),
    ],
)  # fmt: skip
def test_volume_status_and_growth_rate(
    usage: VolumeUsage | None, previous: VolumeStatus | None, rate: int | None, moved: bool
) -> None:
    got = storage.volume_status(usage, previous, NOW)
    if usage is None:
        assert got is None
        return
    assert got is not None
    assert got.growth_bytes_per_second == rate
    assert (got.measured_at == NOW) is moved


def _instances(*volumes: VolumeStatus | None) -> list[InstanceStatus]:
    return [InstanceStatus(name=f"db-{i}", volume=v) for i, v in enumerate(volumes)]


@pytest.mark.parametrize(
    ("volumes", "archiving_fails", "want", "words"),
    [
        ((None,), False, None, []),
        ((_status(40),), False, ("False", c.STORAGE_OK), ["at most 40% used"]),
        ((_status(40), _status(85)), False, ("True", c.VOLUME_NEARLY_FULL),
         ["db-1: 85% of 100 MiB used", "15 MiB free"]),
        # growing 1 MiB/s with 15 MiB free: full in about 15 s
        ((_status(85, rate=MIB),), False, ("True", c.VOLUME_NEARLY_FULL), ["full in about 15 s"]),
        ((_status(85, rate=-MIB),), False, ("True", c.VOLUME_NEARLY_FULL), []),
        # pg_wal big while archiving fails
        ((_status(50, wal=30, rate=MIB // 60),), True, ("True", c.WAL_NOT_ARCHIVED),
         ["pg_wal holds 30 MiB", "full in about 50 min"]),
        ((_status(50, wal=30),), False, ("False", c.STORAGE_OK), []),  # archiving works
        ((_status(50, wal=20),), True, ("False", c.STORAGE_OK), []),  # pg_wal small
        ((_status(90, wal=30),), True, ("True", c.VOLUME_NEARLY_FULL), ["also: WAL archiving"]),
    ],
)  # fmt: skip
def test_storage_nearly_full_condition(
    volumes: tuple[VolumeStatus | None, ...],
    archiving_fails: bool,
    want: tuple[str, str] | None,
    words: list[str],
) -> None:
    got = storage.nearly_full(_instances(*volumes), archiving_fails)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got[:2] == want
    for word in words:
        assert word in got[2]


def _report(used: int, wal: int = 16) -> dict[str, Any]:
    return {contract.REPORT_MAJOR: 15,
            contract.REPORT_VOLUME: _vol(used=used, available=100 - used, wal=wal)}  # fmt: skip


def test_status_carries_volumes_and_the_condition() -> None:
    s = snapshot({"instances": 1}, pods=[pod(0, role="primary", report=_report(85))],
                 leader="db-0")  # fmt: skip
    new = st.compute(s, Plan(), stuck_after=timedelta(minutes=5))
    assert new is not None
    assert new.instances_status is not None
    volume = new.instances_status[0].volume
    assert volume is not None
    assert (volume.used_percent, volume.measured_at) == (85, NOW)
    found = c.get(new.conditions, c.STORAGE_NEARLY_FULL)
    assert found is not None
    assert (found.status, found.reason) == ("True", c.VOLUME_NEARLY_FULL)
    # a second pass 60 s later with 5 MiB more: a growth rate and a time to full
    stored = st.dump(new)
    later = snapshot({"instances": 1}, pods=[pod(0, role="primary", report=_report(90))],
                     leader="db-0", status=stored, now=NOW + timedelta(seconds=60))  # fmt: skip
    again = st.compute(later, Plan(), stuck_after=timedelta(minutes=5))
    assert again is not None
    found = c.get(again.conditions, c.STORAGE_NEARLY_FULL)
    assert found is not None
    assert "full in about 2 min" in found.message
    # same world, same status: nothing to write
    same = snapshot(
        {"instances": 1},
        pods=[pod(0, role="primary", report=_report(90))],
        leader="db-0",
        status=st.dump(again),
        now=NOW + timedelta(seconds=90),
    )
    assert st.status_patch(st.dump(again), st.dump(st.compute(same, Plan(),
                           stuck_after=timedelta(minutes=5)))) == {}  # fmt: skip


def test_wal_growing_while_archiving_fails() -> None:
    archiver = json.dumps({"lastFailedTime": "2026-11-30T11:30:00Z", "error": "unreachable"})
    pods = [pod(0, role="primary", report=_report(50, wal=30),
                annotations={"pgherd.io/archiver": archiver})]  # fmt: skip
    s = snapshot({"instances": 1, "backup": {"objectStore": STORE}}, pods=pods, leader="db-0")
    new = st.compute(s, Plan(), stuck_after=timedelta(minutes=5))
    assert new is not None
    found = c.get(new.conditions, c.STORAGE_NEARLY_FULL)
    assert found is not None
    assert (found.status, found.reason) == ("True", c.WAL_NOT_ARCHIVED)


def _conds(**more: tuple[str, str]) -> PostgresClusterStatus:
    return PostgresClusterStatus.model_validate({"conditions": [
        {"type": t, "status": s, "reason": r, "message": r, "lastTransitionTime": NOW.isoformat()}
        for t, (s, r) in more.items()
    ]})  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "events"),
    [
        (None, _conds(StorageNearlyFull=("False", c.STORAGE_OK)), []),
        (_conds(StorageNearlyFull=("False", c.STORAGE_OK)),
         _conds(StorageNearlyFull=("True", c.VOLUME_NEARLY_FULL)),
         [("Warning", c.VOLUME_NEARLY_FULL)]),
        # still nearly full (the message moved with the figures): no second Event
        (_conds(StorageNearlyFull=("True", c.VOLUME_NEARLY_FULL)),
         _conds(StorageNearlyFull=("True", c.VOLUME_NEARLY_FULL)), []),
        (_conds(StorageNearlyFull=("True", c.WAL_NOT_ARCHIVED)),
         _conds(StorageNearlyFull=("True", c.VOLUME_NEARLY_FULL)),
         [("Warning", c.VOLUME_NEARLY_FULL)]),
        (_conds(StorageNearlyFull=("True", c.VOLUME_NEARLY_FULL)),
         _conds(StorageNearlyFull=("False", c.STORAGE_OK)), [("Normal", c.STORAGE_OK)]),
    ],
)  # fmt: skip
def test_storage_events_once_per_transition(
    old: PostgresClusterStatus | None, new: PostgresClusterStatus, events: list[tuple[str, str]]
) -> None:
    assert [(e.type, e.reason) for e in st.transitions(old, new)] == events


# ---- spec.storage.autoGrow -------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "n"),
    [("1Gi", 2**30), ("64Mi", 64 * MIB), ("1.5Gi", 3 * 2**29), ("1G", 10**9), ("500", 500),
     ("100m", None), ("-1Gi", None), ("1e3", None)],
)  # fmt: skip
def test_quantity_bytes(text: str, n: int | None) -> None:
    assert storage.quantity_bytes(text) == n


def _cluster(
    size: str = "100Mi", auto: dict[str, Any] | None = None, grown: str | None = None
) -> Any:
    from pgherd.api.v1alpha1 import PostgresCluster  # noqa: PLC0415
    from tests.unit.snapshots import cluster_raw  # noqa: PLC0415

    raw = cluster_raw({"storage": {"size": size, **({"autoGrow": auto} if auto else {})}},
                      status={"storage": {"grownSize": grown}} if grown else None)  # fmt: skip
    return PostgresCluster.model_validate(raw)


def _use(percent: int, size: int = 100) -> VolumeUsage:
    used = size * percent // 100
    return VolumeUsage(size * MIB, used * MIB, (size - used) * MIB)


AUTO = {"limit": "200Mi"}


@pytest.mark.parametrize(
    ("size", "auto", "grown", "volumes", "want", "grows", "problem"),
    [
        # no autoGrow: spec.storage.size as it is, however full
        ("100Mi", None, None, {"db-0": _use(95)}, None, False, None),
        # below the threshold: nothing
        ("100Mi", AUTO, None, {"db-0": _use(70)}, None, False, None),
        # past it: +20 % of 100Mi
        ("100Mi", AUTO, None, {"db-0": _use(85)}, "120Mi", True, None),
        # a step as a quantity, and a threshold of its own
        ("100Mi", {**AUTO, "step": "50Mi", "threshold": 60}, None, {"db-0": _use(65)},
         "150Mi", True, None),
        # never past the limit
        ("100Mi", {"limit": "110Mi"}, None, {"db-0": _use(85)}, "110Mi", True, None),
        # at the limit: a problem, no growth
        ("100Mi", {"limit": "100Mi"}, None, {"db-0": _use(85)}, None, False,
         c.AUTOGROW_LIMIT_REACHED),
        # grown before: kept (spec below it is no shrink) ...
        ("100Mi", AUTO, "120Mi", {"db-0": _use(50, 120)}, "120Mi", False, None),
        # ... also when autoGrow is switched off
        ("100Mi", {**AUTO, "enabled": False}, "120Mi", {"db-0": _use(95, 120)}, "120Mi",
         False, None),
        # ... grown again from there once the filesystem has the grown size
        ("100Mi", AUTO, "120Mi", {"db-0": _use(90, 120)}, "144Mi", True, None),
        # the last growth not through yet (filesystem still 100Mi): not grown twice
        ("100Mi", AUTO, "120Mi", {"db-0": _use(95, 100)}, "120Mi", False, None),
        # spec raised past the grown size: spec wins
        ("150Mi", AUTO, "120Mi", {"db-0": _use(50, 150)}, None, False, None),
        # a replica full, the primary not: grown (all claims share one size)
        ("100Mi", AUTO, None, {"db-0": _use(10), "db-1": _use(81)}, "120Mi", True, None),
        # an instance that reported nothing yet
        ("100Mi", AUTO, None, {"db-0": None}, None, False, None),
    ],
)  # fmt: skip
def test_autogrow_decisions(
    size: str,
    auto: dict[str, Any] | None,
    grown: str | None,
    volumes: dict[str, VolumeUsage | None],
    want: str | None,
    grows: bool,
    problem: str | None,
) -> None:
    got = storage.autogrow(_cluster(size, auto, grown), volumes)
    assert got.size == want
    assert got.grown == want
    assert (got.reason is not None) is grows
    assert (got.problem.reason if got.problem else None) == problem


def test_autogrow_goes_through_the_storage_growth_path() -> None:
    from pgherd.controller.actions import Delete, Event, Patch  # noqa: PLC0415
    from pgherd.controller.plan import plan  # noqa: PLC0415
    from pgherd.settings import Settings  # noqa: PLC0415

    spec = {"instances": 1, "storage": {"size": "100Mi", "autoGrow": AUTO}}
    s = snapshot(spec, pods=[pod(0, role="primary", report=_report(85))], leader="db-0")
    decided = plan(s, Settings())
    assert decided.storage_grown == "120Mi"
    assert [a.reason for a in decided.actions if isinstance(a, Event)] == [c.VOLUME_AUTO_GROWN]
    growth = [a for a in decided.actions if isinstance(a, Patch | Delete)]
    # the StatefulSet is re-created with the grown claim template (its pods kept)
    assert [a.reason for a in growth if isinstance(a, Delete)] == [
        "storage 100Mi -> 120Mi: re-created with the new size, its pods kept"
    ]
    status = st.compute(s, decided, stuck_after=timedelta(minutes=5))
    assert status is not None
    assert status.storage is not None
    assert status.storage.grown_size == "120Mi"
