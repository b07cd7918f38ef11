"""The local control plane behaves like a real cluster for what the operator relies on:
workloads run, volumes bind, scheduling honours zones, garbage collection and RBAC work."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgherd_dev.controlplane import ZONES, ControlPlane
from pgherd_dev.errors import DevError
from tests.conftest import wait_for

pytestmark = pytest.mark.cluster

_RESTRICTED_CONTAINER: dict[str, Any] = {
    "name": "app",
    "image": "example.invalid/app:1",
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def _pod_template(labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"labels": labels}, "spec": {"containers": [_RESTRICTED_CONTAINER], **spec}}


def test_nodes_span_three_zones(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node().items
    zones = {n.metadata.labels["topology.kubernetes.io/zone"] for n in nodes}
    assert zones == set(ZONES)
    assert all(not n.spec.taints for n in nodes), "a taint would keep pods off the nodes"


def test_server_reports_its_real_version(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == "v1.36.3"


def test_deployment_becomes_available(api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": _pod_template(labels),
            },
        },
    )

    def available() -> bool:
        d = apps.read_namespaced_deployment("web", namespace)
        return (
            any(c.type == "Available" and c.status == "True" for c in (d.status.conditions or []))
            and d.status.available_replicas == 2
        )

    wait_for("Deployment web to be Available with 2 replicas", available)


def test_job_completes(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "once"},
            "spec": {
                "template": _pod_template({"job": "once"}, restartPolicy="Never"),
                "backoffLimit": 0,
            },
        },
    )

    def complete() -> bool:
        j = batch.read_namespaced_job("once", namespace)
        return any(c.type == "Complete" and c.status == "True" for c in (j.status.conditions or []))

    wait_for("Job once to complete", complete)


def test_statefulset_claims_bind_and_pods_spread_over_zones(
    api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "db"}
    anti_affinity = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": labels},
                    "topologyKey": "topology.kubernetes.io/zone",
                }
            ]
        }
    }
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 3,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": _pod_template(labels, affinity=anti_affinity),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
    )

    def running() -> list[Any]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=db").items
        ok = len(pods) == 3 and all(p.status.phase == "Running" for p in pods)
        return pods if ok else []

    pods = wait_for("3 StatefulSet pods Running", running)
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    assert sorted(c.metadata.name for c in claims) == ["data-db-0", "data-db-1", "data-db-2"]
    assert all(c.status.phase == "Bound" for c in claims)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    zones = {nodes[p.spec.node_name].metadata.labels["topology.kubernetes.io/zone"] for p in pods}
    assert zones == set(ZONES)
    # Each volume is pinned to the node its pod runs on, as a local volume would be.
    for p in pods:
        claim = next(c for c in claims if c.metadata.name == f"data-{p.metadata.name}")
        pv = core.read_persistent_volume(claim.spec.volume_name)
        term = pv.spec.node_affinity.required.node_selector_terms[0]
        assert term.match_expressions[0].values == [p.spec.node_name]


def test_claim_expansion_is_honoured(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "grow"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "user"},
            "spec": {
                "containers": [
                    {**_RESTRICTED_CONTAINER, "volumeMounts": [{"name": "v", "mountPath": "/data"}]}
                ],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "grow"}}],
            },
        },
    )

    def bound() -> bool:
        return (
            core.read_namespaced_persistent_volume_claim("grow", namespace).status.phase == "Bound"
        )

    wait_for("claim grow to bind", bound)
    core.patch_namespaced_persistent_volume_claim(
        "grow", namespace, {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    )

    def grown() -> bool:
        pvc = core.read_namespaced_persistent_volume_claim("grow", namespace)
        return (pvc.status.capacity or {}).get("storage") == "2Gi"

    wait_for("claim grow to report 2Gi", grown)


def test_garbage_collection_removes_owned_objects(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "owned",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "stringData": {"k": "v"},
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_secret("owned", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for("the owned Secret to be garbage-collected", gone)


def test_rbac_denies_what_is_not_granted(api: client.ApiClient, namespace: str) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-configmaps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    cfg = client.Configuration()
    cfg.host = api.configuration.host
    cfg.ssl_ca_cert = api.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(cfg))

    as_reader.list_namespaced_config_map(namespace)  # granted
    with pytest.raises(ApiException) as denied:
        as_reader.list_namespaced_secret(namespace)
    assert denied.value.status == 403


def test_second_start_in_same_directory_is_refused(control_plane: ControlPlane) -> None:
    with pytest.raises(DevError, match="already running"):
        ControlPlane(control_plane.workdir).up()
