"""operator-sdk scorecard's basic and olm tests pass on every release's bundle.

The scorecard-test binary (built from operator-sdk's module with the other pinned tools) runs
each test of the bundle's tests/scorecard/config.yaml the way the scorecard pod would: the
bundle at /bundle of a temporary root, the binary as the image's user (pgherd_dev.scorecard).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pgherd_dev import scorecard
from pgherd_dev.errors import DevError
from pgherd_packaging import bundle, releases
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
HISTORY = releases.load(REPO / "releases" / "history.yaml")
CURRENT = HISTORY.latest.version

pytestmark = pytest.mark.tools


def bundle_dir(version: str) -> Path:
    return REPO / "bundle" if version == CURRENT else REPO / "releases" / version


def run(directory: Path) -> dict[str, scorecard.TestResult]:
    require_tool("scorecard-test")
    try:
        results = scorecard.run(directory)
    except DevError as e:
        pytest.fail(str(e), pytrace=False)
    return {r.labels["test"]: r for r in results}


@pytest.mark.parametrize("version", [r.version for r in HISTORY.releases])
def test_basic_and_olm_suites_pass(version: str) -> None:
    directory = bundle_dir(version)
    results = run(directory)
    configured = {t["labels"]["test"] for t in scorecard.configured_tests(directory)}
    assert set(results) == configured
    assert {r.labels["suite"] for r in results.values()} == {"basic", "olm"}
    for name, result in sorted(results.items()):
        print(f"{version} {result.state} {name} suggestions={result.suggestions}")
    failed = {n: r.errors for n, r in results.items() if r.state != "pass"}
    assert not failed, failed


def test_scorecard_fails_what_the_issue_reported(tmp_path: Path) -> None:
    """The runner can fail: the bundle without the resources and the top-level spec
    descriptors 0.1.0 first lacked gets the scorecard's own messages."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir(CURRENT), copy)
    path = copy / "manifests" / bundle.CSV_FILE
    csv = yaml.safe_load(path.read_text())
    for owned in csv["spec"]["customresourcedefinitions"]["owned"]:
        owned.pop("resources")
        owned["specDescriptors"] = [
            d for d in owned["specDescriptors"] if d["path"] not in ("bootstrap", "storage")
        ]
    path.write_text(yaml.safe_dump(csv))
    results = run(copy)
    assert results["olm-crds-have-resources-test"].state == "fail"
    assert results["olm-crds-have-resources-test"].errors == [
        "Owned CRDs do not have resources specified"
    ]
    spec = results["olm-spec-descriptors-test"]
    assert spec.state == "fail"
    assert "bootstrap does not have a spec descriptor" in spec.errors
    assert "storage does not have a spec descriptor" in spec.errors
    assert results["basic-check-spec-test"].state == "pass"
