"""The operator's client of the Kubernetes API: where every kind lives, and the calls the
controller makes (reads for the caches, writes for act), with errors of its own.

Writes are server-side apply under one field manager, merge patches and deletes; reads are
lists and watches that feed the caches (pgherd.controller.cache), plus a metadata-only read
for a name the caches cannot see. The generated client's exceptions never leave this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

FIELD_MANAGER = "pgherd"
Manifest = dict[str, Any]
# A read of object metadata only (PartialObjectMetadata): what a name probe needs, never a
# Secret's data.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


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
    # The operator's own leader election (pgherd.controller.leader), in its namespace.
    "Lease": Kind("coordination.k8s.io/v1", "leases"),
    # The Prometheus Operator's, when installed (spec.monitoring.enablePodMonitor).
    "PodMonitor": Kind("monitoring.coreos.com/v1", "podmonitors"),
    "PostgresCluster": Kind("pgherd.io/v1alpha1", "postgresclusters"),
    "PostgresBackup": Kind("pgherd.io/v1alpha1", "postgresbackups"),
    "PostgresDatabase": Kind("pgherd.io/v1alpha1", "postgresdatabases"),
    # PostgresPooler: the pooler itself and its PgBouncer Deployments.
    "PostgresPooler": Kind("pgherd.io/v1alpha1", "postgrespoolers"),
    "Deployment": Kind("apps/v1", "deployments"),
    # The major upgrade's preflight, upgrade and rollback (pgherd.controller.major_upgrade).
    "Job": Kind("batch/v1", "jobs"),
    "StorageClass": Kind("storage.k8s.io/v1", "storageclasses", namespaced=False),
    # Drain-aware switchover: whether an instance's node is cordoned.
    "Node": Kind("v1", "nodes", namespaced=False),
    "Namespace": Kind("v1", "namespaces", namespaced=False),
    "ClusterRole": Kind("rbac.authorization.k8s.io/v1", "clusterroles", namespaced=False),
    "ClusterRoleBinding": Kind(
        "rbac.authorization.k8s.io/v1", "clusterrolebindings", namespaced=False
    ),
    "CustomResourceDefinition": Kind(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False
    ),
}


class ApiError(Exception):
    """The API server refused a call or could not be reached; `message` is its answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: no such object."""


class Conflict(ApiError):
    """409: the object exists already, or changed since it was read."""


class Gone(ApiError):
    """410: a watch's resourceVersion is too old; list again."""


def _error(status: int, reason: str, body: str | bytes | None) -> ApiError:
    """The error for an API server's answer: its Status reason and message when it sent one."""
    message = reason
    try:
        parsed = json.loads(body or "{}")
        reason = str(parsed.get("reason") or reason)
        message = str(parsed.get("message") or message)
    except (TypeError, ValueError, AttributeError):
        pass
    cls = {404: NotFound, 409: Conflict, 410: Gone}.get(status, ApiError)
    return cls(status, reason, message)


def _from(e: ApiException) -> ApiError:
    return _error(int(e.status or 0), str(e.reason or ""), e.body)


@dataclass(frozen=True)
class Listing:
    """A list's items and the resourceVersion to watch from."""

    items: list[Manifest]
    resource_version: str


