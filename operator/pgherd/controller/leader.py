"""Leader election on a coordination.k8s.io/v1 Lease: of the operator's replicas, one acts
(the leader), the others wait (standbys) and take over when it stops renewing.

kopf has none (its peering only pauses operators of lower priority when it sees them, after
the fact, and is not mutual exclusion), so this is the small elector controller-runtime and
client-go use, over pgherd's client:

- The Lease's resourceVersion is the optimistic lock: every create and update is
  conditional, and a 409 Conflict means another replica wrote first, so it won.
- Expiry is judged on this process' monotonic clock, never on the renewTime a peer wrote:
  a lease is expired when its record (holder, renewTime) has not changed for
  leaseDurationSeconds since this process first saw it. Clocks of different nodes may
  disagree; their rates do not (the same assumption client-go makes).
- The leader renews every retry period; when it has not renewed within the renew deadline
  (shorter than the lease duration), it stops acting and the process exits, so it cannot still
  be writing when a standby takes over (the margin is lease duration - renew deadline).
- On a clean stop the leader releases the lease (empty holder): the standby takes it at its
  next try instead of waiting out the duration.

`decide` is the pure decision (table-tested); `Elector` does the calls and the timing.
"""

from __future__ import annotations

import datetime
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pgherd.controller.client import ApiError, Conflict, Manifest

log = logging.getLogger(__name__)

LEASE = "Lease"


class Decision(enum.Enum):
    """What a replica does with the Lease it just read."""

    CREATE = "create"  # there is none: create it, holding it
    TAKE = "take"  # free (released) or expired: take it over
    RENEW = "renew"  # this replica holds it: renew it
    WAIT = "wait"  # another replica holds it and it has not expired: stand by


@dataclass(frozen=True)
class Record:
    """The Lease's spec as election reads it, and the version its update is conditional on."""

    holder: str
    duration_seconds: float
    renew_time: str
    transitions: int
    resource_version: str

    @property
    def key(self) -> tuple[str, str]:
        """What changes whenever the holder renews or changes: expiry counts from its change."""
        return self.holder, self.renew_time


def decide(record: Record | None, me: str, *, unchanged_for: float) -> Decision:
    """The elector's decision on the Lease record it read; `unchanged_for` is how long (on
    this process' clock) the record has been seen unchanged."""
    if record is None:
        return Decision.CREATE
    if record.holder == me:
        return Decision.RENEW
    if not record.holder:
        return Decision.TAKE
    if unchanged_for >= record.duration_seconds:
        return Decision.TAKE
    return Decision.WAIT


def record_of(lease: Manifest) -> Record:
    spec = lease.get("spec") or {}
    return Record(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
    )


def micro_time(epoch: float) -> str:
    """A MicroTime as the API writes it (RFC 3339, microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    """Where the Lease is and the election's timing (from pgherd.settings)."""

    namespace: str
    name: str
    identity: str
    duration_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0


def lease_body(
    config: LeaseConfig, previous: Record | None, *, holder: str, now: float, taking: bool
) -> Manifest:
    """The Lease to write: `holder` ("" to release) with a fresh renewTime; conditional on the
    version read (previous), counting a transition when the holder changes."""
    transitions = previous.transitions if previous else 0
    if previous is not None and taking and previous.holder != holder:
        transitions += 1
    metadata: Manifest = {"name": config.name, "namespace": config.namespace}
    if previous is not None:
        metadata["resourceVersion"] = previous.resource_version
    spec: Manifest = {
        "holderIdentity": holder or None,
        "leaseDurationSeconds": config.duration_seconds if holder else 1,
        "renewTime": micro_time(now),
        "leaseTransitions": transitions,
    }
    if taking:
        spec["acquireTime"] = micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": LEASE,
        "metadata": metadata,
        "spec": spec,
    }


class LeaseClient(Protocol):
    """What the elector needs of pgherd.controller.client.Client."""

    def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None: ...

    def create(self, body: Manifest) -> Manifest: ...

    def replace(self, body: Manifest) -> Manifest: ...


