"""Metadata of owned objects: namespace, common labels and the controller ownerReference."""

from __future__ import annotations

from typing import Any

from pgherd.api.v1alpha1 import API_VERSION, KIND, PostgresCluster
from pgherd.render.labels import common_labels

Manifest = dict[str, Any]


def owner_reference(cluster: PostgresCluster) -> dict[str, Any]:
    """Makes the cluster the controller of a child, so deleting the cluster collects it."""
    if not cluster.metadata.uid:
        # The API server rejects an ownerReference without uid; fail here, where the cause is.
        raise ValueError(f"PostgresCluster {cluster.metadata.name!r} has no metadata.uid")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": cluster.metadata.name,
        "uid": cluster.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(
    cluster: PostgresCluster, name: str, *, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """metadata of a child object named `name` in the cluster's namespace."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": cluster.metadata.namespace,
        "labels": common_labels(cluster.metadata.name),
        "ownerReferences": [owner_reference(cluster)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta
