"""The operator's settings: built once at start from the environment and the command line,
typed and validated, then passed to what needs them. Nothing reads the environment at import.

| variable | default | what |
|---|---|---|
| WATCH_NAMESPACE | (all) | namespaces to serve, comma-separated (OLM sets it); --namespace wins |
| PGHERD_RESYNC_SECONDS | 30 | every cluster is reconciled at least this often (level-based) |
| PGHERD_WORKERS | 8 | clusters reconciled in parallel |
| PGHERD_DEBOUNCE_SECONDS | 0.2 | a change waits this long, so that a burst makes one pass |
| PGHERD_STUCK_AFTER_SECONDS | 300 | an instance unready this long makes the cluster Degraded |
| PGHERD_BACKUP_STALE_SECONDS | 60 | a Running backup whose agent is silent this long fails |
| PGHERD_PATRONI_TIMEOUT_SECONDS | 5 | deadline of every call to Patroni's REST API |
| PGHERD_TLS_CA_LIFETIME_SECONDS | 157680000 (5 years) | lifetime of each cluster's CA |
| PGHERD_TLS_CERTIFICATE_LIFETIME_SECONDS | 7776000 (90 days) | lifetime of leaf certificates |
| PGHERD_TLS_RENEW_FRACTION | 0.6667 | share of its lifetime after which a certificate is renewed |
| RELATED_IMAGE_POSTGRES | (built in) | operand image for the default PostgreSQL major |
| RELATED_IMAGE_POSTGRES_<major> | (built in for 18) | operand image for another major (e.g. _18) |
| PGHERD_LOG_FORMAT | plain | plain or json |
| PGHERD_DEBUG | 0 | 1: kopf's verbose logging |
| PGHERD_HEALTH_HOST | 0.0.0.0 | where /healthz listens (probes reach the pod IP) |
| PGHERD_METRICS_PORT | 8080 | port of /metrics (Prometheus); 0: no metrics; --metrics-port wins |
| PGHERD_METRICS_HOST | 0.0.0.0 | where /metrics listens |
| PGHERD_LEADER_ELECTION | 0 (Deployment: 1) | 1: elect a leader on a Lease; only it acts |
| PGHERD_LEASE_NAME | pgherd-operator | the Lease's name |
| PGHERD_LEASE_NAMESPACE | POD_NAMESPACE | the Lease's namespace (the operator's own) |
| POD_NAME | (host name) | this replica's name, the start of its holder identity |
| PGHERD_LEASE_DURATION_SECONDS | 12 | a lease not renewed this long is taken over |
| PGHERD_RENEW_DEADLINE_SECONDS | 8 | a leader that has not renewed this long stops and exits |
| PGHERD_RETRY_PERIOD_SECONDS | 2 | how often the leader renews and a standby tries |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pgherd.api.v1alpha1 import DEFAULT_IMAGE, DEFAULT_IMAGES, DEFAULT_POSTGRES_VERSION

IMAGE_PREFIX = "RELATED_IMAGE_POSTGRES"
DEFAULT_METRICS_PORT = 8080
DEFAULT_LEASE_NAME = "pgherd-operator"
_MAJOR_IMAGE = re.compile(rf"^{IMAGE_PREFIX}_(\d+)$")


class SettingsError(ValueError):
    """A setting has a value the operator cannot use; the message names the variable."""


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default, minimum=0.05)
    if value >= 1:
        raise SettingsError(f"{name}={value:g} must be below 1 (renew before expiry)")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _number(env, name, default, minimum=0)
    if value != int(value) or value > 65535:
        raise SettingsError(f"{name}={value:g} is not a port (0 to 65535)")
    return int(value)


def _election(env: Mapping[str, str]) -> dict[str, Any]:
    """The leader election's settings; its timing must let a leader stop before its lease
    can be taken (renew deadline < duration) and retry within the deadline."""
    raw = env.get("PGHERD_LEADER_ELECTION", "").strip().lower()
    if raw not in ("", "0", "1", "false", "true"):
        raise SettingsError(f"PGHERD_LEADER_ELECTION={raw!r} must be 0 or 1")
    enabled = raw in ("1", "true")
    duration = _number(env, "PGHERD_LEASE_DURATION_SECONDS", 12, minimum=1)
    deadline = _number(env, "PGHERD_RENEW_DEADLINE_SECONDS", 8.0, minimum=0.5)
    retry = _number(env, "PGHERD_RETRY_PERIOD_SECONDS", 2.0, minimum=0.1)
    if duration != int(duration):
        raise SettingsError(f"PGHERD_LEASE_DURATION_SECONDS={duration:g} must be whole seconds")
    if deadline >= duration:
        raise SettingsError(
            f"PGHERD_RENEW_DEADLINE_SECONDS={deadline:g} must be below "
            f"PGHERD_LEASE_DURATION_SECONDS={duration:g}"
        )
    if retry >= deadline:
        raise SettingsError(
            f"PGHERD_RETRY_PERIOD_SECONDS={retry:g} must be below "
            f"PGHERD_RENEW_DEADLINE_SECONDS={deadline:g}"
        )
    namespace = (
        env.get("PGHERD_LEASE_NAMESPACE", "").strip() or env.get("POD_NAMESPACE", "").strip()
    )
    if enabled and not namespace:
        raise SettingsError(
            "PGHERD_LEADER_ELECTION=1 needs the operator's namespace: POD_NAMESPACE "
            "(the downward API) or PGHERD_LEASE_NAMESPACE"
        )
    return {
        "leader_election": enabled,
        "lease_name": env.get("PGHERD_LEASE_NAME", "").strip() or DEFAULT_LEASE_NAME,
        "lease_namespace": namespace,
        "pod_name": env.get("POD_NAME", "").strip(),
        "lease_duration_seconds": int(duration),
        "renew_deadline_seconds": deadline,
        "retry_period_seconds": retry,
    }


@dataclass(frozen=True)
class Settings:
    """Everything the operator is configured with (see the module docstring)."""

    namespaces: tuple[str, ...] = ()
    resync_seconds: float = 30.0
    workers: int = 8
    debounce_seconds: float = 0.2
    stuck_after_seconds: float = 300.0
    backup_stale_seconds: float = 60.0
    patroni_timeout_seconds: float = 5.0
    tls_ca_lifetime_seconds: float = 5 * 365 * 86400.0
    tls_certificate_lifetime_seconds: float = 90 * 86400.0
    tls_renew_fraction: float = 2 / 3
    default_image: str = DEFAULT_IMAGE
    # Operand images by PostgreSQL major (RELATED_IMAGE_POSTGRES_<major>).
    images: Mapping[int, str] = field(default_factory=dict)
    log_format: Literal["plain", "json"] = "plain"
    debug: bool = False
    health_host: str = "0.0.0.0"  # noqa: S104 - probes reach the pod IP
    health_port: int = 8081
    metrics_host: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes the pod IP
    metrics_port: int = DEFAULT_METRICS_PORT
    # Leader election (pgherd.controller.leader); off unless asked for, so that operators run
    # side by side by tests each serve their own namespaces.
    leader_election: bool = False
    lease_name: str = DEFAULT_LEASE_NAME
    lease_namespace: str = ""
    pod_name: str = ""
    # 12 s: a standby judges expiry from when it saw the last renewal, up to one retry (2 s)
    # late, so a takeover takes at most 14 s, within the 15 s the operator promises.
    lease_duration_seconds: int = 12
    renew_deadline_seconds: float = 8.0
    retry_period_seconds: float = 2.0

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        namespaces: list[str] | None = None,
        health_port: int | None = None,
        metrics_port: int | None = None,
    ) -> Settings:
        """Settings from the environment; --namespace flags (namespaces) win over
        WATCH_NAMESPACE, --metrics-port (metrics_port) over PGHERD_METRICS_PORT."""
        watched = namespaces or [
            n.strip() for n in env.get("WATCH_NAMESPACE", "").split(",") if n.strip()
        ]
        images: dict[int, str] = {}
        for name, value in env.items():
            if (m := _MAJOR_IMAGE.match(name)) and value.strip():
                images[int(m.group(1))] = value.strip()
        election = _election(env)
        log_format = env.get("PGHERD_LOG_FORMAT", "plain").strip().lower() or "plain"
        if log_format not in ("plain", "json"):
            raise SettingsError(f"PGHERD_LOG_FORMAT={log_format!r} must be plain or json")
        return cls(
            namespaces=tuple(watched),
            resync_seconds=_number(env, "PGHERD_RESYNC_SECONDS", 30.0, minimum=1),
            workers=int(_number(env, "PGHERD_WORKERS", 8, minimum=1)),
            debounce_seconds=_number(env, "PGHERD_DEBOUNCE_SECONDS", 0.2, minimum=0),
            stuck_after_seconds=_number(env, "PGHERD_STUCK_AFTER_SECONDS", 300.0, minimum=1),
            backup_stale_seconds=_number(env, "PGHERD_BACKUP_STALE_SECONDS", 60.0, minimum=1),
            patroni_timeout_seconds=_number(
                env, "PGHERD_PATRONI_TIMEOUT_SECONDS", 5.0, minimum=0.1
            ),
            tls_ca_lifetime_seconds=_number(
                env, "PGHERD_TLS_CA_LIFETIME_SECONDS", 5 * 365 * 86400.0, minimum=60
            ),
            tls_certificate_lifetime_seconds=_number(
                env, "PGHERD_TLS_CERTIFICATE_LIFETIME_SECONDS", 90 * 86400.0, minimum=60
            ),
            tls_renew_fraction=_fraction(env, "PGHERD_TLS_RENEW_FRACTION", 2 / 3),
            default_image=env.get(IMAGE_PREFIX, "").strip() or DEFAULT_IMAGE,
            images=images,
            log_format="json" if log_format == "json" else "plain",
            debug=env.get("PGHERD_DEBUG", "") == "1",
            health_host=env.get("PGHERD_HEALTH_HOST", "").strip() or "0.0.0.0",  # noqa: S104
            health_port=8081 if health_port is None else health_port,
            metrics_host=env.get("PGHERD_METRICS_HOST", "").strip() or "0.0.0.0",  # noqa: S104
            metrics_port=_port(env, "PGHERD_METRICS_PORT", DEFAULT_METRICS_PORT)
            if metrics_port is None
            else metrics_port,
            **election,
        )

    def image_for(self, major: int) -> str | None:
        """The operand image for a PostgreSQL major, or None when the operator has none:
        RELATED_IMAGE_POSTGRES_<major>; for the default major RELATED_IMAGE_POSTGRES; else
        this release's own image of that major (DEFAULT_IMAGES), when it builds one."""
        if major in self.images:
            return self.images[major]
        if major == DEFAULT_POSTGRES_VERSION:
            return self.default_image
        return DEFAULT_IMAGES.get(major)
