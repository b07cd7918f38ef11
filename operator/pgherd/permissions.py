"""The one declarative list of the Kubernetes permissions the operator's code uses.

Everything that grants the operator access is generated from here: the RBAC objects in
manifests/ (`python -m pgherd.manifests`) and the `permissions` / `clusterPermissions` of the
ClusterServiceVersion (`python -m pgherd.bundle`). Adding an API call to the operator means
adding its rule here, and nowhere else.

NAMESPACED rules act on objects inside the watched namespaces: OLM grants them as a Role per
target namespace (OwnNamespace, SingleNamespace, MultiNamespace) or cluster-wide
(AllNamespaces); the plain manifests, which watch every namespace, bind them with a
ClusterRole. CLUSTER rules act on cluster-scoped objects and are always a ClusterRole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
# Server-side apply: read by name to skip unchanged objects, PATCH, which the API server
# authorizes as create too when the object does not exist yet.
APPLY = ("get", "create", "patch")


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule: these verbs on these resources of one API group."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def policy_rule(self) -> dict[str, Any]:
        """The rule as rbac.authorization.k8s.io/v1 PolicyRule."""
        return {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


NAMESPACED: tuple[Rule, ...] = (
    Rule(
        "pgherd.io",
        ("postgresclusters",),
        ("get", "list", "watch", "patch"),
        "the custom resource the operator reconciles (kopf watches it and patches its annotations)",
    ),
    Rule("pgherd.io", ("postgresclusters/status",), ("patch",), "status and conditions"),
    Rule(
        "pgherd.io",
        ("postgresclusters/finalizers",),
        ("update",),
        "OwnerReferences with blockOwnerDeletion on clusters where the OwnerReferences"
        "PermissionEnforcement admission plugin runs",
    ),
    # pgherd.backup
    Rule(
        "pgherd.io",
        ("postgresbackups",),
        ("get", "list", "watch", "create", "patch", "delete"),
        "base backups: scheduled ones are created and pruned to the history limit (kopf "
        "watches them and patches their annotations); the instances' Role is granted read "
        "access",
    ),
    Rule(
        "pgherd.io",
        ("postgresbackups/status",),
        ("get", "patch"),
        "a backup's phase, assigned instance and result (also granted to the instances, "
        "which run barman-cloud-backup)",
    ),
    Rule(
        "",
        ("configmaps",),
        CRUD,
        "the Patroni configuration; stale DCS ConfigMaps of a deleted namesake are removed; "
        "the instances' Role is granted Patroni's DCS verbs, which the operator must hold",
    ),
    Rule(
        "",
        ("secrets",),
        # No list or watch: Secrets are read by name only, never a namespace's all at once.
        APPLY,
        "the cluster's credential Secrets and its vault; Secrets the spec names (used only "
        "when they opted in)",
    ),
    Rule("", ("services", "serviceaccounts"), APPLY, "client Services, the instance account"),
    Rule(
        "",
        ("pods",),
        # list, watch, get, update and patch are granted to the instances' Role (Patroni
        # writes its pod's labels and annotations), and RBAC lets one grant only what one holds.
        ("get", "list", "watch", "patch", "update", "delete"),
        "reading instance state; deleting a pod for a rolling restart",
    ),
    Rule("", ("persistentvolumeclaims",), ("list", "patch"), "expanding data volumes"),
    # Core v1 only: kopf posts its events there. events.k8s.io is not used, and granting it
    # draws a (false) deprecated-API warning from operator-sdk's bundle validator.
    Rule("", ("events",), ("create",), "kopf's and the operator's events (core/v1)"),
    Rule(
        "apps",
        ("statefulsets",),
        (*APPLY, "delete"),
        "the instances' StatefulSet (re-created without its pods when volumes grow)",
    ),
    Rule("policy", ("poddisruptionbudgets",), APPLY, "the cluster's PodDisruptionBudget"),
    Rule(
        "rbac.authorization.k8s.io",
        ("roles", "rolebindings"),
        APPLY,
        "the instance pods' Role and RoleBinding (Patroni's Kubernetes DCS)",
    ),
)

CLUSTER: tuple[Rule, ...] = (
    Rule("storage.k8s.io", ("storageclasses",), ("get",), "whether a StorageClass exists"),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf observes the CRDs of the resources it serves",
    ),
    Rule("", ("namespaces",), ("list", "watch"), "kopf observes namespaces (watch patterns)"),
)


def policy_rules(rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    """PolicyRules in declaration order (the order is part of the generated files)."""
    return [r.policy_rule() for r in rules]


def allows(rules: tuple[Rule, ...], api_group: str, resource: str, verb: str) -> bool:
    """Whether some rule grants verb on resource of api_group."""
    return any(
        r.api_group == api_group and resource in r.resources and verb in r.verbs for r in rules
    )
