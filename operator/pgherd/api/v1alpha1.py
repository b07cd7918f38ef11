"""The pgherd.io/v1alpha1 PostgresCluster API: the one typed source for the CRD and the operator.

The CustomResourceDefinition schema is generated from these models (see pgherd.crds), so every
field carries the description `kubectl explain` shows, its default and its bounds here. CEL
rules (`x-kubernetes-validations`) sit on the object that holds the fields they compare, because
transition rules (those using `oldSelf`) only run where both the old and the new value exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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
PLURAL = "postgresclusters"
SINGULAR = "postgrescluster"
SHORT_NAMES = ("pgc",)

DEFAULT_POSTGRES_VERSION = 15
DEFAULT_IMAGE = f"pgherd/postgres:{DEFAULT_POSTGRES_VERSION}-0.1.0"
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


DEFAULT_REQUESTS: dict[str, str] = {"cpu": "250m", "memory": "512Mi"}


class ResourcesSpec(ApiModel):
    """Compute resources of the postgres container (Kubernetes ResourceRequirements)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Minimum resources the scheduler reserves, e.g. {cpu: 500m, memory: 1Gi}.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Maximum resources the container may use, e.g. {memory: 2Gi}.",
    )


class PostgresqlSpec(ApiModel):
    """PostgreSQL server settings."""

    parameters: dict[str, str] = Field(
        default_factory=dict,
        description="postgresql.conf parameters, applied through Patroni's dynamic "
        "configuration; parameters that need a restart are applied by a rolling restart.",
    )
    pg_hba: list[str] = Field(
        default_factory=list,
        description="Extra pg_hba.conf lines, inserted after the operator's replication and "
        "local rules and before the final rule requiring scram-sha-256 passwords.",
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

    @field_validator("owner")
    @classmethod
    def _owner_not_reserved(cls, owner: str) -> str:
        if owner in (SUPERUSER_USERNAME, REPLICATION_USERNAME) or owner.startswith("pg_"):
            raise ValueError(f"owner {owner!r} is reserved")
        return owner


class PatroniSpec(ApiModel):
    """Patroni's failure-detection timing (its dynamic configuration)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.loopWait + 2 * self.retryTimeout <= self.ttl",
                    "patroni: loopWait + 2 * retryTimeout must not exceed ttl",
                ),
            ]
        }
    )

    ttl: int = Field(
        default=30,
        ge=20,
        le=3600,
        description="Seconds the leader lock lives without renewal; after it expires a "
        "replica takes over.",
    )
    loop_wait: int = Field(
        default=10,
        ge=1,
        le=600,
        description="Seconds between Patroni's high-availability loop runs.",
    )
    retry_timeout: int = Field(
        default=10,
        ge=3,
        le=600,
        description="Seconds Patroni retries Kubernetes API and PostgreSQL operations before "
        "demoting the primary.",
    )
    maximum_lag_on_failover: int = Field(
        default=1048576,
        ge=0,
        le=1 << 40,
        description="Bytes a replica may lag behind and still be promoted on failover.",
    )

    @model_validator(mode="after")
    def _timing_is_safe(self) -> PatroniSpec:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
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


class PostgresClusterSpec(ApiModel):
    """Desired state of a highly available PostgreSQL cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "self.postgresVersion >= oldSelf.postgresVersion",
                    "postgresVersion cannot be lowered",
                    ".postgresVersion",
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
        description="PostgreSQL major version; it can be raised but never lowered. Must match "
        "the image.",
    )
    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        description="Operand image: PostgreSQL of postgresVersion with Patroni and pgherd.",
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
        default=None, description="Replication lag behind the primary in bytes; null when unknown."
    )
    ready: bool = Field(default=False, description="Whether the pod is Ready.")


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
