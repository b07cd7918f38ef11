"""The pgherd.io/v1alpha1 PostgresCluster API: the one typed source for the CRD and the operator.

The CustomResourceDefinition schema is generated from these models (pgherd_packaging.crds), so
every field carries the description `kubectl explain` shows, its default and its bounds here. CEL
rules (`x-kubernetes-validations`) sit on the object that holds the fields they compare, because
transition rules (those using `oldSelf`) only run where both the old and the new value exist.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "pgherd.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PostgresCluster"
# A rolling restart request, as `kubectl rollout restart` makes one for a Deployment: the
# operator copies the value into the pod template, so a new value is a new revision, rolled
# out like any other (replicas first, then a switchover, then the old primary). Set by
# `kubectl pgherd restart`; any value works, the time of the request by convention.
RESTARTED_AT_ANNOTATION = "pgherd.io/restartedAt"
PLURAL = "postgresclusters"
SINGULAR = "postgrescluster"
SHORT_NAMES = ("pgc",)

DEFAULT_POSTGRES_VERSION = 15
# The operand image of this release, in the project's public registry (docs/releasing.md bumps
# it with VERSION; the bundle lists it in relatedImages and RELATED_IMAGE_POSTGRES, which is
# what the operator uses: pgherd.settings).
DEFAULT_IMAGE = f"quay.io/pgherd/postgres:{DEFAULT_POSTGRES_VERSION}-0.2.0"
# The operand image of this release for each PostgreSQL major it supports: one recipe
# (images/postgres/Dockerfile) built per major, tagged <major>-<release>. The bundle names
# each in relatedImages and RELATED_IMAGE_POSTGRES[_<major>] (pgherd.settings.image_for).
# 15: Debian's packages; 18: the relocatable build the recipe lays in (docs/postgres-versions.md).
SUPPORTED_POSTGRES_VERSIONS = (DEFAULT_POSTGRES_VERSION, 18)
DEFAULT_IMAGES = {
    major: DEFAULT_IMAGE.replace(f":{DEFAULT_POSTGRES_VERSION}-", f":{major}-", 1)
    for major in SUPPORTED_POSTGRES_VERSIONS
}
# What the API server stored as spec.image when the field had a default (0.1.0): such a value
# means "unset", and the cluster keeps the image it runs (status.image).
LEGACY_DEFAULT_IMAGES = frozenset({"pgherd/postgres:15-0.1.0", "quay.io/pgherd/postgres:15-0.1.0"})
MAX_INSTANCES = 9
# The StatefulSet's controller-revision-hash label (name + 11 characters) must fit in 63.
MAX_NAME_LENGTH = 52

# Role names the operand creates itself; the application owner may not take them.
SUPERUSER_USERNAME = "postgres"
REPLICATION_USERNAME = "replicator"

# resource.Quantity's grammar, as Kubernetes' own OpenAPI publishes it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A PostgreSQL identifier we never need to quote (63 bytes is NAMEDATALEN - 1).
IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _number_to_quantity(value: object) -> object:
    # Kubernetes accepts bare numbers for quantities (`cpu: 2`); the model keeps strings.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_number_to_quantity),
    StringConstraints(pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            # Bounds the cost CEL rules on quantities are estimated at.
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
StorageSize = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN, max_length=63)]
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    validation: dict[str, JsonValue] = {"rule": rule, "message": message}
    if field_path is not None:
        validation["fieldPath"] = field_path
    return validation


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class StorageSpec(ApiModel):
    """Persistent storage of each instance's data directory."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!isQuantity(self.size) || quantity(self.size).compareTo(quantity('0')) > 0",
                    "storage.size must be greater than zero",
                    ".size",
                ),
                _cel(
                    "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
                    "storage.size cannot be decreased",
                    ".size",
                ),
                _cel(
                    "!has(oldSelf.storageClassName) || (has(self.storageClassName)"
                    " && self.storageClassName == oldSelf.storageClassName)",
                    "storage.storageClassName is immutable once set",
                    ".storageClassName",
                ),
                # Disks that do not fill: autoGrow never goes past its limit.
                _cel(
                    "!has(self.autoGrow) || !isQuantity(self.size) || "
                    "quantity(self.autoGrow.limit).compareTo(quantity(self.size)) >= 0",
                    "storage.autoGrow.limit must be at least storage.size",
                    ".autoGrow.limit",
                ),
            ]
        }
    )

    size: StorageSize = Field(
        default="1Gi",
        description="Size of each instance's data volume, a Kubernetes quantity such as 10Gi. "
        "It can grow (the volumes are expanded) but never shrink.",
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the data volumes; the cluster default when unset. "
        "Immutable once set.",
    )
    reclaim_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What happens to the data volumes (PersistentVolumeClaims) when the cluster "
        "is deleted: Retain keeps them, Delete removes them. Volumes of instances removed by "
        "scaling down are always retained.",
    )
    auto_grow: AutoGrowSpec | None = Field(
        default=None,
        description="Grow the data volumes before they fill: when an instance's volume is used "
        "past threshold, the claims are expanded by step, up to limit. The StorageClass must "
        "allow volume expansion.",
    )


class AutoGrowSpec(ApiModel):
    """Automatic growth of the data volumes (disks that do not fill)."""

    enabled: bool = Field(default=True, description="Whether the volumes grow by themselves.")
    threshold: int = Field(
        default=80,
        ge=10,
        le=99,
        description="Grow when an instance's data volume is used past this percentage.",
    )
    step: str = Field(
        default="20%",
        max_length=64,
        pattern=r"^([1-9][0-9]{0,2}%|[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?)$",
        description="How much to grow at once: a percentage of the current size (20%) or a "
        "quantity (1Gi).",
    )
    limit: StorageSize = Field(
        description="The largest size autoGrow may reach (a quantity, at least storage.size)."
    )


DEFAULT_REQUESTS: dict[str, str] = {"cpu": "250m", "memory": "512Mi"}


def _quantity_cel(expr: str) -> str:
    # Quantities are int-or-string on the wire: string() makes both a string for quantity().
    return f"quantity(string({expr}))"


class ResourcesSpec(ApiModel):
    """Compute resources of the postgres container (Kubernetes ResourceRequirements)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.requests.all(k, !isQuantity(string(self.requests[k])) || "
                    + _quantity_cel("self.requests[k]")
                    + ".compareTo(quantity('0')) >= 0)",
                    "resources.requests must not be negative",
                    ".requests",
                ),
                _cel(
                    "self.limits.all(k, !isQuantity(string(self.limits[k])) || "
                    + _quantity_cel("self.limits[k]")
                    + ".compareTo(quantity('0')) > 0)",
                    "resources.limits must be greater than zero",
                    ".limits",
                ),
                _cel(
                    "self.requests.all(k, !(k in self.limits)"
                    " || !isQuantity(string(self.requests[k]))"
                    " || !isQuantity(string(self.limits[k])) || "
                    + _quantity_cel("self.requests[k]")
                    + ".compareTo("
                    + _quantity_cel("self.limits[k]")
                    + ") <= 0)",
                    "resources: a request must not exceed its limit",
                    ".requests",
                ),
            ]
        }
    )

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Minimum resources the scheduler reserves, e.g. {cpu: 500m, memory: 1Gi}.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Maximum resources the container may use, e.g. {memory: 2Gi}.",
    )


# Parameters pgherd or Patroni set themselves, and those that would let a spec run commands
# as the server, read or write files the server can reach, or move where it listens. The API
# refuses them (CEL), naming the key.
OPERATOR_OWNED_PARAMETERS: tuple[str, ...] = (
    # WAL archiving and recovery: shell commands or libraries run by the server.
    "archive_mode",
    "archive_command",
    "archive_library",
    "archive_cleanup_command",
    "restore_command",
    "recovery_end_command",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    # Where the server listens and where its files are.
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "dynamic_library_path",
    # TLS material and the command that unlocks it.
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "ssl_dh_params_file",
    "ssl_passphrase_command",
    "ssl_passphrase_command_supports_reload",
    # spec.tls decides these: TLS is on, with at least spec.tls.minProtocolVersion.
    "ssl",
    "ssl_min_protocol_version",
    # Patroni's own: replication topology and synchronous replication.
    "cluster_name",
    "hot_standby",
    "synchronous_standby_names",
)
# recovery_target, recovery_target_time, ...: a restore sets them (spec.bootstrap.recovery).
OPERATOR_OWNED_PREFIXES: tuple[str, ...] = ("recovery_target",)
# Parameters whose value names libraries the server loads; each must be one the image has
# (checked by the operator against what the instances report).
LIBRARY_PARAMETERS: tuple[str, ...] = (
    "shared_preload_libraries",
    "session_preload_libraries",
    "local_preload_libraries",
)
GUC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
MAX_PARAMETERS = 256
MAX_PARAMETER_VALUE = 4096
# An insecure pg_hba method on a TCP rule: trust lets anyone in without a password.
INSECURE_HBA_METHOD = r"^\s*host(ssl|nossl|gssenc|nogssenc)?\s.*\strust(\s|$)"


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _owned_parameter_cel(key: str) -> str:
    # PostgreSQL's parameter names are case-insensitive.
    lower = f"{key}.lowerAscii()"
    prefixes = " || ".join(f"{lower}.startsWith('{p}')" for p in OPERATOR_OWNED_PREFIXES)
    return f"({lower} in {_cel_list(OPERATOR_OWNED_PARAMETERS)} || {prefixes})"


def _parameter_rules() -> list[dict[str, JsonValue]]:
    owned = _owned_parameter_cel("k")
    return [
        {
            "rule": f"self.all(k, !{owned})",
            "messageExpression": "'postgresql.parameters: ' + self.filter(k, "
            + owned
            + ")[0] + ' is managed by pgherd and cannot be set'",
            "message": "postgresql.parameters: a parameter managed by pgherd cannot be set",
        },
        {
            "rule": f"self.all(k, k.matches(r'{GUC_NAME_PATTERN}'))",
            "messageExpression": "'postgresql.parameters: ' + self.filter(k, !k.matches(r'"
            + GUC_NAME_PATTERN
            + "'))[0] + ' is not a parameter name (letters, digits and _, with one "
            "dot for an extension)'",
            "message": "postgresql.parameters: a key is not a parameter name",
        },
        {
            "rule": "self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))",
            "messageExpression": "'postgresql.parameters: the value of ' + self.filter(k, "
            "self[k].contains('\\n') || self[k].contains('\\r'))[0] + "
            "' contains a line break'",
            "message": "postgresql.parameters: a value contains a line break",
        },
        _cel(
            "self.all(k, k.lowerAscii() != 'wal_level'"
            " || self[k].lowerAscii() in ['replica', 'logical'])",
            "postgresql.parameters: wal_level must be replica or logical (replication and "
            "backups need at least replica)",
        ),
    ]


class PostgresqlSpec(ApiModel):
    """PostgreSQL server settings."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.allowInsecureAuthentication"
                    f" || !self.pgHba.exists(l, l.matches(r'{INSECURE_HBA_METHOD}'))",
                    "postgresql.pgHba: a host rule with method trust lets clients in without a "
                    "password; set postgresql.allowInsecureAuthentication: true to allow it",
                    ".pgHba",
                ),
            ]
        }
    )

    parameters: Annotated[
        dict[
            str,
            Annotated[str, StringConstraints(max_length=MAX_PARAMETER_VALUE)],
        ],
        WithJsonSchema(
            {
                "type": "object",
                "maxProperties": MAX_PARAMETERS,
                "additionalProperties": {"type": "string", "maxLength": MAX_PARAMETER_VALUE},
                "x-kubernetes-validations": _parameter_rules(),
            }
        ),
    ] = Field(
        default_factory=dict,
        description="postgresql.conf parameters, applied through Patroni's dynamic "
        "configuration; parameters that need a restart are applied by a rolling restart. "
        "Parameters pgherd manages (archiving and recovery commands, listen_addresses, port, "
        "file locations, ssl_* files, Patroni's replication settings) are refused; "
        "shared_preload_libraries and the other *_preload_libraries must name libraries the "
        "image has. Parameters PostgreSQL cannot take are listed in status.ignoredParameters.",
    )
    pg_hba: list[Annotated[str, StringConstraints(max_length=1024, pattern=r"^[^\r\n]*$")]] = Field(
        default_factory=list,
        max_length=128,
        description="Extra pg_hba.conf lines, inserted after the operator's replication and "
        "local rules and before the final rule requiring scram-sha-256 passwords. A host rule "
        "with method trust needs allowInsecureAuthentication.",
    )
    allow_insecure_authentication: bool = Field(
        default=False,
        description="Allow pgHba host rules with method trust (no password). The cluster then "
        "carries the condition InsecureAuthentication=True as a standing warning.",
    )

    @field_validator("parameters")
    @classmethod
    def _no_line_breaks(cls, parameters: dict[str, str]) -> dict[str, str]:
        # The API refuses these; a stored object from before that rule must not reach a file.
        for key, value in parameters.items():
            if "\n" in key or "\r" in key or "\n" in value or "\r" in value:
                raise ValueError(f"parameter {key!r} contains a line break")
        return parameters


