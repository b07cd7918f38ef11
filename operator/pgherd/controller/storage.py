"""Disks that do not fill: what the instances' data volumes look like, and what that is
worth saying (issue 16, item 5); pure.

Each instance measures its data volume (statvfs) and pg_wal and publishes the figures in its
report (pgherd.operand.report, which rate-limits it); the snapshot parses them into
VolumeUsage. From them status derives per-instance volume status (with the growth rate seen
between two measurements, carried in the status so the prediction stays pure) and the
StorageNearlyFull condition:

- VolumeNearlyFull: an instance's volume is used past NEARLY_FULL_PERCENT;
- WalNotArchived: WAL archiving fails and pg_wal has grown past WAL_PERCENT of the volume,
  the classic way a database fills its disk (nothing may be recycled until it is archived).

The message gives the predicted time to full when the volume grew between two measurements.

spec.storage.autoGrow (autogrow) raises the claims' size by a step when a volume passes its
threshold, up to its limit, through the storage-growth path of plan (claims patched, the
StatefulSet re-created around its pods). The grown size is kept in status.storage.grownSize:
the claims' size is max(spec.storage.size, grownSize), so a spec below what autoGrow reached
is no shrink, and raising spec.storage.size past it takes over. It works when PostgreSQL has
stopped because the disk is full too: the instance's supervisor still reports the volume, and
the claim is grown from the API side; Patroni starts PostgreSQL again once there is room.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pgherd.api.v1alpha1 import InstanceStatus, PostgresCluster, VolumeStatus
from pgherd.controller import conditions as c
from pgherd.controller.conditions import Problem

NEARLY_FULL_PERCENT = 80
# pg_wal this big (share of the volume) while archiving fails is a disk filling up: with
# max_wal_size at its default a healthy pg_wal stays far below it.
WAL_PERCENT = 25


@dataclass(frozen=True)
class VolumeUsage:
    """The data volume as the instance measured it, in bytes."""

    size: int
    used: int
    available: int
    wal: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> VolumeUsage | None:
        if not isinstance(raw, Mapping):
            return None
        size, used, available, wal = (
            raw.get(k) for k in ("sizeBytes", "usedBytes", "availableBytes", "walBytes")
        )
        if not (
            isinstance(size, int)
            and isinstance(used, int)
            and isinstance(available, int)
            and size > 0
            and min(used, available) >= 0
        ):
            return None
        return cls(size, used, available, wal=wal if isinstance(wal, int) and wal >= 0 else None)

    @property
    def used_percent(self) -> int:
        # used / (used + available): statvfs's reserved blocks are not for PostgreSQL (as df).
        usable = self.used + self.available
        return round(100 * self.used / usable) if usable else 100


def volume_status(
    usage: VolumeUsage | None, previous: VolumeStatus | None, now: datetime
) -> VolumeStatus | None:
    """An instance's volume status; measuredAt and the growth rate move only when the figures
    do (a pass that sees the same figures writes nothing)."""
    if usage is None:
        return None
    if previous is not None and (
        previous.size_bytes,
        previous.used_bytes,
        previous.available_bytes,
        previous.wal_bytes,
    ) == (usage.size, usage.used, usage.available, usage.wal):
        return previous
    growth = None
    same_size = previous is not None and previous.size_bytes == usage.size
    if previous is not None and previous.measured_at is not None and same_size:
        seconds = (now - previous.measured_at).total_seconds()
        if seconds > 0:
            growth = round((usage.used - previous.used_bytes) / seconds)
    return VolumeStatus(
        size_bytes=usage.size,
        used_bytes=usage.used,
        available_bytes=usage.available,
        wal_bytes=usage.wal,
        used_percent=usage.used_percent,
        growth_bytes_per_second=growth,
        measured_at=now,
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def time_to_full(volume: VolumeStatus) -> str | None:
    """The predicted time to full at the growth rate last seen ("in about 12 min"), or None
    when the volume is not growing or no rate is known yet."""
    rate = volume.growth_bytes_per_second
    if not rate or rate <= 0:
        return None
    seconds = volume.available_bytes / rate
    if seconds < 120:
        return f"full in about {seconds:.0f} s"
    if seconds < 7200:
        return f"full in about {seconds / 60:.0f} min"
    return f"full in about {seconds / 3600:.1f} h"


def nearly_full(
    instances: Sequence[InstanceStatus], archiving_fails: bool
) -> tuple[c.Status, str, str] | None:
    """The StorageNearlyFull condition as (status, reason, message); None when no instance
    reported its volume (the condition is left out)."""
    volumes = [(i.name, i.volume) for i in instances if i.volume is not None]
    if not volumes:
        return None
    full: list[str] = []
    wal: list[str] = []
    for name, v in volumes:
        eta = time_to_full(v)
        tail = f", {eta}" if eta else ""
        if v.used_percent >= NEARLY_FULL_PERCENT:
            full.append(
                f"{name}: {v.used_percent}% of {_mib(v.size_bytes)} used "
                f"({_mib(v.available_bytes)} free{tail})"
            )
        if (
            archiving_fails
            and v.wal_bytes is not None
            and (100 * v.wal_bytes >= WAL_PERCENT * v.size_bytes)
        ):
            wal.append(f"{name}: pg_wal holds {_mib(v.wal_bytes)} of {_mib(v.size_bytes)}{tail}")
    if not full and not wal:
        top = max(v.used_percent for _, v in volumes)
        return ("False", c.STORAGE_OK, f"data volumes at most {top}% used")
    messages = []
    if full:
        messages.append(
            f"data volume(s) past {NEARLY_FULL_PERCENT}%: "
            + "; ".join(full)
            + ". Raise spec.storage.size (the claims are expanded) before PostgreSQL stops"
        )
    if wal:
        messages.append(
            "WAL archiving fails, so PostgreSQL keeps every WAL segment: "
            + "; ".join(wal)
            + ". Fix the backup store (see the ContinuousArchiving condition)"
        )
    reason = c.VOLUME_NEARLY_FULL if full else c.WAL_NOT_ARCHIVED
    return ("True", reason, "; also: ".join(messages))


# ---- spec.storage.autoGrow ----------------------------------------------------------------
_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?)([KMGTPE]i|[kMGTPE])?$")


def quantity_bytes(value: str) -> int | None:
    """A storage quantity in bytes (rounded up); None for what a storage size never is
    (negative, milli, exponent forms)."""
    m = _QUANTITY.match(value.strip())
    if m is None:
        return None
    return math.ceil(Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""])


def as_quantity(n: int) -> str:
    """Bytes as the claim's request: whole MiB (rounded up), as people write sizes."""
    return f"{math.ceil(n / 2**20)}Mi"


