"""`kubectl pgherd status`: a cluster's state summed up from what is already published, pure.

The inputs are the PostgresCluster (its status, written by the operator), its pods (Patroni's
`status` annotation: role, state, timeline, WAL position; the kubelet's Ready; the node) and
its PostgresBackups; the output is one dict (what `-o json` prints) and its text form.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pgherd.render import labels

Obj = dict[str, Any]
# Patroni's member states in which an instance serves (as the operator counts them).
SERVING_STATES = frozenset({"running", "streaming"})
PATRONI_ANNOTATION = "status"
ARCHIVING_CONDITION = "ContinuousArchiving"


def patroni_member(pod: Obj) -> Obj:
    """What Patroni publishes on its pod ({} when absent or unreadable)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(PATRONI_ANNOTATION)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _pod_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _role(pod_role: str | None, patroni_role: str | None, status_role: str | None) -> str:
    # The operator's status says sync_standby where Patroni only says replica.
    raw = status_role or pod_role or patroni_role or "unknown"
    if raw in ("primary", "master", "leader", "standby_leader"):
        return "primary"
    if raw in ("replica", "sync_standby", "quorum_standby"):
        return "replica" if raw == "replica" else f"replica ({raw})"
    return raw


def instances(cluster: Obj, pods: list[Obj]) -> list[Obj]:
    """One entry per instance pod, ordered by name: role, readiness, node, timeline, lag."""
    status = cluster.get("status") or {}
    by_name = {i.get("name"): i for i in status.get("instancesStatus") or []}
    members = {p["metadata"]["name"]: patroni_member(p) for p in pods}
    primary = status.get("currentPrimary")
    primary_lsn = _int(members.get(primary, {}).get("xlog_location")) if primary else None
    out = []
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        meta = pod["metadata"]
        name = meta["name"]
        member, reported = members[name], by_name.get(name, {})
        role = _role(
            (meta.get("labels") or {}).get(labels.ROLE), member.get("role"), reported.get("role")
        )
        lsn = _int(member.get("xlog_location"))
        lag: int | None
        if role == "primary":
            lag = 0
        elif lsn is not None and primary_lsn is not None:
            # Byte-exact from the WAL positions Patroni publishes; the status rounds to MiB.
            lag = max(0, primary_lsn - lsn)
        else:
            lag = _int(reported.get("lagBytes"))
        out.append(
            {
                "name": name,
                "role": role,
                "state": member.get("state") or reported.get("state"),
                # A replica's WAL receiver: streaming, or in archive recovery.
                "replication": member.get("replication_state"),
                "podReady": _pod_ready(pod),
                "ready": _pod_ready(pod) and member.get("state") in SERVING_STATES,
                "node": (pod.get("spec") or {}).get("nodeName"),
                "timeline": _int(member.get("timeline")),
                "lagBytes": lag,
                "pendingRestart": bool(member.get("pending_restart")),
                "terminating": bool(meta.get("deletionTimestamp")),
                "uid": meta.get("uid"),
            }
        )
    return out


def _condition(status: Obj, type_: str) -> Obj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _last_backup(status: Obj, backups: list[Obj]) -> Obj | None:
    completed = [b for b in backups if (b.get("status") or {}).get("phase") == "Completed"]
    if completed:
        newest = max(completed, key=lambda b: (b.get("status") or {}).get("endTime") or "")
        s = newest.get("status") or {}
        return {
            "name": newest["metadata"]["name"],
            "backupId": s.get("backupId"),
            "endTime": s.get("endTime"),
            "size": s.get("size"),
        }
    store = status.get("backup") or {}
    if store.get("lastSuccessfulBackup"):
        # Taken on a schedule, or before the PostgresBackup objects were deleted.
        return {
            "name": None,
            "backupId": store["lastSuccessfulBackup"],
            "endTime": store.get("lastSuccessfulBackupTime"),
            "size": None,
        }
    return None


def summarize(cluster: Obj, pods: list[Obj], backups: list[Obj]) -> Obj:
    """The whole summary; every field is present (null when unknown)."""
    meta, spec, status = cluster["metadata"], cluster.get("spec") or {}, cluster.get("status") or {}
    archiving = _condition(status, ARCHIVING_CONDITION)
    store = status.get("backup") or {}
    running = [
        b["metadata"]["name"]
        for b in backups
        if (b.get("status") or {}).get("phase") in (None, "Pending", "Running")
    ]
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "phase": status.get("phase"),
        "primary": status.get("currentPrimary"),
        "instances": spec.get("instances"),
        "readyInstances": status.get("readyInstances"),
        "postgresVersion": status.get("postgresVersion") or spec.get("postgresVersion"),
        "image": status.get("image") or spec.get("image"),
        "pendingRestart": bool(status.get("pendingRestart")),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
        ],
        "members": instances(cluster, pods),
        "switchover": {
            "requested": (spec.get("switchover") or {}).get("targetInstance"),
            "handled": status.get("switchoverHandled"),
        },
        "archiving": None
        if spec.get("backup") is None
        else {
            "status": archiving.get("status") if archiving else None,
            "reason": archiving.get("reason") if archiving else None,
            "message": archiving.get("message") if archiving else None,
            "lastArchivedWal": store.get("lastArchivedWal"),
            "lastArchivedTime": store.get("lastArchivedTime"),
            "lastFailedWal": store.get("lastFailedWal"),
            "lastFailedTime": store.get("lastFailedTime"),
            "firstRecoverabilityPoint": store.get("firstRecoverabilityPoint"),
        },
        "lastBackup": _last_backup(status, backups),
        "backupsInProgress": running,
        "tls": status.get("tls"),
        "endpoints": status.get("endpoints"),
    }


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _expiry(when: str | None, now: datetime) -> str:
    if not when:
        return "?"
    try:
        at = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    days = (at - now).total_seconds() / 86400
    return f"{when} (in {days:.0f} days)" if days >= 0 else f"{when} (EXPIRED)"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]  # fmt: skip


