"""Which PostgreSQL major a cluster runs: the one its data is at, not merely the one its spec
names.

Raising spec.postgresVersion on a running cluster asks for a major upgrade, and a new major's
server cannot start on the old major's data directory. Rolling the new major's image out
would take the replicas down one by one and stop there, with the cluster degraded. So while
the data is at a lower major (status.postgresVersion, what the ready instances last ran) the
cluster keeps rendering its major and image, and says why (Degraded
MajorUpgradeUnsupported): nothing restarts. The declarative upgrade (pg_upgrade, issue 15)
replaces this hold with its phases.
"""

from __future__ import annotations

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.controller import conditions as c
from pgherd.controller.conditions import Problem


def held_major(cluster: PostgresCluster) -> int | None:
    """The major the cluster's data is at when spec.postgresVersion is above it (None: no
    upgrade asked, or the cluster never ran, so that nothing is at any major yet)."""
    running = cluster.status.postgres_version if cluster.status else None
    return running if running is not None and running < cluster.spec.postgres_version else None


def at_running_major(cluster: PostgresCluster) -> PostgresCluster:
    """The cluster as rendered: spec.postgresVersion held at the data's major."""
    held = held_major(cluster)
    if held is None:
        return cluster
    spec = cluster.spec.model_copy(update={"postgres_version": held})
    return cluster.model_copy(update={"spec": spec})


def hold_problems(cluster: PostgresCluster) -> list[Problem]:
    """Why the cluster does not run spec.postgresVersion (none: it does, or will)."""
    held = held_major(cluster)
    if held is None:
        return []
    want = cluster.spec.postgres_version
    return [
        Problem(
            c.MAJOR_UPGRADE_UNSUPPORTED,
            f"spec.postgresVersion is {want}, but the cluster's data is PostgreSQL {held}: major "
            f"upgrades are not supported yet, so the cluster keeps running PostgreSQL {held} with "
            "its image and nothing is restarted. To move to "
            f"{want}, create a cluster with postgresVersion {want} and move the data into it "
            "(pg_dump and pg_restore, or logical replication).",
        )
    ]
