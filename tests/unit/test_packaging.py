"""The operator's install manifests, RBAC and CSV, checked without any tool binary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd.api import v1alpha1
from pgherd.render import desired_children
from pgherd_packaging import bundle, manifests, permissions, releases
from tests.unit.clusters import PASSWORDS, SCENARIOS, make_cluster

REPO = Path(__file__).resolve().parents[2]
HISTORY = REPO / "releases" / "history.yaml"
CSV_PATH = REPO / "bundle" / "manifests" / bundle.CSV_FILE
IMAGE = "quay.io/pgherd/pgherd-operator:v0.2.0"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def csv() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CSV_PATH.read_text())
    return loaded


def container(spec: dict[str, Any]) -> dict[str, Any]:
    (only,) = spec["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


# --- permissions -------------------------------------------------------------------------------


def test_no_rule_may_create_crds_or_escalate() -> None:
    for rule in permissions.NAMESPACED + permissions.CLUSTER:
        assert not {"*", "escalate", "bind", "impersonate"} & set(rule.verbs), rule
        assert "*" not in rule.resources, rule
    assert not permissions.allows(
        permissions.CLUSTER, "apiextensions.k8s.io", "customresourcedefinitions", "create"
    )


def test_operator_can_manage_every_child_kind() -> None:
    plural = {
        "ServiceAccount": ("", "serviceaccounts"),
        "Role": ("rbac.authorization.k8s.io", "roles"),
        "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
        "Secret": ("", "secrets"),
        "ConfigMap": ("", "configmaps"),
        "Service": ("", "services"),
        "StatefulSet": ("apps", "statefulsets"),
        "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    }
    kinds = {c["kind"] for c in desired_children(make_cluster(), PASSWORDS)}
    assert kinds <= set(plural), f"add the new kinds to this test and to permissions: {kinds}"
    for kind in kinds:
        group, resource = plural[kind]
        # What server-side apply of a child needs (tests/unit/test_permissions.py has the rest).
        for verb in ("get", "create", "patch"):
            assert permissions.allows(permissions.NAMESPACED, group, resource, verb), (kind, verb)


def test_operator_holds_every_permission_it_grants_to_instances() -> None:
    for scenario in SCENARIOS.values():
        children = desired_children(make_cluster(scenario), PASSWORDS)
        for role in (c for c in children if c["kind"] == "Role"):
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            assert permissions.allows(
                                permissions.NAMESPACED, group, resource, verb
                            ), (group, resource, verb)


# --- install manifests -------------------------------------------------------------------------


def test_deployment_is_restricted_highly_available_and_probed() -> None:
    spec = manifests.deployment_spec(IMAGE)
    # Two replicas electing a leader on a Lease; a rollout never leaves no standby.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(spec)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # noqa: S108
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in c["resources"]["limits"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["ports"] == [
        {"name": "health", "containerPort": 8081, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["RELATED_IMAGE_POSTGRES"]["value"] == v1alpha1.DEFAULT_IMAGE
    assert env["PGHERD_LEADER_ELECTION"]["value"] == "1"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["WATCH_NAMESPACE"]["value"] == ""
    assert env["PGHERD_LOG_FORMAT"]["value"] == "json"
    # Only nodes of a platform the image is built for.
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = terms["nodeSelectorTerms"]
    assert {e["key"]: e["values"] for e in term["matchExpressions"]} == {
        "kubernetes.io/arch": list(manifests.ARCHITECTURES),
        "kubernetes.io/os": list(manifests.OPERATING_SYSTEMS),
    }


def test_the_metrics_service_selects_the_operator_pods_on_their_metrics_port() -> None:
    spec = manifests.deployment_spec(IMAGE)
    pod_labels = spec["template"]["metadata"]["labels"]
    service = manifests.metrics_service()
    assert service["metadata"]["namespace"] == manifests.NAMESPACE
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(spec)["ports"]}
    files = manifests.files(IMAGE)
    kustomization = yaml.safe_load(files["kustomization.yaml"])
    assert "manager/metrics-service.yaml" in kustomization["resources"]
    assert service in manifests.install_objects(IMAGE)
    # In the bundle without a namespace: OLM installs it into the operator's own.
    (bundled,) = (REPO / "bundle" / "manifests").glob("*_service.yaml")
    assert "namespace" not in yaml.safe_load(bundled.read_text())["metadata"]


def test_olm_deployment_watches_the_operator_group_targets() -> None:
    env = {e["name"]: e for e in container(manifests.deployment_spec(IMAGE, olm=True))["env"]}
    assert env["WATCH_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['olm.targetNamespaces']"
    )


def test_samples_are_valid_and_the_backup_targets_a_backed_up_cluster() -> None:
    clusters = {}
    for sample in manifests.samples():
        meta = {**sample["metadata"], "namespace": "default"}
        if sample["kind"] == v1alpha1.BACKUP_KIND:
            backup = v1alpha1.PostgresBackup.model_validate({**sample, "metadata": meta})
            assert clusters[backup.spec.cluster].spec.backup is not None
            continue
        cluster = v1alpha1.PostgresCluster.model_validate({**sample, "metadata": meta})
        clusters[cluster.metadata.name] = cluster
    assert manifests.samples()[0]["spec"]["instances"] == 3, "the console's default example"
    names = [
        manifests.sample_file_name(s, manifests.samples()[:i])
        for i, s in enumerate(manifests.samples())
    ]
    assert len(set(names)) == len(names)
    assert names[0] == "pgherd.io_v1alpha1_postgrescluster.yaml"


def test_committed_rbac_is_bound_to_the_service_account() -> None:
    docs = load_all(REPO / "manifests" / "rbac" / "rbac.yaml")
    roles = {d["metadata"]["name"]: d["rules"] for d in docs if d["kind"] == "ClusterRole"}
    assert roles == {
        "pgherd-operator": permissions.policy_rules(permissions.NAMESPACED),
        "pgherd-operator-cluster": permissions.policy_rules(permissions.CLUSTER),
    }
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "pgherd-operator", "namespace": "pgherd-system"}
        ]


# --- ClusterServiceVersion ---------------------------------------------------------------------


def test_csv_permissions_are_the_manifests_rbac(csv: dict[str, Any]) -> None:
    docs = load_all(REPO / "manifests" / "rbac" / "rbac.yaml")
    roles = {d["metadata"]["name"]: d["rules"] for d in docs if d["kind"] == "ClusterRole"}
    # The leader election's Role, in the operator's namespace only.
    (own,) = [d["rules"] for d in docs if d["kind"] == "Role"]
    strategy = csv["spec"]["install"]["spec"]
    assert strategy["permissions"] == [
        {"serviceAccountName": "pgherd-operator", "rules": roles["pgherd-operator"] + own}
    ]
    assert strategy["clusterPermissions"] == [
        {"serviceAccountName": "pgherd-operator", "rules": roles["pgherd-operator-cluster"]}
    ]


def test_csv_identity_and_history(csv: dict[str, Any]) -> None:
    history = releases.load(HISTORY)
    version = csv["spec"]["version"]
    assert csv["metadata"]["name"] == f"pgherd-operator.v{version}"
    assert csv["metadata"]["annotations"]["createdAt"] == history.get(version).created_at_text
    assert csv["spec"].get("replaces") == (
        f"pgherd-operator.v{r}" if (r := history.replaces(version)) else None
    )
    assert version == history.latest.version
    assert csv["spec"]["replaces"] == "pgherd-operator.v0.1.0"
    assert csv["metadata"]["annotations"]["olm.skipRange"] == ">=0.1.0 <0.2.0"
    assert "skipRange" not in csv["spec"]


def test_csv_examples_images_and_modes(csv: dict[str, Any]) -> None:
    annotations = csv["metadata"]["annotations"]
    assert json.loads(annotations["alm-examples"]) == manifests.samples()
    owned = {c["kind"] for c in csv["spec"]["customresourcedefinitions"]["owned"]}
    assert owned == {s["kind"] for s in manifests.samples()}
    (crd,) = [
        c for c in csv["spec"]["customresourcedefinitions"]["owned"] if c["kind"] == v1alpha1.KIND
    ]
    assert "conditions" in {d["path"] for d in crd["statusDescriptors"]}
    features = {k: v for k, v in annotations.items() if k.startswith("features.operators")}
    assert len(features) == 10
    assert set(features.values()) <= {"true", "false"}
    assert {m["type"] for m in csv["spec"]["installModes"] if m["supported"]} == {
        "OwnNamespace",
        "SingleNamespace",
        "MultiNamespace",
        "AllNamespaces",
    }
    (deployment,) = csv["spec"]["install"]["spec"]["deployments"]
    c = container(deployment["spec"])
    related = {r["image"] for r in csv["spec"]["relatedImages"]}
    env_images = {e["value"] for e in c["env"] if e["name"].startswith("RELATED_IMAGE_")}
    assert related == env_images | {c["image"]} == {annotations["containerImage"], *env_images}


def test_bundle_dockerfile_labels_match_annotations() -> None:
    annotations = yaml.safe_load((REPO / "bundle" / "metadata" / "annotations.yaml").read_text())
    labels = dict(
        line.removeprefix("LABEL ").split("=", 1)
        for line in (REPO / "bundle.Dockerfile").read_text().splitlines()
        if line.startswith("LABEL ")
    )
    assert labels == annotations["annotations"]


# --- release history ---------------------------------------------------------------------------


def test_history_graph_replaces_previous_and_skips_all_older() -> None:
    history = releases.History.model_validate(
        {
            "package": "pgherd-operator",
            "releases": [
                {
                    "version": "0.1.0",
                    "createdAt": "2025-01-01T00:00:00Z",
                    "channels": ["candidate", "stable"],
                },
                {
                    "version": "0.2.0",
                    "createdAt": "2025-02-01T00:00:00Z",
                    "channels": ["candidate"],
                },
                {
                    "version": "0.10.0",
                    "createdAt": "2025-03-01T00:00:00Z",
                    "channels": ["candidate"],
                },
                # The first release of a new channel.
                {"version": "0.11.0", "createdAt": "2025-04-01T00:00:00Z", "channels": ["fast"]},
            ],
        }
    )
    assert history.replaces("0.1.0") is None
    assert history.skip_range("0.1.0") is None
    assert history.replaces("0.2.0") == "0.1.0"
    assert history.replaces("0.10.0") == "0.2.0"
    assert history.skip_range("0.10.0") == ">=0.1.0 <0.10.0"
    # A channel's first release replaces nothing, and still skips every older one.
    assert history.replaces("0.11.0") is None
    assert history.skip_range("0.11.0") == ">=0.1.0 <0.11.0"
    with pytest.raises(LookupError, match=r"releases/history\.yaml"):
        history.get("9.9.9")


def test_history_must_be_ordered_and_channels_named() -> None:
    base = {"createdAt": "2025-01-01T00:00:00Z", "channels": ["stable"]}
    with pytest.raises(ValueError, match="oldest first"):
        releases.History.model_validate(
            {
                "package": "p",
                "releases": [{"version": "0.2.0", **base}, {"version": "0.1.0", **base}],
            }
        )
    with pytest.raises(ValueError, match="pattern"):
        releases.History.model_validate(
            {"package": "p", "releases": [{**base, "version": "0.1.0", "channels": ["beta"]}]}
        )
