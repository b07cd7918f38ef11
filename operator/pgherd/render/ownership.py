"""Ownership of a cluster's objects: the metadata its children are rendered with (namespace,
common labels, the controller ownerReference), and the checks the operator makes before it
changes or deletes anything: an object is the cluster's only if it carries pgherd's labels
for the cluster and the cluster (or its StatefulSet) as controller. Anything else with a
child's name is a neighbour's, and is never touched."""

from __future__ import annotations

from typing import Any

from pgherd.api.v1alpha1 import API_VERSION, KIND, PostgresCluster
from pgherd.render.labels import CLUSTER, MANAGED_BY, common_labels, selector_labels

Manifest = dict[str, Any]


def owner_reference(cluster: PostgresCluster) -> dict[str, Any]:
    """Makes the cluster the controller of a child, so deleting the cluster collects it."""
    return controller_reference(KIND, cluster.metadata.name, cluster.metadata.uid)


def controller_reference(kind: str, name: str, uid: str | None) -> dict[str, Any]:
    """The controller ownerReference to a pgherd resource of this kind."""
    if not uid:
        # The API server rejects an ownerReference without uid; fail here, where the cause is.
        raise ValueError(f"{kind} {name!r} has no metadata.uid")
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
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


def _controller(live: Manifest) -> dict[str, Any] | None:
    refs = live.get("metadata", {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def labelled_for(live: Manifest, cluster_name: str) -> bool:
    """Whether an object carries pgherd's labels for this cluster."""
    labels = live.get("metadata", {}).get("labels") or {}
    return labels.get(CLUSTER) == cluster_name and labels.get(MANAGED_BY) == "pgherd"


def owns(cluster: PostgresCluster, kind: str, live: Manifest) -> bool:
    """Whether a live object is this cluster's to change or delete: pgherd's labels for the
    cluster and the cluster as its controller.

    Credential Secrets are the exception: with reclaimPolicy Retain they have no owner on
    purpose (they must outlive the cluster with its volumes), so a labelled Secret with no
    controller is the cluster's, and a cluster re-created with the same name resumes them.
    """
    if not labelled_for(live, cluster.metadata.name):
        return False
    controller = _controller(live)
    if controller is None:
        return kind == "Secret"
    return bool(controller.get("uid") == cluster.metadata.uid)


def owns_dcs(cluster_name: str, live: Manifest) -> bool:
    """Whether a ConfigMap is Patroni's DCS object for this cluster: Patroni puts the
    cluster's selector labels (its `kubernetes.labels` and scope label) on what it creates."""
    labels = live.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector_labels(cluster_name).items())


def owns_instance_object(
    cluster_name: str, statefulset_uid: str | None, kind: str, live: Manifest
) -> bool:
    """Whether a Pod or PersistentVolumeClaim belongs to this cluster's StatefulSet: the
    cluster's selector labels, and no controller other than that StatefulSet."""
    labels = live.get("metadata", {}).get("labels") or {}
    if not all(labels.get(k) == v for k, v in selector_labels(cluster_name).items()):
        return False
    controller = _controller(live)
    if controller is None:
        return kind == "PersistentVolumeClaim"
    return bool(statefulset_uid is not None and controller.get("uid") == statefulset_uid)


def describe(kind: str, live: Manifest) -> str:
    """`Kind/name` of an object, for messages."""
    return f"{kind}/{live.get('metadata', {}).get('name')}"
