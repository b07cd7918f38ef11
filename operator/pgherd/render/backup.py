"""What spec.backup and spec.bootstrap.recovery add to a cluster's children: pure functions.

- pod environment: the archive's location (PGHERD_BACKUP_*) and credentials (AWS_*, from the
  user's Secrets), and for a restore the source's (PGHERD_RESTORE_*); CA bundles as volumes;
- Patroni's dynamic configuration: archive_mode, archive_command and restore_command. Every
  instance gets the same commands and PostgreSQL archives only on the primary, so archiving
  follows the primary through a failover without any reconfiguration;
- patroni.yaml's bootstrap: the custom method `pgherd_restore` for a restore.

A recovery source given as a PostgresBackup must have been resolved into an object store,
server name and backup id (pgherd.controller.backups.resolve) before rendering.
"""

from __future__ import annotations

from typing import Any

from pgherd import contract as st
from pgherd.api.v1alpha1 import ObjectStoreSpec, PostgresCluster, RecoverySpec, SecretKeyRef

RESTORE_METHOD = "pgherd_restore"
ARCHIVE_COMMAND = "pgherd wal-archive %p"
RESTORE_COMMAND = "pgherd wal-restore %f %p"
SOURCE_RESTORE_COMMAND = "pgherd wal-restore --source %f %p"
# Bounds how much committed work can be lost with the primary's disk when writes are rare:
# a partly filled WAL segment is archived after this long. Users may override it.
DEFAULT_ARCHIVE_TIMEOUT = "300s"


def base_server_name(cluster: PostgresCluster) -> str:
    """spec.backup.serverName, or the cluster's name."""
    backup = cluster.spec.backup
    return (backup.server_name if backup else None) or cluster.metadata.name


def server_name(cluster: PostgresCluster) -> str:
    """What the cluster archives under: status.backup.serverName once the operator recorded
    one (a major upgrade's new system has its own), else base_server_name."""
    recorded = (
        cluster.status.backup.server_name if cluster.status and cluster.status.backup else None
    )
    return recorded or base_server_name(cluster)


def upgraded_server_name(cluster: PostgresCluster, system_identifier: str) -> str:
    """The archive's name for the system a major upgrade made: a new prefix, since its WAL
    names start over at timeline 1 (the old system's are in the store under the old one)."""
    return f"{base_server_name(cluster)}-{system_identifier}"


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _store_env(
    prefix: str, cred_prefix: str, store: ObjectStoreSpec, server: str
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": prefix + "DESTINATION", "value": st.destination_url(store)},
        {"name": prefix + "SERVER_NAME", "value": server},
    ]
    if store.endpoint_url:
        env.append({"name": prefix + "ENDPOINT_URL", "value": store.endpoint_url})
    if store.region:
        env.append({"name": prefix + "REGION", "value": store.region})
    if store.ca_secret:
        env.append({"name": prefix + "CA_FILE", "value": f"{st.CA_DIR[prefix]}/{st.CA_FILE_NAME}"})
    creds = store.credentials
    env.append(_secret_env(cred_prefix + "AWS_ACCESS_KEY_ID", creds.access_key_id))
    env.append(_secret_env(cred_prefix + "AWS_SECRET_ACCESS_KEY", creds.secret_access_key))
    if creds.session_token:
        env.append(_secret_env(cred_prefix + "AWS_SESSION_TOKEN", creds.session_token))
    return env


def _resolved(recovery: RecoverySpec) -> tuple[ObjectStoreSpec, str] | None:
    source = recovery.source
    if source.object_store is None or source.server_name is None:
        return None
    return source.object_store, source.server_name


def env(cluster: PostgresCluster) -> list[dict[str, Any]]:
    """Environment variables of the postgres container."""
    out: list[dict[str, Any]] = []
    backup = cluster.spec.backup
    if backup is not None:
        out += _store_env(st.ARCHIVE_PREFIX, "", backup.object_store, server_name(cluster))
        out.append({"name": st.ARCHIVE_PREFIX + "COMPRESSION", "value": backup.compression})
        if backup.retention_policy:
            out.append({"name": st.ARCHIVE_PREFIX + "RETENTION", "value": backup.retention_policy})
    recovery = cluster.spec.bootstrap.recovery
    if recovery is not None and (source := _resolved(recovery)) is not None:
        out += _store_env(st.RESTORE_PREFIX, st.RESTORE_PREFIX, *source)
    return out


def _ca(prefix: str, store: ObjectStoreSpec | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if store is None or store.ca_secret is None:
        return None
    name = "backup-ca" if prefix == st.ARCHIVE_PREFIX else "restore-ca"
    volume = {
        "name": name,
        "secret": {
            "secretName": store.ca_secret.name,
            "items": [{"key": store.ca_secret.key, "path": st.CA_FILE_NAME}],
        },
    }
    return volume, {"name": name, "mountPath": st.CA_DIR[prefix], "readOnly": True}


def volumes(cluster: PostgresCluster) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for CA bundles of the archive and of a restore source."""
    recovery = cluster.spec.bootstrap.recovery
    source = _resolved(recovery) if recovery else None
    pairs = [
        _ca(st.ARCHIVE_PREFIX, cluster.spec.backup.object_store if cluster.spec.backup else None),
        _ca(st.RESTORE_PREFIX, source[0] if source else None),
    ]
    present = [p for p in pairs if p is not None]
    return [v for v, _ in present], [m for _, m in present]


def parameters(cluster: PostgresCluster) -> dict[str, str]:
    """postgresql.conf parameters for WAL archiving; the user's own parameters win except
    archive_mode and archive_command, which archiving cannot work without."""
    if cluster.spec.backup is None:
        return dict(cluster.spec.postgresql.parameters)
    return {
        "archive_timeout": DEFAULT_ARCHIVE_TIMEOUT,
        **cluster.spec.postgresql.parameters,
        "archive_mode": "on",
        "archive_command": ARCHIVE_COMMAND,
    }


def recovery_conf(cluster: PostgresCluster) -> dict[str, str] | None:
    """Patroni's postgresql.recovery_conf: replicas may fetch WAL from the archive."""
    if cluster.spec.backup is None:
        return None
    return {"restore_command": RESTORE_COMMAND}


def bootstrap(cluster: PostgresCluster) -> dict[str, Any]:
    """Keys for patroni.yaml's bootstrap section: the restore method, when restoring."""
    recovery = cluster.spec.bootstrap.recovery
    if recovery is None or _resolved(recovery) is None:
        return {}
    conf: dict[str, str] = {"restore_command": SOURCE_RESTORE_COMMAND}
    target = recovery.target
    if target is not None and (target.time or target.lsn or target.name):
        if target.time is not None:
            conf["recovery_target_time"] = target.time.isoformat()
        elif target.lsn is not None:
            conf["recovery_target_lsn"] = target.lsn
        elif target.name is not None:
            conf["recovery_target_name"] = target.name
        # Stop at the target and become a primary on a new timeline.
        conf["recovery_target_action"] = "promote"
    conf["recovery_target_timeline"] = "latest"
    method: dict[str, Any] = {
        "command": "pgherd restore-bootstrap",
        "recovery_conf": conf,
    }
    if recovery.source.backup_id:
        method["backup-id"] = recovery.source.backup_id
    if target is not None and target.time is not None:
        # Lets the bootstrap pick a backup that ends before the target.
        method["target-time"] = target.time.isoformat()
    return {"method": RESTORE_METHOD, RESTORE_METHOD: method}
