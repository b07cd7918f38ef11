"""What every released CSV claims is true: descriptors cover its CRDs, the capability level is
the one docs/capabilities.md proves, maturity follows the channels, the OpenShift versions fit
minKubeVersion, the architecture labels are the platforms the images are built for, and the
description names what the product needs. Checked on the current bundle and every frozen
release (releases/<version>/), without any tool binary."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd.api import v1alpha1
from pgherd_packaging import bundle, manifests, releases

REPO = Path(__file__).resolve().parents[2]
HISTORY = releases.load(REPO / "releases" / "history.yaml")
CURRENT = HISTORY.latest.version
# Status fields no user reads: kopf's bookkeeping, the scale subresource's selector, and the
# uid a running backup uses to notice that its pod was replaced.
INTERNAL_STATUS = {"kopf", "selector", "instanceUid"}


def bundle_dir(version: str) -> Path:
    return REPO / "bundle" if version == CURRENT else REPO / "releases" / version


VERSIONS = [r.version for r in HISTORY.releases]


@cache
def loaded(version: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """(CSV, kind -> CRD, bundle annotations) of a release."""
    directory = bundle_dir(version)
    csv: dict[str, Any] = {}
    crds = {}
    for path in sorted((directory / "manifests").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] == "ClusterServiceVersion":
            csv = doc
        elif doc["kind"] == "CustomResourceDefinition":
            crds[doc["spec"]["names"]["kind"]] = doc
    annotations = yaml.safe_load((directory / "metadata" / "annotations.yaml").read_text())
    return csv, crds, annotations["annotations"]


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path of an OpenAPI schema (objects only; arrays end the path)."""
    paths = set()
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= schema_paths(sub, f"{path}.")
    return paths


