"""Names of everything a PostgresCluster owns, in one place so the operator and renderers agree."""

from __future__ import annotations

from typing import Literal

from pgherd.contract import DATA_VOLUME

SecretKind = Literal["superuser", "replication", "app", "restapi"]
SECRET_KINDS: tuple[SecretKind, ...] = ("superuser", "replication", "app", "restapi")
# Passwords spec.credentials.rotate can rotate (the fields of CredentialRotation).
ROTATABLE_KINDS: tuple[SecretKind, ...] = ("app", "superuser")
# The account the operator uses on Patroni's REST API (its unsafe endpoints need it).
RESTAPI_USERNAME = "pgherd"

# ConfigMaps Patroni's Kubernetes DCS keeps per cluster (configmap mode): <scope>-<suffix>.
PATRONI_DCS_SUFFIXES = ("config", "leader", "failover", "sync")


def statefulset(cluster: str) -> str:
    return cluster


def pod(cluster: str, ordinal: int) -> str:
    return f"{cluster}-{ordinal}"


def data_claim(cluster: str, ordinal: int) -> str:
    """The data volume's claim of an instance (the StatefulSet's claim template `pgdata`)."""
    return f"{DATA_VOLUME}-{statefulset(cluster)}-{ordinal}"


def upgrade_check_job(cluster: str) -> str:
    """The major upgrade's preflight Job (`pgherd upgrade check`)."""
    return f"{cluster}-upgrade-check"


def upgrade_job(cluster: str) -> str:
    """The major upgrade's Job on the stopped primary's volume (`pgherd upgrade run`)."""
    return f"{cluster}-upgrade"


def upgrade_rollback_job(cluster: str) -> str:
    """The Job that puts the old cluster back (`pgherd upgrade rollback`)."""
    return f"{cluster}-upgrade-rollback"


def instance_account(cluster: str) -> str:
    """ServiceAccount, Role and RoleBinding of the instance pods."""
    return f"{cluster}-instance"


def patroni_configmap(cluster: str) -> str:
    return f"{cluster}-patroni"


def patroni_dcs_configmap(cluster: str, suffix: str) -> str:
    """Patroni's Kubernetes DCS object for one key (config, leader, failover, sync)."""
    return f"{cluster}-{suffix}"


def patroni_dcs_configmaps(cluster: str) -> list[str]:
    return [patroni_dcs_configmap(cluster, suffix) for suffix in PATRONI_DCS_SUFFIXES]


def secret(cluster: str, kind: SecretKind) -> str:
    return f"{cluster}-{kind}"


def vault(cluster: str) -> str:
    """The operator's own copy of the cluster's passwords (pgherd.passwords)."""
    return f"{cluster}-vault"


def ca_secret(cluster: str) -> str:
    """The cluster's certificate authority (key included): the operator's alone."""
    return f"{cluster}-ca"


def tls_secret(cluster: str) -> str:
    """What the instances mount: server and replication certificates, the CA bundles."""
    return f"{cluster}-tls"


def server_names(cluster: str, namespace: str) -> list[str]:
    """Every DNS name a client may reach an instance by: each Service's short, namespaced
    and cluster-domain names, and each pod's through the headless Service."""
    out: list[str] = []
    hosts = [service_rw(cluster), service_ro(cluster), service_any(cluster)]
    hosts += [f"*.{service_headless(cluster)}", service_headless(cluster)]
    for host in hosts:
        out += dns_names(host, namespace)
    return out


def dns_names(service: str, namespace: str) -> list[str]:
    """The names a Service is reached by in the cluster, shortest first."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]  # fmt: skip


def service_rw(cluster: str) -> str:
    return f"{cluster}-rw"


def service_ro(cluster: str) -> str:
    return f"{cluster}-ro"


def service_any(cluster: str) -> str:
    return f"{cluster}-r"


def service_headless(cluster: str) -> str:
    return f"{cluster}-headless"


def pdb(cluster: str) -> str:
    return cluster


def pdb_primary(cluster: str) -> str:
    """The primary's PodDisruptionBudget (drain-aware switchover)."""
    return f"{cluster}-primary"


def pod_monitor(cluster: str) -> str:
    return cluster


def service_host(service: str, namespace: str) -> str:
    """In-cluster DNS name of a Service."""
    return f"{service}.{namespace}.svc"


REHEARSAL_SUFFIX = "-rehearsal"


def rehearsal(cluster: str, max_length: int) -> str:
    """The throwaway PostgresCluster a major upgrade's rehearsal restores into: the cluster's
    name, shortened as needed so that the copy's own name fits PostgresCluster's limit."""
    base = cluster[: max_length - len(REHEARSAL_SUFFIX)].rstrip("-")
    return base + REHEARSAL_SUFFIX