def is_operator_owned(parameter: str) -> bool:
    """Whether a parameter is one pgherd or Patroni sets (see OPERATOR_OWNED_PARAMETERS)."""
    name = parameter.lower()
    return name in OPERATOR_OWNED_PARAMETERS or name.startswith(OPERATOR_OWNED_PREFIXES)


# ---- backups ---------------------------------------------------------------------------
BACKUP_KIND = "PostgresBackup"
BACKUP_PLURAL = "postgresbackups"
BACKUP_SINGULAR = "postgresbackup"
BACKUP_SHORT_NAMES = ("pgb",)
# barman's recovery window: a number of days (d), weeks (w) or months (m).
RETENTION_PATTERN = r"^[1-9][0-9]{0,3}[dwm]$"
# An S3 bucket name (the DNS-compatible subset every S3-compatible store accepts).
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# barman's backup ids are timestamps (YYYYMMDDTHHMMSS); the restore bootstrap also takes
# them from the operator, so the pattern keeps shell and path syntax out.
BACKUP_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}$"


class SecretReference(ApiModel):
    """A Secret in the cluster's namespace."""

    name: str = Field(
        max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Secret name."
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the cluster's namespace. The Secret must opt in to pgherd: label
    pgherd.io/use: "true" (and, optionally, annotation pgherd.io/allowed-clusters)."""

    name: str = Field(
        max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="Secret name."
    )
    key: str = Field(max_length=253, min_length=1, description="Key within the Secret.")


class S3Credentials(ApiModel):
    """Where the object store's access keys are: keys of Secrets in the cluster's namespace.

    They reach the instances as environment variables (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY), never through a ConfigMap or the Patroni configuration."""

    access_key_id: SecretKeyRef = Field(description="Secret key holding the access key id.")
    secret_access_key: SecretKeyRef = Field(description="Secret key holding the secret access key.")
    session_token: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a session token, for temporary keys."
    )


class ObjectStoreSpec(ApiModel):
    """An S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...)."""

    endpoint_url: str | None = Field(
        default=None,
        alias="endpointURL",
        max_length=1024,
        pattern=r"^https?://",
        description="Endpoint of an S3-compatible service, e.g. https://minio.example:9000; "
        "AWS S3 itself when unset.",
    )
    bucket: str = Field(pattern=BUCKET_PATTERN, description="Bucket name; it must exist.")
    path: str = Field(
        default="",
        max_length=512,
        pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        description="Prefix inside the bucket. A cluster's WAL and base backups go under "
        "<path>/<serverName>/.",
    )
    region: str | None = Field(
        default=None, max_length=64, description="Region of the bucket, e.g. eu-west-1."
    )
    credentials: S3Credentials = Field(description="Access keys, from Secrets.")
    ca_secret: SecretKeyRef | None = Field(
        default=None,
        description="A Secret key holding the PEM CA bundle that signs the endpoint's "
        "certificate, when it is not publicly trusted.",
    )


_CRON_ITEM = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
_CRON_FIELD = rf"{_CRON_ITEM}(,{_CRON_ITEM})*"
# Five cron fields or a macro. The operator checks the values (croniter) as well, and reports
# what the pattern lets through (a minute of 99) as Degraded.
_CRON_MACRO = r"@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
CRON_PATTERN = rf"^({_CRON_MACRO}|{_CRON_FIELD}( +{_CRON_FIELD}){{4}})$"


class BackupSpec(ApiModel):
    """Continuous WAL archiving and base backups to an S3-compatible object store."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"!has(self.schedule) || self.schedule.matches(r'{CRON_PATTERN}')",
                    "backup.schedule must be a cron schedule: five fields (minute hour "
                    "day-of-month month day-of-week, UTC) such as '0 3 * * *', or @hourly, "
                    "@daily, @weekly, @monthly, @yearly",
                    ".schedule",
                ),
            ]
        }
    )

    object_store: ObjectStoreSpec = Field(description="Where WAL and base backups go.")
    server_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Folder of this cluster under objectStore.path; the cluster name when "
        "unset. Two clusters must never share one: each archive belongs to one database "
        "system.",
    )
    retention_policy: str | None = Field(
        default=None,
        pattern=RETENTION_PATTERN,
        description="Recovery window, e.g. 30d, 4w or 6m: base backups and WAL no longer "
        "needed to recover to any point inside the window are deleted from the store. The "
        "newest backup older than the window is kept, since recovering to the window's "
        "start needs it. Unset keeps everything.",
    )
    schedule: str | None = Field(
        default=None,
        max_length=128,
        description="Cron schedule (5 fields, UTC) of base backups, e.g. '0 3 * * *'; each "
        "run creates a PostgresBackup. Unset: on-demand backups only.",
    )
    schedule_history_limit: int = Field(
        default=7,
        ge=1,
        le=1000,
        description="Scheduled PostgresBackup objects kept; older ones are deleted (the "
        "objects only: the retention policy decides what leaves the store).",
    )
    compression: Literal["none", "gzip", "bzip2"] = Field(
        default="gzip", description="Compression of WAL files and base backups in the store."
    )
    target: Literal["primary", "prefer-standby"] = Field(
        default="primary",
        description="Instance scheduled base backups are taken from: primary (always "
        "consistent with the newest data, adds read load on the primary) or prefer-standby "
        "(a ready streaming replica when one exists, else the primary).",
    )


class RecoveryTarget(ApiModel):
    """Where recovery stops; at the end of the archived WAL when unset. At most one field."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "[has(self.time), has(self.lsn), has(self.name)].filter(x, x).size() <= 1",
                    "recovery target: set at most one of time, lsn and name",
                )
            ]
        }
    )

    time: datetime | None = Field(
        default=None,
        description="Recover up to this time (RFC 3339, e.g. 2026-01-02T03:04:05Z), "
        "transactions committed at that moment included.",
    )
    lsn: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$",
        description="Recover up to this WAL location, e.g. 0/3000060.",
    )
    name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Recover up to this named restore point (pg_create_restore_point).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> RecoveryTarget:
        if sum(x is not None for x in (self.time, self.lsn, self.name)) > 1:
            raise ValueError("set at most one of time, lsn and name")
        return self


class RecoverySource(ApiModel):
    """Where to restore from: a PostgresBackup, or an object store with a backup id."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.backup) != has(self.objectStore)",
                    "recovery source: set exactly one of backup and objectStore",
                ),
                _cel(
                    "!has(self.backupId) || has(self.objectStore)",
                    "recovery source: backupId goes with objectStore",
                ),
                _cel(
                    "!has(self.serverName) || has(self.objectStore)",
                    "recovery source: serverName goes with objectStore",
                ),
            ]
        }
    )

    backup: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description="A Completed PostgresBackup in this namespace.",
    )
    object_store: ObjectStoreSpec | None = Field(
        default=None, description="The source cluster's object store."
    )
    server_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="The source cluster's server name (folder) in objectStore; required "
        "with objectStore.",
    )
    backup_id: str | None = Field(
        default=None,
        pattern=BACKUP_ID_PATTERN,
        description="barman backup id to restore; with objectStore and no backupId the "
        "newest backup that ends before the target (or the newest) is used.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RecoverySource:
        if (self.backup is None) == (self.object_store is None):
            raise ValueError("set exactly one of backup and objectStore")
        if self.object_store is not None and self.server_name is None:
            raise ValueError("serverName is required with objectStore")
        return self


class RecoverySpec(ApiModel):
    """Create the cluster from a base backup and archived WAL instead of an empty database."""

    source: RecoverySource = Field(description="Where the backup and WAL come from.")
    target: RecoveryTarget | None = Field(
        default=None, description="Where recovery stops; the end of the archive when unset."
    )


# ---- credentials -------------------------------------------------------------------------


class CredentialRotation(ApiModel):
    """One counter per password: raising it rotates that password once."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.app >= oldSelf.app && self.superuser >= oldSelf.superuser",
                    "credentials.rotate counters only go up: raise one to rotate again",
                ),
            ]
        }
    )

    app: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Raise to rotate the application owner's password (<cluster>-app).",
    )
    superuser: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Raise to rotate the postgres superuser's password (<cluster>-superuser).",
    )


class CredentialsSpec(ApiModel):
    """Password rotation on request. The new password is set in PostgreSQL first, then in the
    Secret; open connections stay open. status.credentials records each rotation."""

    rotate: CredentialRotation = Field(
        default_factory=CredentialRotation,
        description="Rotation counters; each rotation is carried out once per increase.",
    )


# ---- TLS ---------------------------------------------------------------------------------
TLS_PROTOCOLS = ("TLSv1.2", "TLSv1.3")


class TlsSpec(ApiModel):
    """TLS of every connection: clients, replication and Patroni's REST API.

    By default the operator runs a certificate authority per cluster and issues the server
    certificate and the replication client certificate itself, renewing them before they
    expire. serverSecret (and caSecret) bring the user's own server certificate instead.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.caSecret) || has(self.serverSecret)",
                    "tls.caSecret is the CA of tls.serverSecret: set serverSecret too",
                    ".caSecret",
                ),
            ]
        }
    )

    server_secret: SecretReference | None = Field(
        default=None,
        description="A kubernetes.io/tls Secret (tls.crt, tls.key, and ca.crt unless caSecret "
        "is set) with the server certificate to use instead of one from the cluster's own CA, "
        "for example issued by cert-manager. Its names must cover the cluster's Services "
        "(<cluster>-rw, -ro, -r and *.<cluster>-headless, each as name, name.namespace and "
        "name.namespace.svc). It must opt in to pgherd like every Secret the spec names "
        '(label pgherd.io/use: "true"). A Secret that is missing, malformed, expired or does '
        "not cover the names makes the cluster Degraded; the instances keep the certificate "
        "they have.",
    )
    ca_secret: SecretReference | None = Field(
        default=None,
        description="A Secret with key ca.crt: the CA (bundle) that signed serverSecret, "
        "handed to clients in the <cluster>-app Secret. Defaults to serverSecret's ca.crt.",
    )
    min_protocol_version: Literal["TLSv1.2", "TLSv1.3"] = Field(
        default="TLSv1.2",
        description="Oldest TLS version PostgreSQL accepts (ssl_min_protocol_version).",
    )
    allow_plain_text: bool = Field(
        default=False,
        description="Also accept clients without TLS (pg_hba host rules instead of hostssl), "
        "for legacy clients only. Replication always uses TLS with a client certificate. The "
        "cluster then carries the condition InsecureAuthentication=True as a standing warning.",
    )


