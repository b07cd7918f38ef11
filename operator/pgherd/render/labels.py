"""Labels of the objects a PostgresCluster owns, and the role label Patroni sets on pods."""

from __future__ import annotations

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
CLUSTER = "pgherd.io/cluster"

# Patroni keeps this label on every instance pod in step with the pod's role.
ROLE = "pgherd.io/role"
ROLE_PRIMARY = "primary"
ROLE_REPLICA = "replica"


def selector_labels(cluster: str) -> dict[str, str]:
    """Labels that select a cluster's instance pods. Never change: selectors are immutable."""
    return {NAME: "postgresql", INSTANCE: cluster, CLUSTER: cluster}


def common_labels(cluster: str) -> dict[str, str]:
    """Labels on every object the cluster owns."""
    return {
        **selector_labels(cluster),
        MANAGED_BY: "pgherd",
        COMPONENT: "database",
    }


def upgrade_labels(cluster: str) -> dict[str, str]:
    """Labels of the major upgrade's Jobs, their pods and scratch claims: the cluster's, with
    component `upgrade`, but not app.kubernetes.io/name, so that nothing selecting the
    cluster's instances (the StatefulSet, the `-r` and `-headless` Services, Patroni's member
    list, the operator's own) ever takes an upgrade pod for an instance or routes clients to
    it. pgherd.io/cluster keeps them in the operator's caches of the cluster."""
    return {
        INSTANCE: cluster,
        CLUSTER: cluster,
        MANAGED_BY: "pgherd",
        COMPONENT: "upgrade",
    }


def role_selector(cluster: str, role: str) -> dict[str, str]:
    """Selects the instance pods Patroni currently labels with `role`."""
    return {**selector_labels(cluster), ROLE: role}


def selector_string(cluster: str) -> str:
    """selector_labels as a label-selector string (status.selector, for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(cluster).items()))
