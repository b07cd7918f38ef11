"""The test kubelet's way to a Service without cluster DNS or kube-proxy, its pure decisions:
which Service (or pod of a headless Service) a host name names, where a Service port leads
on a pod, which local port a pod publishes for it, and which pods a Service routes to.
(A pod reaching a cluster's primary by PGHOST runs in tests/cluster/test_tls.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgherd.render import names
from pgherd_dev.kubelet import (
    PORTS_ANNOTATION,
    ServiceName,
    published_port,
    serves,
    service_for_host,
    service_target_port,
)

NS = "prod"

# (host, the pod's namespace) -> what it names
HOSTS = [
    ("pg-rw", NS, ServiceName(NS, "pg-rw")),
    ("pg-rw.prod", NS, ServiceName(NS, "pg-rw")),
    ("pg-rw.prod.svc", NS, ServiceName(NS, "pg-rw")),
    ("pg-rw.prod.svc.cluster.local", NS, ServiceName(NS, "pg-rw")),
    ("pg-rw.prod.svc.cluster.local.", NS, ServiceName(NS, "pg-rw")),  # absolute
    ("PG-RW.Prod.SVC", NS, ServiceName(NS, "pg-rw")),  # DNS ignores case
    ("pg-0.pg-headless.prod.svc", NS, ServiceName(NS, "pg-headless", "pg-0")),
    ("pg-0.pg-headless.prod.svc.cluster.local", NS, ServiceName(NS, "pg-headless", "pg-0")),
    ("pg-rw", "other", ServiceName("other", "pg-rw")),  # a short name: the pod's namespace
    # Left alone: no Service of the pod's namespace by this name.
    ("pg-rw.other", NS, None),  # as likely an outside name as another namespace's Service
    ("example.com", NS, None),
    ("db.example.com", NS, None),
    ("pg-rw.other.svc", NS, None),
    ("pg-0.pg-headless.other.svc", NS, None),
    ("pg-rw.prod.cluster.local", NS, None),
    ("pg-rw.prod.svc.example.org", NS, None),
    ("a.b.pg-rw.prod.svc", NS, None),
    ("localhost", NS, None),
    ("127.0.0.1", NS, None),
    ("10.96.0.7", NS, None),
    ("::1", NS, None),
    ("/var/run/postgresql", NS, None),
    ("", NS, None),
    ("pg-rw,pg-ro", NS, None),  # a list of hosts
    ("0pg", NS, None),  # not a Service's name (DNS-1035: a letter first)
    ("pg-", NS, None),
    ("pg_rw", NS, None),
    ("-pg.pg-headless.prod.svc", NS, None),
    ("p" * 64, NS, None),  # longer than a DNS label
]


@pytest.mark.parametrize(("host", "namespace", "expected"), HOSTS)
def test_service_for_host(host: str, namespace: str, expected: ServiceName | None) -> None:
    assert service_for_host(host, namespace) == expected


def test_every_name_the_server_certificate_covers_is_resolved() -> None:
    # The operator's server certificate names each Service by every form (and the headless
    # Service's pods by a wildcard); each form names that Service here, so a pod reaching it
    # by PGHOST verifies the certificate against the very name it routed by.
    covered = names.server_names("pg", NS)
    for service in ("pg-rw", "pg-ro", "pg-r", "pg-headless"):
        for name in names.dns_names(service, NS):
            assert name in covered
            assert service_for_host(name, NS) == ServiceName(NS, service), name
    assert "*.pg-headless.prod.svc" in covered
    assert service_for_host("pg-1.pg-headless.prod.svc", NS) == ServiceName(
        NS, "pg-headless", "pg-1"
    )


def _service(ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"spec": {"selector": {"app": "pg"}, "ports": ports, **spec}}


RW = _service([{"name": "postgresql", "port": 5432, "targetPort": "postgresql"}])
# (Service, port a client connects to) -> the pod's port it reaches
TARGETS = [
    (RW, 5432, "postgresql"),
    (RW, 5433, None),  # no such Service port
    (_service([{"port": 80, "targetPort": 8080}, {"port": 5432, "targetPort": 6432}]), 5432, 6432),
    (_service([{"port": 5432}]), 5432, 5432),  # no targetPort: the port itself
    (_service([{"port": 5432, "targetPort": "postgresql", "protocol": "UDP"}]), 5432, None),
    # Headless: DNS names the pods, the client connects to the container's port.
    (_service([{"port": 5432, "targetPort": "postgresql"}], clusterIP="None"), 5432, 5432),
    (_service([], clusterIP="None"), 8008, 8008),
]


@pytest.mark.parametrize(("service", "port", "expected"), TARGETS)
def test_service_target_port(service: dict[str, Any], port: int, expected: int | str) -> None:
    assert service_target_port(service, port) == expected


def _pod(
    published: dict[str, int] | None,
    ports: list[dict[str, Any]] | None = None,
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"app": "pg"} if labels is None else labels}
    if published is not None:
        meta["annotations"] = {PORTS_ANNOTATION: json.dumps(published)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if ports is None:
        ports = [
            {"name": "postgresql", "containerPort": 5432},
            {"name": "patroni", "containerPort": 8008},
        ]
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "postgres", "ports": ports}]},
        "status": {"conditions": [{"type": "Ready", "status": str(ready)}]},
    }


INSTANCE = _pod({"postgresql": 41000, "patroni": 41001})
# (pod, targetPort) -> its local port
PUBLISHED = [
    (INSTANCE, "postgresql", 41000),
    (INSTANCE, "patroni", 41001),
    (INSTANCE, 5432, 41000),  # a number: the container port that publishes it, by its name
    (INSTANCE, 8008, 41001),
    (INSTANCE, "metrics", None),
    (INSTANCE, 9187, None),  # not a port of the pod
    (_pod({"5432": 41002}, [{"containerPort": 5432}]), 5432, 41002),  # an unnamed port
    (_pod(None), "postgresql", None),  # not started by the kubelet yet: nothing published
]


@pytest.mark.parametrize(("pod", "target", "expected"), PUBLISHED)
def test_published_port(pod: dict[str, Any], target: int | str, expected: int | None) -> None:
    assert published_port(pod, target) == expected


HEADLESS = _service([], clusterIP="None", publishNotReadyAddresses=True)
# (pod, Service) -> whether the Service routes to it
SERVES = [
    (INSTANCE, RW, True),
    (_pod({}, ready=False), RW, False),
    (_pod({}, ready=False), HEADLESS, True),  # publishNotReadyAddresses
    (_pod({}, deleting=True), RW, False),
    (_pod({}, deleting=True), HEADLESS, False),
    (_pod({}, labels={"app": "other"}), RW, False),
    (_pod({}, labels={}), RW, False),
    (INSTANCE, {"spec": {"ports": []}}, False),  # no selector: no pod (ExternalName, manual)
]


@pytest.mark.parametrize(("pod", "service", "expected"), SERVES)
def test_serves(pod: dict[str, Any], service: dict[str, Any], expected: bool) -> None:
    assert serves(pod, service) is expected
