"""ServiceAccount, Role and RoleBinding of the instance pods: what Patroni's Kubernetes DCS needs.

Patroni in configmap mode (use_endpoints: false) lists and watches the cluster's pods and
ConfigMaps, creates and patches its ConfigMaps (<scope>-config, -leader, -failover, -sync)
and patches its own pod's role label. Verbs that can be narrowed to object names are: a
compromised instance cannot rewrite other ConfigMaps in the namespace (the operator's
<cluster>-patroni configuration among them) nor relabel other clusters' pods. Not granted:
`deletecollection` (only `patronictl remove` uses it), Endpoints and Services (endpoints
mode only), and reading the `kubernetes` Endpoints in `default` (bypass_api_service is off).
"""

from __future__ import annotations

from pgherd.api.v1alpha1 import MAX_INSTANCES, PostgresCluster
from pgherd.render import names
from pgherd.render.ownership import Manifest, child_metadata


def _rules(cluster_name: str, backups: bool = False) -> list[Manifest]:
    # Backups: the instances' backup agent reads PostgresBackups assigned to its pod
    # and writes their status (phase, result) while it runs barman-cloud-backup.
    backup_rules: list[Manifest] = [
        {
            "apiGroups": ["pgherd.io"],
            "resources": ["postgresbackups"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["pgherd.io"],
            "resources": ["postgresbackups/status"],
            "verbs": ["get", "patch"],
        },
    ]
    return [
        *(backup_rules if backups else []),
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            # create, list and watch cannot be limited by name in RBAC.
            "verbs": ["create", "list", "watch"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": names.patroni_dcs_configmaps(cluster_name),
            "verbs": ["get", "update", "patch", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": [""],
            "resources": ["pods"],
            # Every pod name the cluster can ever have, so scaling needs no Role change.
            "resourceNames": [names.pod(cluster_name, i) for i in range(MAX_INSTANCES)],
            "verbs": ["get", "update", "patch"],
        },
    ]


def render_rbac(cluster: PostgresCluster) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding `<cluster>-instance`."""
    name = names.instance_account(cluster.metadata.name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": child_metadata(cluster, name),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": child_metadata(cluster, name),
            "rules": _rules(cluster.metadata.name, backups=cluster.spec.backup is not None),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": child_metadata(cluster, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"kind": "ServiceAccount", "name": name, "namespace": cluster.metadata.namespace}
            ],
        },
    ]
