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
READ = ("get", "list", "watch")


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
        ("get", "list", "watch", "patch", "update"),
        "the custom resource the operator reconciles (kopf patches its annotations)",
    ),
    Rule(
        "pgherd.io",
        ("postgresclusters/status",),
        ("get", "patch", "update"),
        "status, conditions and kopf's progress bookkeeping",
    ),
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
        ("get", "list", "watch", "create", "patch", "update", "delete"),
        "base backups: scheduled ones are created and pruned to the history limit (kopf "
        "patches their annotations); the instances' Role is granted read access",
    ),
    Rule(
        "pgherd.io",
        ("postgresbackups/status",),
        ("get", "patch", "update"),
        "a backup's phase, assigned instance and result (also granted to the instances, "
        "which run barman-cloud-backup)",
    ),
    Rule(
        "",
        ("configmaps", "secrets", "services", "serviceaccounts"),
        CRUD,
        "children of each cluster: Patroni configuration, credentials, client Services, "
        "the instance ServiceAccount",
    ),
    Rule(
        "",
        ("pods",),
        # update is granted to the instances' Role (Patroni writes its pod's labels and
        # annotations), and RBAC lets one grant only what one holds.
        ("get", "list", "watch", "patch", "update", "delete"),
        "reading instance state; deleting a pod for a rolling restart",
    ),
    Rule(
        "",
        ("persistentvolumeclaims",),
        ("get", "list", "watch", "patch", "delete"),
        "expanding data volumes; removing them with reclaimPolicy Delete",
    ),
    # Core v1 only: kopf posts its events there. events.k8s.io is not used, and granting it
    # draws a (false) deprecated-API warning from operator-sdk's bundle validator.
    Rule("", ("events",), ("create", "patch"), "kopf's and the operator's events (core/v1)"),
    Rule("apps", ("statefulsets",), CRUD, "the instances' StatefulSet"),
    Rule("policy", ("poddisruptionbudgets",), CRUD, "the cluster's PodDisruptionBudget"),
    Rule(
        "rbac.authorization.k8s.io",
        ("roles", "rolebindings"),
        CRUD,
        "the instance pods' Role and RoleBinding (Patroni's Kubernetes DCS)",
    ),
)

CLUSTER: tuple[Rule, ...] = (
    Rule("storage.k8s.io", ("storageclasses",), READ, "whether a StorageClass allows expansion"),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        READ,
        "kopf discovers the resources it serves from their CRDs",
    ),
    Rule("", ("namespaces",), READ, "kopf's namespace discovery"),
)


def policy_rules(rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    """PolicyRules in declaration order (the order is part of the generated files)."""
    return [r.policy_rule() for r in rules]


def allows(rules: tuple[Rule, ...], api_group: str, resource: str, verb: str) -> bool:
    """Whether some rule grants verb on resource of api_group."""
    return any(
        r.api_group == api_group and resource in r.resources and verb in r.verbs for r in rules
    )
