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


def role_selector(cluster: str, role: str) -> dict[str, str]:
    """Selects the instance pods Patroni currently labels with `role`."""
    return {**selector_labels(cluster), ROLE: role}


def selector_string(cluster: str) -> str:
    """selector_labels as a label-selector string (status.selector, for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(cluster).items()))
