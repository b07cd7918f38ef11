"""The generated CRD: structural schema, defaults, descriptions, CEL rules, and freshness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from pgherd.api import v1alpha1
from pgherd_packaging import crds
from pgherd_packaging.crd_schema import UnsupportedSchemaError, structural_schema

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "manifests" / "crd"

# Spec fields with no default on purpose: unset means "not chosen" (the operator decides).
OPTIONAL_SPEC_FIELDS = {
    "spec.storage.storageClassName",
    # The operator chooses the image for spec.postgresVersion unless one is given.
    "spec.image",
    "spec.scheduling.affinity",
    "spec.scheduling.topologySpreadConstraints",
    "spec.switchover",
    # The operator's own CA serves unless the user brings a certificate.
    "spec.tls.serverSecret",
    "spec.tls.caSecret",
    # pgherd.backup: optional sections (their required fields have no default by design).
    "spec.backup",
    "spec.bootstrap.recovery",
    # Secrets adopted at creation, by explicit reference only.
    "spec.bootstrap.secret",
    "spec.bootstrap.superuserSecret",
    # Absent, an existing cluster's stored spec stays as it was (no defaults filled in).
    "spec.monitoring",
    # Managed roles: absent, nothing inside PostgreSQL is managed (and no SQL is run).
    "spec.managed",
    # Disks that do not fill: absent, the volumes never grow by themselves (limit required).
    "spec.storage.autoGrow",
    # Patroni timing profiles: absent, a timing is spec.patroni.profile's.
    "spec.patroni.ttl",
    "spec.patroni.loopWait",
    "spec.patroni.retryTimeout",
    # A major upgrade's rehearsal: absent, none runs (its required fields have no default).
    "spec.upgrade.rehearsal",
}
FORBIDDEN_KEYWORDS = {"$ref", "$defs", "definitions", "allOf", "oneOf", "not", "title", "const"}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    only = crds.postgrescluster_crd()
    return only


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd["spec"]["versions"]
    (only,) = versions
    return only


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with a readable path (`[*]` for items, `.*` for map values)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Object fields reachable through `properties` only (where API-server defaulting applies)."""
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}"
        yield child_path, child
        yield from fields(child, child_path)


def structural_problems(node: dict[str, Any], path: str) -> list[str]:
    problems = [f"{path}: {k}" for k in FORBIDDEN_KEYWORDS & node.keys()]
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "anyOf" in node and not (
        int_or_string and node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    ):
        problems.append(f"{path}: anyOf outside int-or-string")
    if "type" not in node and not (int_or_string or preserve):
        problems.append(f"{path}: no type")
    if "properties" in node and node.get("type") != "object":
        problems.append(f"{path}: properties on a non-object")
    if "items" in node and node.get("type") != "array":
        problems.append(f"{path}: items on a non-array")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    if "additionalProperties" in node:
        if not isinstance(node["additionalProperties"], dict):
            problems.append(f"{path}: boolean additionalProperties")
        if "properties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
    if (
        node.get("type") == "object"
        and path != "metadata"
        and not ({"properties", "additionalProperties"} & node.keys() or preserve)
    ):
        problems.append(f"{path}: object without properties (pruned to nothing)")
    return problems


def test_schema_is_structural(root: dict[str, Any]) -> None:
    problems = [p for path, node in walk(root) for p in structural_problems(node, path)]
    assert problems == []


def test_checker_catches_non_structural_nodes() -> None:
    assert structural_problems({"$ref": "#/x"}, "a")
    assert structural_problems({"anyOf": [{"type": "string"}, {"type": "null"}]}, "a")
    assert structural_problems({"type": "object"}, "a")
    assert structural_problems({"type": "object", "additionalProperties": True}, "a")


def test_every_field_is_described(root: dict[str, Any]) -> None:
    undescribed = [
        path
        for path, node in walk(root)
        if path and path != "metadata" and not node.get("description")
    ]
    # Map values and list items are described by the field that holds them.
    assert [p for p in undescribed if not p.endswith(("[*]", ".*"))] == []


