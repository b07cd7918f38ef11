"""What a plan asks act to do: each action is one write, and carries the reason it was
planned (the operator logs it; disruptive ones also become Events).

Plans are pure, so actions are plain immutable values: a table-driven test states the actions
it expects for a snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pgherd.controller.sql import Statement, Target

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Action:
    """One write and why."""

    reason: str

    @property
    def disruptive(self) -> bool:
        """Takes an instance (or the primary role) away for a moment."""
        return False

    def describe(self) -> str:
        return type(self).__name__


# A resourceVersion no object ever has: a server-side apply conditional on it creates the
# object when the name is free, and is refused (409) when anything holds it.
CREATE_ONLY = "18446744073709551615"


@dataclass(frozen=True)
class Apply(Action):
    """Server-side apply of a rendered object, conditional on resource_version: the cached
    object's, so that an object replaced meanwhile is never overwritten, or CREATE_ONLY for
    one the caches do not hold, so that a neighbour's object of that name is never taken.
    requires: children this apply must not go ahead without (a pod must never start with a
    Secret that turned out to be a neighbour's)."""

    manifest: Manifest = field(default_factory=dict)
    resource_version: str = CREATE_ONLY
    requires: frozenset[tuple[str, str]] = frozenset()
    # A hand edit this apply undoes: the Event act posts once the apply went through (a
    # stale cache's apply is refused, 409, and says nothing).
    hand_edit: Event | None = None

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def describe(self) -> str:
        return f"apply {self.kind}/{self.name}"


@dataclass(frozen=True)
class Create(Action):
    """Create an object that is the operator's to make (a scheduled PostgresBackup)."""

    manifest: Manifest = field(default_factory=dict)

    def describe(self) -> str:
        return f"create {self.manifest['kind']}/{self.manifest['metadata']['name']}"


@dataclass(frozen=True)
class Patch(Action):
    """A merge patch (of a subresource when given); a metadata.resourceVersion in body makes
    it conditional."""

    kind: str = ""
    name: str = ""
    body: Manifest = field(default_factory=dict)
    subresource: str = ""

    def describe(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"patch {self.kind}/{self.name}{sub}"


@dataclass(frozen=True)
class Delete(Action):
    """Delete exactly the object seen (uid), with the given propagation."""

    kind: str = ""
    name: str = ""
    uid: str | None = None
    propagation: str = "Background"
    takes_instance: bool = False

    @property
    def disruptive(self) -> bool:
        return self.takes_instance

    def describe(self) -> str:
        return f"delete {self.kind}/{self.name}"


@dataclass(frozen=True)
class PatroniConfig(Action):
    """PATCH Patroni's dynamic configuration through a member's REST API."""

    member: str = ""
    api_url: str = ""
    patch: Mapping[str, Any] = field(default_factory=dict)
    # A hand edit this patch undoes: the Event act posts once the patch went through (not
    # at every retry while Patroni is unreachable).
    hand_edit: Event | None = None

    def describe(self) -> str:
        return f"patch Patroni configuration through {self.member}: {sorted(self.patch)}"


@dataclass(frozen=True)
class Switchover(Action):
    """A planned switchover from the primary to a candidate (announce: post an Event)."""

    primary: str = ""
    api_url: str = ""
    candidate: str = ""
    announce: bool = True

    @property
    def disruptive(self) -> bool:
        return True

    def describe(self) -> str:
        return f"switchover {self.primary} -> {self.candidate}"


@dataclass(frozen=True)
class SetPassword(Action):
    """Set a role's password on the primary (as the superuser, over TLS verified against the
    cluster's CA), then, only if that worked, apply `then` (the vault and the Secret with the
    new password): the database has a password before any Secret says so."""

    role: str = ""
    conn_url: str = ""
    password: str = field(default="", repr=False)
    # Tried in order (a superuser rotation cut short may have changed the superuser's).
    superuser_passwords: tuple[str, ...] = field(default=(), repr=False)
    cadata: str = field(default="", repr=False)
    then: tuple[Apply, ...] = ()

    def describe(self) -> str:
        return f"set the password of role {self.role}"


@dataclass(frozen=True)
class RunSql(Action):
    """Run statements in order on one database of the primary, as the superuser (one
    autocommit session; the first failure stops the rest). group names what they are for
    ("role:alice", "database:<resource>"), so status can say which part failed."""

    group: str = ""
    database: str = "postgres"
    statements: tuple[Statement, ...] = ()
    target: Target | None = field(default=None, repr=False)

    def describe(self) -> str:
        # repr: a role or database name may hold anything, a newline included.
        return f"run SQL for {self.group!r} on database {self.database!r}"


@dataclass(frozen=True)
class Restart(Action):
    """Restart PostgreSQL in one member through Patroni (pending parameters)."""

    member: str = ""
    api_url: str = ""

    @property
    def disruptive(self) -> bool:
        return True

    def describe(self) -> str:
        return f"restart {self.member}"


@dataclass(frozen=True)
class ReleaseLeader(Action):
    """Remove Patroni's leader key (the `leader` annotation of ConfigMap `configmap`), only
    if the ConfigMap is still at resource_version: its holder pod's container was reported
    dead (pgherd.controller.leader_release). Announced as PrimaryReleased."""

    configmap: str = ""
    resource_version: str = ""
    pod: str = ""

    def describe(self) -> str:
        return f"release the leader key of {self.pod}"


@dataclass(frozen=True)
class Involved:
    """The object an Event is about when it is not the cluster: a resource of the cluster's
    namespace that points at it (a PostgresDatabase, a PostgresPooler)."""

    kind: str
    name: str
    uid: str | None = None


@dataclass(frozen=True)
class Event(Action):
    """A Kubernetes Event on the cluster, or on involved (reason is the Event's reason)."""

    type: str = "Normal"
    message: str = ""
    involved: Involved | None = None

    def describe(self) -> str:
        on = f" on {self.involved.kind}/{self.involved.name}" if self.involved else ""
        return f"event {self.type} {self.reason}{on}"


def ready_events(
    involved: Involved,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    progress: frozenset[str] = frozenset(),
) -> list[Event]:
    """The Event (at most one) a resource's Ready condition going from before to after is
    worth, from its stored status and its new one alone (the same pair never comes twice:
    a pass that changes nothing writes nothing).

    Warning (the condition's reason and message) when Ready turns False or changes reason
    while False; but a reason in progress (a normal step on the way to ready, like waiting
    for the primary or for pods) is no warning unless it takes away a Ready that was True.
    Normal when Ready becomes True after having been False."""
    if after is None:
        return []
    status, reason = after.get("status"), str(after.get("reason") or "")
    message = str(after.get("message") or "")
    was = before.get("status") if before else None
    if status == "True":
        if was == "False":
            return [Event(reason, message=message, involved=involved)]
        return []
    if status != "False":
        return []
    if was == "True" or (
        reason not in progress and (was != "False" or (before or {}).get("reason") != reason)
    ):
        return [Event(reason, type="Warning", message=message, involved=involved)]
    return []
