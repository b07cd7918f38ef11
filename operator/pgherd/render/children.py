"""Everything a PostgresCluster owns, in the order it is best applied.

RBAC first (the pods need their ServiceAccount), then Secrets and the Patroni ConfigMap (the
pods mount and reference them), Services, the StatefulSet, and last its disruption budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.contract import TLS_CA
from pgherd.render.monitoring import render_pod_monitor
from pgherd.render.names import SecretKind
from pgherd.render.ownership import Manifest
from pgherd.render.patroni_config import render_patroni_configmap
from pgherd.render.pdb import render_pdb, render_primary_pdb
from pgherd.render.rbac import render_rbac
from pgherd.render.secrets import render_secrets, render_tls_secrets
from pgherd.render.services import render_services
from pgherd.render.statefulset import render_statefulset


def desired_children(
    cluster: PostgresCluster,
    passwords: Mapping[SecretKind, str] | None = None,
    *,
    tls: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
    vault_extra: Mapping[str, str] | None = None,
    image: str | None = None,
    replicas: int | None = None,
    pod_monitor: bool = False,
    allow_primary_eviction: bool = False,
) -> list[Manifest]:
    """The desired child objects of `cluster`.

    Secrets are included only when `passwords` (superuser, replication and app) are given:
    passwords are never made up here; the operator keeps them in the cluster's vault or
    generates them once. tls: the data of `<cluster>-ca` and `<cluster>-tls` (the operator's
    pass makes certificates, not this); without it neither is rendered. vault_extra: what
    the vault keeps beside the passwords (rotation state). image: the operand
    image the operator chose for the cluster's PostgreSQL version (spec.image, else the
    default); replicas: the StatefulSet's size when it must differ from spec.instances for
    now (scaling down waits for the primary to move); pod_monitor: whether to render the
    PodMonitor (asked for, and its CRD installed); allow_primary_eviction: the primary's
    budget lets a drain evict it (no replica can take over; pgherd.controller.drain).
    """
    children = render_rbac(cluster)
    if tls is not None:
        children += render_tls_secrets(cluster, *tls)
    if passwords is not None:
        trust = tls[1].get(TLS_CA) if tls is not None else None
        children += render_secrets(cluster, passwords, trust, vault_extra)
    children.append(render_patroni_configmap(cluster))
    children += render_services(cluster)
    children.append(render_statefulset(cluster, image=image, replicas=replicas))
    children.append(render_pdb(cluster))
    children.append(render_primary_pdb(cluster, allow_eviction=allow_primary_eviction))
    if pod_monitor:
        children.append(render_pod_monitor(cluster))
    return children