class BootstrapSpec(ApiModel):
    """What the first primary creates when the cluster is initialised. Immutable."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self == oldSelf", "bootstrap is immutable"),
                _cel(
                    f"self.owner != '{SUPERUSER_USERNAME}'"
                    f" && self.owner != '{REPLICATION_USERNAME}'"
                    " && !self.owner.startsWith('pg_')",
                    f"bootstrap.owner must not be {SUPERUSER_USERNAME}, {REPLICATION_USERNAME} "
                    "or start with pg_",
                    ".owner",
                ),
            ]
        }
    )

    database: Identifier = Field(default="app", description="Name of the application database.")
    owner: Identifier = Field(
        default="app",
        description="Application role that owns the database; its credentials are in the "
        "<cluster>-app Secret.",
    )
    secret: SecretReference | None = Field(
        default=None,
        description="A kubernetes.io/basic-auth Secret (keys username, equal to owner, and "
        "password) holding the owner's credentials, instead of a generated password. It must "
        'opt in to pgherd: label pgherd.io/use: "true" (and, optionally, annotation '
        "pgherd.io/allowed-clusters naming the clusters that may use it).",
    )
    superuser_secret: SecretReference | None = Field(
        default=None,
        description="A kubernetes.io/basic-auth Secret (keys username, equal to postgres, and "
        "password) holding the superuser's credentials, instead of a generated password. It "
        "must opt in to pgherd like bootstrap.secret.",
    )
    # Backups: point-in-time restore into this new cluster.
    recovery: RecoverySpec | None = Field(
        default=None,
        description="Restore the cluster from a base backup and archived WAL (optionally to "
        "a point in time) instead of creating an empty database. The database and owner "
        "then come from the backup; their passwords are reset to this cluster's Secrets.",
    )

    @field_validator("owner")
    @classmethod
    def _owner_not_reserved(cls, owner: str) -> str:
        if owner in (SUPERUSER_USERNAME, REPLICATION_USERNAME) or owner.startswith("pg_"):
            raise ValueError(f"owner {owner!r} is reserved")
        return owner


# Patroni timing profiles (spec.patroni.profile): (ttl, loopWait, retryTimeout) each profile
# gives the fields left unset. "fast" is Patroni's minimum ttl (20 s) with a short loop, and
# the operator releases the leader key of a primary whose container the kubelet reports dead
# (pgherd.controller.leader_release), so a crashed primary does not cost a whole ttl.
PATRONI_PROFILES: dict[str, tuple[int, int, int]] = {
    "default": (30, 10, 10),
    "fast": (20, 2, 5),
}


def _profile_value(field_name: str, index: int) -> str:
    """CEL for a timing field's effective value: the field, or its profile's."""
    by_profile = " : ".join(
        f"self.profile == '{name}' ? {values[index]}"
        for name, values in PATRONI_PROFILES.items()
        if name != "default"
    )
    default = PATRONI_PROFILES["default"][index]
    return f"(has(self.{field_name}) ? self.{field_name} : ({by_profile} : {default}))"


class PatroniSpec(ApiModel):
    """Patroni's failure-detection timing (its dynamic configuration)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"{_profile_value('loopWait', 1)} + 2 * {_profile_value('retryTimeout', 2)}"
                    f" <= {_profile_value('ttl', 0)}",
                    "patroni: loopWait + 2 * retryTimeout must not exceed ttl",
                ),
            ]
        }
    )

    profile: Literal["default", "fast"] = Field(
        default="default",
        description="Timing profile. default: ttl 30, loopWait 10, retryTimeout 10 (Patroni's "
        "defaults): a crashed primary is replaced after its leader lock expires (about ttl). "
        "fast: ttl 20, loopWait 2, retryTimeout 5, and when the kubelet reports the primary's "
        "container no longer running the operator releases its leader lock at once, so a "
        "replica is promoted within seconds (a lost node or a network partition still waits "
        "for ttl). ttl, loopWait and retryTimeout set here override the profile's.",
    )
    ttl: int | None = Field(
        default=None,
        ge=20,
        le=3600,
        description="Seconds the leader lock lives without renewal; after it expires a "
        "replica takes over. Unset: the profile's (default 30, fast 20).",
    )
    loop_wait: int | None = Field(
        default=None,
        ge=1,
        le=600,
        description="Seconds between Patroni's high-availability loop runs. Unset: the "
        "profile's (default 10, fast 2).",
    )
    retry_timeout: int | None = Field(
        default=None,
        ge=3,
        le=600,
        description="Seconds Patroni retries Kubernetes API and PostgreSQL operations before "
        "demoting the primary. Unset: the profile's (default 10, fast 5).",
    )
    maximum_lag_on_failover: int = Field(
        default=1048576,
        ge=0,
        le=1 << 40,
        description="Bytes a replica may lag behind and still be promoted on failover.",
    )
    # ---- issue 16: API-server outage (failsafe mode) ----
    failsafe_mode: bool = Field(
        default=True,
        description="Patroni's failsafe mode: while the Kubernetes API (its DCS) is "
        "unreachable, the primary keeps running as long as it reaches every other member's "
        "REST API and they all accept it (no replica can promote then). Off: Patroni demotes "
        "the primary once it cannot renew its leader key for retryTimeout seconds, so an "
        "API-server outage stops all writes.",
    )

    @property
    def timing(self) -> tuple[int, int, int]:
        """(ttl, loop_wait, retry_timeout) in effect: the fields set, the profile's for the
        others."""
        ttl, loop_wait, retry_timeout = PATRONI_PROFILES[self.profile]
        return (
            self.ttl if self.ttl is not None else ttl,
            self.loop_wait if self.loop_wait is not None else loop_wait,
            self.retry_timeout if self.retry_timeout is not None else retry_timeout,
        )

    @model_validator(mode="after")
    def _timing_is_safe(self) -> PatroniSpec:
        ttl, loop_wait, retry_timeout = self.timing
        if loop_wait + 2 * retry_timeout > ttl:
            raise ValueError("loopWait + 2 * retryTimeout must not exceed ttl")
        return self


class Toleration(ApiModel):
    """A Kubernetes pod toleration."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(default=None, description="Taint value matched with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; all effects when unset."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated before eviction."
    )


class SchedulingSpec(ApiModel):
    """Where instances run. By default they spread over zones and nodes."""

    anti_affinity: Literal["preferred", "required"] = Field(
        default="preferred",
        description="Keep instances on distinct nodes: preferred (best effort) or required "
        "(an instance stays Pending rather than share a node). Ignored when affinity is set.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels an instance's node must have."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of the instance pods."
    )
    affinity: FreeForm | None = Field(
        default=None,
        description="Kubernetes pod affinity; when set it replaces the default node "
        "anti-affinity entirely.",
    )
    topology_spread_constraints: list[FreeForm] | None = Field(
        default=None,
        description="Kubernetes topology spread constraints; when set (even empty) they "
        "replace the default best-effort spread over topology.kubernetes.io/zone.",
    )


class ServiceSpec(ApiModel):
    """The client Services <cluster>-rw, <cluster>-ro and <cluster>-r."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Kubernetes Service type of the client Services."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations of the client Services, e.g. for a load-balancer controller.",
    )


class SwitchoverSpec(ApiModel):
    """A planned switchover request, carried out once: status.switchoverHandled records it.
    Remove spec.switchover (or name another instance) to request another one."""

    target_instance: str = Field(
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Pod name of the replica to promote; the operator switches over when it "
        "is not the current primary.",
    )


# ---- monitoring -------------------------------------------------------------------------
MAX_CUSTOM_QUERIES = 16


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the cluster's namespace."""

    name: str = Field(
        max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description="ConfigMap name."
    )
    key: str = Field(
        max_length=200,
        pattern=r"^[-._a-zA-Z0-9]+\.yaml$",
        description="Key within the ConfigMap; it must end in .yaml.",
    )


