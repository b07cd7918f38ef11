"""The one place that talks to the Kubernetes API for the reconcile loop.

Children are written with server-side apply under one field manager. Before applying,
the live object is compared with the desired one: when every desired field already has
its value (and the last applied hash matches), nothing is sent, so a reconcile that
changes nothing writes nothing. Write calls are counted for benchmarks and tests.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

FIELD_MANAGER = "pgherd"
APPLIED_HASH = "pgherd.io/applied-hash"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    group_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{base}{ns}/{self.plural}" + (f"/{name}" if name else "")


KINDS: dict[str, Kind] = {
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Secret": Kind("v1", "secrets"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "Event": Kind("v1", "events"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "PostgresCluster": Kind("pgherd.io/v1alpha1", "postgresclusters"),
    "PostgresBackup": Kind("pgherd.io/v1alpha1", "postgresbackups"),  # pgherd.backup
    "StorageClass": Kind("storage.k8s.io/v1", "storageclasses", namespaced=False),
    "Namespace": Kind("v1", "namespaces", namespaced=False),
    "ClusterRole": Kind("rbac.authorization.k8s.io/v1", "clusterroles", namespaced=False),
    "ClusterRoleBinding": Kind(
        "rbac.authorization.k8s.io/v1", "clusterrolebindings", namespaced=False
    ),
    "CustomResourceDefinition": Kind(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False
    ),
}

_QUANTITY_KEYS = {"cpu", "memory", "storage", "ephemeral-storage"}


def applied_hash(desired: Manifest) -> str:
    canonical = json.dumps(desired, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def contains(live: Any, want: Any, key: str = "") -> bool:
    """Whether live already holds every field of want with the same value."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and contains(live[k], v, k) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(contains(lv, wv) for lv, wv in zip(live, want, strict=True))
        )
    if live == want:
        return True
    if key in _QUANTITY_KEYS and isinstance(live, str | int) and isinstance(want, str | int):
        try:
            return bool(parse_quantity(live) == parse_quantity(want))
        except ValueError:
            return False
    return False


class Kube:
    """A thin, counting client over kubernetes.client.ApiClient."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.writes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, verb: str, kind: str) -> None:
        with self._lock:
            self.writes[f"{verb} {kind}"] += 1

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        m, url, headers, data, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(m, url, header_params=headers, body=data, post_params=post)
        raw = response.read()
        if not 200 <= response.status < 300:
            raise ApiException.from_response(http_resp=response, body=raw.decode(), data=None)
        return json.loads(raw) if raw else {}

    def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            result: Manifest = self._call("GET", KINDS[kind].path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return result

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Manifest]:
        query = [("labelSelector", selector)] if selector else []
        result = self._call("GET", KINDS[kind].path(namespace), query=query)
        items: list[Manifest] = result.get("items", [])
        return items

    def apply(self, desired: Manifest, live: Manifest | None = None, *, check: bool = True) -> bool:
        """Server-side apply desired unless live already matches; returns whether it wrote."""
        kind, meta = desired["kind"], desired["metadata"]
        stamped = dict(desired)
        stamped["metadata"] = {
            **meta,
            "annotations": {**meta.get("annotations", {}), APPLIED_HASH: applied_hash(desired)},
        }
        if check:
            if live is None:
                live = self.get(kind, meta.get("namespace"), meta["name"])
            if live is not None and contains(live, stamped):
                return False
        self._call(
            "PATCH",
            KINDS[kind].path(meta.get("namespace"), meta["name"]),
            stamped,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        self._count("apply", kind)
        return True

    def patch(
        self, kind: str, namespace: str | None, name: str, body: Manifest, *, subresource: str = ""
    ) -> Manifest:
        path = KINDS[kind].path(namespace, name) + (f"/{subresource}" if subresource else "")
        result: Manifest = self._call(
            "PATCH", path, body, content_type="application/merge-patch+json"
        )
        self._count("patch", kind + (f"/{subresource}" if subresource else ""))
        return result

    def delete(
        self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background"
    ) -> bool:
        try:
            self._call(
                "DELETE", KINDS[kind].path(namespace, name), {"propagationPolicy": propagation}
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        self._count("delete", kind)
        return True

    def create(self, body: Manifest) -> Manifest:
        meta = body["metadata"]
        result: Manifest = self._call("POST", KINDS[body["kind"]].path(meta.get("namespace")), body)
        self._count("create", body["kind"])
        return result