def _header(s: Obj) -> list[str]:
    lines = [
        f"PostgresCluster {s['namespace']}/{s['name']}: {s['phase'] or 'unknown'}",
        f"  primary:   {s['primary'] or 'none'}",
        f"  instances: {s['readyInstances'] or 0}/{s['instances']} ready",
        f"  version:   PostgreSQL {s['postgresVersion'] or '?'} ({s['image'] or 'image unknown'})",
        f"  pending restart: {'yes' if s['pendingRestart'] else 'no'}",
    ]
    sw = s["switchover"]
    if sw["requested"]:
        done = "done" if sw["handled"] == sw["requested"] else "pending"
        lines.append(f"  switchover: to {sw['requested']} ({done})")
    return lines


def _conditions(s: Obj) -> list[str]:
    if not s["conditions"]:
        return ["Conditions:", "  none yet"]
    rows = [["TYPE", "STATUS", "REASON", "MESSAGE"]]
    rows += [[c["type"] or "", c["status"] or "", c["reason"] or "", c["message"] or ""]
             for c in s["conditions"]]  # fmt: skip
    return ["Conditions:", *("  " + r for r in _table(rows))]


def _members(s: Obj) -> list[str]:
    if not s["members"]:
        return ["Instances:", "  no pods"]
    rows = [["NAME", "ROLE", "STATE", "READY", "NODE", "TIMELINE", "LAG", "RESTART"]]
    for m in s["members"]:
        rows.append(
            [
                m["name"] + (" (terminating)" if m["terminating"] else ""),
                m["role"],
                "/".join(filter(None, [m["state"] or "?", m["replication"]])),
                "yes" if m["podReady"] else "no",
                m["node"] or "-",
                str(m["timeline"]) if m["timeline"] is not None else "?",
                "-" if m["role"] == "primary" else _size(m["lagBytes"]),
                "pending" if m["pendingRestart"] else "-",
            ]
        )
    return ["Instances:", *("  " + r for r in _table(rows))]


def _backups(s: Obj) -> list[str]:
    lines = ["Backups:"]
    arch = s["archiving"]
    if arch is None:
        lines.append("  archiving: not configured (spec.backup)")
    else:
        state = {"True": "working", "False": "FAILING"}.get(arch["status"] or "", "unknown")
        lines.append(f"  archiving: {state}" + (f" ({arch['reason']})" if arch["reason"] else ""))
        if arch["status"] == "False" and arch["message"]:
            lines.append(f"    {arch['message']}")
        lines.append(
            f"  last archived WAL: {arch['lastArchivedWal'] or 'none'}"
            + (f" at {arch['lastArchivedTime']}" if arch["lastArchivedTime"] else "")
        )
        if arch["firstRecoverabilityPoint"]:
            lines.append(f"  recoverable since: {arch['firstRecoverabilityPoint']}")
    last = s["lastBackup"]
    if last:
        lines.append(
            f"  last successful backup: {last['backupId'] or '?'} ({last['name'] or 'scheduled'})"
            f" ended {last['endTime'] or '?'}"
            + (f", {_size(last['size'])}" if last["size"] else "")
        )
    else:
        lines.append("  last successful backup: none")
    if s["backupsInProgress"]:
        lines.append(f"  in progress: {', '.join(s['backupsInProgress'])}")
    return lines


def _certificates(tls: Obj, now: datetime) -> list[str]:
    lines = ["Certificates:", f"  source: {tls.get('source') or '?'}"]
    for key, label in (
        ("serverNotAfter", "server"),
        ("replicationNotAfter", "replication"),
        ("caNotAfter", "CA"),
    ):
        if tls.get(key):
            lines.append(f"  {label} expires: {_expiry(tls[key], now)}")
    if tls.get("renewAt"):
        lines.append(f"  next renewal: {tls['renewAt']}")
    return lines


def render_text(summary: Obj, now: datetime) -> str:
    """The summary as a person reads it."""
    sections = [_header(summary), _conditions(summary), _members(summary), _backups(summary)]
    if summary["tls"]:
        sections.append(_certificates(summary["tls"], now))
    if summary["endpoints"]:
        ep = summary["endpoints"]
        sections.append(["Endpoints:", *(f"  {k}: {v}" for k, v in ep.items() if v)])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"