def test_every_spec_field_has_a_default(root: dict[str, Any]) -> None:
    missing = [
        path
        for path, node in fields(root["properties"]["spec"], "spec")
        if "default" not in node and not any(path.startswith(o) for o in OPTIONAL_SPEC_FIELDS)
    ]
    assert missing == []
    assert "default" in root["properties"]["spec"]


def test_spec_default_is_the_models_default(root: dict[str, Any]) -> None:
    default = root["properties"]["spec"]["default"]
    assert v1alpha1.PostgresClusterSpec.model_validate(default) == v1alpha1.PostgresClusterSpec()


def test_defaults_carried(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]["properties"]
    assert spec["instances"]["default"] == 3
    assert spec["postgresVersion"]["default"] == 15
    assert "default" not in spec["image"]  # chosen by the operator for postgresVersion
    assert spec["storage"]["properties"]["size"]["default"] == "1Gi"
    assert spec["storage"]["properties"]["reclaimPolicy"]["default"] == "Retain"
    assert spec["resources"]["default"]["requests"] == v1alpha1.DEFAULT_REQUESTS
    assert spec["patroni"]["properties"]["maximumLagOnFailover"]["default"] == 1048576
    assert spec["synchronousMode"]["default"] == "off"


def test_bounds_and_enums(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]["properties"]
    assert (spec["instances"]["minimum"], spec["instances"]["maximum"]) == (1, 9)
    assert spec["synchronousMode"]["enum"] == ["off", "on", "strict"]
    assert spec["storage"]["properties"]["reclaimPolicy"]["enum"] == ["Retain", "Delete"]
    assert spec["service"]["properties"]["type"]["enum"] == [
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
    ]
    assert spec["scheduling"]["properties"]["antiAffinity"]["enum"] == ["preferred", "required"]
    patroni = spec["patroni"]["properties"]
    numbers = [f for f in patroni if patroni[f].get("type") == "integer"]
    assert numbers and all("minimum" in patroni[f] and "maximum" in patroni[f] for f in numbers)
    assert patroni["profile"]["enum"] == ["default", "fast"]


def test_nulls_only_in_status(root: dict[str, Any]) -> None:
    nullable_in_spec = [p for p, n in walk(root["properties"]["spec"], "spec") if n.get("nullable")]
    assert nullable_in_spec == []
    status = root["properties"]["status"]["properties"]
    assert status["instancesStatus"]["items"]["properties"]["lagBytes"]["nullable"] is True


def test_free_form_fields_preserve_unknown_fields(root: dict[str, Any]) -> None:
    scheduling = root["properties"]["spec"]["properties"]["scheduling"]["properties"]
    assert scheduling["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    spread = scheduling["topologySpreadConstraints"]["items"]
    assert spread["x-kubernetes-preserve-unknown-fields"] is True
    kopf = root["properties"]["status"]["properties"]["kopf"]
    assert kopf["x-kubernetes-preserve-unknown-fields"] is True


def test_status_fields(root: dict[str, Any]) -> None:
    status = root["properties"]["status"]["properties"]
    assert set(status) >= {
        "phase",
        "conditions",
        "observedGeneration",
        "instances",
        "readyInstances",
        "currentPrimary",
        "selector",
        "instancesStatus",
        "endpoints",
        "pendingRestart",
        "secrets",
        "kopf",
    }
    condition = status["conditions"]["items"]
    assert set(condition["required"]) == {
        "type",
        "status",
        "lastTransitionTime",
        "reason",
        "message",
    }
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["endpoints"]["properties"]) == {"readWrite", "readOnly", "any"}
    assert set(status["secrets"]["properties"]) == {"superuser", "replication", "app"}


def rules_at(root: dict[str, Any], path: str) -> list[str]:
    node = dict(walk(root))[path]
    return [v["rule"] for v in node.get("x-kubernetes-validations", [])]


