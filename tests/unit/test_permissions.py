"""Least privilege: the operator's RBAC (pgherd_packaging.permissions) is what its code uses.

What the code uses is read from the code itself: the deletes, patches and creates the plan
makes (found in the source, with the kind each names), the kinds the informers watch and the
observer probes, the kinds the renderers produce (server-side applied), the rules the
operator grants the instances' Role (RBAC lets one grant only what one holds), and what kopf
itself calls (from kopf's documentation of its RBAC).
A grant nothing uses fails, and so does a call nothing grants.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pgherd.api import v1alpha1
from pgherd.api.v1alpha1 import PostgresPooler
from pgherd.controller.client import KINDS
from pgherd.controller.runner import CLUSTER_SCOPED, OPTIONAL, WATCHED
from pgherd.controller.snapshot import expected_children
from pgherd.render.children import desired_children
from pgherd.render.pooler import render_auth_secret, render_pooler
from pgherd.render.rbac import render_rbac
from pgherd.render.rehearsal import rehearsal_cluster
from pgherd.render.upgrade_jobs import UpgradeImages, render_check_job
from pgherd_packaging import permissions
from tests.unit.clusters import PASSWORDS, make_cluster

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "pgherd"
# Names the source uses for kinds, besides string literals.
KIND_CONSTANTS = {
    "KIND": v1alpha1.KIND,
    "BACKUP_KIND": v1alpha1.BACKUP_KIND,
    "DATABASE_KIND": v1alpha1.DATABASE_KIND,
    "POOLER_KIND": v1alpha1.POOLER_KIND,
}
# What each planned action (pgherd.controller.actions) is, as an API verb.
ACTION_VERBS = {"Delete": "delete", "Patch": "patch", "Create": "create"}
# kopf's own calls: it lists and watches the resources it serves, posts Events, and observes
# namespaces (namespace patterns) and CRDs at run time.
KOPF = {
    ("pgherd.io", "postgresclusters", "list"),
    ("pgherd.io", "postgresclusters", "watch"),
    ("pgherd.io", "postgresbackups", "list"),
    ("pgherd.io", "postgresbackups", "watch"),
    ("pgherd.io", "postgresdatabases", "list"),
    ("pgherd.io", "postgresdatabases", "watch"),
    ("pgherd.io", "postgrespoolers", "list"),
    ("pgherd.io", "postgrespoolers", "watch"),
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
    # ... and on a PostgresPooler's children, whose controller is the pooler.
    ("pgherd.io", "postgrespoolers/finalizers", "update"),
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


POOLER = {
    "metadata": {"name": "pgb", "namespace": "ns", "uid": "u-1"},
    "spec": {"cluster": "db"},
}


def _resource(kind: str, subresource: str = "") -> tuple[str, str]:
    where = KINDS[kind]
    group = "" if where.group_version == "v1" else where.group_version.split("/")[0]
    return group, where.plural + (f"/{subresource}" if subresource else "")


def _kind_of(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return KIND_CONSTANTS.get(node.id)
    return None


def planned_writes() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every Delete, Patch and Create the controller plans, read
    from the source (the kind= and subresource= its action constructors name)."""
    used: set[tuple[str, str, str]] = set()
    for path in (PACKAGE / "controller").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            verb = ACTION_VERBS.get(node.func.id)
            if verb is None:
                continue
            words = {k.arg: k.value for k in node.keywords}
            if verb == "create":
                used.add((*_resource(v1alpha1.BACKUP_KIND), "create"))  # scheduled backups
                continue
            kind = _kind_of(words.get("kind"))
            assert kind is not None, f"{path.name}:{node.lineno}: a {node.func.id} without kind"
            sub = words.get("subresource")
            sub_name = sub.value if isinstance(sub, ast.Constant) else ""
            used.add((*_resource(kind, str(sub_name)), verb))
    return used


def client_calls() -> set[tuple[str, str, str]]:
    """What the controller calls besides planned actions: informers list and watch every
    kind they cache; the observer probes (metadata) every child name the caches miss;
    rendered children are server-side applied (a PATCH, which the API server authorizes as
    create when the object is new); status is patched; Events are posted."""
    used: set[tuple[str, str, str]] = set()
    for kind, _selector in (*WATCHED, *OPTIONAL, *CLUSTER_SCOPED):
        used |= {(*_resource(kind), "list"), (*_resource(kind), "watch")}
    for kind, _name in expected_children("db"):
        used.add((*_resource(kind), "get"))
    used.add((*_resource("Secret"), "get"))  # referenced Secrets that did not opt in
    for child in desired_children(make_cluster(WITH_BACKUP), PASSWORDS, pod_monitor=True):
        used |= {(*_resource(child["kind"]), "patch"), (*_resource(child["kind"]), "create")}
    used.add((*_resource(v1alpha1.KIND, "status"), "patch"))
    # A PostgresPooler's children (and the cluster's pooler Secret), server-side applied.
    pooler = PostgresPooler.model_validate(POOLER)
    for child in [*render_pooler(pooler, "img", {"tls.crt": "x"}),
                  render_auth_secret(make_cluster(), "pw")]:  # fmt: skip
        used |= {(*_resource(child["kind"]), "patch"), (*_resource(child["kind"]), "create")}
    used.add((*_resource("Event"), "create"))
    # The major upgrade's Jobs, server-side applied.
    job = render_check_job(make_cluster(), UpgradeImages(15, "a", 18, "b"), method="link")
    used |= {(*_resource(job["kind"]), "patch"), (*_resource(job["kind"]), "create")}
    # A major upgrade's rehearsal: its throwaway PostgresCluster, server-side applied.
    copy = rehearsal_cluster(make_cluster(), {}, name="db-rehearsal", backup="b", version=15,
                             image=None, method="link")  # fmt: skip
    used |= {(*_resource(copy["kind"]), "patch"), (*_resource(copy["kind"]), "create")}
    # The leader elector (pgherd.controller.leader): read, create, and the conditional PUT.
    used |= {(*_resource("Lease"), verb) for verb in ("get", "create", "update")}
    return used | planned_writes()


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
        for rule in (*permissions.NAMESPACED, *permissions.CLUSTER, *permissions.OWN_NAMESPACE)
        for resource in rule.resources
        for verb in rule.verbs
    }


def used() -> set[tuple[str, str, str]]:
    return client_calls() | granted_to_instances() | KOPF | IMPLIED


def test_nothing_is_granted_that_the_code_does_not_use() -> None:
    assert sorted(granted() - used()) == []


def test_everything_the_code_calls_is_granted() -> None:
    assert sorted(used() - granted()) == []


def test_secrets_are_only_watched_by_label() -> None:
    # A Secret cache of the whole namespace would hold every tenant's credentials in memory:
    # the controller watches only its own Secrets and those that opted in.
    selectors = [selector for kind, selector in WATCHED if kind == "Secret"]
    assert selectors == ["pgherd.io/cluster", "pgherd.io/use=true"]


def test_the_scan_finds_the_planned_writes() -> None:
    # Guards the scanner itself: these actions exist in the plan today.
    writes = planned_writes()
    assert ("", "pods", "delete") in writes  # a rolling update
    assert ("", "persistentvolumeclaims", "patch") in writes  # storage growth
    assert ("pgherd.io", "postgresbackups/status", "patch") in writes  # backup placement
