"""What is shipped: the wheel (what both images install) holds the runtime package only, never
the developer tooling or the packaging generators."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the source tree, so that the build leaves no egg-info or build/ in the clone.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "operator"), str(src)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        check=True,
    )  # fmt: skip
    (built,) = out.glob("pgherd-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_holds_the_runtime(wheel_files: list[str]) -> None:
    for module in (
        "pgherd/cli.py",
        "pgherd/settings.py",
        "pgherd/contract.py",
        "pgherd/controller/reconciler.py",
        "pgherd/operand/instance.py",
        "pgherd/render/statefulset.py",
        "pgherd/api/v1alpha1.py",
        "pgherd/kubectl/cli.py",
        "pgherd/kubectl/commands.py",
    ):
        assert module in wheel_files


def test_the_wheel_installs_both_commands(wheel: Path, wheel_files: list[str]) -> None:
    """`pgherd` (the images' entrypoint) and `kubectl-pgherd`, which kubectl finds on PATH
    and runs as `kubectl pgherd`."""
    (entry_points,) = [n for n in wheel_files if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        scripts = configparser.ConfigParser()
        scripts.read_string(zf.read(entry_points).decode())
    assert dict(scripts["console_scripts"]) == {
        "pgherd": "pgherd.cli:main",
        "kubectl-pgherd": "pgherd.kubectl.cli:main",
    }


def test_the_wheel_holds_no_dev_tooling_nor_generators(wheel_files: list[str]) -> None:
    shipped = {name.split("/")[0] for name in wheel_files}
    assert "pgherd_dev" not in shipped
    assert "pgherd_packaging" not in shipped
    assert not [n for n in wheel_files if "/templates/" in n]
