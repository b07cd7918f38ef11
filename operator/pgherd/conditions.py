"""Condition types, reasons and phases of a PostgresCluster, defined in one place.

`set_condition` keeps lastTransitionTime when the status does not change, so that a
reconcile observing the same world computes the same status and writes nothing.
"""

from __future__ import annotations

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
UP_TO_DATE = "UpToDate"
AS_EXPECTED = "AsExpected"
STORAGE_CLASS_NOT_FOUND = "StorageClassNotFound"
INSTANCE_STUCK = "InstanceNeverReady"
SWITCHOVER_TARGET_INVALID = "SwitchoverTargetInvalid"

# pgherd.backup: WAL archiving and restores.
CONTINUOUS_ARCHIVING = "ContinuousArchiving"
ARCHIVING_WORKS = "ArchivingWorks"
ARCHIVE_FAILING = "ArchiveFailing"
ARCHIVE_PENDING = "WaitingForFirstArchive"
RECOVERY_SOURCE_NOT_READY = "RecoverySourceNotReady"
ARCHIVE_WOULD_OVERWRITE_SOURCE = "ArchiveWouldOverwriteSource"

# Phases: a one-word summary; conditions carry the detail.
PHASE_CREATING = "Creating"
PHASE_HEALTHY = "Healthy"
PHASE_UPDATING = "Updating"
PHASE_DEGRADED = "Degraded"
PHASE_UNAVAILABLE = "Unavailable"

Status = Literal["True", "False", "Unknown"]


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
