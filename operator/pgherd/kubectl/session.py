"""The plugin's connection to the API: kubeconfig, context and namespace as kubectl takes
them, and the few reads and writes the subcommands share."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pgherd.api.v1alpha1 import (
    BACKUP_PLURAL,
    DATABASE_PLURAL,
    GROUP,
    KIND,
    PLURAL,
    POOLER_PLURAL,
    VERSION,
)
from pgherd.render import labels

Obj = dict[str, Any]


class PluginError(Exception):
    """A failure the user can act on; the CLI prints its message and exits non-zero."""


@dataclass(frozen=True)
class Session:
    api: client.ApiClient
    namespace: str
    # Passed on to the kubectl the plugin runs (port-forward), so that it reaches the same
    # cluster as the same user.
    kubeconfig: str | None
    context: str | None

    def kubectl_flags(self) -> list[str]:
        flags = ["--namespace", self.namespace]
        if self.kubeconfig:
            flags += ["--kubeconfig", self.kubeconfig]
        if self.context:
            flags += ["--context", self.context]
        return flags


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's context (the current one unless named), or default."""
    contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = (
        current
        if context is None
        else next((c for c in contexts if c.get("name") == context), None)
    )
    if chosen is None:
        raise PluginError(f"context {context!r} not found in the kubeconfig")
    return str((chosen.get("context") or {}).get("namespace") or "default")


def open_session(kubeconfig: str | None, context: str | None, namespace: str | None) -> Session:
    kubeconfig = kubeconfig or None
    try:
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
        ns = namespace or context_namespace(kubeconfig, context)
    except config.ConfigException as e:
        raise PluginError(f"cannot load the kubeconfig: {e}") from e
    # kubectl reads KUBECONFIG itself; only an explicit file needs passing on.
    return Session(api, ns, kubeconfig or None, context)


def serialize(session: Session, obj: Any) -> Obj:
    """A kubernetes client model as the API's JSON (camelCase, no nulls)."""
    out: Obj = session.api.sanitize_for_serialization(obj)
    return out


def _custom(session: Session) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(session.api)


def get_cluster(session: Session, name: str) -> Obj:
    try:
        got: Obj = _custom(session).get_namespaced_custom_object(
            GROUP, VERSION, session.namespace, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            raise PluginError(
                f"{KIND} {name!r} not found in namespace {session.namespace!r}"
            ) from None
        raise PluginError(f"cannot read {KIND} {name!r}: {e.reason}") from None
    return got


def patch_cluster(session: Session, name: str, patch: Obj) -> Obj:
    got: Obj = _custom(session).patch_namespaced_custom_object(
        GROUP, VERSION, session.namespace, PLURAL, name, patch
    )
    return got


def cluster_pods(session: Session, name: str) -> list[Obj]:
    pods = client.CoreV1Api(session.api).list_namespaced_pod(
        session.namespace, label_selector=f"{labels.CLUSTER}={name}"
    )
    return [serialize(session, p) for p in pods.items]


def _pointing_at(session: Session, plural: str, name: str) -> list[Obj]:
    """The namespace's resources of `plural` whose spec.cluster is `name`, oldest first."""
    got = _custom(session).list_namespaced_custom_object(GROUP, VERSION, session.namespace, plural)
    items = [b for b in got.get("items", []) if (b.get("spec") or {}).get("cluster") == name]
    return sorted(items, key=lambda b: b["metadata"].get("creationTimestamp") or "")


def cluster_backups(session: Session, name: str) -> list[Obj]:
    """The PostgresBackups of the cluster (spec.cluster), oldest first."""
    return _pointing_at(session, BACKUP_PLURAL, name)


def cluster_databases(session: Session, name: str) -> list[Obj]:
    """The PostgresDatabases of the cluster (spec.cluster), oldest first."""
    return _pointing_at(session, DATABASE_PLURAL, name)


def cluster_poolers(session: Session, name: str) -> list[Obj]:
    """The PostgresPoolers in front of the cluster (spec.cluster), oldest first."""
    return _pointing_at(session, POOLER_PLURAL, name)


def pooler_pods(session: Session, poolers: list[Obj]) -> list[Obj]:
    """The pods of these poolers (selected by the pooler's own labels, as its Deployment
    selects them: they carry no cluster label)."""
    wanted = sorted(p["metadata"]["name"] for p in poolers)
    if not wanted:
        return []
    selector = f"{labels.NAME}=pgbouncer,{labels.INSTANCE} in ({','.join(wanted)})"
    pods = client.CoreV1Api(session.api).list_namespaced_pod(
        session.namespace, label_selector=selector
    )
    return [serialize(session, p) for p in pods.items]


def get_backup(session: Session, name: str) -> Obj | None:
    try:
        got: Obj = _custom(session).get_namespaced_custom_object(
            GROUP, VERSION, session.namespace, BACKUP_PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return got


def create_backup(session: Session, body: Obj) -> Obj:
    try:
        got: Obj = _custom(session).create_namespaced_custom_object(
            GROUP, VERSION, session.namespace, BACKUP_PLURAL, body
        )
    except ApiException as e:
        raise PluginError(f"the API refused the PostgresBackup: {_reason(e)}") from None
    return got


def _reason(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)


def kubectl_binary() -> str:
    """The kubectl to run: $PGHERD_KUBECTL, else kubectl from PATH (the plugin itself is
    usually started by that one)."""
    return os.environ.get("PGHERD_KUBECTL") or "kubectl"