class MonitoringSpec(ApiModel):
    """Prometheus metrics of the instances. Every instance serves them anyway, on its port
    named metrics (9187) at /metrics; this adds to them and to how they are found."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.customQueries.all(a, self.customQueries.exists_one(b, "
                    "b.name + '-' + b.key == a.name + '-' + a.key))",
                    "monitoring.customQueries: two entries give the same file name <name>-<key>",
                    ".customQueries",
                ),
            ]
        }
    )

    enable_pod_monitor: bool = Field(
        default=False,
        description="Create a Prometheus Operator PodMonitor `<cluster>` for the instances, "
        "when the PodMonitor CRD (monitoring.coreos.com/v1) is installed (the operator "
        "notices it within a resync); without it, status.monitoring says so. Turning it off "
        "deletes the PodMonitor.",
    )
    custom_queries: list[ConfigMapKeyRef] = Field(
        default_factory=list,
        max_length=MAX_CUSTOM_QUERIES,
        description="User-defined metrics: keys of ConfigMaps in the cluster's namespace, each "
        "a queries file in postgres_exporter's queries.yaml format (name: {query, master, "
        "metrics: [{column: {usage: LABEL|GAUGE|COUNTER|DISCARD, description}}]}). They run "
        "as the superuser, read-only, in the postgres database: whoever may write these "
        "ConfigMaps may read any data. Edits to a ConfigMap reach the instances without a "
        "restart; changing this list rolls them. A missing ConfigMap or key only leaves its "
        "metrics out; a broken query is counted in pgherd_exporter_errors_total.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name", "key"],
        },
    )


# ---- managed roles (spec.managed.roles) ------------------------------------------------
MAX_MANAGED_ROLES = 256
MAX_ROLE_MEMBERSHIPS = 64
# NAMEDATALEN - 1: PostgreSQL truncates longer names, so two names could become one role.
MAX_ROLE_NAME_BYTES = 63
# Roles pgherd creates or uses itself: postgres (the superuser), replicator (replication),
# pgherd (Patroni's REST API account: not a role today, kept free so it can become one).
# Names starting with pgherd_ are pgherd's (the pooler's auth role is pgherd_pooler);
# those starting with pg_ PostgreSQL reserves for its predefined roles.
RESERVED_ROLE_NAMES: tuple[str, ...] = (SUPERUSER_USERNAME, REPLICATION_USERNAME, "pgherd")
RESERVED_ROLE_PREFIXES: tuple[str, ...] = ("pg_", "pgherd_")
# Roles a managed role may not be made a member of: membership in postgres is the
# superuser's power, and pgherd's own roles are not the application's to share. PostgreSQL's
# predefined pg_* roles (pg_monitor, pg_read_all_data, ...) are allowed.
RESERVED_MEMBERSHIPS: tuple[str, ...] = RESERVED_ROLE_NAMES
RESERVED_MEMBERSHIP_PREFIXES: tuple[str, ...] = ("pgherd_",)
# Any text PostgreSQL can hold as a name or comment: everything but NUL.
NO_NUL_PATTERN = r"^[^\x00]*$"


def _reserved_cel(expr: str, names: tuple[str, ...], prefixes: tuple[str, ...]) -> str:
    starts = "".join(f" || {expr}.startsWith('{p}')" for p in prefixes)
    return f"({expr} in {_cel_list(names)}{starts})"


def reserved_role(name: str) -> bool:
    """Whether a role name is PostgreSQL's or pgherd's (see RESERVED_ROLE_NAMES)."""
    return name in RESERVED_ROLE_NAMES or name.startswith(RESERVED_ROLE_PREFIXES)


def reserved_membership(name: str) -> bool:
    """Whether a managed role may not be made a member of this role."""
    return name in RESERVED_MEMBERSHIPS or name.startswith(RESERVED_MEMBERSHIP_PREFIXES)


RoleName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ROLE_NAME_BYTES, pattern=NO_NUL_PATTERN),
]


class ManagedRole(ApiModel):
    """A PostgreSQL role the operator keeps as declared on the primary: created when missing,
    set back when changed by hand, dropped only with ensure: absent."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "bytes(self.name).size() <= " + str(MAX_ROLE_NAME_BYTES),
                    f"managed.roles: a role name is at most {MAX_ROLE_NAME_BYTES} bytes "
                    "(PostgreSQL's limit) in UTF-8",
                    ".name",
                ),
                {
                    "rule": "!"
                    + _reserved_cel("self.name", RESERVED_ROLE_NAMES, RESERVED_ROLE_PREFIXES),
                    "messageExpression": "'managed.roles: ' + self.name + ' is a reserved "
                    "role name (postgres, replicator, pgherd and names starting with pg_ or "
                    "pgherd_ belong to PostgreSQL and pgherd)'",
                    "message": "managed.roles: the role name is reserved (postgres, "
                    "replicator, pgherd, pg_*, pgherd_*)",
                    "fieldPath": ".name",
                },
                {
                    "rule": "self.inRoles.all(r, !"
                    + _reserved_cel("r", RESERVED_MEMBERSHIPS, RESERVED_MEMBERSHIP_PREFIXES)
                    + ")",
                    "messageExpression": "'managed.roles: ' + self.name + ' may not be a "
                    "member of ' + self.inRoles.filter(r, "
                    + _reserved_cel("r", RESERVED_MEMBERSHIPS, RESERVED_MEMBERSHIP_PREFIXES)
                    + ")[0] + ' (postgres, replicator, pgherd and pgherd_* are reserved; "
                    "predefined pg_* roles are allowed)'",
                    "message": "managed.roles: inRoles names a reserved role",
                    "fieldPath": ".inRoles",
                },
                _cel(
                    "!self.inRoles.exists(r, r == self.name)",
                    "managed.roles: a role cannot be a member of itself",
                    ".inRoles",
                ),
                _cel(
                    "!(has(self.passwordSecret) && self.disablePassword)",
                    "managed.roles: passwordSecret and disablePassword exclude each other",
                    ".disablePassword",
                ),
            ]
        }
    )

    name: RoleName = Field(
        description="Role name, exactly as PostgreSQL stores it (case-sensitive; any "
        "characters but NUL, at most 63 bytes; quoted by pgherd). Not postgres, replicator, "
        "pgherd, the bootstrap owner, nor a name starting with pg_ or pgherd_.",
    )
    ensure: Literal["present", "absent"] = Field(
        default="present",
        description="present: the role exists as declared. absent: pgherd drops it (a role "
        "that still owns objects or holds privileges is not dropped: the error is reported "
        "in status.managedRoles). A role removed from this list is left as it is.",
    )
    login: bool = Field(default=False, description="LOGIN: the role may log in.")
    superuser: bool = Field(
        default=False,
        description="SUPERUSER. Never given unless set here: a superuser bypasses every "
        "permission check.",
    )
    createdb: bool = Field(default=False, description="CREATEDB: may create databases.")
    createrole: bool = Field(default=False, description="CREATEROLE: may create roles.")
    replication: bool = Field(
        default=False, description="REPLICATION: may stream WAL (never given unless set here)."
    )
    bypassrls: bool = Field(default=False, description="BYPASSRLS: bypasses row-level security.")
    inherit: bool = Field(
        default=True, description="INHERIT: uses the privileges of the roles it is a member of."
    )
    connection_limit: int = Field(
        default=-1,
        ge=-1,
        le=1000000,
        description="CONNECTION LIMIT: concurrent connections of the role; -1 for no limit.",
    )
    valid_until: datetime | None = Field(
        default=None,
        description="VALID UNTIL: when the role's password stops working (RFC 3339, e.g. "
        "2030-01-01T00:00:00Z; compared to the second). Unset: no expiry (a date set by hand "
        "is removed).",
    )
    in_roles: list[RoleName] = Field(
        default_factory=list,
        max_length=MAX_ROLE_MEMBERSHIPS,
        description="Roles this role is a member of, exactly: memberships granted by hand "
        "that are not listed are revoked. Predefined roles such as pg_monitor and "
        "pg_read_all_data are allowed; postgres, replicator and pgherd's roles are not.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    comment: str = Field(
        default="",
        max_length=1024,
        pattern=NO_NUL_PATTERN,
        description="COMMENT ON ROLE; empty: no comment.",
    )
    password_secret: SecretReference | None = Field(
        default=None,
        description="A kubernetes.io/basic-auth Secret (keys username, equal to the role "
        "name, and password) with the role's password. It must opt in to pgherd: label "
        'pgherd.io/use: "true" (and, optionally, annotation pgherd.io/allowed-clusters). A '
        "changed password is set within a resync; the server only ever receives its SCRAM "
        "verifier. Unset (and disablePassword false): the password is not managed.",
    )
    disable_password: bool = Field(
        default=False,
        description="PASSWORD NULL: the role has no password (it cannot log in with one). "
        "Excludes passwordSecret.",
    )

    @field_validator("name", "in_roles")
    @classmethod
    def _fits(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if len(name.encode()) > MAX_ROLE_NAME_BYTES:
                raise ValueError(f"role name {name!r} is longer than 63 bytes")
        return value


class ManagedSpec(ApiModel):
    """Objects inside PostgreSQL that the operator keeps as declared."""

    roles: list[ManagedRole] = Field(
        default_factory=list,
        max_length=MAX_MANAGED_ROLES,
        description="Roles reconciled on the primary at every pass: created, altered back to "
        "this declaration when changed by hand, dropped with ensure: absent. Their state is "
        "in status.managedRoles.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


# ---- major upgrade (spec.upgrade, status.upgrade) ------------------------------------------
UpgradeMethod = Literal["link", "clone", "copy"]
# status.upgrade.phase, in the order an upgrade goes through them (docs/major-upgrade.md).
UpgradePhase = Literal[
    "Preflight",
    "PreflightFailed",
    "BackingUp",
    "Stopping",
    "Upgrading",
    "Resetting",
    "Starting",
    "Analyzing",
    "Completed",
    "Failed",
    "RollingBack",
]
UPGRADE_PHASES: tuple[str, ...] = get_args(UpgradePhase)
# The phases after which spec.postgresVersion may go back to status.upgrade.fromVersion:
# nothing was changed (the preflight found problems), or the upgrade failed. Whether the old
# cluster can still be returned to after a failure (not in link mode once the new server has
# started) is the operator's to judge and report; the API only permits the request.
ROLLBACK_PHASES = ("PreflightFailed", "Failed")
# A preflight report's problems kept in status (the pod's termination summary holds fewer).
MAX_UPGRADE_PROBLEMS = 32


class RehearsalCheck(ApiModel):
    """SQL that judges the rehearsed upgrade, run on the upgraded throwaway copy."""

    database: Identifier | None = Field(
        default=None,
        description="The database the query runs in; spec.bootstrap.database when unset.",
    )
    query: str = Field(
        min_length=1,
        max_length=8192,
        description="Run as the application owner (spec.bootstrap.owner), never as the "
        "superuser, with a 60 s statement timeout. The check passes when it runs without "
        "error and the first value of its first row is true, e.g. "
        "SELECT count(*) = 5000 FROM items. Several statements separated by ; may be given "
        "(no parameters): the last one's row counts.",
    )


class UpgradeRehearsalSpec(ApiModel):
    """A rehearsal of the major upgrade on a throwaway copy; the cluster itself is untouched."""

    postgres_version: int = Field(
        ge=13,
        le=19,
        description="The major to rehearse the upgrade to; above the version the cluster runs.",
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Operand image of postgresVersion, as spec.image would name it for the "
        "real upgrade; the operator's image for that major when unset.",
    )
    backup: str | None = Field(
        default=None,
        max_length=253,
        description="The PostgresBackup (of this cluster, Completed) to restore; the latest "
        "Completed one of the cluster's current database system when unset.",
    )
    check: RehearsalCheck | None = Field(
        default=None, description="SQL that must hold on the upgraded copy."
    )
    run: str | None = Field(
        default=None,
        max_length=63,
        description="Any text: a rehearsal runs once per distinct spec.upgrade.rehearsal, so "
        "change run (e.g. to a date) to rehearse again with the same settings.",
    )
    timeout_minutes: int = Field(
        default=60,
        ge=5,
        le=1440,
        description="A rehearsal still running this long after it started fails "
        "(RehearsalTimedOut) and its copy is deleted.",
    )


class UpgradeSpec(ApiModel):
    """How a major upgrade (raising spec.postgresVersion) is carried out."""

    method: UpgradeMethod = Field(
        default="link",
        description="How pg_upgrade carries the data files into the new major. link (the "
        "default): hard links, seconds whatever the size and no extra space; but once the new "
        "server has started, both clusters share the files and the old one cannot be "
        "returned to (only a backup can). clone: reflinks (copy on write), nearly as fast, "
        "and the old cluster stays intact; needs a filesystem with reflinks (XFS with "
        "reflink=1, Btrfs), which the preflight checks. copy: a full copy, as slow as the data "
        "is large, the old cluster intact; needs twice the data's space on the volume.",
    )
    backup_first: bool = Field(
        default=False,
        description="Take a base backup (a PostgresBackup, to spec.backup's object store) "
        "and wait for it to complete before stopping anything, so that the old major's data "
        "can be restored whatever happens. Requires spec.backup.",
    )
    rehearsal: UpgradeRehearsalSpec | None = Field(
        default=None,
        description="Rehearse the upgrade: restore a base backup into a throwaway cluster "
        "(<name>-rehearsal, one instance, no archiving), upgrade it to postgresVersion with "
        "this method, run check, report in status.rehearsal (durations, outage, the check's "
        "result), then delete the copy. The cluster itself is untouched.",
    )


class UpgradeProblem(ApiModel):
    """A problem the upgrade's preflight found (the shape `pgherd upgrade check` reports)."""

    check: str = Field(
        max_length=64,
        description="The check that found it: extension, extension-version, preload-library, "
        "parameter, method, initdb or pg_upgrade.",
    )
    subject: str = Field(
        max_length=1024, description="What it is about, e.g. 'adminpack in database app'."
    )
    message: str = Field(max_length=4096, description="What is wrong.")
    hint: str = Field(max_length=4096, description="What to do about it.")
    severity: Literal["error", "warning"] = Field(
        description="error: the upgrade cannot proceed until it is fixed; warning: it can, "
        "but something needs attention (e.g. ALTER SYSTEM settings, which are not carried)."
    )


class UpgradeStatus(ApiModel):
    """The last major upgrade of the cluster; written by the operator only."""

    phase: UpgradePhase | None = Field(
        default=None,
        json_schema_extra={"maxLength": 32},
        description="Where the upgrade is. Preflight: a copy of the primary's data is checked "
        "with the new major (pg_upgrade --check); nothing is stopped. PreflightFailed: it "
        "found problems (see problems); nothing was changed and the cluster runs fromVersion; "
        "fix them, or set postgresVersion back to fromVersion. BackingUp: the base backup "
        "(spec.upgrade.backupFirst) is being taken. Stopping: the instances are being "
        "stopped; writes stop here (outageStartedAt). Upgrading: pg_upgrade runs on the "
        "primary's volume. Resetting: Patroni's state is handed to the new database system "
        "(systemIdentifier). Starting: the upgraded primary starts on toVersion. Analyzing: "
        "the primary serves again while statistics are gathered and the replicas are "
        "re-created from it. Completed: done. RollingBack: pg_upgrade failed; the old "
        "cluster is being put back as it was. Failed: the attempt ended (reason, message): a "
        "backup before it failed, or pg_upgrade did and the cluster runs fromVersion again "
        "(its replicas as they were). A failed attempt is not repeated for the same spec: "
        "fix the cause and change the spec to try again, or set postgresVersion back to "
        "fromVersion.",
    )
    generation: int | None = Field(
        default=None,
        description="metadata.generation the attempt started for: a failed attempt is tried "
        "again only for a later one.",
    )
    runs: int | None = Field(
        default=None,
        ge=0,
        description="How often the current phase's Job ended without a report (its pod lost) "
        "and was run again (at most twice).",
    )
    from_version: int | None = Field(
        default=None, ge=13, le=19, description="The major the cluster ran before the upgrade."
    )
    to_version: int | None = Field(
        default=None, ge=13, le=19, description="The major it is upgraded to."
    )
    from_image: str | None = Field(
        default=None, max_length=1024, description="Operand image of fromVersion."
    )
    to_image: str | None = Field(
        default=None, max_length=1024, description="Operand image of toVersion."
    )
    method: UpgradeMethod | None = Field(
        default=None, description="spec.upgrade.method as the upgrade started with it."
    )
    primary: str | None = Field(
        default=None,
        max_length=63,
        description="The instance (pod name) whose data volume is upgraded; the other "
        "instances are re-created from it.",
    )
    started_at: datetime | None = Field(default=None, description="When the upgrade started.")
    finished_at: datetime | None = Field(
        default=None,
        description="When it ended: Completed, PreflightFailed or Failed.",
    )
    outage_started_at: datetime | None = Field(
        default=None, description="When the instances began to stop: the write outage's start."
    )
    outage_seconds: float | None = Field(
        default=None,
        ge=0,
        description="How long the cluster took no writes: from outageStartedAt until the "
        "upgraded primary served again (after a rollback: until the old cluster was put "
        "back, before it starts).",
    )
    system_identifier: str | None = Field(
        default=None,
        max_length=20,
        pattern=r"^[0-9]+$",
        description="The new database system's identifier (pg_controldata): pg_upgrade makes "
        "a new system, so old base backups and WAL do not restore onto it.",
    )
    backup: str | None = Field(
        default=None,
        max_length=253,
        description="The PostgresBackup taken before the upgrade (spec.upgrade.backupFirst).",
    )
    reason: str | None = Field(
        default=None,
        max_length=1024,
        description="CamelCase reason of the phase when it ended: UpgradeCompleted, "
        "UpgradePreflightFailed, UpgradeFailed or UpgradeRollbackFailed (the cluster is kept "
        "stopped: see message).",
    )
    message: str | None = Field(
        default=None, max_length=32768, description="What happened, and what to do next."
    )
    problems: list[UpgradeProblem] | None = Field(
        default=None,
        max_length=MAX_UPGRADE_PROBLEMS,
        description="What the preflight found (at most "
        f"{MAX_UPGRADE_PROBLEMS}; message says when there were more). Errors hold the "
        "upgrade back until they are fixed.",
    )


class PostgresClusterSpec(ApiModel):
    """Desired state of a highly available PostgreSQL cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                # (Lowering postgresVersion is judged at the root: it needs status.upgrade.)
                _cel(
                    "!has(self.upgrade) || !self.upgrade.backupFirst || has(self.backup)",
                    "spec.upgrade.backupFirst needs spec.backup: the base backup taken before "
                    "the upgrade goes to spec.backup's object store",
                    ".upgrade.backupFirst",
                ),
                # Managed roles: the bootstrap owner's password is pgherd's (rotation).
                _cel(
                    "!has(self.managed) || self.managed.roles.all(r, r.name != "
                    "self.bootstrap.owner)",
                    "managed.roles: the bootstrap owner (spec.bootstrap.owner) is managed by "
                    "pgherd itself and cannot be a managed role",
                    ".managed",
                ),
            ]
        }
    )

    instances: int = Field(
        default=3,
        ge=1,
        le=MAX_INSTANCES,
        description="Number of PostgreSQL instances: one primary, the rest streaming replicas.",
    )
    postgres_version: int = Field(
        default=DEFAULT_POSTGRES_VERSION,
        ge=13,
        le=19,
        description="PostgreSQL major version. It selects the operand image (the operator's "
        "image for that major) unless spec.image is set; an image running another major is "
        "reported as Degraded (VersionMismatch). Raising it on a cluster that has run starts an "
        "offline major upgrade (see spec.upgrade and status.upgrade): a preflight on a copy of "
        "the data, an optional base backup, then every instance is stopped, pg_upgrade runs "
        "on the primary's volume, the primary starts on the new major and the replicas are "
        "re-created from it. It cannot be lowered, except back to status.upgrade.fromVersion "
        "after a failed upgrade or preflight.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Operand image (PostgreSQL of postgresVersion with Patroni and pgherd). "
        "When unset, the operator's image for postgresVersion is used: the one OLM (or the "
        "operator's RELATED_IMAGE_POSTGRES[_<major>] settings) names, mirrored and pinned by "
        "digest where the catalog is; see imageUpdatePolicy for operator upgrades.",
    )
    image_update_policy: Literal["Pinned", "FollowOperator"] = Field(
        default="Pinned",
        description="When spec.image is unset: Pinned keeps the image the cluster runs "
        "(status.image) across operator upgrades, so upgrading the operator never restarts "
        "a cluster; FollowOperator takes the upgraded operator's image, with a rolling update "
        "(replicas first, then a switchover).",
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Persistent storage of each instance."
    )
    resources: ResourcesSpec = Field(
        default_factory=lambda: ResourcesSpec(requests=dict(DEFAULT_REQUESTS)),
        description="Compute resources of the postgres container. When set, it replaces the "
        "default (requests: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_REQUESTS.items())
        + ") as a whole.",
    )
    postgresql: PostgresqlSpec = Field(
        default_factory=PostgresqlSpec, description="PostgreSQL server settings."
    )
    bootstrap: BootstrapSpec = Field(
        default_factory=BootstrapSpec,
        description="Database and owner created at initialisation. Immutable.",
    )
    patroni: PatroniSpec = Field(
        default_factory=PatroniSpec, description="Patroni's failure-detection timing."
    )
    synchronous_mode: Literal["off", "on", "strict"] = Field(
        default="off",
        description="Replication durability: off (asynchronous), on (synchronous while a "
        "synchronous replica is available) or strict (writes stop rather than run without "
        "a synchronous replica).",
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Where instances run."
    )
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The client Services.")
    switchover: SwitchoverSpec | None = Field(
        default=None, description="Request a planned switchover."
    )
    credentials: CredentialsSpec = Field(
        default_factory=CredentialsSpec,
        description="Password rotation on request (replication authenticates by certificate).",
    )
    tls: TlsSpec = Field(
        default_factory=TlsSpec,
        description="TLS on every connection (always on; see allowPlainText for legacy clients).",
    )
    # Backups: WAL archiving and base backups.
    backup: BackupSpec | None = Field(
        default=None,
        description="Continuous WAL archiving and base backups to an S3-compatible store.",
    )
    monitoring: MonitoringSpec | None = Field(
        default=None,
        description="Prometheus metrics: user-defined queries and a PodMonitor. The instances "
        "serve their built-in metrics without it.",
    )
    # Managed roles (spec.managed.roles).
    managed: ManagedSpec | None = Field(
        default=None,
        description="Roles the operator keeps inside PostgreSQL as declared.",
    )
    upgrade: UpgradeSpec = Field(
        default_factory=UpgradeSpec,
        description="How a major upgrade (raising postgresVersion) is carried out: the "
        "pg_upgrade method and whether a base backup is taken first.",
    )


class Condition(ApiModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )
    last_transition_time: datetime = Field(description="When the status last changed.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason of the last transition.",
    )
    message: str = Field(max_length=32768, description="Human-readable details.")


class InstanceStatus(ApiModel):
    """Observed state of one instance, as Patroni reports it."""

    name: str = Field(description="Pod name.")
    role: str | None = Field(
        default=None, description="Patroni role, e.g. leader, replica, sync_standby."
    )
    state: str | None = Field(default=None, description="Patroni state, e.g. running, streaming.")
    lag_bytes: int | None = Field(
        default=None,
        description="Replication lag behind the primary in bytes, rounded down to whole MiB "
        "(so an idle cluster's status stays still); null when unknown.",
    )
    ready: bool = Field(default=False, description="Whether the pod is Ready.")
    volume: VolumeStatus | None = Field(
        default=None,
        description="The instance's data volume as the instance last measured it (null: not "
        "reported yet).",
    )


class StorageStatus(ApiModel):
    """What spec.storage.autoGrow did to the data volumes."""

    grown_size: str | None = Field(
        default=None,
        description="The size autoGrow expanded the claims to. The claims' size is the larger "
        "of this and spec.storage.size: a spec.storage.size below it is no shrink.",
    )


class VolumeStatus(ApiModel):
    """An instance's data volume, measured by the instance (statvfs and pg_wal's files)."""

    size_bytes: int = Field(ge=0, description="Size of the volume's filesystem.")
    used_bytes: int = Field(ge=0, description="Bytes used on the volume.")
    available_bytes: int = Field(ge=0, description="Bytes still available to PostgreSQL.")
    wal_bytes: int | None = Field(default=None, ge=0, description="Size of pg_wal.")
    used_percent: int = Field(
        ge=0, le=100, description="used / (used + available), in percent, as df shows it."
    )
    growth_bytes_per_second: int | None = Field(
        default=None,
        description="How fast the used bytes grew between the last two measurements (negative: "
        "shrank; null: unknown), from which the time to full is predicted.",
    )
    measured_at: datetime | None = Field(
        default=None, description="When the operator saw these figures change."
    )


class EndpointsStatus(ApiModel):
    """Where clients connect, as host:port."""

    read_write: str | None = Field(default=None, description="The primary (<cluster>-rw Service).")
    read_only: str | None = Field(default=None, description="The replicas (<cluster>-ro Service).")
    any_: str | None = Field(
        default=None, alias="any", description="Any instance (<cluster>-r Service)."
    )


class SecretsStatus(ApiModel):
    """Names of the Secrets holding the cluster's credentials."""

    superuser: str | None = Field(default=None, description="Secret of the postgres superuser.")
    replication: str | None = Field(default=None, description="Secret of the replication role.")
    app: str | None = Field(
        default=None,
        description="Secret of the application owner, with host, port, dbname and uri.",
    )


class ClusterBackupStatus(ApiModel):
    """What the cluster's WAL archive and base backups look like."""

    last_archived_wal: str | None = Field(default=None, description="Last WAL file archived.")
    last_archived_time: datetime | None = Field(
        default=None, description="When the last WAL file was archived."
    )
    last_failed_wal: str | None = Field(
        default=None, description="Last WAL file whose archiving failed."
    )
    last_failed_time: datetime | None = Field(
        default=None, description="When archiving last failed."
    )
    first_recoverability_point: datetime | None = Field(
        default=None,
        description="Earliest time the cluster can be restored to: the end of the oldest "
        "base backup in the store.",
    )
    last_successful_backup: str | None = Field(
        default=None, description="barman id of the newest completed base backup in the store."
    )
    last_successful_backup_time: datetime | None = Field(
        default=None, description="When the newest completed base backup ended."
    )
    last_schedule_time: datetime | None = Field(
        default=None, description="Time of the last scheduled backup run (spec.backup.schedule)."
    )
    server_name: str | None = Field(
        default=None,
        max_length=253,
        description="The name the cluster archives WAL and base backups under in the object "
        "store: spec.backup.serverName (or the cluster's name), followed by the database "
        "system identifier after a major upgrade, since the upgraded system starts its WAL "
        "names over and its backups restore only onto the new major.",
    )
    restored_from: RecoverySource | None = Field(
        default=None,
        description="spec.bootstrap.recovery.source resolved to an object store, server name "
        "and backup id when the cluster was created; kept so that the cluster does not "
        "depend on the source PostgresBackup afterwards.",
    )


class IgnoredParameter(ApiModel):
    """A spec.postgresql.parameters entry the server does not run with, and why."""

    name: str = Field(description="Parameter name.")
    value: str | None = Field(default=None, description="The value asked for.")
    reason: str = Field(description="Why it is not in effect.")


class CredentialStatus(ApiModel):
    """The rotations of one password."""

    rotation: int = Field(default=0, description="The last spec.credentials.rotate value done.")
    last_rotated: datetime | None = Field(
        default=None, description="When the password was last rotated."
    )


class CredentialsStatus(ApiModel):
    """Rotations carried out, per password."""

    app: CredentialStatus | None = Field(default=None, description="The app owner's password.")
    superuser: CredentialStatus | None = Field(
        default=None, description="The postgres superuser's password."
    )


class TlsStatus(ApiModel):
    """The certificates the instances serve with."""

    source: Literal["operator", "user"] | None = Field(
        default=None,
        description="operator: issued by the cluster's own CA; user: spec.tls.serverSecret.",
    )
    server_not_after: datetime | None = Field(
        default=None, description="When the server certificate expires."
    )
    ca_not_after: datetime | None = Field(
        default=None,
        description="When the cluster's CA (the one issuing now) expires; it is rotated "
        "before, with both CAs trusted during the overlap.",
    )
    replication_not_after: datetime | None = Field(
        default=None, description="When the replication client certificate expires."
    )
    renew_at: datetime | None = Field(
        default=None,
        description="When the operator renews the first of its certificates next.",
    )


class MonitoringStatus(ApiModel):
    """Where the instances' metrics are scraped from."""

    pod_monitor: str | None = Field(
        default=None, description="The cluster's PodMonitor, when it exists."
    )
    message: str | None = Field(
        default=None, description="Why no PodMonitor exists although one was asked for."
    )


class ManagedRoleStatus(ApiModel):
    """What the operator last found or did for one of spec.managed.roles."""

    name: str = Field(description="Role name.")
    state: Literal["Reconciled", "Pending", "Failed", "Absent"] = Field(
        description="Reconciled: the role is as declared. Pending: not checked yet (no "
        "primary reachable). Failed: see message. Absent: ensure: absent and the role does "
        "not exist."
    )
    message: str | None = Field(default=None, description="The last error, or what is awaited.")


RehearsalPhase = Literal["Restoring", "Upgrading", "Checking", "Succeeded", "Failed"]
REHEARSAL_PHASES: tuple[str, ...] = get_args(RehearsalPhase)


class RehearsalStatus(ApiModel):
    """The last rehearsal of a major upgrade (spec.upgrade.rehearsal); written by the operator."""

    phase: RehearsalPhase | None = Field(
        default=None,
        json_schema_extra={"maxLength": 16},
        description="Restoring: the backup is restored into the throwaway cluster. Upgrading: "
        "its major upgrade runs. Checking: spec.upgrade.rehearsal.check runs on it. "
        "Succeeded or Failed (reason, message): done, and the throwaway cluster is deleted.",
    )
    request: str | None = Field(
        default=None,
        max_length=64,
        description="Hash of the spec.upgrade.rehearsal this rehearsal ran for: a changed spec "
        "starts a new one.",
    )
    cluster: str | None = Field(
        default=None, max_length=63, description="The throwaway PostgresCluster."
    )
    backup: str | None = Field(
        default=None, max_length=253, description="The PostgresBackup restored."
    )
    from_version: int | None = Field(default=None, ge=13, le=19, description="The major restored.")
    to_version: int | None = Field(default=None, ge=13, le=19, description="The major rehearsed.")
    method: UpgradeMethod | None = Field(default=None, description="The pg_upgrade method used.")
    started_at: datetime | None = Field(default=None, description="When the rehearsal started.")
    restored_at: datetime | None = Field(
        default=None, description="When the copy was restored and healthy."
    )
    finished_at: datetime | None = Field(default=None, description="When it ended.")
    restore_seconds: float | None = Field(
        default=None, ge=0, description="Restore of the backup until the copy was healthy."
    )
    upgrade_seconds: float | None = Field(
        default=None, ge=0, description="The copy's major upgrade, start to Completed."
    )
    outage_seconds: float | None = Field(
        default=None,
        ge=0,
        description="The copy's write outage during its upgrade: what the real upgrade's is "
        "expected to be, for a cluster of one instance on the same storage.",
    )
    check_passed: bool | None = Field(
        default=None, description="Whether spec.upgrade.rehearsal.check held; unset: no check."
    )
    check_result: str | None = Field(
        default=None,
        max_length=1024,
        description="The check's first value, or the error it ended with.",
    )
    reason: str | None = Field(
        default=None,
        max_length=1024,
        description="CamelCase reason of the outcome: RehearsalSucceeded, RehearsalNoBackup, "
        "RehearsalNotAnUpgrade, RehearsalNameTaken, RehearsalUpgradeFailed, "
        "RehearsalCheckFailed or RehearsalTimedOut.",
    )
    message: str | None = Field(
        default=None, max_length=32768, description="What happened, and what to do next."
    )
    problems: list[UpgradeProblem] | None = Field(
        default=None,
        max_length=MAX_UPGRADE_PROBLEMS,
        description="What the rehearsed upgrade's preflight found.",
    )


class PostgresClusterStatus(ApiModel):
    """Observed state of the cluster; written by the operator only."""

    phase: str | None = Field(default=None, description="Summary of the cluster's state.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Standard conditions, e.g. Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last acted on."
    )
    instances: int | None = Field(default=None, description="Number of instance pods.")
    ready_instances: int | None = Field(default=None, description="Number of Ready instance pods.")
    current_primary: str | None = Field(
        default=None, description="Pod name of the current primary."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the instance pods (for the scale subresource)."
    )
    instances_status: list[InstanceStatus] | None = Field(
        default=None,
        description="Per-instance state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    endpoints: EndpointsStatus | None = Field(default=None, description="Where clients connect.")
    pending_restart: bool | None = Field(
        default=None, description="Whether some instance needs a restart to apply parameters."
    )
    secrets: SecretsStatus | None = Field(
        default=None, description="Names of the credential Secrets."
    )
    switchover_handled: str | None = Field(
        default=None,
        description="spec.switchover.targetInstance of the last switchover request carried out; "
        "a request equal to it is not repeated. Cleared when spec.switchover is removed.",
    )
    ignored_parameters: list[IgnoredParameter] | None = Field(
        default=None,
        description="spec.postgresql.parameters the instances do not run with: rejected by "
        "Patroni's validation for this PostgreSQL version, or held back by the operator (a "
        "library the image does not have). Also reported as Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    postgres_version: int | None = Field(
        default=None, description="PostgreSQL major version the instances run."
    )
    image: str | None = Field(
        default=None,
        description="Operand image of the instances: spec.image, or the operator's image "
        "for postgresVersion, kept while spec.imageUpdatePolicy is Pinned.",
    )
    tls: TlsStatus | None = Field(default=None, description="Certificates and their expiry.")
    credentials: CredentialsStatus | None = Field(
        default=None, description="Password rotations carried out."
    )
    monitoring: MonitoringStatus | None = Field(
        default=None, description="The PodMonitor (spec.monitoring.enablePodMonitor)."
    )
    managed_roles: list[ManagedRoleStatus] | None = Field(
        default=None,
        description="State of each of spec.managed.roles.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    storage: StorageStatus | None = Field(
        default=None,
        description="The data volumes' size as spec.storage.autoGrow grew it.",
    )
    # Backups
    backup: ClusterBackupStatus | None = Field(
        default=None, description="WAL archive and base backups (when spec.backup is set)."
    )
    upgrade: UpgradeStatus | None = Field(
        default=None,
        description="The last major upgrade (raising spec.postgresVersion): its phase, "
        "versions, timing and outage, and the preflight's problems.",
    )
    rehearsal: RehearsalStatus | None = Field(
        default=None,
        description="The last rehearsal of a major upgrade (spec.upgrade.rehearsal).",
    )
    kopf: FreeForm | None = Field(
        default=None, description="Bookkeeping of the operator framework (kopf)."
    )


# Rules on the whole object: CEL may read metadata.name there (and nowhere else).
ROOT_VALIDATIONS = [
    _cel(
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters: children append suffixes",
    ),
    _cel(
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must be a DNS-1035 label (start with a letter, no dots): it names Services",
    ),
]


# A lower postgresVersion is refused, but for a return to the major a failed upgrade (or
# preflight) started from. Only the root sees both spec and status; status is written through
# its subresource, by the operator only, so a user cannot grant the permission. The has()
# guards keep a status without these fields a plain refusal rather than an evaluation error.
POSTGRES_VERSION_RULE = _cel(
    "self.spec.postgresVersion >= oldSelf.spec.postgresVersion || ("
    "has(oldSelf.status) && has(oldSelf.status.upgrade)"
    " && has(oldSelf.status.upgrade.phase) && has(oldSelf.status.upgrade.fromVersion)"
    f" && oldSelf.status.upgrade.phase in {_cel_list(ROLLBACK_PHASES)}"
    " && self.spec.postgresVersion == oldSelf.status.upgrade.fromVersion)",
    "postgresVersion cannot be lowered, except back to status.upgrade.fromVersion after a "
    "failed upgrade or preflight",
    ".spec.postgresVersion",
)
CLUSTER_ROOT_VALIDATIONS = [*ROOT_VALIDATIONS, POSTGRES_VERSION_RULE]


# barman's reserved backup identifiers: a PostgresBackup's name is its barman backup name, and
# barman-cloud-backup refuses these (barman.utils.RESERVED_BACKUP_IDS).
BARMAN_RESERVED_NAMES = (
    "latest", "last", "oldest", "first", "last-failed", "latest-full", "last-full", "auto",
)  # fmt: skip
BACKUP_ROOT_VALIDATIONS = [
    _cel(
        "!(self.metadata.name in " + json.dumps(list(BARMAN_RESERVED_NAMES)) + ")",
        "metadata.name must not be one of barman's reserved backup names ("
        + ", ".join(BARMAN_RESERVED_NAMES)
        + "): the backup is stored under its name",
    ),
]


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the operator reads; the rest is ignored."""

    name: str = Field(description="Object name.")
    namespace: str = Field(description="Object namespace.")
    uid: str | None = Field(default=None, description="Object UID.")
    generation: int | None = Field(default=None, description="Generation of the spec.")
    labels: dict[str, str] = Field(default_factory=dict, description="Object labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Object annotations.")


class PostgresCluster(ApiModel):
    """A highly available PostgreSQL cluster managed by pgherd."""

    api_version: str = Field(default=API_VERSION, description="API version.")
    kind: str = Field(default=KIND, description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: PostgresClusterSpec = Field(
        default_factory=PostgresClusterSpec, description="Desired state."
    )
    status: PostgresClusterStatus | None = Field(default=None, description="Observed state.")


# ---- PostgresBackup ---------------------------------------------------------------------
class PostgresBackupSpec(ApiModel):
    """A base backup of a PostgresCluster to its object store. Immutable."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [_cel("self == oldSelf", "spec is immutable")]
        }
    )

    cluster: str = Field(
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the PostgresCluster (same namespace); it needs spec.backup.",
    )
    method: Literal["barmanObjectStore"] = Field(
        default="barmanObjectStore",
        description="How the backup is taken: barman-cloud-backup, run by the chosen "
        "instance, into the cluster's spec.backup.objectStore.",
    )
    target: Literal["primary", "prefer-standby"] | None = Field(
        default=None,
        description="Instance to take it from: primary, or prefer-standby (a ready "
        "streaming replica when one exists, else the primary); the cluster's "
        "spec.backup.target when unset.",
    )