def crd_schema(crd: dict[str, Any], part: str) -> dict[str, Any]:
    (served,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    found: dict[str, Any] = served["schema"]["openAPIV3Schema"]["properties"][part]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_descriptors_cover_the_crds(version: str) -> None:
    csv, crds, _ = loaded(version)
    owned = csv["spec"]["customresourcedefinitions"]["owned"]
    assert {o["kind"] for o in owned} == set(crds)
    for description in owned:
        crd = crds[description["kind"]]
        assert description["name"] == crd["metadata"]["name"]
        for part, key, skip in (
            ("spec", "specDescriptors", set()),
            ("status", "statusDescriptors", INTERNAL_STATUS),
        ):
            schema = crd_schema(crd, part)
            described = {d["path"] for d in description[key]}
            # Every descriptor names a real field; every top-level field has a descriptor.
            assert described <= schema_paths(schema), (version, description["kind"], part)
            top = set(schema["properties"]) - skip
            assert top <= described, (version, description["kind"], part, top - described)
        # kubectl apply of the raw CSV needs a name on every resource (OLM's CSV schema).
        assert description["resources"], description["kind"]
        assert all(r.get("name") and r.get("kind") for r in description["resources"])


def test_new_status_fields_of_this_release_are_described() -> None:
    csv, _, _ = loaded(CURRENT)
    (cluster,) = [
        o for o in csv["spec"]["customresourcedefinitions"]["owned"] if o["kind"] == v1alpha1.KIND
    ]
    assert {"postgresVersion", "ignoredParameters"} <= {
        d["path"] for d in cluster["statusDescriptors"]
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_graph_is_in_the_annotation_and_one_replaces(version: str) -> None:
    csv, _, annotations = loaded(version)
    assert "skipRange" not in csv["spec"], "OLM reads olm.skipRange from the annotations only"
    assert csv["metadata"]["annotations"].get("olm.skipRange") == HISTORY.skip_range(version)
    replaced = HISTORY.replaces(version)
    assert csv["spec"].get("replaces") == (
        releases.csv_name(HISTORY.package, replaced) if replaced else None
    )
    channels = annotations["operators.operatorframework.io.bundle.channels.v1"].split(",")
    assert sorted(channels) == sorted(HISTORY.get(version).channels)


@pytest.mark.parametrize("version", VERSIONS)
def test_maturity_follows_the_channels(version: str) -> None:
    csv, _, annotations = loaded(version)
    channels = annotations["operators.operatorframework.io.bundle.channels.v1"].split(",")
    assert csv["spec"]["maturity"] == bundle.maturity(channels)
    if "stable" in channels:
        assert csv["spec"]["maturity"] == "stable"


def test_maturity_of_a_candidate_only_release_is_beta() -> None:
    assert bundle.maturity(["candidate"]) == "beta"
    assert bundle.maturity(["candidate", "stable"]) == "stable"
    assert bundle.maturity(["fast"]) == "stable"


# OpenShift minor -> Kubernetes minor, as Red Hat documents it (access.redhat.com/solutions/
# 4870701); written out here rather than computed, to check the bundle generator's rule.
OPENSHIFT_KUBE = {"4.14": "1.27", "4.15": "1.28", "4.16": "1.29", "4.17": "1.30", "4.18": "1.31"}


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.removeprefix("v").split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("version", VERSIONS)
def test_openshift_versions_fit_min_kube_version(version: str) -> None:
    """The community pipeline's check_api_version_constraints: every OpenShift version the
    annotation admits ships a Kubernetes at least minKubeVersion, and the first one admitted
    is the first that does (none is left out)."""
    csv, _, annotations = loaded(version)
    selector = annotations[bundle.OPENSHIFT_VERSIONS_ANNOTATION]
    assert re.fullmatch(r"v4\.\d+", selector), "a 'vX.Y' selector means X.Y and later"
    min_kube = _minor(csv["spec"]["minKubeVersion"])
    admitted = [o for o in OPENSHIFT_KUBE if _minor(o) >= _minor(selector)]
    assert admitted
    assert all(_minor(OPENSHIFT_KUBE[o]) >= min_kube for o in admitted)
    refused = [o for o in OPENSHIFT_KUBE if _minor(o) < _minor(selector)]
    assert all(_minor(OPENSHIFT_KUBE[o]) < min_kube for o in refused)
    for openshift, kube in OPENSHIFT_KUBE.items():
        assert bundle.OPENSHIFT_TO_KUBE[openshift] == kube


def test_bundle_dockerfile_carries_the_openshift_versions() -> None:
    labels = dict(
        line.removeprefix("LABEL ").split("=", 1)
        for line in (REPO / "bundle.Dockerfile").read_text().splitlines()
        if line.startswith("LABEL ")
    )
    assert labels[bundle.OPENSHIFT_VERSIONS_ANNOTATION] == bundle.openshift_versions()


@pytest.mark.parametrize("version", VERSIONS)
def test_images_are_fully_qualified_and_listed(version: str) -> None:
    csv, crds, _ = loaded(version)
    annotations = csv["metadata"]["annotations"]
    (deployment,) = csv["spec"]["install"]["spec"]["deployments"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Every operand image the operator may use (RELATED_IMAGE_POSTGRES[_<major>]) is listed,
    # so that OLM mirrors and pins each.
    operand = {v for k, v in env.items() if k.startswith("RELATED_IMAGE_POSTGRES") and v}
    images = {
        annotations["containerImage"],
        container["image"],
        *operand,
        *(r["image"] for r in csv["spec"]["relatedImages"]),
    }
    for image in images:
        host = image.split("/", 1)[0]
        assert "." in host or ":" in host, f"{image} has no registry host"
    assert {r["image"] for r in csv["spec"]["relatedImages"]} == {container["image"], *operand}
    spec = crd_schema(crds[v1alpha1.KIND], "spec")
    if version == "0.1.0":
        # 0.1.0's CRD defaulted spec.image; the image it names is the one the CSV lists.
        assert spec["properties"]["image"]["default"] == env["RELATED_IMAGE_POSTGRES"]
    else:
        # From 0.2.0 the operator itself takes RELATED_IMAGE_POSTGRES (what OLM mirrors and
        # pins): no CRD default can pin a cluster to an image the catalog does not list.
        assert "default" not in spec["properties"]["image"]
    scorecard = yaml.safe_load(
        (bundle_dir(version) / "tests" / "scorecard" / "config.yaml").read_text()
    )
    for test in scorecard["stages"][0]["tests"]:
        assert test["image"].startswith("quay.io/operator-framework/scorecard-test:")


def test_operand_image_is_this_release() -> None:
    assert (
        f"quay.io/pgherd/postgres:{v1alpha1.DEFAULT_POSTGRES_VERSION}-{CURRENT}"
    ) == v1alpha1.DEFAULT_IMAGE


@pytest.mark.parametrize("version", VERSIONS)
def test_architecture_labels_match_the_node_affinity_and_the_docs(version: str) -> None:
    csv, _, _ = loaded(version)
    labels = csv["metadata"]["labels"]
    arches = {k.rsplit(".", 1)[1] for k, v in labels.items() if "/arch." in k and v == "supported"}
    systems = {k.rsplit(".", 1)[1] for k, v in labels.items() if "/os." in k and v == "supported"}
    (deployment,) = csv["spec"]["install"]["spec"]["deployments"]
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    expressions = {e["key"]: set(e["values"]) for e in term["matchExpressions"]}
    assert all(e["operator"] == "In" for e in term["matchExpressions"])
    assert expressions == {"kubernetes.io/arch": arches, "kubernetes.io/os": systems}
    # docs/images.md says which platforms the images are built for, in one line.
    (line,) = [
        x
        for x in (REPO / "docs" / "images.md").read_text().splitlines()
        if x.startswith("Platforms:")
    ]
    documented = set(re.findall(r"`([a-z0-9]+)/([a-z0-9]+)`", line))
    assert documented == {(o, a) for o in systems for a in arches}
    assert set(manifests.ARCHITECTURES) == arches and set(manifests.OPERATING_SYSTEMS) == systems


@pytest.mark.parametrize("version", VERSIONS)
def test_description_says_what_it_does_and_needs(version: str) -> None:
    csv, _, _ = loaded(version)
    text = csv["spec"]["description"]
    for needed in ("allowVolumeExpansion", "S3-compatible bucket", "Getting started", "Patroni"):
        assert needed in text, needed
    assert "not part of this release" not in text
    owned = {o["kind"] for o in csv["spec"]["customresourcedefinitions"]["owned"]}
    assert "PostgresBackup" in owned and "backup" in text.lower()
    if version == CURRENT:
        assert 'pgherd.io/use: "true"' in text, "the opt-in label referenced Secrets need"


# --- capability level --------------------------------------------------------------------------

LEVEL_HEADING = re.compile(r"^## Level (\d) - (.+)$")
NODE_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def capability_table() -> list[tuple[str, list[tuple[str, list[tuple[str, str]]]]]]:
    """[(level, [(criterion, [(file, test)])])] from docs/capabilities.md, in order."""
    levels: list[tuple[str, list[tuple[str, list[tuple[str, str]]]]]] = []
    for line in (REPO / "docs" / "capabilities.md").read_text().splitlines():
        if heading := LEVEL_HEADING.match(line):
            levels.append((heading.group(2), []))
        elif levels and line.startswith("| ") and not line.startswith("| criterion"):
            criterion, proof = line.strip("| ").split(" | ", 1)
            levels[-1][1].append((criterion, NODE_ID.findall(proof)))
    return levels


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }


def test_capability_level_is_the_highest_fully_proven() -> None:
    table = capability_table()
    assert [name for name, _ in table] == list(bundle.CAPABILITY_LEVELS)
    highest = None
    for name, rows in table:
        assert rows, f"level {name} lists no criteria"
        for criterion, proofs in rows:
            for file, test in proofs:
                assert test in defined_tests(REPO / file), f"{file}::{test} ({criterion})"
        if any(not proofs for _, proofs in rows):
            break
        highest = name
    assert highest == bundle.CAPABILITY_LEVEL, (
        f"the CSV claims {bundle.CAPABILITY_LEVEL}; docs/capabilities.md proves {highest}"
    )
    csv, _, _ = loaded(CURRENT)
    assert csv["metadata"]["annotations"]["capabilities"] == bundle.CAPABILITY_LEVEL
    text = (REPO / "docs" / "capabilities.md").read_text()
    assert f"**Claimed: {bundle.CAPABILITY_LEVEL}**" in text


def test_released_capability_claims_are_not_above_the_current_proof() -> None:
    claimed = [loaded(v)[0]["metadata"]["annotations"]["capabilities"] for v in VERSIONS]
    assert all(
        bundle.CAPABILITY_LEVELS.index(c) <= bundle.CAPABILITY_LEVELS.index(bundle.CAPABILITY_LEVEL)
        for c in claimed
    )
