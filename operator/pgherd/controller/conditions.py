"""Condition types, reasons and phases of a PostgresCluster, defined in one place.

`set_condition` keeps lastTransitionTime when the status does not change, so that a
reconcile observing the same world computes the same status and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pgherd.api.v1alpha1 import Condition

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"

# Reasons (CamelCase, as metav1.Condition requires).
ALL_READY = "AllInstancesReady"
INSTANCES_NOT_READY = "InstancesNotReady"
NO_PRIMARY = "NoPrimary"
CREATING = "Creating"
SCALING = "Scaling"
ROLLING_UPDATE = "RollingUpdate"
RESTARTING = "RestartingForParameters"
SWITCHOVER = "Switchover"
NODE_DRAINING = "NodeDraining"  # the primary's node is cordoned: switching over first
ROTATING_CREDENTIALS = "RotatingCredentials"
UP_TO_DATE = "UpToDate"
AS_EXPECTED = "AsExpected"
STORAGE_CLASS_NOT_FOUND = "StorageClassNotFound"
INSTANCE_STUCK = "InstanceNeverReady"
# Degraded: what only the operator can see is wrong (each a Problem below).
# ruff: noqa: S105 - the SECRET_* names are reasons, not passwords
CHILD_NAME_CONFLICT = "ChildNameConflict"
CHILD_REJECTED = "ChildRejected"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_PERMITTED = "SecretNotPermitted"
SECRET_INVALID = "SecretInvalid"
TLS_CERTIFICATE_INVALID = "TLSCertificateInvalid"
REFERENCED_SECRET_CHANGED = "ReferencedSecretChanged"
INVALID_SPEC = "InvalidSpec"
INVALID_SCHEDULE = "InvalidSchedule"
RECONCILE_FAILED = "ReconcileFailed"
POSTGRES_NOT_RUNNING = "PostgresNotRunning"
VERSION_MISMATCH = "VersionMismatch"
NO_IMAGE = "NoImageForVersion"
MAJOR_UPGRADE_UNSUPPORTED = "MajorUpgradeUnsupported"
LIBRARY_NOT_AVAILABLE = "LibraryNotAvailable"
PARAMETERS_IGNORED = "ParametersIgnored"
# spec.switchover names an instance that may not take over (unready, lagging).
SWITCHOVER_REFUSED = "SwitchoverRefused"
# Warning Events (not conditions): a hand edit the operator set back.
SCALED_BY_HAND = "StatefulSetScaledByHand"
PATRONI_CONFIG_EDITED = "PatroniConfigEditedByHand"

# A standing warning: pg_hba lets TCP clients in without a password.
INSECURE_AUTHENTICATION = "InsecureAuthentication"
TRUST_ALLOWED = "TrustAuthenticationAllowed"
PLAIN_TEXT_ALLOWED = "PlainTextAllowed"

# Backups: WAL archiving and restores.
CONTINUOUS_ARCHIVING = "ContinuousArchiving"
ARCHIVING_WORKS = "ArchivingWorks"
ARCHIVE_FAILING = "ArchiveFailing"
ARCHIVE_PENDING = "WaitingForFirstArchive"
RECOVERY_SOURCE_NOT_READY = "RecoverySourceNotReady"
ARCHIVE_WOULD_OVERWRITE_SOURCE = "ArchiveWouldOverwriteSource"

# Disks that do not fill (pgherd.controller.storage): the StorageNearlyFull condition.
STORAGE_NEARLY_FULL = "StorageNearlyFull"
STORAGE_OK = "StorageOK"
VOLUME_NEARLY_FULL = "VolumeNearlyFull"
WAL_NOT_ARCHIVED = "WalNotArchived"
AUTOGROW_LIMIT_REACHED = "AutoGrowLimitReached"  # Degraded: nearly full at autoGrow's limit
VOLUME_AUTO_GROWN = "VolumeAutoGrown"  # Normal Event: autoGrow expands the claims

# Phases: a one-word summary; conditions carry the detail.
PHASE_CREATING = "Creating"
PHASE_HEALTHY = "Healthy"
PHASE_UPDATING = "Updating"
PHASE_DEGRADED = "Degraded"
PHASE_UNAVAILABLE = "Unavailable"

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Activity:
    """What the reconcile is doing now, for the Progressing condition."""

    reason: str
    message: str


@dataclass(frozen=True)
class Problem:
    """Something wrong that only the operator can detect: Degraded's reason and message."""

    reason: str
    message: str


def set_condition(
    conditions: list[Condition],
    type_: str,
    *,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """conditions with type_ set; the transition time moves only when status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def get(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)