class PostgresBackupStatus(ApiModel):
    """Observed state of a base backup."""

    phase: Literal["Pending", "Running", "Completed", "Failed"] | None = Field(
        default=None, description="Pending, Running, Completed or Failed."
    )
    instance: str | None = Field(default=None, description="Pod that takes the backup.")
    instance_uid: str | None = Field(
        default=None, description="UID of that pod (a new pod of the same name does not resume)."
    )
    backup_id: str | None = Field(default=None, description="barman backup id in the store.")
    destination: str | None = Field(
        default=None, description="Object store URL of the backup (s3://bucket/path)."
    )
    server_name: str | None = Field(default=None, description="Server name (folder) in the store.")
    begin_wal: str | None = Field(default=None, description="First WAL file the backup needs.")
    end_wal: str | None = Field(default=None, description="Last WAL file the backup needs.")
    begin_lsn: str | None = Field(default=None, description="WAL location at the start.")
    end_lsn: str | None = Field(default=None, description="WAL location at the end.")
    begin_time: datetime | None = Field(default=None, description="When the backup started.")
    end_time: datetime | None = Field(
        default=None, description="When it ended: the earliest time it can restore to."
    )
    size: int | None = Field(default=None, description="Size of the backed-up data in bytes.")
    timeline: int | None = Field(default=None, description="Timeline of the backup.")
    error: str | None = Field(default=None, description="Why the backup failed.")
    kopf: FreeForm | None = Field(
        default=None, description="Bookkeeping of the operator framework (kopf)."
    )


