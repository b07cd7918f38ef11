"""The major upgrade's Jobs: `pgherd upgrade check | run | rollback` in one-shot pods (pure).

Each Job runs one pod, never retried by Kubernetes (backoffLimit 0, restartPolicy Never): the
operator reads the outcome (pgherd.controller.upgrade_outcome) and decides what comes next,
and no second pod can ever work on the primary's volume while a first one still runs. The
cluster is the Jobs' controller, so they go with it.

Every pod is the new major's image with the old major's installation copied in beside it by
an init container of the old major's image (as CloudNativePG does), into an emptyDir at
/old: `/usr/lib/postgresql/<old>` and, where the image has it (Debian's packages),
`/usr/share/postgresql/<old>`, each at its own path under /old. PostgreSQL finds share/ and
lib/ relative to its binary (the common prefix of the configured bindir and sharedir is
replaced by the binary's location), so a copy that keeps the layout works where it lands.
Tried with Debian's 15: a copy of both directories under a temporary directory gives
`pg_config --sharedir` and `--pkglibdir` under that directory, `initdb` from it succeeds
(and fails naming the copy's postgres.bki once that file is removed), and its server loads
pg_trgm from the copy; and inside the 18 image's root filesystem, 15's binaries find every
shared library they link (the image carries Debian's libpq5 15, OpenSSL, ICU 72, libxml2,
LDAP through libpq5) but LLVM for llvmjit.so, which only JIT compilation loads (not an
upgrade's). 18's relocatable build keeps everything under `/usr/lib/postgresql/18`.

The pods are restricted as the instance pods are (uid/gid 999, fsGroup, no privilege
escalation, no capabilities, RuntimeDefault seccomp, read-only root filesystem) and mount no
ServiceAccount token: they call no API. Writable: /old, /tmp (the private servers' sockets
are made there) and the volume the command works on.

The preflight copies the running primary with pg_basebackup over a replication connection
(the replication role's client certificate from `<cluster>-tls`) into a scratch volume, a
generic ephemeral volume (`ephemeral.volumeClaimTemplate`) of the data volumes' storage
class and size, made with the pod and deleted with it: the copy needs as much room as the
data, which a node's ephemeral storage (an emptyDir) may not have, and the preflight's
reflink probe for `--method clone` must run on the data volumes' kind of filesystem to say
anything about them. The local control plane provides it too: kube-controller-manager runs
its ephemeral volume controller by default, the scheduler and the test provisioner treat the
claim as any WaitForFirstConsumer claim, and the test kubelet mounts it
(pgherd_dev.kubelet).

The upgrade and rollback pods mount the primary's own claim (the operator stops every
instance first) where the instance pods mount it, with the same PGDATA, so `--pgdata`
defaults right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pgherd import contract
from pgherd.api.v1alpha1 import PostgresCluster
from pgherd.render import labels, names
from pgherd.render.ownership import Manifest, owner_reference
from pgherd.render.scheduling import node_placement
from pgherd.render.statefulset import (
    container_resources,
    data_claim_spec,
    pod_security_context,
    restricted_container,
    secret_env,
)

Method = Literal["link", "clone", "copy"]

# The container whose exit code and termination message are the Job's outcome.
CONTAINER = "upgrade"
INIT_CONTAINER = "old-binaries"
# The summary `pgherd upgrade --report-file` writes (at most 4000 bytes, within the kubelet's
# 4096) becomes containerStatuses[].state.terminated.message.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
OLD_ROOT = "/old"
OLD_VOLUME = "old-binaries"
TMP_VOLUME = "tmp"
SCRATCH_VOLUME = "scratch"
SCRATCH_MOUNT = "/scratch"
# Below the volume's root, which a fresh filesystem fills with lost+found.
WORK_DIR = f"{SCRATCH_MOUNT}/check"
# The replication role's certificate and key, and the CA bundle the primary is verified with.
REPLICATION_TLS_FILES = (
    contract.TLS_CA,
    contract.TLS_REPLICATION_CERT,
    contract.TLS_REPLICATION_KEY,
)
# Shows the copy in the primary's pg_stat_replication.
APPLICATION_NAME = "pgherd-upgrade-check"


@dataclass(frozen=True)
class UpgradeImages:
    """From which major and image to which: the operator's choice (spec.postgresVersion
    before and after, and the images it runs each major with)."""

    old_major: int
    old_image: str
    new_major: int
    new_image: str

    @property
    def old_bindir(self) -> str:
        """Where the init container's copy puts the old major's binaries."""
        return f"{OLD_ROOT}{contract.image_bindir(self.old_major)}"

    @property
    def new_bindir(self) -> str:
        return contract.image_bindir(self.new_major)


def _copy_script(major: int) -> str:
    # Each directory keeps its path under /old, so the copy finds its share/ and lib/.
    lib_root, share_root = contract.POSTGRES_INSTALL_ROOT, "/usr/share/postgresql"
    lib, share = f"{lib_root}/{major}", f"{share_root}/{major}"
    return (
        f"set -e; mkdir -p {OLD_ROOT}{lib_root} {OLD_ROOT}{share_root}; "
        f"cp -a {lib} {OLD_ROOT}{lib_root}/; "
        f"if [ -d {share} ]; then cp -a {share} {OLD_ROOT}{share_root}/; fi"
    )


def _old_binaries(cluster: PostgresCluster, upgrade: UpgradeImages) -> dict[str, Any]:
    return {
        "name": INIT_CONTAINER,
        "image": upgrade.old_image,
        "imagePullPolicy": "IfNotPresent",
        # sh and cp: the Debian base of every operand image.
        "command": ["/bin/sh", "-c", _copy_script(upgrade.old_major)],
        "resources": container_resources(cluster),
        "securityContext": restricted_container(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": OLD_VOLUME, "mountPath": OLD_ROOT}],
    }


def _main(
    cluster: PostgresCluster,
    upgrade: UpgradeImages,
    args: list[str],
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    action, *rest = args
    return {
        "name": CONTAINER,
        "image": upgrade.new_image,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "pgherd",
            "upgrade",
            action,
            "--old-bindir",
            upgrade.old_bindir,
            "--new-bindir",
            upgrade.new_bindir,
            *rest,
            "--report-file",
            TERMINATION_MESSAGE_PATH,
        ],
        # The install user the private servers are reached as (the image's default,
        # postgres, is only a guess).
        "env": [
            secret_env(
                "PATRONI_SUPERUSER_USERNAME", cluster.metadata.name, "superuser", "username"
            ),
            *env,
        ],
        "resources": container_resources(cluster),
        "securityContext": restricted_container(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # A failure before the summary is written (bad arguments, a missing binary) still
        # leaves its last log lines as the message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": OLD_VOLUME, "mountPath": OLD_ROOT, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": contract.TMP_DIR},
            *mounts,
        ],
    }


def _job(
    cluster: PostgresCluster,
    name: str,
    upgrade: UpgradeImages,
    main: dict[str, Any],
    volumes: list[dict[str, Any]],
) -> Manifest:
    job_labels = labels.upgrade_labels(cluster.metadata.name)
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        # As the instance pods: Service environment variables are of no use here.
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "initContainers": [_old_binaries(cluster, upgrade)],
        "containers": [main],
        "volumes": [
            {"name": OLD_VOLUME, "emptyDir": {}},
            {"name": TMP_VOLUME, "emptyDir": {}},
            *volumes,
        ],
        **node_placement(cluster),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cluster.metadata.namespace,
            "labels": job_labels,
            "ownerReferences": [owner_reference(cluster)],
        },
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": job_labels}, "spec": pod},
        },
    }


def source_conninfo() -> str:
    """What the conninfo of the source adds to the environment's: the primary is named by
    PGHOST and PGPORT (_source_env), where cluster DNS resolves it (and the test kubelet
    forwards it); `pgherd upgrade check` moves them into the source's conninfo before any
    local tool runs, since pg_upgrade refuses a remote PGHOST."""
    return f"application_name={APPLICATION_NAME}"


def _source_env(cluster: PostgresCluster) -> list[dict[str, Any]]:
    tls = contract.TLS_MOUNT
    host = names.service_host(names.service_rw(cluster.metadata.name), cluster.metadata.namespace)
    return [
        # The primary, through the `-rw` Service.
        {"name": "PGHOST", "value": host},
        {"name": "PGPORT", "value": str(contract.POSTGRES_PORT)},
        secret_env("PGUSER", cluster.metadata.name, "replication", "username"),
        # The server certificate names every Service in each form (pgherd.render.names).
        {"name": "PGSSLMODE", "value": "verify-full"},
        {"name": "PGSSLROOTCERT", "value": f"{tls}/{contract.TLS_CA}"},
        {"name": "PGSSLCERT", "value": f"{tls}/{contract.TLS_REPLICATION_CERT}"},
        {"name": "PGSSLKEY", "value": f"{tls}/{contract.TLS_REPLICATION_KEY}"},
    ]


def _tls_volume(cluster: PostgresCluster) -> dict[str, Any]:
    return {
        "name": contract.TLS_VOLUME,
        "secret": {
            "secretName": names.tls_secret(cluster.metadata.name),
            "items": [{"key": key, "path": key} for key in REPLICATION_TLS_FILES],
            # Files are root's; fsGroup adds group read (0640), what libpq accepts of a key
            # owned by root (a key others can read it refuses). Without `pgherd instance`
            # no private copy is made, unlike in the instance pods.
            "defaultMode": 0o600,
        },
    }


def render_check_job(
    cluster: PostgresCluster,
    upgrade: UpgradeImages,
    *,
    method: Method,
    scratch_size: str | None = None,
) -> Manifest:
    """Job `<cluster>-upgrade-check`: the preflight (`pgherd upgrade check`) of the running
    primary, in a throwaway copy on a scratch volume of `scratch_size` (by default
    spec.storage.size; the operator may pass the claims' grown size)."""
    scratch = {
        "name": SCRATCH_VOLUME,
        "ephemeral": {
            "volumeClaimTemplate": {
                "metadata": {"labels": labels.upgrade_labels(cluster.metadata.name)},
                "spec": data_claim_spec(cluster, scratch_size),
            }
        },
    }
    args = ["check", "--method", method, "--source-conninfo", source_conninfo()]
    main = _main(
        cluster,
        upgrade,
        [*args, "--work-dir", WORK_DIR],
        _source_env(cluster),
        [
            {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_MOUNT},
            {"name": contract.TLS_VOLUME, "mountPath": contract.TLS_MOUNT, "readOnly": True},
        ],
    )
    name = names.upgrade_check_job(cluster.metadata.name)
    return _job(cluster, name, upgrade, main, [scratch, _tls_volume(cluster)])


def _on_data(
    cluster: PostgresCluster, name: str, upgrade: UpgradeImages, args: list[str], claim: str
) -> Manifest:
    main = _main(
        cluster,
        upgrade,
        args,
        [{"name": "PGDATA", "value": contract.PGDATA}],
        [{"name": contract.DATA_VOLUME, "mountPath": contract.DATA_MOUNT}],
    )
    data = {"name": contract.DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    return _job(cluster, name, upgrade, main, [data])


def render_upgrade_job(
    cluster: PostgresCluster, upgrade: UpgradeImages, *, method: Method, claim: str
) -> Manifest:
    """Job `<cluster>-upgrade`: `pgherd upgrade run` on the stopped primary's data volume
    (`claim`, names.data_claim). Run again after an interruption, it completes the upgrade."""
    name = names.upgrade_job(cluster.metadata.name)
    return _on_data(cluster, name, upgrade, ["run", "--method", method], claim)


def render_rollback_job(
    cluster: PostgresCluster, upgrade: UpgradeImages, *, claim: str, force: bool = False
) -> Manifest:
    """Job `<cluster>-upgrade-rollback`: `pgherd upgrade rollback` on the primary's data
    volume; force: copy or clone mode, going back although the new cluster ran (what was
    written to it is lost)."""
    name = names.upgrade_rollback_job(cluster.metadata.name)
    args = ["rollback", *(["--force"] if force else [])]
    return _on_data(cluster, name, upgrade, args, claim)
