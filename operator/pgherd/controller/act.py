"""Act: the only writer. Carries out a plan's actions, in order, and reports what failed.

Every action is logged with the reason it was planned; disruptive ones (a pod deleted for a
rolling update, a restart, a switchover) are also posted as Events, so `kubectl describe`
says why. What the API server refuses becomes a problem for Degraded (naming the object and
the server's words); what raced with someone else (an object that changed since it was
cached) is retried by the next pass. What act writes goes into the caches at once, so the
next pass does not repeat it before the watch reports it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pgherd.api.v1alpha1 import KIND
from pgherd.controller import conditions as c
from pgherd.controller import events, leader_release, patroni, postgres
from pgherd.controller.actions import (
    CREATE_ONLY,
    Action,
    Apply,
    Create,
    Delete,
    Event,
    Patch,
    PatroniConfig,
    ReleaseLeader,
    Restart,
    RunSql,
    SetPassword,
    Switchover,
)
from pgherd.controller.cache import Cache
from pgherd.controller.client import ApiError, Client, Conflict, Manifest
from pgherd.controller.conditions import Problem
from pgherd.controller.metrics import OperatorMetrics
from pgherd.controller.snapshot import Snapshot
from pgherd.render.names import RESTAPI_USERNAME

log = logging.getLogger(__name__)
# What disruptive actions are announced as.
ANNOUNCE = {
    Delete: "RollingUpdate",
    Restart: "Restart",
    Switchover: "Switchover",
    SetPassword: "PasswordRotated",
    ReleaseLeader: "PrimaryReleased",
}


def action_name(action: Action) -> str:
    """The action's kind as the metrics label it: PatroniConfig -> patroni_config."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(action).__name__).lower()


@dataclass
class Outcome:
    """What act did: what the API refused (problems), whether to come back soon, and the
    names a create was refused for (held by something: the next pass looks at whose)."""

    failures: list[Problem] = field(default_factory=list)
    retry: bool = False
    done: list[str] = field(default_factory=list)
    taken: set[tuple[str, str]] = field(default_factory=set)
    # RunSql per group: the statements that failed (the server's words) and the groups done.
    sql_errors: dict[str, str] = field(default_factory=dict)
    sql_done: set[str] = field(default_factory=set)


def _blocked(action: Action, taken: set[tuple[str, str]]) -> bool:
    return isinstance(action, Apply) and bool(action.requires & taken)


def _batches(actions: Sequence[Action]) -> list[list[Action]]:
    """The actions in order, runs of independent applies grouped to go out together; every
    other action (and an apply that requires others) on its own, in its place."""
    out: list[list[Action]] = []
    for action in actions:
        free = isinstance(action, Apply) and not action.requires
        if free and out and all(isinstance(a, Apply) and not a.requires for a in out[-1]):
            out[-1].append(action)
        else:
            out.append([action])
    return out


def _outcome(error: Exception | None) -> str:
    if error is None:
        return "done"
    if isinstance(error, Conflict):
        return "conflict"
    return "refused" if isinstance(error, ApiError) else "failed"