class PostgresBackup(ApiModel):
    """An on-demand (or scheduled) base backup of a PostgresCluster."""

    api_version: str = Field(default=API_VERSION, description="API version.")
    kind: str = Field(default=BACKUP_KIND, description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: PostgresBackupSpec = Field(description="Desired state.")
    status: PostgresBackupStatus | None = Field(default=None, description="Observed state.")


# ---- PostgresPooler ---------------------------------------------------------------------
POOLER_KIND = "PostgresPooler"
POOLER_PLURAL = "postgrespoolers"
POOLER_SINGULAR = "postgrespooler"
POOLER_SHORT_NAMES = ("pgp",)
MAX_POOLER_INSTANCES = 10
# The login role PgBouncer's auth_query runs as (pgherd.controller.pooler creates it).
POOLER_USERNAME = "pgherd_pooler"
# PgBouncer settings a PostgresPooler may set (spec.parameters). Everything else is refused by
# the API: the operator owns listening, authentication, TLS, files and the databases section,
# and an unknown name would make PgBouncer refuse to start.
POOLER_PARAMETERS: tuple[str, ...] = (
    "max_client_conn", "default_pool_size", "min_pool_size", "reserve_pool_size",
    "reserve_pool_timeout", "max_db_connections", "max_user_connections",
    "server_round_robin", "server_idle_timeout", "server_lifetime", "server_connect_timeout",
    "server_login_retry", "server_reset_query", "server_reset_query_always",
    "server_check_query", "server_check_delay", "server_fast_close", "query_timeout",
    "query_wait_timeout", "cancel_wait_timeout", "client_idle_timeout", "client_login_timeout",
    "idle_transaction_timeout", "autodb_idle_timeout", "suspend_timeout",
    "ignore_startup_parameters", "disable_pqexec", "application_name_add_host",
    "log_connections", "log_disconnections", "log_pooler_errors", "log_stats", "stats_period",
    "verbose", "tcp_keepalive", "tcp_keepcnt", "tcp_keepidle", "tcp_keepintvl",
    "tcp_user_timeout", "tcp_defer_accept", "tcp_socket_buffer", "pkt_buf", "sbuf_loopcnt",
    "max_packet_size", "listen_backlog", "dns_max_ttl", "dns_nxdomain_ttl", "dns_zone_check_period",
    "max_prepared_statements",
)  # fmt: skip
# Settings the operator writes itself: named in the API's refusal so that the message says why.
POOLER_OWNED_PARAMETERS: tuple[str, ...] = (
    "listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "unix_socket_group",
    "pidfile", "logfile", "syslog", "user", "pool_mode", "admin_users", "stats_users",
    "auth_type", "auth_file", "auth_hba_file", "auth_user", "auth_query", "auth_dbname",
    "conffile", "service_name", "job_name", "so_reuseport", "peer_id",
)  # fmt: skip
MAX_POOLER_PARAMETER_VALUE = 1024


def _pooler_parameter_rules() -> list[dict[str, JsonValue]]:
    allowed = _cel_list(POOLER_PARAMETERS)
    owned = (
        f"(k in {_cel_list(POOLER_OWNED_PARAMETERS)} || k.startsWith('auth_')"
        " || k.contains('_tls_') || k.startsWith('tls_'))"
    )
    return [
        {
            "rule": f"self.all(k, !{owned})",
            "messageExpression": "'parameters: ' + self.filter(k, " + owned + ")[0] + ' is "
            "managed by pgherd (it owns listening, authentication, TLS and files) and cannot be "
            "set'",
            "message": "parameters: a PgBouncer setting managed by pgherd cannot be set",
        },
        {
            "rule": f"self.all(k, k in {allowed} || {owned})",
            "messageExpression": "'parameters: ' + self.filter(k, !(k in " + allowed + "))[0]"
            " + ' is not a PgBouncer setting a PostgresPooler may set (see docs/pooler.md for "
            "the list)'",
            "message": "parameters: not a PgBouncer setting a PostgresPooler may set",
        },
        {
            "rule": "self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))",
            "message": "parameters: a value must not contain a line break",
        },
    ]


class PoolerResourcesSpec(ApiModel):
    """Compute resources of each pooler container (Kubernetes quantities)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Requests, e.g. {cpu: 100m, memory: 64Mi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Limits, e.g. {memory: 128Mi}."
    )


class PostgresPoolerSpec(ApiModel):
    """A PgBouncer pool in front of a PostgresCluster's read-write or read-only Service."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.cluster == oldSelf.cluster", "cluster is immutable", ".cluster"),
            ]
        }
    )

    cluster: str = Field(
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the PostgresCluster (same namespace) the pooler serves. Immutable.",
    )
    type: Literal["rw", "ro"] = Field(
        default="rw",
        description="rw: the cluster's <cluster>-rw Service (the primary); ro: <cluster>-ro "
        "(the replicas).",
    )
    instances: int = Field(
        default=1, ge=0, le=MAX_POOLER_INSTANCES, description="Number of PgBouncer pods."
    )
    pool_mode: Literal["session", "transaction"] = Field(
        default="session",
        description="session: a server connection per client session; transaction: a server "
        "connection per transaction (session state such as SET or prepared statements does not "
        "carry over).",
    )
    parameters: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=MAX_POOLER_PARAMETER_VALUE)]],
        WithJsonSchema(
            {
                "type": "object",
                "maxProperties": 64,
                "additionalProperties": {
                    "type": "string",
                    "maxLength": MAX_POOLER_PARAMETER_VALUE,
                },
                "x-kubernetes-validations": _pooler_parameter_rules(),
            }
        ),
    ] = Field(
        default_factory=dict,
        description="PgBouncer settings ([pgbouncer] section), reloaded without dropping "
        "connections. Only the settings listed in docs/pooler.md are accepted; listening, "
        "authentication, TLS and file settings are the operator's.",
    )
    paused: bool = Field(
        default=False,
        description="PAUSE the pool (for maintenance): new queries wait until it is set back "
        "to false (RESUME).",
    )
    resources: PoolerResourcesSpec = Field(
        default_factory=PoolerResourcesSpec, description="Compute resources of each pod."
    )

    @field_validator("parameters")
    @classmethod
    def _allowed(cls, parameters: dict[str, str]) -> dict[str, str]:
        # The API refuses these; a stored object from before a rule must not reach a file.
        for key, value in parameters.items():
            if key not in POOLER_PARAMETERS:
                raise ValueError(f"{key!r} is not a PgBouncer setting a PostgresPooler may set")
            if "\n" in value or "\r" in value:
                raise ValueError(f"the value of {key!r} contains a line break")
        return parameters


