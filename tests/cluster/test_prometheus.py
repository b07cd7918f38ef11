"""A real Prometheus (Debian's) scrapes the operator and every instance of a real cluster on
127.0.0.1 and evaluates the shipped alerting rules: every dashboard panel's query returns
data, a healthy cluster fires none of the availability alerts, and when the object store
stops accepting the cluster's writes the WAL archiving alert fires, then resolves once
writes are allowed again.

The rules are the shipped ones with every `for:` shortened to a second (their timing is
what tests/alerts/pgherd-alerts.test.yaml proves with promtool); scrape and evaluation
intervals are a second. Targets carry the labels pgherd's PodMonitor gives them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.kubelet import PORTS_ANNOTATION
from tests import prometheus_server, s3_server
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = REPO / "docs" / "monitoring" / "grafana-dashboard.json"
BUCKET = "pgherd-metrics"
INSTANCES_JOB, OPERATOR_JOB = "pgherd-instances", "pgherd-operator"
# Alerts a healthy cluster must not fire (the storage ones depend on the host's disk).
AVAILABILITY = {
    "PgherdInstanceDown",
    "PgherdNoPrimary",
    "PgherdMultiplePrimaries",
    "PgherdWALArchivingFailing",
    "PgherdOperatorDown",
    "PgherdReconcileErrors",
}


def fast_rules(directory: Path) -> Path:
    groups = yaml.safe_load(RULE.read_text())["spec"]
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path = directory / "pgherd-rules.yaml"
    path.write_text(yaml.safe_dump(groups))
    return path


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def instantiate(expr: str, namespace: str, cluster: str) -> str:
    """The query Grafana would send with these variables chosen."""
    values = {"namespace": namespace, "cluster": cluster, "__rate_interval": "30s"}
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)


@pytest.fixture(scope="module")
def s3(control_plane: ControlPlane) -> Iterator[s3_server.S3Server]:
    with s3_server.running(control_plane.log_dir / "moto-metrics.log", BUCKET) as server:
        yield server


@pytest.fixture
def prometheus(control_plane: ControlPlane) -> Iterator[prometheus_server.Prometheus]:
    directory = control_plane.log_dir / "prometheus"
    server = prometheus_server.start(
        directory, [INSTANCES_JOB, OPERATOR_JOB], [fast_rules(control_plane.log_dir)]
    )
    yield server
    server.stop()


def _creds(kube: Kube, namespace: str, s3: s3_server.S3Server) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3", "namespace": namespace, "labels": {"pgherd.io/use": "true"}},
            "data": {
                k: base64.b64encode(v.encode()).decode()
                for k, v in {"id": s3.access_key, "secret": s3.secret_key}.items()
            },
        }
    )


def instance_targets(cluster: Cluster) -> list[prometheus_server.Target]:
    targets = []
    for pod in cluster.pods():
        ports = json.loads(pod["metadata"].get("annotations", {}).get(PORTS_ANNOTATION, "{}"))
        name = pod["metadata"]["name"]
        labels = {"namespace": cluster.namespace, "cluster": cluster.name, "pod": name}
        targets.append(prometheus_server.Target(f"127.0.0.1:{ports['metrics']}", labels))
    return targets


def firing(prom: prometheus_server.Prometheus) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for alert in prom.alerts():
        if alert["state"] == "firing":
            out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
    return out


def switch_wal(cluster: Cluster) -> None:
    with cluster.connect_superuser(autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS churn (x int)")
        conn.execute("INSERT INTO churn SELECT generate_series(1, 1000)")
        conn.execute("SELECT pg_switch_wal()")


def test_prometheus_scrapes_every_panel_and_sees_archiving_fail_and_recover(
    operator: Operator,
    kube: Kube,
    namespace: str,
    s3: s3_server.S3Server,
    prometheus: prometheus_server.Prometheus,
) -> None:
    _creds(kube, namespace, s3)
    cluster = Cluster(kube, namespace, "watched")
    cluster.create(
        {
            "instances": 2,
            "patroni": {"ttl": 20, "loopWait": 2, "retryTimeout": 5},
            "backup": {
                "objectStore": {
                    "endpointURL": s3.url,
                    "bucket": BUCKET,
                    "path": "pg",
                    "region": s3_server.REGION,
                    "credentials": {
                        "accessKeyId": {"name": "s3", "key": "id"},
                        "secretAccessKey": {"name": "s3", "key": "secret"},
                    },
                }
            },
        }
    )
    cluster.wait_healthy(2)
    kube.create(
        {
            "apiVersion": "pgherd.io/v1alpha1",
            "kind": "PostgresBackup",
            "metadata": {"name": "initial", "namespace": namespace},
            "spec": {"cluster": "watched"},
        }
    )
    done = wait_for(
        "the base backup",
        lambda: (
            (s := (kube.get("PostgresBackup", namespace, "initial") or {}).get("status", {})).get(
                "phase"
            )
            in ("Completed", "Failed")
            and s
        ),
        timeout=180,
    )
    assert done["phase"] == "Completed", done
    prometheus.set_targets(INSTANCES_JOB, instance_targets(cluster))
    assert operator.metrics_port, "the test operator serves metrics"
    prometheus.set_targets(
        OPERATOR_JOB, [prometheus_server.Target(f"127.0.0.1:{operator.metrics_port}", {})]
    )

    wait_for(
        "all targets up",
        lambda: len(t := prometheus.targets()) == 3 and all(x["health"] == "up" for x in t),
        timeout=60,
    )
    switch_wal(cluster)  # something archived, some transactions to rate
    # A reload-only parameter: the operator patches Patroni's configuration (a Patroni call).
    cluster.patch_spec({"postgresql": {"parameters": {"work_mem": "8MB"}}})

    # Every panel's every query returns data.
    missing: dict[str, str] = {}
    for title, expr in panel_queries():
        query = instantiate(expr, namespace, "watched")
        try:
            wait_for(f"data for {title!r}", lambda q=query: prometheus.query(q), timeout=30)
        except AssertionError:
            missing[title] = query
    assert not missing, f"panels without data: {missing}"

    # A healthy cluster: no availability alert fires.
    wait_for(
        "the rules to be evaluated",
        lambda: all(
            not g["lastEvaluation"].startswith("0001") for g in prometheus.api("rules")["groups"]
        ),
        timeout=10,
    )
    assert not AVAILABILITY & set(firing(prometheus)), firing(prometheus)

    # The store refuses the cluster's writes: archive_command fails, the alert fires for the
    # primary of this cluster.
    primary = cluster.primary()
    s3.deny_writes()
    try:
        switch_wal(cluster)
        alert = wait_for(
            "PgherdWALArchivingFailing firing",
            lambda: firing(prometheus).get("PgherdWALArchivingFailing"),
            timeout=120,
        )
        assert [(a["cluster"], a["pod"], a["severity"]) for a in alert] == [
            ("watched", primary, "critical")
        ], alert
    finally:
        s3.allow_writes()
    # Fixed: the next segment archives (the archiver retries within a minute; a switch
    # wakes it) and the alert resolves.
    switch_wal(cluster)
    wait_for(
        "PgherdWALArchivingFailing resolved",
        lambda: "PgherdWALArchivingFailing" not in firing(prometheus),
        timeout=120,
    )


# The Prometheus Operator's PodMonitor CRD, reduced to what the API server needs to serve
# the kind (the real one's full schema validates fields pgherd does not set): installed for
# this test only, on the real API server.
POD_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "plural": "podmonitors",
            "singular": "podmonitor",
            "kind": "PodMonitor",
            "listKind": "PodMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_pod_monitor_follows_the_spec_once_its_crd_is_installed(
    operator: Operator, kube: Kube, namespace: str, api: client.ApiClient
) -> None:
    """Asked for before the CRD exists: status says why there is none; once the CRD is
    installed the operator notices it (no restart) and creates it; turned off, deletes it."""
    extensions = client.ApiextensionsV1Api(api)
    cluster = Cluster(kube, namespace, "scraped")
    cluster.create({"instances": 1, "monitoring": {"enablePodMonitor": True}})
    cluster.wait_healthy(1)
    message = wait_for(
        "status.monitoring.message",
        lambda: (cluster.status().get("monitoring") or {}).get("message"),
        timeout=60,
    )
    assert "is not installed" in message, message
    extensions.create_custom_resource_definition(POD_MONITOR_CRD)
    try:
        custom = client.CustomObjectsApi(api)

        def pod_monitor() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = custom.get_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", namespace, "podmonitors", "scraped"
                )
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
            return found

        monitor = wait_for("the PodMonitor", pod_monitor, timeout=120)
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert monitor["metadata"]["ownerReferences"][0]["name"] == "scraped"
        wait_for(
            "status.monitoring.podMonitor",
            lambda: (cluster.status().get("monitoring") or {}).get("podMonitor") == "scraped",
            timeout=60,
        )
        cluster.patch_spec({"monitoring": {"enablePodMonitor": False}})
        wait_for("the PodMonitor deleted", lambda: pod_monitor() is None, timeout=60)
    finally:
        extensions.delete_custom_resource_definition(POD_MONITOR_CRD["metadata"]["name"])
