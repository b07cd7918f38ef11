"""Process-wide state of the operator: its API client, created once at start-up."""

from __future__ import annotations

from kubernetes import client, config

from pgherd.kube import Kube

_kube: Kube | None = None
_namespaces: list[str] = []


def set_watched_namespaces(namespaces: list[str]) -> None:
    """Namespaces the operator serves (empty: all); set once at start-up."""
    _namespaces[:] = namespaces


def watched_namespaces() -> list[str]:
    return list(_namespaces)


def init() -> Kube:
    """Load credentials the way the pod (or a developer's KUBECONFIG) provides them."""
    global _kube  # noqa: PLW0603 - one client per process, made at start-up
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    _kube = Kube(client.ApiClient())
    return _kube


def kube() -> Kube:
    return _kube if _kube is not None else init()
