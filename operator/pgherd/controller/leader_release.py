"""Operator-assisted leader release (spec.patroni.profile fast): a primary whose container
the kubelet reports dead gives up Patroni's leader key at once instead of after its ttl.

With Patroni's Kubernetes DCS the leader key is the annotation `leader` on the ConfigMap
`<cluster>-leader`, renewed by the leader's Patroni every loop_wait. A leader that crashed
renews nothing, but its replicas only take the key over once it is older than ttl (Patroni
20 s at least): a dead primary costs up to ttl + loop_wait. Nothing in Patroni knows sooner
that the holder is dead; the kubelet does: it reports the instance container's state on the
pod (state.terminated, or state.waiting while it backs off before a restart).

So when, and only when, that report proves the key's holder dead, the operator removes the
`leader` annotation exactly as Patroni's own `delete_leader` does on a clean shutdown: a
merge patch conditional on the resourceVersion of the ConfigMap it read. The replicas watch
that ConfigMap; its change wakes their HA loop, and Patroni's ordinary election (the
synchronous standby only in synchronous mode, maximum_lag_on_failover, each candidate asking
the other members' REST APIs whether one is healthier) promotes the new primary at once.

Proof of death, all of:
- the instance container's current state is terminated or waiting (not running), on a pod
  of the name the key holds (a pod merely missing, a force-deleted pod whose processes may
  still run, or a node NotReady whose kubelet reports nothing prove nothing: the key then
  expires by ttl as it always did);
- the container's termination (state.terminated.finishedAt, or lastState's while waiting)
  is not older than the key's last renewal (renewTime): the key was last renewed by the
  process that died, not by a later one. Both clocks are the node's (the kubelet stamps
  finishedAt, the pod's Patroni renewTime), compared at whole seconds (finishedAt's
  resolution); a restarted Patroni needs seconds to start before it could renew.
A container already running again is left alone: its Patroni may hold the key on purpose
(restarting a crashed primary in place), or run without reaching the API, and a release then
could promote a replica while it still acts as primary.

The conditional write is what makes this safe to race: a Patroni that came back and renewed
the key changed its resourceVersion, and the API server refuses the release (409).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# The Patroni profile that asks for the release (spec.patroni.profile).
PROFILE = "fast"
# The annotation of Patroni's leader ConfigMap that names the leader, and its last renewal.
LEADER_ANNOTATION = "leader"
RENEW_ANNOTATION = "renewTime"


@dataclass(frozen=True)
class ContainerSeen:
    """The kubelet's report of one container: its state, and when it last terminated."""

    state: str  # running | terminated | waiting | unknown (no state reported)
    reason: str | None = None  # terminated/waiting reason, e.g. Error, CrashLoopBackOff
    exit_code: int | None = None
    finished: datetime | None = None  # state.terminated, or lastState.terminated while waiting
    restarts: int = 0

    def describe(self) -> str:
        """The state as an Event says it: `terminated (Error, exit code 137)`."""
        code = None if self.exit_code is None else f"exit code {self.exit_code}"
        detail = ", ".join(x for x in (self.reason, code) if x)
        return f"{self.state} ({detail})" if detail else self.state

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any], container: str) -> ContainerSeen | None:
        """The named container's status on the pod (None: the kubelet reported none)."""
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        found = next((s for s in statuses if (s or {}).get("name") == container), None)
        if found is None:
            return None
        state = found.get("state") or {}
        last = (found.get("lastState") or {}).get("terminated") or {}
        restarts = found.get("restartCount")
        restarts = restarts if isinstance(restarts, int) else 0
        if "running" in state:
            return cls("running", finished=_time(last.get("finishedAt")), restarts=restarts)
        if "terminated" in state:
            done = state["terminated"] or {}
            code = done.get("exitCode")
            return cls(
                "terminated",
                reason=done.get("reason"),
                exit_code=code if isinstance(code, int) else None,
                finished=_time(done.get("finishedAt")),
                restarts=restarts,
            )
        if "waiting" in state:
            code = last.get("exitCode")
            return cls(
                "waiting",
                reason=(state["waiting"] or {}).get("reason"),
                exit_code=code if isinstance(code, int) else None,
                finished=_time(last.get("finishedAt")),
                restarts=restarts,
            )
        return cls("unknown", restarts=restarts)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass(frozen=True)
class LeaderKey:
    """Patroni's leader ConfigMap as read: who holds the key, its last renewal, its version."""

    holder: str | None
    renewed: datetime | None
    resource_version: str | None

    @classmethod
    def from_configmap(cls, cm: Mapping[str, Any] | None) -> LeaderKey | None:
        if cm is None:
            return None
        meta = cm.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        return cls(
            holder=annotations.get(LEADER_ANNOTATION) or None,
            renewed=_time(annotations.get(RENEW_ANNOTATION)),
            resource_version=meta.get("resourceVersion") or None,
        )


@dataclass(frozen=True)
class HolderPod:
    """The pod of the key's holder as the caches hold it (None in decide: no such pod)."""

    name: str
    container: ContainerSeen | None  # the instance container's status; None: not reported


@dataclass(frozen=True)
class Release:
    """Remove the leader annotation of the ConfigMap at resource_version; why says so."""

    pod: str
    resource_version: str
    why: str


def decide(profile: str, key: LeaderKey | None, holder: HolderPod | None) -> Release | None:
    """Whether to release the leader key now (see the module docstring)."""
    if profile != PROFILE or key is None or key.holder is None or key.resource_version is None:
        return None
    if key.renewed is None or holder is None or holder.name != key.holder:
        return None  # no renewal to compare, or no pod of the holder's name: not proof
    seen = holder.container
    if seen is None or seen.state not in ("terminated", "waiting") or seen.finished is None:
        return None
    # Whole seconds: finishedAt has no finer resolution, and a process that renewed the key
    # in the second it died did not outlive it.
    if key.renewed.replace(microsecond=0) > seen.finished.replace(microsecond=0):
        return None  # renewed after that termination: by a later process, perhaps alive
    lag = seen.finished - key.renewed
    return Release(
        pod=holder.name,
        resource_version=key.resource_version,
        why=f"the kubelet reports {holder.name}'s instance container {seen.describe()}, "
        f"finished {seen.finished.isoformat()}, and its Patroni last renewed the leader key "
        f"{max(lag, timedelta(0)).total_seconds():.1f}s before that",
    )
