"""`kubectl pgherd report`: a support bundle of one cluster, to attach to an issue.

collect() reads (the only part that talks to the API); assemble() is pure: it turns what was
read into files, every object passed through pgherd.kubectl.redact and every text scrubbed of
the values of the Secrets read, so a bundle holds Secret names and keys and never their data.
write() stores the files as a zip or a directory.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgherd.kubectl import redact, summary
from pgherd.kubectl.session import (
    Session,
    cluster_backups,
    cluster_databases,
    cluster_pods,
    cluster_poolers,
    get_cluster,
    pooler_pods,
    serialize,
)
from pgherd.render import labels, names

Obj = dict[str, Any]
# Where and how manifests/ deploys the operator (pgherd_packaging.manifests).
OPERATOR_NAMESPACE = "pgherd-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=pgherd-operator"
OPERATOR_CONTAINER = "operator"
LOG_TAIL_LINES = 1000
# Files of the bundle, one per kind, in the order README lists them.
KIND_FILES = {
    "StatefulSet": "statefulsets.yaml",
    "Deployment": "deployments.yaml",
    "Pod": "pods.yaml",
    "Service": "services.yaml",
    "PersistentVolumeClaim": "persistentvolumeclaims.yaml",
    "PodDisruptionBudget": "poddisruptionbudgets.yaml",
    "ConfigMap": "configmaps.yaml",
    "PostgresBackup": "postgresbackups.yaml",
    "PostgresDatabase": "postgresdatabases.yaml",
    "PostgresPooler": "postgrespoolers.yaml",
    "Secret": "secrets.yaml",
    "Event": "events.yaml",
}


@dataclass
class Collected:
    """What collect() read: raw objects (Secrets with their data, for scrubbing only)."""

    cluster: Obj
    objects: dict[str, list[Obj]] = field(default_factory=dict)
    operator_log: str | None = None
    notes: list[str] = field(default_factory=list)


def _items(session: Session, listed: Any) -> list[Obj]:
    return [serialize(session, x) for x in listed.items]


def _by_label(session: Session, kind: str, selector: str) -> list[Obj]:
    ns, core = session.namespace, client.CoreV1Api(session.api)
    if kind == "StatefulSet":
        listed = client.AppsV1Api(session.api).list_namespaced_stateful_set(
            ns, label_selector=selector
        )
    elif kind == "Deployment":  # a pooler's
        listed = client.AppsV1Api(session.api).list_namespaced_deployment(
            ns, label_selector=selector
        )
    elif kind == "PodDisruptionBudget":
        listed = client.PolicyV1Api(session.api).list_namespaced_pod_disruption_budget(
            ns, label_selector=selector
        )
    else:
        method = {
            "Service": core.list_namespaced_service,
            "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim,
            "ConfigMap": core.list_namespaced_config_map,
            "Secret": core.list_namespaced_secret,
        }[kind]
        listed = method(ns, label_selector=selector)
    items = _items(session, listed)
    for item in items:
        item.setdefault("kind", kind)
        item.setdefault("apiVersion", "policy/v1" if kind == "PodDisruptionBudget" else
                        "apps/v1" if kind in ("StatefulSet", "Deployment") else "v1")  # fmt: skip
    return items


def _by_names(session: Session, kind: str, wanted: list[str]) -> list[Obj]:
    core = client.CoreV1Api(session.api)
    read = {"ConfigMap": core.read_namespaced_config_map,
            "Secret": core.read_namespaced_secret}[kind]  # fmt: skip
    out = []
    for name in wanted:
        try:
            obj = serialize(session, read(name, session.namespace))
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        out.append(obj | {"kind": kind, "apiVersion": "v1"})
    return out


# Fields of the spec that name a Secret (object store credentials and CA, user TLS).
REFERENCE_KEYS = frozenset({"accessKeyId", "secretAccessKey", "sessionToken", "caSecret",
                            "serverSecret"})  # fmt: skip


def _referenced_secrets(cluster: Obj) -> list[str]:
    """Secrets the spec names (object store credentials and CA, user TLS)."""
    found: set[str] = set()

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            if key in REFERENCE_KEYS and isinstance(node.get("name"), str):
                found.add(node["name"])
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for x in node:
                walk(x, key)

    walk(cluster.get("spec") or {})
    return sorted(found)


def collect(session: Session, name: str, operator_namespace: str, tail: int) -> Collected:
    """Everything the bundle holds, read from the API; a part that cannot be read becomes a
    note, not a failure."""
    got = Collected(get_cluster(session, name))
    selector = f"{labels.CLUSTER}={name}"
    steps: list[tuple[str, Any]] = [
        ("PostgresPooler", lambda: cluster_poolers(session, name)),
        ("Pod", lambda: cluster_pods(session, name)
                        + pooler_pods(session, got.objects.get("PostgresPooler", []))),
        *((kind, lambda kind=kind: _by_label(session, kind, selector)) for kind in (
            "StatefulSet", "Deployment", "Service", "PersistentVolumeClaim",
            "PodDisruptionBudget")),
        ("ConfigMap", lambda: _merge(_by_label(session, "ConfigMap", selector), _by_names(
            session, "ConfigMap",
            [names.patroni_configmap(name), *names.patroni_dcs_configmaps(name)]))),
        ("PostgresBackup", lambda: cluster_backups(session, name)),
        ("PostgresDatabase", lambda: cluster_databases(session, name)),
        ("Secret", lambda: _merge(_by_label(session, "Secret", selector), _by_names(
            session, "Secret",
            [*(names.secret(name, k) for k in names.SECRET_KINDS), names.vault(name),
             names.ca_secret(name), names.tls_secret(name),
             *_referenced_secrets(got.cluster)]))),
    ]  # fmt: skip
    for kind, read in steps:
        try:
            got.objects[kind] = read()
        except ApiException as e:
            got.notes.append(f"{kind}s not read: {e.status} {e.reason}")
    try:
        got.objects["Event"] = _events(session, got)
    except ApiException as e:
        got.notes.append(f"events not read: {e.status} {e.reason}")
    got.operator_log = _operator_log(session, operator_namespace, tail, got.notes)
    return got


def _merge(*lists: list[Obj]) -> list[Obj]:
    seen: dict[str, Obj] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item["metadata"]["name"], item)
    return [seen[k] for k in sorted(seen)]


def _events(session: Session, got: Collected) -> list[Obj]:
    involved = {("PostgresCluster", got.cluster["metadata"]["name"])}
    for kind, items in got.objects.items():
        involved |= {(kind, i["metadata"]["name"]) for i in items}
    listed = client.CoreV1Api(session.api).list_namespaced_event(session.namespace)
    out = []
    for event in _items(session, listed):
        ref = event.get("involvedObject") or {}
        if (ref.get("kind"), ref.get("name")) in involved:
            out.append(event | {"kind": "Event", "apiVersion": "v1"})
    return sorted(out, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _operator_log(session: Session, namespace: str, tail: int, notes: list[str]) -> str | None:
    core = client.CoreV1Api(session.api)
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=OPERATOR_SELECTOR).items
    except ApiException as e:
        notes.append(f"operator pods in {namespace} not listed: {e.status} {e.reason}")
        return None
    if not pods:
        notes.append(
            f"no operator pod ({OPERATOR_SELECTOR}) in namespace {namespace}: the operator "
            "runs elsewhere (outside the cluster, or another namespace: --operator-namespace); "
            "its log is not in this bundle"
        )
        return None
    parts = []
    for pod in pods:
        pod_name = pod.metadata.name
        try:
            text = core.read_namespaced_pod_log(
                pod_name, namespace, container=OPERATOR_CONTAINER, tail_lines=tail
            )
        except ApiException as e:
            notes.append(f"log of operator pod {namespace}/{pod_name} not read: {e.reason}")
            continue
        parts.append(f"==> {namespace}/{pod_name} (last {tail} lines) <==\n{text}")
    return "\n".join(parts) or None


def _clean(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        # Bookkeeping of server-side apply: long, and no help to a reader.
        obj = obj | {"metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def assemble(got: Collected, now: datetime) -> dict[str, str]:
    """The bundle's files (name -> text), redacted and scrubbed."""
    secrets = got.objects.get("Secret", [])
    values = redact.secret_values(secrets)

    def safe(text: str) -> str:
        return redact.scrub(text, values)

    def dump(items: list[Obj]) -> str:
        return safe(yaml.safe_dump_all([redact.redact(_clean(i)) for i in items],
                                       sort_keys=False))  # fmt: skip

    files: dict[str, str] = {}
    files["postgrescluster.yaml"] = dump([got.cluster])
    pods = got.objects.get("Pod", [])
    backups = got.objects.get("PostgresBackup", [])
    summed = redact.redact(summary.summarize(got.cluster, pods, backups))
    files["status.txt"] = safe(summary.render_text(summed, now))
    files["status.json"] = safe(json.dumps(summed, indent=2) + "\n")
    for kind, filename in KIND_FILES.items():
        if kind in got.objects:
            files[filename] = dump(got.objects[kind])
    notes = list(got.notes)
    if got.operator_log is not None:
        files["operator.log"] = safe(redact.redact_text(got.operator_log))
    meta = got.cluster["metadata"]
    files["README.txt"] = (
        f"pgherd support bundle of PostgresCluster {meta['namespace']}/{meta['name']}, "
        f"made {now.strftime('%Y-%m-%dT%H:%M:%SZ')} by kubectl pgherd report.\n\n"
        "Secrets appear by name, type and key names only; values that look like passwords "
        f"are replaced by {redact.REDACTED}.\n\nFiles:\n"
        + "".join(f"  {n}\n" for n in sorted(files))
        + ("\nNotes:\n" + "".join(f"  - {n}\n" for n in notes) if notes else "")
    )
    return files


def default_output(cluster: str, now: datetime) -> Path:
    return Path(f"pgherd-report-{cluster}-{now.strftime('%Y%m%dT%H%M%SZ')}.zip")


def write(files: dict[str, str], out: Path, top: str) -> Path:
    """A zip (out ends with .zip; files under top/) or a directory of the files."""
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, text in sorted(files.items()):
                zf.writestr(f"{top}/{name}", text)
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    return out