class PostgresPoolerStatus(ApiModel):
    """Observed state of a pooler."""

    instances: int | None = Field(default=None, description="PgBouncer pods that exist.")
    ready_instances: int | None = Field(default=None, description="PgBouncer pods ready.")
    service: str | None = Field(default=None, description="Service clients connect to.")
    paused: bool | None = Field(default=None, description="Whether the pool is paused.")
    observed_generation: int | None = Field(
        default=None, description="Generation of the spec last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, with a reason and message when not."
    )
    kopf: FreeForm | None = Field(
        default=None, description="Bookkeeping of the operator framework (kopf)."
    )


# The pooler's name names its Deployment and Service: the cluster's rules on names apply.
POOLER_ROOT_VALIDATIONS = ROOT_VALIDATIONS


class PostgresPooler(ApiModel):
    """A PgBouncer connection pooler in front of a PostgresCluster."""

    api_version: str = Field(default=API_VERSION, description="API version.")
    kind: str = Field(default=POOLER_KIND, description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: PostgresPoolerSpec = Field(description="Desired state.")
    status: PostgresPoolerStatus | None = Field(default=None, description="Observed state.")


# ---- PostgresDatabase -------------------------------------------------------------------
DATABASE_KIND = "PostgresDatabase"
DATABASE_PLURAL = "postgresdatabases"
DATABASE_SINGULAR = "postgresdatabase"
DATABASE_SHORT_NAMES = ("pgdb",)
# PostgreSQL keeps NAMEDATALEN - 1 bytes of a name and silently truncates longer ones, which
# would make the operator compare against a name that never exists.
MAX_SQL_NAME_BYTES = 63
RESERVED_DATABASES = ("postgres", "template0", "template1")
MAX_DATABASE_ITEMS = 64


def _sql_name_rules(what: str) -> list[dict[str, JsonValue]]:
    return [
        _cel(
            f"bytes(self.name).size() <= {MAX_SQL_NAME_BYTES}",
            f"{what} must be at most {MAX_SQL_NAME_BYTES} bytes (UTF-8): PostgreSQL truncates "
            "longer names",
            ".name",
        ),
    ]


def _check_sql_name(value: str) -> str:
    if len(value.encode()) > MAX_SQL_NAME_BYTES:
        raise ValueError(f"must be at most {MAX_SQL_NAME_BYTES} bytes")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


SqlName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SQL_NAME_BYTES)]
Ensure = Literal["present", "absent"]