class Client:
    """A thin client over kubernetes.client.ApiClient (its auth and TLS), JSON in and out."""

    def __init__(self, api: client.ApiClient, *, timeout: tuple[float, float] = (5.0, 30.0)):
        self.api = api
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        m, url, headers, data, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                m, url, header_params=headers, body=data, post_params=post,
                _request_timeout=self.timeout,
            )  # fmt: skip
            raw = response.read()
        except ApiException as e:
            raise _from(e) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, "Unreachable", str(e)) from None
        if not 200 <= response.status < 300:
            raise _error(response.status, str(response.reason), raw)
        return json.loads(raw) if raw else {}

    # ---- reads ----------------------------------------------------------------------
    def serves(self, kind: str) -> bool:
        """Whether the API server serves the kind now (discovery; any user may ask): a CRD
        that is not installed is not."""
        where = KINDS[kind]
        base = "/api/v1" if where.group_version == "v1" else f"/apis/{where.group_version}"
        try:
            found = self.request("GET", base)
        except NotFound:
            return False
        return any(r.get("name") == where.plural for r in found.get("resources", []))

    def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            result: Manifest = self.request("GET", KINDS[kind].path(namespace, name))
        except NotFound:
            return None
        return result

    def get_metadata(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        """An object's metadata only (never a Secret's data), or None when it does not exist."""
        try:
            result: Manifest = self.request(
                "GET", KINDS[kind].path(namespace, name), accept=METADATA_ONLY
            )
        except NotFound:
            return None
        return result

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Manifest]:
        return self.listing(kind, namespace, selector).items

    def listing(self, kind: str, namespace: str | None, selector: str = "") -> Listing:
        query = [("labelSelector", selector)] if selector else []
        result = self.request("GET", KINDS[kind].path(namespace), query=query)
        return Listing(
            result.get("items", []), str(result.get("metadata", {}).get("resourceVersion", ""))
        )

    def watch(
        self,
        kind: str,
        namespace: str | None,
        *,
        selector: str,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> Iterator[Manifest]:
        """The watch events (type, object) after resource_version, until the server ends the
        watch (after timeout_seconds). Raises Gone when resource_version is too old."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if selector:
            query.append(("labelSelector", selector))
        m, url, headers, _, _ = self.api.param_serialize(
            method="GET",
            resource_path=KINDS[kind].path(namespace),
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                m, url, header_params=headers,
                # The server ends the watch itself; a connection silent for longer is dead.
                _request_timeout=(self.timeout[0], timeout_seconds + 30),
            )  # fmt: skip
        except ApiException as e:
            raise _from(e) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, "Unreachable", str(e)) from None
        stream = response.response  # urllib3's, not preloaded
        try:
            if not 200 <= response.status < 300:
                raise _error(response.status, str(response.reason), response.read())
            for line in iter_resp_lines(stream):
                event: Manifest = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 0)
                    error = {410: Gone}.get(code, ApiError)
                    raise error(code, str(status.get("reason")), str(status.get("message")))
                yield event
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, "Unreachable", str(e)) from None
        finally:
            stream.release_conn()

    # ---- writes ---------------------------------------------------------------------
    def apply(self, desired: Manifest) -> Manifest:
        """Server-side apply under pgherd's field manager. A metadata.resourceVersion in
        `desired` makes it conditional: Conflict if the object changed since."""
        meta = desired["metadata"]
        result: Manifest = self.request(
            "PATCH",
            KINDS[desired["kind"]].path(meta.get("namespace"), meta["name"]),
            desired,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        return result

    def patch(
        self, kind: str, namespace: str | None, name: str, body: Manifest, *, subresource: str = ""
    ) -> Manifest:
        """A JSON merge patch (a metadata.resourceVersion in it makes it conditional)."""
        path = KINDS[kind].path(namespace, name) + (f"/{subresource}" if subresource else "")
        result: Manifest = self.request(
            "PATCH", path, body, content_type="application/merge-patch+json"
        )
        return result

    def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete an object (only that very object when uid is given); False if it was gone."""
        body: Manifest = {"propagationPolicy": propagation}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", KINDS[kind].path(namespace, name), body)
        except NotFound:
            return False
        return True

    def replace(self, body: Manifest) -> Manifest:
        """A PUT of the whole object, conditional on its metadata.resourceVersion (Conflict
        when the object changed since): the Lease's optimistic lock."""
        meta = body["metadata"]
        result: Manifest = self.request(
            "PUT",
            KINDS[body["kind"]].path(meta.get("namespace"), meta["name"]),
            body,
            query=[("fieldManager", FIELD_MANAGER)],
        )
        return result

    def create(self, body: Manifest) -> Manifest:
        meta = body["metadata"]
        result: Manifest = self.request(
            "POST",
            KINDS[body["kind"]].path(meta.get("namespace")),
            body,
            query=[("fieldManager", FIELD_MANAGER)],
        )
        return result
