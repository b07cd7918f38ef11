"""Generated packaging files are fresh and pass OLM's own validators (operator-sdk, opm).

These run the pinned binaries (marker `tools`); a missing binary fails the test with the
command that builds it, so nothing is skipped silently.
"""

from __future__ import annotations

import difflib
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
# Everything `make generate` owns, relative to the repository root.
GENERATED = ("manifests", "bundle", "catalog", "bundle.Dockerfile")

pytestmark = pytest.mark.tools


def run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def files_under(root: Path) -> dict[str, Path]:
    out = {}
    for name in GENERATED:
        top = root / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        out.update({str(p.relative_to(root)): p for p in paths})
    return out


def test_generated_files_are_fresh(tmp_path: Path) -> None:
    require_tool("opm")
    done = run(["make", "-s", "--no-print-directory", "generate", f"GENERATE_ROOT={tmp_path}"])
    assert done.returncode == 0, done.stderr
    fresh, committed = files_under(tmp_path), files_under(REPO)
    assert sorted(fresh) == sorted(committed), "run `make generate` and commit the result"
    stale = [rel for rel in fresh if not filecmp.cmp(fresh[rel], committed[rel], shallow=False)]
    if stale:
        diff = "".join(
            "".join(
                difflib.unified_diff(
                    committed[rel].read_text().splitlines(keepends=True),
                    fresh[rel].read_text().splitlines(keepends=True),
                    fromfile=f"committed/{rel}",
                    tofile=f"regenerated/{rel}",
                )
            )
            for rel in stale
        )
        pytest.fail(f"stale generated files; run `make generate`:\n{diff[:6000]}", pytrace=False)


def test_opm_validate_catalog() -> None:
    opm = require_tool("opm")
    done = run([str(opm), "validate", "catalog"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_next_release_keeps_the_previous_one_in_the_catalog(tmp_path: Path) -> None:
    """Simulates docs/releasing.md for the release after the committed one."""
    opm = require_tool("opm")
    history: dict[str, Any] = yaml.safe_load((REPO / "releases" / "history.yaml").read_text())
    released = [r["version"] for r in history["releases"]]
    current = released[-1]
    major, minor, _ = current.split(".")
    nxt = f"{major}.{int(minor) + 1}.0"
    history["releases"].append(
        {"version": nxt, "createdAt": "2030-01-01T00:00:00Z", "channels": ["candidate", "stable"]}
    )
    releases_dir = tmp_path / "releases"
    for version in released[:-1]:
        shutil.copytree(REPO / "releases" / version, releases_dir / version)
    shutil.copytree(REPO / "bundle", releases_dir / current)  # make release-freeze
    (releases_dir / "history.yaml").write_text(yaml.safe_dump(history))
    root = tmp_path / "root"
    base = "quay.io/pgherd/pgherd-operator"
    argv = [sys.executable, "-m", "pgherd_packaging.generate", "--root", str(root)]
    argv += ["--history", str(releases_dir / "history.yaml"), "--version", nxt]
    argv += ["--img", f"{base}:v{nxt}", "--image-tag-base", base]
    argv += ["--channels", "candidate,stable", "--default-channel", "stable"]
    argv += ["--scorecard-image", "scorecard-test:x", "--opm", str(opm), "bundle", "catalog"]
    done = run(argv)
    assert done.returncode == 0, done.stderr
    assert run([str(opm), "validate", str(root / "catalog")]).returncode == 0

    docs = list(
        yaml.safe_load_all((root / "catalog" / "pgherd-operator" / "catalog.yaml").read_text())
    )
    bundles = {d["name"]: d["image"] for d in docs if d["schema"] == "olm.bundle"}
    assert bundles == {f"pgherd-operator.v{v}": f"{base}-bundle:v{v}" for v in [*released, nxt]}
    channels = {d["name"]: d["entries"] for d in docs if d["schema"] == "olm.channel"}
    for entries in channels.values():
        assert entries[-1] == {
            "name": f"pgherd-operator.v{nxt}",
            "replaces": f"pgherd-operator.v{current}",
            "skipRange": f">={released[0]} <{nxt}",
        }
    csv = yaml.safe_load(
        (root / "bundle" / "manifests" / "pgherd-operator.clusterserviceversion.yaml").read_text()
    )
    assert csv["spec"]["replaces"] == f"pgherd-operator.v{current}"
    assert csv["metadata"]["annotations"]["olm.skipRange"] == f">={released[0]} <{nxt}"
    assert csv["metadata"]["annotations"]["createdAt"] == "2030-01-01T00:00:00Z"


def test_a_frozen_bundle_that_disagrees_with_the_history_stops_the_catalog(tmp_path: Path) -> None:
    """A released bundle is never changed: moving a release to other channels in the history
    after the fact is refused, naming the bundle, instead of serving two different graphs."""
    history: dict[str, Any] = yaml.safe_load((REPO / "releases" / "history.yaml").read_text())
    history["releases"][0]["channels"] = ["stable"]
    path = tmp_path / "history.yaml"
    path.write_text(yaml.safe_dump(history))
    for release in history["releases"][:-1]:
        shutil.copytree(REPO / "releases" / release["version"], tmp_path / release["version"])
    argv = [sys.executable, "-m", "pgherd_packaging.generate", "--root", str(tmp_path / "root")]
    argv += ["--history", str(path), "--version", history["releases"][-1]["version"]]
    argv += ["--img", "x/y:z", "--image-tag-base", "x/y", "--channels", "candidate,stable"]
    argv += ["--default-channel", "stable", "--scorecard-image", "s", "--opm"]
    argv += [str(require_tool("opm")), "catalog"]
    (tmp_path / "root" / "bundle").mkdir(parents=True)
    shutil.copytree(REPO / "bundle", tmp_path / "root" / "bundle", dirs_exist_ok=True)
    done = run(argv)
    assert done.returncode == 2
    assert "disagrees with releases/history.yaml" in done.stderr
    assert "channels" in done.stderr


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    if not os.access(hadolint, os.X_OK):
        pytest.fail("hadolint is not installed; run `make lint-images`", pytrace=False)
    done = run([str(hadolint), "Dockerfile", "bundle.Dockerfile", "catalog.Dockerfile"])
    assert done.returncode == 0, done.stdout + done.stderr
