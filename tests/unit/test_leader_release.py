"""Operator-assisted leader release (pgherd.controller.leader_release): the decision,
table-driven, the kubelet's container report as parsed, what a pass plans from it, and the
timing profiles the API resolves (spec.patroni.profile)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pgherd import contract
from pgherd.api.v1alpha1 import PatroniSpec
from pgherd.controller.actions import ReleaseLeader
from pgherd.controller.leader_release import (
    ContainerSeen,
    HolderPod,
    LeaderKey,
    Release,
    decide,
)
from pgherd.controller.plan import plan
from tests.unit.snapshots import NOW, SETTINGS, config_of, dcs, healthy, pod, snapshot

RENEWED = NOW - timedelta(seconds=3, microseconds=400_000)
KEY = LeaderKey("db-0", RENEWED, "42")
DIED = NOW - timedelta(seconds=2)  # after the last renewal


def dead(state: str = "terminated", finished: datetime | None = DIED) -> HolderPod:
    return HolderPod("db-0", ContainerSeen(state, "Error", 137, finished, 0))


@pytest.mark.parametrize(
    ("profile", "key", "holder", "released"),
    [
        # The holder's container terminated after its last renewal: released at once.
        ("fast", KEY, dead(), True),
        # ... or waits to be restarted (back-off): dead too.
        ("fast", KEY, dead("waiting"), True),
        # Died in the same second as its last renewal (finishedAt has whole seconds only).
        ("fast", KEY, dead(finished=RENEWED.replace(microsecond=0)), True),
        # The default profile never releases: the key expires by ttl.
        ("default", KEY, dead(), False),
        # Running (never died, or restarted already: its Patroni may hold the key on purpose).
        ("fast", KEY, HolderPod("db-0", ContainerSeen("running", finished=DIED)), False),
        # The kubelet reported nothing (a node that is gone), or no state at all.
        ("fast", KEY, HolderPod("db-0", None), False),
        ("fast", KEY, HolderPod("db-0", ContainerSeen("unknown")), False),
        # No pod of the holder's name (deleted, force-deleted: its processes may still run).
        ("fast", KEY, None, False),
        ("fast", KEY, HolderPod("db-1", dead().container), False),
        # The key was renewed after that termination: by a later process, perhaps alive.
        ("fast", KEY, dead(finished=RENEWED - timedelta(seconds=2)), False),
        # A termination without a time proves nothing about the renewal.
        ("fast", KEY, dead(finished=None), False),
        # No key, no holder, no renewal time, no version to make the write conditional on.
        ("fast", None, dead(), False),
        ("fast", LeaderKey(None, RENEWED, "42"), dead(), False),
        ("fast", LeaderKey("db-0", None, "42"), dead(), False),
        ("fast", LeaderKey("db-0", RENEWED, None), dead(), False),
    ],
)
def test_decide(
    profile: str, key: LeaderKey | None, holder: HolderPod | None, released: bool
) -> None:
    decided = decide(profile, key, holder)
    assert (decided is not None) == released
    if decided is not None:
        assert isinstance(decided, Release)
        assert (decided.pod, decided.resource_version) == ("db-0", "42")
        assert "terminated" in decided.why or "waiting" in decided.why


def _with_container(manifest: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    manifest["status"]["containerStatuses"] = [
        {"name": "other", "state": {"running": {}}},
        {"name": contract.CONTAINER, **status},
    ]
    return manifest


def test_container_report_as_the_kubelet_writes_it() -> None:
    terminated = _with_container(pod(0), {
        "state": {"terminated": {"exitCode": 137, "reason": "Error",
                                 "finishedAt": "2026-11-30T11:59:58Z"}},
        "restartCount": 2,
    })  # fmt: skip
    seen = ContainerSeen.from_pod(terminated, contract.CONTAINER)
    assert seen == ContainerSeen(
        "terminated", "Error", 137, datetime(2026, 11, 30, 11, 59, 58, tzinfo=UTC), 2
    )
    assert seen.describe() == "terminated (Error, exit code 137)"
    waiting = _with_container(pod(0), {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-11-30T11:59:00Z"}},
    })  # fmt: skip
    seen = ContainerSeen.from_pod(waiting, contract.CONTAINER)
    assert seen is not None and (seen.state, seen.exit_code) == ("waiting", 1)
    assert seen.finished == datetime(2026, 11, 30, 11, 59, tzinfo=UTC)
    assert ContainerSeen.from_pod(pod(0), contract.CONTAINER) is None
    bad = _with_container(pod(0), {"state": {"terminated": {"finishedAt": "yesterday"}}})
    assert ContainerSeen.from_pod(bad, contract.CONTAINER) == ContainerSeen("terminated")


def _leader(renewed: datetime, rv: str = "42") -> dict[str, Any]:
    cm = dcs("leader", {"leader": "db-0", "renewTime": renewed.isoformat()})
    cm["metadata"]["resourceVersion"] = rv
    return cm


def _dead_primary() -> list[dict[str, Any]]:
    pods = healthy()
    _with_container(pods[0], {
        "state": {"terminated": {"exitCode": 137, "reason": "Error",
                                 "finishedAt": DIED.strftime("%Y-%m-%dT%H:%M:%SZ")}},
    })  # fmt: skip
    return pods


@pytest.mark.parametrize("profile", ["fast", "default"])
def test_a_pass_releases_the_key_of_a_dead_primary_first(profile: str) -> None:
    spec = {"patroni": {"profile": profile}}
    s = snapshot(spec, dcs_config=config_of(spec), status={}, pods=_dead_primary(),
                 extra=[_leader(RENEWED)])  # fmt: skip
    actions = plan(s, SETTINGS).actions
    released = [a for a in actions if isinstance(a, ReleaseLeader)]
    if profile == "default":
        assert released == []
        return
    assert actions[0] == released[0]
    assert (released[0].configmap, released[0].resource_version, released[0].pod) == (
        "db-leader",
        "42",
        "db-0",
    )
    assert "db-0's instance container terminated (Error, exit code 137)" in released[0].reason


def test_a_pass_leaves_a_key_renewed_after_the_death() -> None:
    spec = {"patroni": {"profile": "fast"}}
    s = snapshot(spec, dcs_config=config_of(spec), status={}, pods=_dead_primary(),
                 extra=[_leader(DIED + timedelta(seconds=5))])  # fmt: skip
    assert not [a for a in plan(s, SETTINGS).actions if isinstance(a, ReleaseLeader)]


@pytest.mark.parametrize(
    ("patroni", "timing"),
    [
        ({}, (30, 10, 10)),
        ({"profile": "fast"}, (20, 2, 5)),
        # Fields set by hand override the profile's.
        ({"profile": "fast", "loopWait": 1}, (20, 1, 5)),
        ({"ttl": 60}, (60, 10, 10)),
    ],
)
def test_profiles(patroni: dict[str, Any], timing: tuple[int, int, int]) -> None:
    assert PatroniSpec.model_validate(patroni).timing == timing
    rendered = config_of({"patroni": patroni})
    assert (rendered["ttl"], rendered["loop_wait"], rendered["retry_timeout"]) == timing


def test_profile_timing_must_stay_safe() -> None:
    # The fast profile's ttl (20) with the default profile's retryTimeout (10) would not.
    with pytest.raises(ValidationError, match="must not exceed ttl"):
        PatroniSpec.model_validate({"profile": "fast", "retryTimeout": 10})
    with pytest.raises(ValidationError):
        PatroniSpec.model_validate({"profile": "quick"})


def test_the_cache_keeps_the_container_report() -> None:
    from pgherd.controller.cache import trim  # noqa: PLC0415
    from pgherd.controller.snapshot import member_from_pod  # noqa: PLC0415

    manifest = _dead_primary()[0]
    manifest["status"]["containerStatuses"][1]["imageID"] = "sha256:..."
    kept = trim("Pod", manifest)
    assert "imageID" not in kept["status"]["containerStatuses"][1]
    container = member_from_pod(kept).container
    assert container is not None and container.state == "terminated"