@dataclass(frozen=True)
class Growth:
    """autoGrow's decision for one pass: the claims' size (None: spec.storage.size as it is)
    and, at the limit with a volume still past the threshold, the problem to say so."""

    size: str | None = None
    grown: str | None = None  # status.storage.grownSize
    problem: Problem | None = None
    reason: str | None = None  # why it grows now (the actions' reason)


def autogrow(cluster: PostgresCluster, volumes: Mapping[str, VolumeUsage | None]) -> Growth:
    """The size of the claims: the larger of spec.storage.size and what autoGrow grew them
    to before (status.storage.grownSize), grown by step (never past limit) when an instance's
    volume is used past threshold and its filesystem already has the current size (a growth
    still under way is not grown again)."""
    spec = cluster.spec.storage
    auto = spec.auto_grow
    status = cluster.status.storage if cluster.status else None
    grown = quantity_bytes(status.grown_size) if status and status.grown_size else None
    size = quantity_bytes(spec.size) or 0
    current = max(size, grown or 0)
    kept = as_quantity(current) if grown and grown > size else None
    if auto is None or not auto.enabled:
        return Growth(size=kept, grown=kept)
    limit = quantity_bytes(auto.limit) or current
    full = sorted(
        name for name, v in volumes.items() if v is not None and v.used_percent >= auto.threshold
    )
    # A filesystem within 10 % of the claim has been expanded (filesystems keep some
    # metadata for themselves); smaller, the last growth is not through yet.
    settled = [n for n in full if (v := volumes[n]) is not None and v.size >= current * 0.9]
    if not settled:
        return Growth(size=kept, grown=kept)
    if current >= limit:
        return Growth(
            size=kept,
            grown=kept,
            problem=Problem(
                c.AUTOGROW_LIMIT_REACHED,
                f"data volume(s) of {', '.join(settled)} used past {auto.threshold}% and "
                f"storage.autoGrow.limit {auto.limit} reached: raise the limit, or free space",
            ),
        )
    step = auto.step
    by = current * int(step[:-1]) // 100 if step.endswith("%") else quantity_bytes(step) or 0
    target = min(limit, current + max(by, 2**20))
    new = as_quantity(target)
    return Growth(
        size=new,
        grown=new,
        reason=f"autoGrow: {', '.join(settled)} used past {auto.threshold}%, "
        f"{as_quantity(current)} -> {new}",
    )


def sized(cluster: PostgresCluster, size: str | None) -> PostgresCluster:
    """The cluster as rendered with the claims' size autoGrow decided (unchanged: None)."""
    if size is None or size == cluster.spec.storage.size:
        return cluster
    storage = cluster.spec.storage.model_copy(update={"size": size})
    return cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"storage": storage})})
