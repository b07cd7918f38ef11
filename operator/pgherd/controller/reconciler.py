"""One pass over one cluster, in visible phases: observe -> plan -> act -> status.

observe reads the caches (and probes a name the caches cannot see), plan decides, act writes
and reports what the API refused, status is computed from all three and written only where
it changed, and its transitions are posted as Events. A pass that cannot even compute a
status (a spec that does not parse, an unexpected error) still sets Degraded, with one
Event, rather than failing silently; other clusters are never held up by it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pgherd.api.v1alpha1 import KIND, PostgresClusterStatus
from pgherd.controller import conditions as c
from pgherd.controller import databases, patroni, postgres
from pgherd.controller import status as st
from pgherd.controller.act import Actor
from pgherd.controller.cache import Cache
from pgherd.controller.client import Client
from pgherd.controller.conditions import Problem
from pgherd.controller.metrics import OperatorMetrics
from pgherd.controller.observe import observe
from pgherd.controller.plan import plan
from pgherd.controller.rehearsal import CheckOutcome
from pgherd.controller.snapshot import Snapshot
from pgherd.controller.sql import Statement, Target
from pgherd.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What one pass did, for the bench and the tests."""

    snapshot: Snapshot
    wrote_status: bool
    actions: list[str]
    retry: bool
    seconds: float
    # Why the pass counts as failed (the metrics' reason): an exception's class, Refused
    # (the API server refused a write) or InvalidSpec.
    error: str | None = None


class Reconciler:
    """Reconciles one cluster at a time (the work queue never runs one key twice at once)."""

    def __init__(
        self,
        cache: Cache,
        client: Client,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.metrics = metrics or OperatorMetrics.disabled()
        self.cache = cache
        self.client = client
        self.settings = settings
        self.clock = clock
        # Applies of different clusters and of one pass share this pool (2 per worker).
        self.actor = Actor(
            client,
            cache,
            patroni_timeout=settings.patroni_timeout_seconds,
            parallel=2 * settings.workers,
            metrics=self.metrics,
        )
        self.stuck_after = timedelta(seconds=settings.stuck_after_seconds)
        self.probes = 0
        self.sql_reads = 0
        # Per cluster: names a create was refused for (or found a neighbour's), for the next
        # observe to look at. A hint only: without it a pass still never touches what is not
        # the cluster's (its creates are refused), it only cannot say whose the name is.
        self._recheck: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}

    def _probe(self, kind: str, namespace: str, name: str) -> dict[str, object] | None:
        self.probes += 1
        return self.client.get_metadata(kind, namespace, name)

    def _live_state(self, api_url: str, cadata: str | None) -> str | None:
        return patroni.member_state(
            api_url, timeout=self.settings.patroni_timeout_seconds, cadata=cadata,
            record=self.metrics.patroni_call,
        )  # fmt: skip

    def _read_sql(self, target: Target, dbname: str, query: Statement) -> list[tuple[Any, ...]]:
        self.sql_reads += 1
        return postgres.fetch(target, dbname, query, self.settings.patroni_timeout_seconds)

    def _run_check(self, target: Target, dbname: str, query: str) -> CheckOutcome | None:
        self.sql_reads += 1
        try:
            passed, result = postgres.check(
                target, dbname, query, self.settings.patroni_timeout_seconds
            )
        except postgres.PostgresError as e:
            log.info("a rehearsal's check could not reach its copy: %s", e)
            return None
        return CheckOutcome(passed, result)

    def reconcile(self, namespace: str, name: str) -> PassResult:
        started = time.monotonic()
        try:
            result = self._reconcile(namespace, name)
        except Exception as e:  # counted; the worker reports it and retries with back-off
            self.metrics.reconciled(KIND, namespace, name, time.monotonic() - started,
                                    error=type(e).__name__, retry=True)  # fmt: skip
            raise
        result.seconds = time.monotonic() - started
        self.metrics.reconciled(KIND, namespace, name, result.seconds, error=result.error,
                                retry=result.retry)  # fmt: skip
        return result

    def _reconcile(self, namespace: str, name: str) -> PassResult:
        recheck = self._recheck.pop((namespace, name), frozenset())
        snapshot = observe(
            self.cache, self._probe, namespace, name, self.clock(),
            recheck=recheck, live_state=self._live_state, read_sql=self._read_sql,
            run_check=self._run_check,
        )  # fmt: skip
        try:
            return self._pass(snapshot)
        except Exception as e:
            log.exception("reconcile of %s/%s failed", namespace, name)
            wrote = self._degrade(snapshot, Problem(c.RECONCILE_FAILED, f"{type(e).__name__}: {e}"))
            return PassResult(snapshot, wrote, [], True, 0.0, error=type(e).__name__)

    def _pass(self, snapshot: Snapshot) -> PassResult:
        decided = plan(snapshot, self.settings)
        outcome = self.actor.act(
            snapshot, decided.actions, decided.patroni_password,
            decided.tls.server_trust if decided.tls else None,
        )  # fmt: skip
        # Names held by something the caches do not show are looked at again next pass, for
        # as long as they are: a neighbour's object stays a conflict, not a create refused.
        if decided.databases:
            # PostgresDatabases' status and finalizers follow what their SQL did.
            after = databases.after_act(decided.databases, outcome.sql_errors,
                                        outcome.sql_done, snapshot.now)  # fmt: skip
            if after:
                followed = self.actor.act(snapshot, after, None)
                for failure in followed.failures:  # the resource's own, not the cluster's
                    log.warning("%s/%s: %s", snapshot.namespace, snapshot.name, failure.message)
                outcome.retry = followed.retry or outcome.retry
        held = outcome.taken | snapshot.foreign | snapshot.unsynced
        if held:
            self._recheck[(snapshot.namespace, snapshot.name)] = frozenset(held)
        if snapshot.raw is None:
            return PassResult(snapshot, False, outcome.done, outcome.retry, 0.0)
        if snapshot.cluster is None:
            problem = decided.problems[0] if decided.problems else Problem(c.INVALID_SPEC, "")
            wrote = self._degrade(snapshot, problem)
            return PassResult(snapshot, wrote, [], False, 0.0, error="InvalidSpec")
        new = st.compute(snapshot, decided, failures=outcome.failures,
                         stuck_after=self.stuck_after, sql_done=outcome.sql_done,
                         sql_errors=outcome.sql_errors)  # fmt: skip
        assert new is not None  # noqa: S101 - the cluster parsed
        patch = st.status_patch(snapshot.raw.get("status") or {}, st.dump(new))
        if patch:
            self.actor.write_status(snapshot, patch)
        for event in st.transitions(snapshot.cluster.status, new):
            self.actor.post(snapshot, event)
        retry = outcome.retry or bool(snapshot.unsynced)
        refused = "Refused" if outcome.failures else None
        return PassResult(snapshot, bool(patch), outcome.done, retry, 0.0, error=refused)

    def _degrade(self, snapshot: Snapshot, problem: Problem) -> bool:
        """Degraded with problem on a cluster whose status cannot be computed; one Event."""
        raw = snapshot.raw
        if raw is None:
            return False
        stored = raw.get("status") or {}
        new = st.failure_status(stored, raw["metadata"].get("generation"), problem, snapshot.now)
        patch = st.status_patch(stored, {k: v for k, v in new.items() if k != "kopf"})
        if not patch:
            return False
        self.actor.write_status(snapshot, patch)
        before = PostgresClusterStatus.model_validate(stored) if stored else None
        after = PostgresClusterStatus.model_validate(new)
        for event in st.transitions(before, after):
            self.actor.post(snapshot, event)
        return True