class DatabaseExtension(ApiModel):
    """An extension in the database, from those the image ships (pg_available_extensions)."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [*_sql_name_rules("an extension name")]}
    )

    name: SqlName = Field(description="Extension name, e.g. citext.")
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Version to install or update to (ALTER EXTENSION ... UPDATE TO); the "
        "image's default version when unset.",
    )
    schema_: SqlName | None = Field(
        default=None,
        alias="schema",
        description="Schema to install it in (moved there when it differs); PostgreSQL's "
        "choice when unset.",
    )
    ensure: Ensure = Field(
        default="present", description="present installs it, absent drops it (never CASCADE)."
    )

    @field_validator("name", "schema_")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        return v if v is None else _check_sql_name(v)


class DatabaseSchema(ApiModel):
    """A schema in the database."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                *_sql_name_rules("a schema name"),
                _cel(
                    "!self.name.startsWith('pg_')",
                    "schema names starting with pg_ are reserved by PostgreSQL",
                    ".name",
                ),
            ]
        }
    )

    name: SqlName = Field(description="Schema name.")
    owner: SqlName | None = Field(
        default=None,
        description="Role that owns it (set back when changed by hand); the database owner "
        "when unset.",
    )
    ensure: Ensure = Field(
        default="present",
        description="present creates it, absent drops it (only when empty: never CASCADE).",
    )

    @field_validator("name", "owner")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        return v if v is None else _check_sql_name(v)


# Set only by CREATE DATABASE: a change could never be applied, so the API refuses it.
_CREATION_FIELDS = ("encoding", "locale", "lcCollate", "lcCtype", "template")


def _unchanged(field_name: str) -> str:
    return (
        f"has(self.{field_name}) == has(oldSelf.{field_name}) && "
        f"(!has(self.{field_name}) || self.{field_name} == oldSelf.{field_name})"
    )


class PostgresDatabaseSpec(ApiModel):
    """A database of a PostgresCluster, its owner, extensions and schemas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"bytes(self.name).size() <= {MAX_SQL_NAME_BYTES}",
                    f"name must be at most {MAX_SQL_NAME_BYTES} bytes (UTF-8): PostgreSQL "
                    "truncates longer names",
                    ".name",
                ),
                _cel(
                    "!(self.name in " + json.dumps(list(RESERVED_DATABASES)) + ")",
                    "name must not be one of PostgreSQL's own databases ("
                    + ", ".join(RESERVED_DATABASES)
                    + ")",
                    ".name",
                ),
                _cel(
                    f"bytes(self.owner).size() <= {MAX_SQL_NAME_BYTES}",
                    f"owner must be at most {MAX_SQL_NAME_BYTES} bytes (UTF-8)",
                    ".owner",
                ),
                _cel(
                    "!(has(self.locale) && (has(self.lcCollate) || has(self.lcCtype)))",
                    "set either locale or lcCollate/lcCtype, not both",
                ),
                _cel(
                    "self.extensions.all(x, self.extensions.exists_one(y, y.name == x.name))",
                    "extension names must be unique",
                    ".extensions",
                ),
                _cel(
                    "self.schemas.all(x, self.schemas.exists_one(y, y.name == x.name))",
                    "schema names must be unique",
                    ".schemas",
                ),
                *(
                    _cel(
                        _unchanged(f),
                        f"{f} is immutable: it is set only when the database is created",
                    )
                    for f in _CREATION_FIELDS
                ),
            ]
        }
    )

    cluster: str = Field(
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the PostgresCluster (same namespace) the database lives in. "
        "Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [_cel("self == oldSelf", "cluster is immutable")]
        },
    )
    name: SqlName = Field(
        description="Name of the database in PostgreSQL (any characters; quoted safely). "
        "Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [_cel("self == oldSelf", "name is immutable")]
        },
    )
    owner: SqlName = Field(
        description="Role that owns the database (it must exist; set back when changed by hand)."
    )
    encoding: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_]{1,32}$",
        description="Character encoding, e.g. UTF8. At creation only.",
    )
    locale: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="Locale (LC_COLLATE and LC_CTYPE), e.g. C or en_US.UTF-8. At creation only.",
    )
    lc_collate: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="LC_COLLATE alone. At creation only.",
    )
    lc_ctype: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="LC_CTYPE alone. At creation only.",
    )
    template: SqlName | None = Field(
        default=None,
        description="Template database; template0 when an encoding or locale is given (they "
        "may differ from template1's), else template1. At creation only.",
    )
    extensions: list[DatabaseExtension] = Field(
        default_factory=list, max_length=MAX_DATABASE_ITEMS, description="Extensions."
    )
    schemas: list[DatabaseSchema] = Field(
        default_factory=list, max_length=MAX_DATABASE_ITEMS, description="Schemas."
    )
    ensure: Ensure = Field(
        default="present",
        description="present creates and keeps the database; absent drops it (DROP DATABASE, "
        "which waits for its clients to leave).",
    )
    reclaim_policy: Literal["retain", "delete"] = Field(
        default="retain",
        description="What deleting this resource does to the database: retain keeps it, "
        "delete drops it first (the resource then carries a finalizer).",
    )

    @field_validator("name", "owner", "template")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        return v if v is None else _check_sql_name(v)


class PostgresDatabaseStatus(ApiModel):
    """Observed state of a database."""

    applied: bool | None = Field(
        default=None, description="Whether the database is as the spec says."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed from."
    )
    message: str | None = Field(default=None, description="What the last pass found or did.")
    error: str | None = Field(default=None, description="Why it is not applied, if so.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready (with a reason).")
    kopf: FreeForm | None = Field(
        default=None, description="Bookkeeping of the operator framework (kopf)."
    )


class PostgresDatabase(ApiModel):
    """A database in a PostgresCluster, kept as declared: owner, extensions, schemas."""

    api_version: str = Field(default=API_VERSION, description="API version.")
    kind: str = Field(default=DATABASE_KIND, description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: PostgresDatabaseSpec = Field(description="Desired state.")
    status: PostgresDatabaseStatus | None = Field(default=None, description="Observed state.")
