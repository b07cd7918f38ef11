"""The leader elector (pgherd.controller.leader): its decisions as a table, then the elector
against a Lease held in memory the way the API server holds it (resourceVersion as the
optimistic lock, 409 on a stale write), with a clock the test moves.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pgherd.controller.client import Conflict, Manifest
from pgherd.controller.leader import (
    Decision,
    Elector,
    LeaseConfig,
    Record,
    decide,
    lease_body,
    record_of,
)
from pgherd.settings import Settings, SettingsError


def _record(holder: str, *, duration: float = 15, renewed: str = "t0") -> Record:
    return Record(
        holder=holder,
        duration_seconds=duration,
        renew_time=renewed,
        transitions=0,
        resource_version="1",
    )


@pytest.mark.parametrize(
    ("record", "unchanged_for", "expected"),
    [
        # No Lease yet: create it.
        (None, 0.0, Decision.CREATE),
        # This replica holds it: renew, however long ago it last did.
        (_record("me"), 0.0, Decision.RENEW),
        (_record("me"), 60.0, Decision.RENEW),
        # Released (empty holder): take it at once.
        (_record(""), 0.0, Decision.TAKE),
        # Another holder that renews: stand by.
        (_record("other"), 0.0, Decision.WAIT),
        (_record("other"), 14.9, Decision.WAIT),
        # Another holder silent for the lease's duration (on this process' clock): expired.
        (_record("other"), 15.0, Decision.TAKE),
        (_record("other", duration=5), 6.0, Decision.TAKE),
        (_record("other", duration=60), 30.0, Decision.WAIT),
    ],
)
def test_decisions(record: Record | None, unchanged_for: float, expected: Decision) -> None:
    assert decide(record, "me", unchanged_for=unchanged_for) is expected


class FakeApi:
    """One Lease as the API server keeps it: every write bumps resourceVersion and a write
    of an older version is refused with 409."""

    def __init__(self) -> None:
        self.lease: Manifest | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            from pgherd.controller.client import ApiError  # noqa: PLC0415

            raise ApiError(0, "Unreachable", "connection refused")

    def _store(self, body: Manifest) -> Manifest:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.lease = stored
        return copy.deepcopy(stored)

    def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        self._check()
        return copy.deepcopy(self.lease)

    def create(self, body: Manifest) -> Manifest:
        self._check()
        if self.lease is not None:
            raise Conflict(409, "AlreadyExists", "leases exists")
        return self._store(body)

    def replace(self, body: Manifest) -> Manifest:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        return self._store(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _elector(api: FakeApi, clock: Clock, identity: str) -> Elector:
    config = LeaseConfig(namespace="pgherd-system", name="pgherd-operator", identity=identity)
    return Elector(api, config, clock=clock, wall=clock)


def test_one_replica_leads_the_other_waits_then_takes_over_an_expired_lease() -> None:
    api, clock = FakeApi(), Clock()
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_once() == (True, "")
    assert b.try_once() == (False, "a")
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "a"
    assert api.lease["spec"]["leaseDurationSeconds"] == 15
    # a renews: b keeps waiting, the lease's record keeps changing.
    for _ in range(10):
        clock.now += 2
        assert a.try_once() == (True, "")
        assert b.try_once() == (False, "a")
    # a dies: b waits out the lease's duration from when the record last changed, and
    # tries again right when it expires.
    clock.now += 14
    assert b.try_once() == (False, "a")
    assert b.expires_in == 1
    assert b._pause() == pytest.approx(1.05)
    clock.now += 1
    assert b.try_once() == (True, "")
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1
    # a comes back: it sees b holding the lease and must not write.
    assert a.try_once() == (False, "b")


def test_a_stale_write_loses_the_race() -> None:
    api, clock = FakeApi(), Clock()
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    a.try_once()
    clock.now += 20
    # Both read the expired lease; the first write wins, the second gets 409.
    read = record_of(api.lease or {})
    config = b.config
    api.replace(lease_body(config, read, holder="b", now=clock.now, taking=True))
    with pytest.raises(Conflict):
        api.replace(lease_body(a.config, read, holder="a", now=clock.now, taking=True))


def test_release_lets_the_standby_take_over_at_once() -> None:
    api, clock = FakeApi(), Clock()
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    a.try_once()
    a.leading.set()  # what its loop does once it holds the lease
    assert b.try_once() == (False, "a")
    assert a.release()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] is None
    assert b.try_once() == (True, "")  # no waiting out the duration
    assert not a.leading.is_set()
    assert a.try_once() == (False, "")  # a released one no longer competes


def test_a_standby_has_nothing_to_release() -> None:
    api, clock = FakeApi(), Clock()
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    a.try_once()
    b.try_once()
    assert not b.release()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "a"


def test_a_leader_that_cannot_renew_within_the_deadline_stops() -> None:
    api, clock = FakeApi(), Clock()
    a = _elector(api, clock, "a")
    events: list[str] = []
    real_wait = a._stop.wait

    def tick(seconds: float) -> bool:
        # The loop's sleep: time moves, the API goes away after the first renewals.
        clock.now += seconds
        if clock.now > 1006:
            api.down = True
        return real_wait(0)

    a._stop.wait = tick  # type: ignore[method-assign]
    a._run(lambda: events.append("started"), lambda: events.append("lost"))
    assert events == ["started", "lost"]
    # It stopped before the lease could expire for the others: 12 s after its last renewal.
    assert clock.now - 1006 <= a.config.renew_deadline_seconds + a.config.retry_period_seconds
    assert a.config.renew_deadline_seconds < a.config.duration_seconds


def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    api, clock = FakeApi(), Clock()
    a = _elector(api, clock, "a")
    events: list[str] = []

    def tick(_seconds: float) -> bool:
        clock.now += 2
        if api.lease and api.lease["spec"]["holderIdentity"] == "a" and clock.now > 1004:
            # Someone wrote the lease over a's head (an operator that ignores the protocol).
            api.replace(lease_body(a.config, record_of(api.lease), holder="x", now=0, taking=True))
        return False

    a._stop.wait = tick  # type: ignore[method-assign]
    a._run(lambda: events.append("started"), lambda: events.append("lost"))
    assert events == ["started", "lost"]


SETTINGS_ENV: dict[str, Any] = {"PGHERD_LEADER_ELECTION": "1", "POD_NAMESPACE": "ops"}


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"PGHERD_LEADER_ELECTION": "1"}, "POD_NAMESPACE"),
        ({**SETTINGS_ENV, "PGHERD_RENEW_DEADLINE_SECONDS": "15"}, "must be below"),
        ({**SETTINGS_ENV, "PGHERD_RETRY_PERIOD_SECONDS": "10"}, "must be below"),
        ({**SETTINGS_ENV, "PGHERD_LEASE_DURATION_SECONDS": "7.5"}, "whole seconds"),
        ({"PGHERD_LEADER_ELECTION": "yes"}, "0 or 1"),
    ],
)
def test_election_settings_refused(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        Settings.from_env(env)


def test_election_settings() -> None:
    assert not Settings.from_env({}).leader_election
    s = Settings.from_env({**SETTINGS_ENV, "POD_NAME": "op-1"})
    assert (s.leader_election, s.lease_namespace, s.lease_name, s.pod_name) == (
        True,
        "ops",
        "pgherd-operator",
        "op-1",
    )
    assert (s.lease_duration_seconds, s.renew_deadline_seconds, s.retry_period_seconds) == (
        12,
        8.0,
        2.0,
    )
    own = Settings.from_env({**SETTINGS_ENV, "PGHERD_LEASE_NAMESPACE": "elsewhere"})
    assert own.lease_namespace == "elsewhere"
