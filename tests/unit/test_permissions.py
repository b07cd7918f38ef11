"""Least privilege: the operator's RBAC (pgherd.permissions) is exactly what its code uses.

What the code uses is read from the code itself: every call on the operator's API client
(found in the source, with the kind it names), the kinds the renderers produce (applied with
server-side apply), the rules the operator grants the instances' Role (RBAC lets one grant
only what one holds), and what kopf itself calls (from kopf's documentation of its RBAC).
A grant nothing uses fails, and so does a call nothing grants.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pgherd import permissions
from pgherd.api import v1alpha1
from pgherd.kube import KINDS
from pgherd.render.children import desired_children
from pgherd.render.rbac import render_rbac
from tests.unit.clusters import PASSWORDS, make_cluster

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "pgherd"
CLIENT_VERBS = {"get": "get", "list": "list", "patch": "patch", "delete": "delete"}
# Names the source uses for kinds, besides string literals.
KIND_CONSTANTS = {"KIND": v1alpha1.KIND, "BACKUP_KIND": v1alpha1.BACKUP_KIND}
# kopf's own calls: it lists and watches the resources it serves (and patches them to store
# its progress), and observes namespaces (namespace patterns) and CRDs at run time.
KOPF = {
    ("pgherd.io", "postgresclusters", "list"),
    ("pgherd.io", "postgresclusters", "watch"),
    ("pgherd.io", "postgresclusters", "patch"),
    ("pgherd.io", "postgresbackups", "list"),
    ("pgherd.io", "postgresbackups", "watch"),
    ("pgherd.io", "postgresbackups", "patch"),
    ("", "events", "create"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
# Required by the API server for what the operator writes, though no call names them.
IMPLIED = {
    # ownerReferences with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    ("pgherd.io", "postgresclusters/finalizers", "update"),
}


# Every feature on: a cluster with backups renders every kind and every instance rule.
WITH_BACKUP = {
    "backup": {
        "objectStore": {
            "bucket": "backups",
            "credentials": {
                "accessKeyId": {"name": "s3", "key": "id"},
                "secretAccessKey": {"name": "s3", "key": "secret"},
            },
        }
    }
}


def _resource(kind: str, subresource: str = "") -> tuple[str, str]:
    where = KINDS[kind]
    group = "" if where.group_version == "v1" else where.group_version.split("/")[0]
    return group, where.plural + (f"/{subresource}" if subresource else "")


def _kind_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return KIND_CONSTANTS.get(node.id)
    return None  # a kind computed at run time: a rendered child (counted below)


def client_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every call on a `kube` client in the operator's code."""
    used: set[tuple[str, str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
            if name != "kube" or node.func.attr not in (*CLIENT_VERBS, "create"):
                continue
            if node.func.attr == "create":
                continue  # bodies built at run time: Events and PostgresBackups, below
            kind = _kind_of(node.args[0]) if node.args else None
            if kind is None:
                continue
            sub = next(
                (k.value.value for k in node.keywords
                 if k.arg == "subresource" and isinstance(k.value, ast.Constant)),
                "",
            )  # fmt: skip
            used.add((*_resource(kind, str(sub)), CLIENT_VERBS[node.func.attr]))
    # kube.create bodies: Events (events.post) and scheduled PostgresBackups.
    used |= {("", "events", "create"), ("pgherd.io", "postgresbackups", "create")}
    return used


def rendered_children() -> set[tuple[str, str, str]]:
    """Children are read by name and server-side applied: a PATCH, which the API server also
    authorizes as create when the object does not exist yet."""
    used = set()
    cluster = make_cluster(WITH_BACKUP)
    for child in desired_children(cluster, PASSWORDS):
        group, resource = _resource(child["kind"])
        used |= {(group, resource, verb) for verb in ("get", "patch", "create")}
    return used


def granted_to_instances() -> set[tuple[str, str, str]]:
    cluster = make_cluster(WITH_BACKUP)
    role = next(o for o in render_rbac(cluster) if o["kind"] == "Role")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def granted() -> set[tuple[str, str, str]]:
    return {
        (rule.api_group, resource, verb)
        for rule in (*permissions.NAMESPACED, *permissions.CLUSTER)
        for resource in rule.resources
        for verb in rule.verbs
    }


def used() -> set[tuple[str, str, str]]:
    return client_calls() | rendered_children() | granted_to_instances() | KOPF | IMPLIED


def test_nothing_is_granted_that_the_code_does_not_use() -> None:
    assert sorted(granted() - used()) == []


def test_everything_the_code_calls_is_granted() -> None:
    assert sorted(used() - granted()) == []


def test_secrets_are_never_listed_or_watched() -> None:
    # A Secret cache of the whole namespace would hold every tenant's credentials in memory.
    assert not {v for g, r, v in granted() if (g, r) == ("", "secrets")} & {"list", "watch"}


def test_the_scan_finds_calls() -> None:
    # Guards the scanner itself: these calls exist in the code today.
    calls = client_calls()
    assert ("", "pods", "delete") in calls
    assert ("pgherd.io", "postgresclusters/status", "patch") in calls
    assert ("", "secrets", "get") in calls
