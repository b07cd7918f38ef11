"""Drain-aware switchover: when the primary's node is being drained, move the primary first.

`kubectl drain` cordons the node (spec.unschedulable) before it evicts anything; the cluster
autoscaler taints it instead. Both are visible on the Node, so the operator watches Nodes
and reads that as "this node is about to go". An eviction itself is not: it is a POST to the
pod's eviction subresource, leaves no object behind, and is either refused by a
PodDisruptionBudget (429, which `kubectl drain` retries every 5 s) or carried out at once.

So the primary's PodDisruptionBudget (`<cluster>-primary`, minAvailable 1) refuses the
primary's eviction while the operator switches over to a ready, caught-up replica on a node
that is not draining (Patroni's synchronous standby first: in synchronous mode it refuses a
switchover to any other); once Patroni has moved the role label, the old primary is a
replica, selected by the replicas' budget instead, and the drain's next retry evicts it.

A drain is never blocked forever: when no replica can take over (none ready, caught up and
on a node that stays), the primary's budget lets the eviction through (the drain then costs
what a lost node costs: a failover, or for a single instance an outage until its pod runs
again). A single-instance cluster's primary budget always allows it. What stays is that the
operator must run to relax the budget or switch over: while it is down, a drain of the
primary's node waits for it (documented).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Taints that announce a node's removal without a cordon (cluster autoscaler, Karpenter).
DRAIN_TAINTS = frozenset({"ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted"})


def draining(node: Mapping[str, Any] | None) -> bool:
    """Whether a Node is cordoned or tainted for removal (None: unknown, not draining)."""
    if node is None:
        return False
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return True
    return any((t or {}).get("key") in DRAIN_TAINTS for t in spec.get("taints") or ())


@dataclass(frozen=True)
class Instance:
    """What the decision reads of one instance."""

    name: str
    node: str | None
    ready: bool
    lag: int | None  # bytes behind the primary; None: unknown
    terminating: bool = False
    # How long it has not been ready (None: ready, or not known).
    unready_seconds: float | None = None
    # Patroni's synchronous standby (synchronous mode on or strict): the only member Patroni
    # lets a switchover promote, so it goes first whatever the others' lag.
    synchronous: bool = False


# How long a drain waits for a replica that is not ready yet (one just demoted by a switchover,
# restarting, catching up) before the primary's eviction is let through without a switchover.
REPLICA_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class Decision:
    """switch_to: the replica to switch over to now (None: no switchover for a drain).
    allow_eviction: whether the primary's PodDisruptionBudget lets its eviction through.
    message: what is going on, for Progressing (None: no drain concerns the primary)."""

    switch_to: str | None = None
    allow_eviction: bool = False
    message: str | None = None


def decide(
    primary: Instance | None,
    replicas: tuple[Instance, ...],
    draining_nodes: frozenset[str],
    *,
    instances: int,
    max_lag: int,
) -> Decision:
    """What a drain of the primary's node asks for (see the module docstring)."""
    if instances <= 1:
        # Nothing to switch to: a drain goes ahead (the instance restarts elsewhere).
        return Decision(allow_eviction=True)
    if primary is None or primary.node is None or primary.node not in draining_nodes:
        return Decision()
    candidates = sorted(
        (
            r
            for r in replicas
            if r.ready
            and not r.terminating
            and r.node is not None
            and r.node not in draining_nodes
            and r.lag is not None
            and r.lag <= max_lag
        ),
        key=lambda r: (not r.synchronous, r.lag or 0, r.name),
    )
    if candidates:
        best = candidates[0]
        return Decision(
            switch_to=best.name,
            message=f"node {primary.node} is draining: switching over from {primary.name} "
            f"to {best.name} before its eviction",
        )
    coming = sorted(
        r.name
        for r in replicas
        if not r.ready
        and not r.terminating
        and r.node is not None
        and r.node not in draining_nodes
        and r.unready_seconds is not None
        and r.unready_seconds < REPLICA_GRACE_SECONDS
    )
    if coming:
        # A replica not ready for a moment (a switchover just demoted it) would take over
        # soon: letting the primary go now would cost a failover for nothing.
        return Decision(
            message=f"node {primary.node} is draining: waiting up to "
            f"{REPLICA_GRACE_SECONDS:.0f}s for replica {coming[0]} to be ready to switch over to",
        )
    return Decision(
        allow_eviction=True,
        message=f"node {primary.node} is draining and no replica is ready, caught up and on "
        f"a node that stays: the eviction of {primary.name} is let through (a failover)",
    )
