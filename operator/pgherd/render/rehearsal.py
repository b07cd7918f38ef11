"""The throwaway PostgresCluster a major upgrade's rehearsal restores into (pure).

The copy takes what shapes how the cluster's data restores and upgrades (storage, resources,
PostgreSQL parameters and extensions, Patroni's settings, scheduling, the bootstrap database
and owner, the pg_upgrade method) and nothing that reaches outside it: one instance, no
spec.backup (so it never archives into the cluster's store), no client Service settings, no
monitoring, managed roles, user-provided certificates or rotations; its volumes and Secrets are
deleted with it (reclaimPolicy Delete). It restores from a
PostgresBackup of the cluster and is owned by the cluster, so deleting the cluster takes it too.
"""

from __future__ import annotations

from typing import Any

from pgherd.api.v1alpha1 import API_VERSION, KIND, PostgresCluster
from pgherd.render.labels import CLUSTER, COMPONENT, MANAGED_BY
from pgherd.render.ownership import owner_reference

Manifest = dict[str, Any]
COMPONENT_REHEARSAL = "rehearsal"
# Fields of the cluster's spec (as stored) the copy keeps as they are.
KEPT = ("imageUpdatePolicy", "storage", "resources", "postgresql", "patroni", "scheduling")


def rehearsal_labels(cluster: str) -> dict[str, str]:
    """The copy's labels: pgherd's for the cluster it rehearses for (ownership.owns checks
    them), with component `rehearsal`; none of the selector labels of the cluster's instances."""
    return {CLUSTER: cluster, MANAGED_BY: "pgherd", COMPONENT: COMPONENT_REHEARSAL}


def rehearsal_owner(obj: Manifest) -> str | None:
    """The cluster a PostgresCluster is the rehearsal copy of (by its labels), or None."""
    found = (obj.get("metadata") or {}).get("labels") or {}
    if found.get(COMPONENT) != COMPONENT_REHEARSAL or found.get(MANAGED_BY) != "pgherd":
        return None
    return found.get(CLUSTER) or None


def rehearsal_cluster(
    cluster: PostgresCluster,
    stored_spec: Manifest,
    *,
    name: str,
    backup: str,
    version: int,
    image: str | None,
    method: str,
) -> Manifest:
    """The copy, restoring `backup` at major `version` with `image` (the operator's image for
    that major when None)."""
    bootstrap = stored_spec.get("bootstrap") or {}
    spec: Manifest = {k: stored_spec[k] for k in KEPT if k in stored_spec}
    # Deleted with the copy: its volumes and credential Secrets are never kept (Retain would
    # leave them behind, and a later rehearsal would find the last one's data on them).
    spec["storage"] = {**(stored_spec.get("storage") or {}), "reclaimPolicy": "Delete"}
    spec.update({
        "instances": 1,
        "postgresVersion": version,
        "bootstrap": {
            **{k: bootstrap[k] for k in ("database", "owner") if k in bootstrap},
            "recovery": {"source": {"backup": backup}},
        },
        "upgrade": {"method": method},
    })  # fmt: skip
    if image:
        spec["image"] = image
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": cluster.metadata.namespace,
            "labels": rehearsal_labels(cluster.metadata.name),
            "ownerReferences": [owner_reference(cluster)],
        },
        "spec": spec,
    }