def test_cel_rules_sit_on_the_objects_holding_their_fields(root: dict[str, Any]) -> None:
    assert rules_at(root, "spec.storage") == [
        "!isQuantity(self.size) || quantity(self.size).compareTo(quantity('0')) > 0",
        "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
        "!has(oldSelf.storageClassName) || (has(self.storageClassName)"
        " && self.storageClassName == oldSelf.storageClassName)",
        # Disks that do not fill: autoGrow's limit compares two fields of storage.
        "!has(self.autoGrow) || !isQuantity(self.size) || "
        "quantity(self.autoGrow.limit).compareTo(quantity(self.size)) >= 0",
    ]
    assert rules_at(root, "spec") == [
        # Major upgrade: a pre-upgrade backup needs an object store (two of spec's fields).
        "!has(self.upgrade) || !self.upgrade.backupFirst || has(self.backup)",
        # Managed roles: the bootstrap owner is pgherd's (it compares two of spec's fields).
        "!has(self.managed) || self.managed.roles.all(r, r.name != self.bootstrap.owner)",
    ]
    assert "self == oldSelf" in rules_at(root, "spec.bootstrap")
    # Each timing is the field's or its profile's (spec.patroni.profile).
    assert rules_at(root, "spec.patroni") == [
        "(has(self.loopWait) ? self.loopWait : (self.profile == 'fast' ? 2 : 10)) + 2 * "
        "(has(self.retryTimeout) ? self.retryTimeout : (self.profile == 'fast' ? 5 : 10)) <= "
        "(has(self.ttl) ? self.ttl : (self.profile == 'fast' ? 20 : 30))"
    ]
    assert any("metadata.name" in r for r in rules_at(root, ""))
    # Lowering postgresVersion is judged where status is seen too: the root.
    assert not any("postgresVersion" in r for p, _ in walk(root) if p for r in rules_at(root, p))
    assert v1alpha1.POSTGRES_VERSION_RULE["rule"] in rules_at(root, "")


def test_every_cel_rule_has_a_message(root: dict[str, Any]) -> None:
    validations = [v for _, n in walk(root) for v in n.get("x-kubernetes-validations", [])]
    assert len(validations) >= 7
    assert all(v.get("message") for v in validations)


def test_names_scope_and_version(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "postgresclusters.pgherd.io"
    spec = crd["spec"]
    assert spec["group"] == "pgherd.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "PostgresCluster"
    assert spec["names"]["plural"] == "postgresclusters"
    assert spec["names"]["shortNames"] == ["pgc"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


def test_subresources(version: dict[str, Any]) -> None:
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.instances",
            "statusReplicasPath": ".status.instances",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Instances", "integer", ".spec.instances"),
        ("Ready", "integer", ".status.readyInstances"),
        ("Primary", "string", ".status.currentPrimary"),
        ("PostgreSQL", "integer", ".status.postgresVersion"),
        ("Phase", "string", ".status.phase"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]


def test_output_is_deterministic() -> None:
    first = [crds.crd_file_text(c) for c in crds.render_crds()]
    second = [crds.crd_file_text(c) for c in crds.render_crds()]
    assert first == second


def test_committed_manifests_are_fresh() -> None:
    expected = {crds.crd_file_name(c): crds.crd_file_text(c) for c in crds.render_crds()}
    committed = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.yaml")}
    stale = sorted(
        n for n in expected.keys() | committed.keys() if expected.get(n) != committed.get(n)
    )
    assert not stale, (
        f"manifests/crd is stale ({', '.join(stale)}); "
        "regenerate with: python -m pgherd_packaging.crds manifests/crd"
    )


def test_main_writes_one_file_per_crd(tmp_path: Path) -> None:
    assert crds.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pgherd.io_postgresbackups.yaml",
        "pgherd.io_postgresclusters.yaml",
        "pgherd.io_postgresdatabases.yaml",
        "pgherd.io_postgrespoolers.yaml",
    ]
    assert crds.main([]) == 2


def test_converter_refuses_non_structural_unions() -> None:
    class Either(BaseModel):
        value: int | str = 1

    with pytest.raises(UnsupportedSchemaError):
        structural_schema(Either, nullable_optionals=False)
