"""StatefulSet, scheduling, Services, PodDisruptionBudget and RBAC."""

from __future__ import annotations

from typing import Any

import pytest

from pgherd.api.v1alpha1 import RESTARTED_AT_ANNOTATION
from pgherd.render import labels
from pgherd.render.pdb import render_pdb, render_primary_pdb
from pgherd.render.rbac import render_rbac
from pgherd.render.services import render_services
from pgherd.render.statefulset import render_statefulset
from tests.unit.clusters import make_cluster

USER_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
            ]
        }
    }
}
USER_SPREAD = [
    {"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"},
]


def pod_spec(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = render_statefulset(make_cluster(spec))["spec"]["template"]["spec"]
    return result


def container(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = pod_spec(spec)["containers"][0]
    return result


def test_statefulset_shape() -> None:
    sts = render_statefulset(make_cluster({"instances": 5}))["spec"]
    assert sts["replicas"] == 5
    assert sts["serviceName"] == "db-headless"
    assert sts["podManagementPolicy"] == "Parallel"
    assert sts["updateStrategy"] == {"type": "OnDelete"}
    assert sts["selector"] == {"matchLabels": labels.selector_labels("db")}
    assert sts["template"]["metadata"]["labels"] == labels.common_labels("db")
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "pgdata"
    assert claim["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
    assert "storageClassName" not in claim["spec"]


@pytest.mark.parametrize(("policy", "when_deleted"), [("Retain", "Retain"), ("Delete", "Delete")])
def test_pvc_retention(policy: str, when_deleted: str) -> None:
    sts = render_statefulset(make_cluster({"storage": {"reclaimPolicy": policy}}))["spec"]
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": when_deleted,
        "whenScaled": "Retain",
    }


def test_restricted_pod_security() -> None:
    pod = pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] != 0
    ctx = container()["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert {"/tmp", "/run/postgresql", "/var/lib/postgresql/data", "/etc/pgherd"} <= mounts  # noqa: S108


def test_container_contract() -> None:
    c = container({"image": "img:1", "resources": {"limits": {"memory": "1Gi"}}})
    assert c["name"] == "postgres"
    assert c["image"] == "img:1"
    assert c["command"] == ["pgherd", "instance"]
    assert c["resources"] == {"limits": {"memory": "1Gi"}}
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {
        ("postgresql", 5432),
        ("patroni", 8008),
        ("metrics", 9187),
    }
    https = {"port": "patroni", "scheme": "HTTPS"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readiness", **https}
    assert c["livenessProbe"]["httpGet"] == {"path": "/liveness", **https}
    env = {e["name"]: e for e in c["env"]}
    assert env["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    assert env["PGHERD_CONFIG"]["value"] == "/etc/pgherd/patroni.yaml"
    assert env["PGHERD_CLUSTER"]["value"] == "db"
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PGHERD_METRICS_PORT"]["value"] == "9187"
    assert env["PGHERD_METRICS_QUERIES_DIR"]["value"] == "/etc/pgherd-metrics"


def test_custom_queries_are_one_directory_of_optional_configmap_keys() -> None:
    assert "metrics-queries" not in {v["name"] for v in pod_spec()["volumes"]}
    assert "metrics-queries" not in {v["name"] for v in pod_spec({"monitoring": {}})["volumes"]}
    refs = [
        {"name": "a", "key": "q.yaml"},
        {"name": "a", "key": "r.yaml"},
        {"name": "b", "key": "q.yaml"},
    ]
    spec = {"monitoring": {"customQueries": refs}}
    (volume,) = [v for v in pod_spec(spec)["volumes"] if v["name"] == "metrics-queries"]
    sources = [s["configMap"] for s in volume["projected"]["sources"]]
    assert [(s["name"], s["items"], s["optional"]) for s in sources] == [
        ("a", [{"key": "q.yaml", "path": "a-q.yaml"}], True),
        ("a", [{"key": "r.yaml", "path": "a-r.yaml"}], True),
        ("b", [{"key": "q.yaml", "path": "b-q.yaml"}], True),
    ]
    mounts = {m["name"]: m for m in container(spec)["volumeMounts"]}
    assert mounts["metrics-queries"]["mountPath"] == "/etc/pgherd-metrics"
    assert mounts["metrics-queries"]["readOnly"] is True


def test_env_references_only_earlier_variables() -> None:
    seen: set[str] = set()
    for var in container()["env"]:
        value = var.get("value", "")
        referenced = {part.split(")")[0] for part in value.split("$(")[1:]}
        assert referenced <= seen, f"{var['name']} refers to a later variable"
        seen.add(var["name"])


def test_default_scheduling_spreads_over_nodes_and_zones() -> None:
    pod = pod_spec()
    (preferred,) = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"] == {"matchLabels": labels.selector_labels("db")}
    (spread,) = pod["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
        "topology.kubernetes.io/zone",
        "ScheduleAnyway",
    )


def test_required_anti_affinity() -> None:
    anti = pod_spec({"scheduling": {"antiAffinity": "required"}})["affinity"]["podAntiAffinity"]
    assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_user_affinity_replaces_the_defaults() -> None:
    pod = pod_spec({"scheduling": {"affinity": USER_AFFINITY, "antiAffinity": "required"}})
    assert pod["affinity"] == USER_AFFINITY
    assert "topologySpreadConstraints" in pod  # only the affinity default is replaced


def test_user_spread_replaces_the_defaults() -> None:
    assert (
        pod_spec({"scheduling": {"topologySpreadConstraints": USER_SPREAD}})[
            "topologySpreadConstraints"
        ]
        == USER_SPREAD
    )
    assert "topologySpreadConstraints" not in pod_spec(
        {"scheduling": {"topologySpreadConstraints": []}}
    )


def test_node_selector_and_tolerations_pass_through() -> None:
    pod = pod_spec(
        {
            "scheduling": {
                "nodeSelector": {"pool": "db"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            }
        }
    )
    assert pod["nodeSelector"] == {"pool": "db"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert "nodeSelector" not in pod_spec() and "tolerations" not in pod_spec()


@pytest.mark.parametrize(("instances", "min_available"), [(1, 0), (2, 0), (3, 1), (9, 7)])
def test_pdb_never_blocks_drains_forever(instances: int, min_available: int) -> None:
    """All replicas but one stay: one may go at a time. A number, not maxUnavailable, which
    the disruption controller would count against the StatefulSet's whole scale."""
    pdb = render_pdb(make_cluster({"instances": instances}))
    assert pdb["spec"]["minAvailable"] == min_available
    assert "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"] == {
        "matchLabels": labels.role_selector("db", labels.ROLE_REPLICA)
    }


@pytest.mark.parametrize(
    ("instances", "allow", "min_available"),
    [(1, False, 0), (1, True, 0), (2, False, 1), (2, True, 0), (3, False, 1)],
)
def test_primary_pdb_waits_for_a_switchover_unless_none_can_happen(
    instances: int, allow: bool, min_available: int
) -> None:
    """The primary's eviction waits for the operator to move it; with one instance, or when
    no replica can take over, it goes ahead (a drain is never blocked forever)."""
    pdb = render_primary_pdb(make_cluster({"instances": instances}), allow_eviction=allow)
    assert pdb["metadata"]["name"] == "db-primary"
    assert pdb["spec"]["minAvailable"] == min_available
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # Disjoint from the replicas' budget: the eviction API refuses a pod with two.
    assert pdb["spec"]["selector"] == {
        "matchLabels": labels.role_selector("db", labels.ROLE_PRIMARY)
    }


def test_services() -> None:
    services = {
        s["metadata"]["name"]: s
        for s in render_services(
            make_cluster({"service": {"type": "LoadBalancer", "annotations": {"a": "b"}}})
        )
    }
    selector = labels.selector_labels("db")
    assert services["db-rw"]["spec"]["selector"] == {**selector, "pgherd.io/role": "primary"}
    assert services["db-ro"]["spec"]["selector"] == {**selector, "pgherd.io/role": "replica"}
    assert services["db-r"]["spec"]["selector"] == selector
    for name in ("db-rw", "db-ro", "db-r"):
        assert services[name]["spec"]["type"] == "LoadBalancer"
        assert services[name]["metadata"]["annotations"] == {"a": "b"}
        assert services[name]["spec"]["ports"][0]["name"] == "postgresql"
        assert services[name]["spec"]["ports"][0]["port"] == 5432
    headless = services["db-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert "annotations" not in headless["metadata"]
    assert "type" not in headless["spec"]


def test_rbac_grants_what_patroni_needs_and_nothing_else() -> None:
    account, role, binding = render_rbac(make_cluster())
    assert account["metadata"]["name"] == role["metadata"]["name"] == "db-instance"
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == {
        "configmaps": {"get", "list", "watch", "create", "update", "patch", "delete"},
        "pods": {"get", "list", "watch", "patch", "update"},
    }
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert {n for r in named for n in r["resourceNames"]} >= {"db-leader", "db-config", "db-0"}
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "db-instance",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "db-instance", "namespace": "prod"}
    ]
    assert pod_spec()["serviceAccountName"] == "db-instance"


def test_restart_request_is_a_new_pod_template_revision() -> None:
    """`pgherd.io/restartedAt` on the cluster goes into the pod template (as `kubectl rollout
    restart` does), so each new value is a new revision the rollout restarts pods for; other
    annotations of the cluster stay off the pods."""
    plain = make_cluster()
    asked = make_cluster()
    asked.metadata.annotations = {
        RESTARTED_AT_ANNOTATION: "2026-11-30T10:00:00Z",
        "team": "payments",
    }
    again = make_cluster()
    again.metadata.annotations = {RESTARTED_AT_ANNOTATION: "2026-11-30T11:00:00Z"}
    templates = [render_statefulset(c)["spec"]["template"] for c in (plain, asked, again)]
    assert RESTARTED_AT_ANNOTATION not in templates[0]["metadata"]["annotations"]
    assert templates[1]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION] == (
        "2026-11-30T10:00:00Z"
    )
    assert "team" not in templates[1]["metadata"]["annotations"]
    assert templates[0] != templates[1] != templates[2]
