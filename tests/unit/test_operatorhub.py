"""`make operatorhub` writes a community-operators submission that passes what the community
pipelines run: operator-sdk bundle validate with every optional suite that applies, on every
release, and a replaces-mode catalog built from the tree alone that opm validates and that has
the committed catalog's graph.

The validators run with a PATH holding only the pinned tools: the multiarch validator would
otherwise pull the images with a container engine. Without one it reports, as warnings, that it
could not inspect them; every other check it makes (labels against the node affinity) still
runs, and any other warning fails the test.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd_dev.tools import versions
from pgherd_packaging import catalog, operatorhub, releases
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
HISTORY = releases.load(REPO / "releases" / "history.yaml")
CURRENT = HISTORY.latest.version
VERSIONS = [r.version for r in HISTORY.releases]
# Kubernetes the deprecated-API checks look ahead to: the version the tests run.
KUBE_MINOR = ".".join(versions()["KUBE_VERSION"].removeprefix("v").split(".")[:2])
# Every optional suite that applies to a bundle. suite=operatorframework is operatorhubv2,
# capabilities, categories, alpha-deprecated-apis and good-practices; operatorhub (deprecated
# but still run by the community pipeline), community and multiarch are selected by name.
SUITES = (
    "suite=operatorframework",
    "name=good-practices",
    "name=operatorhub",
    "name=community",
    "name=multiarch",
)
# What each suite may say besides errors-free success.
EXPECTED_WARNINGS = {
    "name=operatorhub": ('The "operatorhub" validator is deprecated',),
    "name=multiarch": ("unable to inspect the image", '["error/error"]'),
}

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("operatorhub")
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "operatorhub", f"OPERATORHUB_DIR={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    yield out / "operators" / HISTORY.package


def source(version: str) -> Path:
    return REPO / "bundle" if version == CURRENT else REPO / "releases" / version


def test_tree_has_ci_yaml_and_every_release(tree: Path) -> None:
    ci = yaml.safe_load((tree / "ci.yaml").read_text())
    assert ci == operatorhub.ci_config()
    assert ci["updateGraph"] == "replaces-mode"
    assert ci["reviewers"] and all(isinstance(r, str) and r for r in ci["reviewers"])
    assert sorted(p.name for p in tree.iterdir() if p.is_dir()) == sorted(VERSIONS)
    for version in VERSIONS:
        for part in ("manifests", "metadata"):
            compared = filecmp.dircmp(tree / version / part, source(version) / part)
            assert not (compared.diff_files or compared.left_only or compared.right_only)
        assert (tree / version / "metadata" / "annotations.yaml").is_file()
        assert (tree / version / "tests" / "scorecard" / "config.yaml").is_file()


def validate(directory: Path, suite: str) -> tuple[bool, list[dict[str, str]], str]:
    sdk = require_tool("operator-sdk")
    done = subprocess.run(
        [
            str(sdk),
            "bundle",
            "validate",
            str(directory),
            "-o",
            "json-alpha1",
            "--select-optional",
            suite,
            f"--optional-values=k8s-version={KUBE_MINOR}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": str(sdk.parent), "HOME": str(directory.parent)},
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return bool(result["passed"]), list(result.get("outputs") or []), done.stderr


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("version", VERSIONS)
def test_operator_sdk_validates_every_release(tree: Path, version: str, suite: str) -> None:
    passed, outputs, stderr = validate(tree / version, suite)
    unexpected = [
        o
        for o in outputs
        if o["type"] == "error"
        or not any(w in o["message"] for w in EXPECTED_WARNINGS.get(suite, ()))
    ]
    assert passed and not unexpected, (outputs, stderr)
    for o in outputs:
        print(f"{version} {suite}: {o['type']}: {o['message'][:160]}")


def test_multiarch_would_flag_a_missing_node_affinity(tree: Path, tmp_path: Path) -> None:
    """The multiarch run above can fail: without the node affinity it warns about it."""
    copy = tmp_path / CURRENT
    shutil.copytree(tree / CURRENT, copy)
    path = next((copy / "manifests").glob("*.clusterserviceversion.yaml"))
    csv = yaml.safe_load(path.read_text())
    for deployment in csv["spec"]["install"]["spec"]["deployments"]:
        deployment["spec"]["template"]["spec"].pop("affinity")
    path.write_text(yaml.safe_dump(csv))
    _, outputs, _ = validate(copy, "name=multiarch")
    assert any("missing a node affinity" in o["message"] for o in outputs), outputs


def _channels(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {d["name"]: d["entries"] for d in docs if d["schema"] == "olm.channel"}


def test_replaces_mode_catalog_of_the_tree_is_valid_and_is_the_committed_graph(
    tree: Path, tmp_path: Path
) -> None:
    opm = require_tool("opm")
    docs = catalog.replaces_mode_documents(
        [tree / v for v in VERSIONS], opm, image_tag_base="quay.io/pgherd/pgherd-operator"
    )
    out = tmp_path / "catalog" / HISTORY.package / "catalog.yaml"
    out.parent.mkdir(parents=True)
    out.write_text(catalog.file_text(docs))
    done = subprocess.run(
        [str(opm), "validate", str(out.parent.parent)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    committed = list(
        yaml.safe_load_all((REPO / "catalog" / HISTORY.package / "catalog.yaml").read_text())
    )
    assert _channels(docs) == _channels(committed)
    assert [d for d in docs if d["schema"] == "olm.package"] == [
        d for d in committed if d["schema"] == "olm.package"
    ]
    assert [d for d in docs if d["schema"] == "olm.bundle"] == [
        d for d in committed if d["schema"] == "olm.bundle"
    ]
    # No dangling bundle (the community pipeline's check): every entry but the head of each
    # channel is replaced by a later entry, or skipped by a later entry's skipRange (entries
    # are oldest first, and the ranges cover every older release).
    for channel, entries in _channels(docs).items():
        names = [e["name"] for e in entries]
        reached = {e.get("replaces") for e in entries}
        reached |= {n for i, e in enumerate(entries) if e.get("skipRange") for n in names[:i]}
        assert set(names[:-1]) <= reached, channel


def test_a_release_replacing_different_versions_per_channel_is_refused() -> None:
    base = {"createdAt": "2030-01-01T00:00:00Z"}
    with pytest.raises(ValueError, match="one `replaces` for all its channels"):
        releases.History.model_validate(
            {
                "package": "p",
                "releases": [
                    {**base, "version": "0.1.0", "channels": ["candidate", "stable"]},
                    {**base, "version": "0.2.0", "channels": ["candidate"]},
                    {**base, "version": "0.3.0", "channels": ["candidate", "stable"]},
                ],
            }
        )