class Elector:
    """Runs the election in a thread of its own: `on_started` once this replica leads,
    `on_lost` if it then fails to renew within the deadline or sees another holder."""

    def __init__(
        self,
        client: LeaseClient,
        config: LeaseConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self.wall = wall
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one write at a time: a renewal, or the release
        self._record: Record | None = None  # the version of our own last write
        self._seen: tuple[tuple[str, str], float] | None = None  # (record key, first seen)
        self._thread: threading.Thread | None = None
        # A standby's time left (on its clock) until the lease it waits on expires.
        self.expires_in: float | None = None

    def __repr__(self) -> str:
        c = self.config
        return f"Lease {c.namespace}/{c.name} as {c.identity}"

    def start(self, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(on_started, on_lost), name="leader-election", daemon=True
        )
        self._thread.start()

    def _run(self, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        renewed = self.clock()
        waiting_logged = ""
        while not self._stop.is_set():
            held, other = self.try_once()
            now = self.clock()
            if held:
                renewed = now
                if not self.leading.is_set():
                    log.info("leader: %r acquired; starting the controller", self)
                    self.leading.set()
                    on_started()
            elif self.leading.is_set() and (
                other or now - renewed > self.config.renew_deadline_seconds
            ):
                why = f"{other} holds it" if other else "not renewed within the renew deadline"
                log.error("leader: %r lost (%s); stopping", self, why)
                self.leading.clear()
                on_lost()
                return
            elif not self.leading.is_set() and other and other != waiting_logged:
                log.info("standby: %r is held by %s; waiting", self, other)
                waiting_logged = other
            self._stop.wait(self._pause())

    def _pause(self) -> float:
        retry = self.config.retry_period_seconds
        if self.leading.is_set() or self.expires_in is None:
            return retry
        return max(0.05, min(retry, self.expires_in + 0.05))

    def try_once(self) -> tuple[bool, str]:
        """One read and, when the decision says so, one conditional write. Returns whether
        this replica holds the lease now, and the other holder it saw (if any)."""
        with self._lock:
            if self._stop.is_set():
                return False, ""
            c = self.config
            try:
                lease = self.client.get(LEASE, c.namespace, c.name)
            except ApiError as e:
                log.warning("leader: reading %r failed: %s", self, e)
                return False, ""
            record = record_of(lease) if lease is not None else None
            now = self.clock()
            if record is not None and (self._seen is None or self._seen[0] != record.key):
                self._seen = (record.key, now)
            unchanged = now - self._seen[1] if self._seen is not None else 0.0
            decision = decide(record, c.identity, unchanged_for=unchanged)
            if decision is Decision.WAIT:
                # Try again right when it would expire, not up to a retry period later.
                self.expires_in = record.duration_seconds - unchanged if record else None
                return False, record.holder if record else ""
            self.expires_in = None
            body = lease_body(
                c, record, holder=c.identity, now=self.wall(), taking=decision is not Decision.RENEW
            )
            try:
                written = (
                    self.client.create(body)
                    if decision is Decision.CREATE
                    else self.client.replace(body)
                )
            except Conflict:
                log.info("leader: %r was written by another replica first", self)
                return False, ""
            except ApiError as e:
                log.warning("leader: writing %r failed: %s", self, e)
                return False, ""
            if decision is Decision.TAKE and record is not None and record.holder:
                log.info("leader: took over %r from %s (expired)", self, record.holder)
            self._record = record_of(written)
            return True, ""

    def release(self) -> bool:
        """Stop electing; if leading, hand the lease back (empty holder) so that a standby
        takes it at once. Returns whether it was released."""
        self._stop.set()
        with self._lock:
            was_leading = self.leading.is_set()
            self.leading.clear()
            if not was_leading or self._record is None:
                return False
            body = lease_body(self.config, self._record, holder="", now=self.wall(), taking=False)
            try:
                self.client.replace(body)
            except ApiError as e:  # a Conflict: someone else holds it already
                log.warning("leader: releasing %r failed: %s", self, e)
                return False
            log.info("leader: released %r", self)
            return True


def status(elector: Elector | None) -> dict[str, Any]:
    """What /healthz says of the election."""
    if elector is None:
        return {"leader_election": False, "leading": True}
    c = elector.config
    return {
        "leader_election": True,
        "leading": elector.leading.is_set(),
        "lease": f"{c.namespace}/{c.name}",
        "identity": c.identity,
    }