class Actor:
    """Writes through the client and Patroni's REST API, and keeps the caches current."""

    def __init__(
        self,
        client: Client,
        cache: Cache,
        *,
        patroni_timeout: float,
        parallel: int = 4,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.patroni_timeout = patroni_timeout
        self.metrics = metrics or OperatorMetrics.disabled()
        # Independent applies of one pass go out together: a new cluster's children are
        # created in a few round trips instead of one after the other.
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="act")

    def act(
        self,
        snapshot: Snapshot,
        actions: Sequence[Action],
        patroni_password: str | None,
        patroni_ca: str | None = None,
    ) -> Outcome:
        outcome = Outcome()
        rest = patroni.Client(
            RESTAPI_USERNAME, patroni_password or "", timeout=self.patroni_timeout,
            cadata=patroni_ca, record=self.metrics.patroni_call,
        )  # fmt: skip
        for batch in _batches(actions):
            runnable = [
                a for a in batch if not (isinstance(a, Apply) and a.requires & outcome.taken)
            ]
            if len(runnable) < len(batch):
                outcome.retry = True  # what it needs is someone else's, for now
            errors = list(self.pool.map(lambda a: self._attempt(snapshot, a, rest), runnable))
            for action, error in zip(runnable, errors, strict=True):
                self._account(snapshot, action, error, outcome)
        if outcome.done:
            log.info("%s/%s: %s", snapshot.namespace, snapshot.name, "; ".join(outcome.done))
        return outcome

    def _attempt(
        self, snapshot: Snapshot, action: Action, rest: patroni.Client
    ) -> Exception | None:
        try:
            self._one(snapshot, action, rest)
        except (ApiError, patroni.PatroniError, postgres.PostgresError) as e:
            return e
        return None

    def _account(
        self, snapshot: Snapshot, action: Action, error: Exception | None, outcome: Outcome
    ) -> None:
        where = f"{snapshot.namespace}/{snapshot.name}: {action.describe()}"
        self.metrics.action(action_name(action), _outcome(error))
        if isinstance(error, Conflict):
            # Changed since it was cached, or (a create) the name is held by something the
            # caches do not show: the next pass looks again.
            log.info("%s: %s", where, error)
            if isinstance(action, Apply) and action.resource_version == CREATE_ONLY:
                outcome.taken.add(action.key)
            outcome.retry = True
        elif isinstance(error, ApiError):
            outcome.failures.append(self._refused(action, error))
            outcome.retry = outcome.retry or error.status in (0, 429, 500, 503, 504)
        elif isinstance(action, RunSql) and isinstance(error, postgres.PostgresError):
            # The same statement would fail again at once: the next resync or change retries
            # it; only an unreachable primary is tried again soon.
            log.warning("%s failed: %s", where, error)
            outcome.sql_errors[action.group] = str(error)
            outcome.retry = outcome.retry or error.transient
        elif isinstance(error, patroni.PatroniError | postgres.PostgresError):
            log.warning("%s failed: %s", where, error)
            outcome.retry = True
        else:
            if isinstance(action, RunSql):
                outcome.sql_done.add(action.group)
            outcome.done.append(f"{action.describe()} ({action.reason})")
            if action.disruptive or isinstance(action, Switchover | SetPassword | ReleaseLeader):
                self.announce(snapshot, action)
            if isinstance(action, Apply | PatroniConfig) and action.hand_edit is not None:
                self.post(snapshot, action.hand_edit)

    def _one(self, snapshot: Snapshot, action: Action, rest: patroni.Client) -> None:
        ns = snapshot.namespace
        if isinstance(action, Apply):
            meta = {**action.manifest["metadata"], "resourceVersion": action.resource_version}
            self._cached(self.client.apply({**action.manifest, "metadata": meta}))
        elif isinstance(action, Create):
            self._cached(self.client.create(action.manifest))
        elif isinstance(action, Patch):
            self._cached(
                self.client.patch(
                    action.kind, ns, action.name, action.body, subresource=action.subresource
                )
            )
        elif isinstance(action, ReleaseLeader):
            # As Patroni's own delete_leader: the annotation removed, conditional on the
            # version read, so a Patroni that renewed the key since is never overruled (409).
            self._cached(
                self.client.patch(
                    "ConfigMap",
                    ns,
                    action.configmap,
                    {
                        "metadata": {
                            "resourceVersion": action.resource_version,
                            "annotations": {leader_release.LEADER_ANNOTATION: None},
                        }
                    },
                )
            )
        elif isinstance(action, Delete):
            self.client.delete(
                action.kind, ns, action.name, propagation=action.propagation, uid=action.uid
            )
        elif isinstance(action, PatroniConfig):
            rest.patch_config(action.api_url, dict(action.patch))
        elif isinstance(action, Switchover):
            rest.switchover(action.api_url, action.primary, action.candidate)
        elif isinstance(action, Restart):
            rest.restart(action.api_url)
        elif isinstance(action, SetPassword | RunSql):
            self._sql(snapshot, action, rest)
        elif isinstance(action, Event):
            self.post(snapshot, action)
        else:
            raise TypeError(f"unknown action {action!r}")

    def _sql(self, snapshot: Snapshot, action: SetPassword | RunSql, rest: patroni.Client) -> None:
        """The actions that talk to PostgreSQL itself rather than to the API or Patroni."""
        if isinstance(action, SetPassword):
            postgres.set_password(
                action.conn_url,
                superuser_passwords=action.superuser_passwords,
                cadata=action.cadata,
                role=action.role,
                password=action.password,
                timeout=self.patroni_timeout,
            )
            for then in action.then:
                self._one(snapshot, then, rest)
            return
        if action.target is None:
            raise postgres.PostgresError("no primary to run SQL on", transient=True)
        postgres.execute(action.target, action.database, action.statements, self.patroni_timeout)

    def _cached(self, obj: Manifest) -> None:
        if obj.get("metadata", {}).get("name"):
            self.cache.write_through(obj)

    @staticmethod
    def _refused(action: Action, e: ApiError) -> Problem:
        if isinstance(action, Apply | Patch | Delete):
            what = f"{action.kind} {action.name!r} ({type(action).__name__.lower()})"
        else:
            what = action.describe()
        # A Secret's error may quote its data: only the reason then.
        detail = e.reason if "Secret" in what else e.message
        return Problem(c.CHILD_REJECTED, f"the API server refused {what}: {detail[:600]}")

    def announce(self, snapshot: Snapshot, action: Action) -> None:
        if isinstance(action, Switchover) and not action.announce:
            return
        reason = ANNOUNCE.get(type(action), type(action).__name__)
        self.post(snapshot, Event(reason, message=f"{action.describe()}: {action.reason}"))

    def post(self, snapshot: Snapshot, event: Event) -> None:
        if event.involved is not None:  # a resource of the cluster's namespace, not the cluster
            kind, name, uid = event.involved.kind, event.involved.name, event.involved.uid
        else:
            kind, name = KIND, snapshot.name
            uid = (snapshot.raw or {}).get("metadata", {}).get("uid")
        events.post(
            self.client,
            events.render_event(
                snapshot.namespace,
                name,
                uid=uid,
                type_=event.type,
                reason=event.reason,
                message=event.message,
                now=snapshot.now,
                kind=kind,
            ),
        )

    def write_status(self, snapshot: Snapshot, patch: Manifest) -> None:
        """Patch the cluster's status (a merge patch computed from the stored one)."""
        result = self.client.patch(
            "PostgresCluster", snapshot.namespace, snapshot.name, {"status": patch},
            subresource="status",
        )  # fmt: skip
        self._cached(result)
