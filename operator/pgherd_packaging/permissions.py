"""The one declarative list of the Kubernetes permissions the operator's code uses.

Everything that grants the operator access is generated from here: the RBAC objects in
manifests/ (`python -m pgherd_packaging.manifests`) and the `permissions` /
`clusterPermissions` of the ClusterServiceVersion (.bundle). Adding an API call to the
operator means adding its rule here, and nowhere else.

NAMESPACED rules act on objects inside the watched namespaces: OLM grants them as a Role per
target namespace (OwnNamespace, SingleNamespace, MultiNamespace) or cluster-wide
(AllNamespaces); the plain manifests, which watch every namespace, bind them with a
ClusterRole. CLUSTER rules act on cluster-scoped objects and are always a ClusterRole.
OWN_NAMESPACE rules act in the operator's own namespace: a Role there in the plain manifests,
and the CSV's `permissions` (which OLM grants in the install namespace too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
# A kind the controller caches: listed and watched by label, read by name (metadata only)
# when a child the caches miss may be held by a neighbour's object. Children are written
# with server-side apply, a PATCH that the API server authorizes as create too when the
# object does not exist yet.
CACHED = ("get", "list", "watch")


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
        ("list", "watch", "create", "patch", "delete"),
        "the custom resource the operator reconciles (kopf watches it); a major upgrade's "
        "rehearsal creates, advances and deletes its throwaway copy (spec.upgrade.rehearsal)",
    ),
    Rule("pgherd.io", ("postgresclusters/status",), ("patch",), "status and conditions"),
    Rule(
        "pgherd.io",
        ("postgresclusters/finalizers",),
        ("update",),
        "OwnerReferences with blockOwnerDeletion on clusters where the OwnerReferences"
        "PermissionEnforcement admission plugin runs",
    ),
    Rule(
        "pgherd.io",
        ("postgresbackups",),
        ("get", "list", "watch", "create", "delete"),
        "base backups: kopf watches them; scheduled ones are created and pruned to the "
        "history limit; the instances' Role is granted read access",
    ),
    Rule(
        "pgherd.io",
        ("postgresbackups/status",),
        ("get", "patch"),
        "a backup's phase, assigned instance and result (also granted to the instances, "
        "which run barman-cloud-backup)",
    ),
    Rule(
        "pgherd.io",
        ("postgresdatabases",),
        ("list", "watch", "patch"),
        "databases: kopf watches them; the finalizer of those with reclaimPolicy delete is "
        "added and removed with a patch",
    ),
    Rule(
        "pgherd.io",
        ("postgresdatabases/status",),
        ("patch",),
        "a database's applied, observedGeneration, error and Ready condition",
    ),
    Rule(
        "",
        ("configmaps",),
        CRUD,
        "the Patroni configuration, and Patroni's DCS ConfigMaps (watched; stale ones of a "
        "deleted namesake removed); the instances' Role is granted Patroni's DCS verbs",
    ),
    Rule(
        "",
        ("secrets",),
        # list and watch only with a label selector (pgherd.controller.runner.WATCHED): the
        # cluster's own Secrets and those that opted in, never a namespace's every Secret.
        # delete: only the pooler role's password once the role is dropped (exactly the
        # object seen, by uid, and only one the cluster owns); patch could already replace it.
        (*CACHED, "create", "patch", "delete"),
        "the cluster's credential Secrets and its vault; Secrets the spec names (used only "
        "when they opted in); the pooler role's password, deleted with the last pooler",
    ),
    Rule(
        "",
        ("services", "serviceaccounts"),
        (*CACHED, "create", "patch"),
        "client Services, the instance account",
    ),
    Rule(
        "",
        ("pods",),
        # list, watch, get, update and patch are granted to the instances' Role (Patroni
        # writes its pod's labels and annotations), and RBAC lets one grant only what one holds.
        ("get", "list", "watch", "patch", "update", "delete"),
        "instance state (watched); deleting a pod for a rolling update",
    ),
    Rule(
        "",
        ("persistentvolumeclaims",),
        ("list", "watch", "patch", "delete"),
        "data volumes (watched); expanding them; a major upgrade deletes the replicas' (their "
        "data belongs to the old system, they are cloned again from the upgraded primary)",
    ),
    # Core v1 only: kopf posts its events there. events.k8s.io is not used, and granting it
    # draws a (false) deprecated-API warning from operator-sdk's bundle validator.
    Rule("", ("events",), ("create",), "kopf's and the operator's events (core/v1)"),
    # PostgresPooler: kopf watches the poolers; a cluster's pass writes their status and
    # applies their PgBouncer Deployments (children owned by the pooler).
    Rule(
        "pgherd.io",
        ("postgrespoolers",),
        ("list", "watch"),
        "connection poolers: kopf watches them; the cluster's pass decides for them",
    ),
    Rule("pgherd.io", ("postgrespoolers/status",), ("patch",), "a pooler's status"),
    Rule(
        "pgherd.io",
        ("postgrespoolers/finalizers",),
        ("update",),
        "OwnerReferences with blockOwnerDeletion on a pooler's children where the "
        "OwnerReferencesPermissionEnforcement admission plugin runs",
    ),
    Rule(
        "apps",
        ("deployments",),
        ("list", "watch", "create", "patch"),
        "the PgBouncer Deployment of each PostgresPooler",
    ),
    Rule(
        "apps",
        ("statefulsets",),
        (*CACHED, "create", "patch", "delete"),
        "the instances' StatefulSet (re-created without its pods when volumes grow)",
    ),
    Rule(
        "batch",
        ("jobs",),
        ("list", "watch", "create", "patch", "delete"),
        "the major upgrade's one-shot Jobs (preflight, upgrade, rollback): applied, watched "
        "until their pod's outcome is read (pods are already read), deleted then",
    ),
    Rule(
        "policy",
        ("poddisruptionbudgets",),
        (*CACHED, "create", "patch"),
        "the cluster's PodDisruptionBudget",
    ),
    Rule(
        "rbac.authorization.k8s.io",
        ("roles", "rolebindings"),
        (*CACHED, "create", "patch"),
        "the instance pods' Role and RoleBinding (Patroni's Kubernetes DCS)",
    ),
    Rule(
        "monitoring.coreos.com",
        ("podmonitors",),
        ("list", "watch", "create", "patch", "delete"),
        "the cluster's PodMonitor (spec.monitoring.enablePodMonitor), where the Prometheus "
        "Operator's CRD is installed",
    ),
)

CLUSTER: tuple[Rule, ...] = (
    Rule(
        "storage.k8s.io",
        ("storageclasses",),
        ("list", "watch"),
        "whether a cluster's StorageClass exists (watched)",
    ),
    Rule(
        "",
        ("nodes",),
        ("list", "watch"),
        "whether an instance's node is cordoned for a drain (drain-aware switchover)",
    ),
    Rule(
        "apiextensions.k8s.io",
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf observes the CRDs of the resources it serves",
    ),
    Rule("", ("namespaces",), ("list", "watch"), "kopf observes namespaces (watch patterns)"),
)


# In the operator's own namespace only (a Role there, never cluster-wide in the plain
# manifests): the Lease its replicas elect their leader on (pgherd.controller.leader).
OWN_NAMESPACE: tuple[Rule, ...] = (
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("get", "create", "update"),
        "leader election among the operator's replicas (PGHERD_LEADER_ELECTION)",
    ),
)


def policy_rules(rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    """PolicyRules in declaration order (the order is part of the generated files)."""
    return [r.policy_rule() for r in rules]


def allows(rules: tuple[Rule, ...], api_group: str, resource: str, verb: str) -> bool:
    """Whether some rule grants verb on resource of api_group."""
    return any(
        r.api_group == api_group and resource in r.resources and verb in r.verbs for r in rules
    )
