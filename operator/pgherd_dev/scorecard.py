"""operator-sdk's scorecard tests, run the way the scorecard pod runs them, without a cluster.

`operator-sdk scorecard` starts one pod per test listed in the bundle's
tests/scorecard/config.yaml, from the image named there (operator-sdk's scorecard-test image).
The pod's init container unpacks the bundle into /bundle; its container runs the test's
entrypoint, `scorecard-test <test>`, as uid 1001 (gid 0) with HOME=/opt/scorecard-test, and the
JSON it prints on stdout is the result. Here the same binary, built from the same Go module and
version (`make tools`, hack/versions.env), runs in a temporary root laid out like that image:
/usr/local/bin/scorecard-test, the bundle copied to /bundle, an empty home, entered by chroot
as 1001:0. Only the `scorecard-test` entrypoint is known; a custom test image would need its
own binary.

`python -m pgherd_dev.scorecard BUNDLE_DIR [--selector suite=olm]` prints one line per test
and exits 1 when any does not pass (`make scorecard`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pgherd_dev.errors import DevError
from pgherd_dev.images import require_command
from pgherd_dev.tools import tool_path

# Where the scorecard-test image keeps the binary, the pod mounts the bundle, and the user.
BINARY_IN_IMAGE = "usr/local/bin/scorecard-test"
POD_BUNDLE_ROOT = "bundle"
HOME_IN_IMAGE = "opt/scorecard-test"
POD_USER = "1001:0"
CONFIG = Path("tests/scorecard/config.yaml")


@dataclass
class TestResult:
    """One test's outcome, as scorecard reports it (state: pass, fail or error)."""

    labels: dict[str, str]
    name: str
    state: str
    errors: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    log: str = ""


def configured_tests(bundle_dir: Path) -> list[dict[str, Any]]:
    """Every test of every stage of the bundle's scorecard configuration."""
    try:
        config = yaml.safe_load((bundle_dir / CONFIG).read_text(encoding="utf-8"))
    except OSError as e:
        raise DevError(f"{bundle_dir} has no scorecard configuration: {e}") from None
    return [test for stage in config.get("stages", []) for test in stage.get("tests", [])]


def _selected(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    key, _, value = selector.partition("=")
    return labels.get(key) == value


def _lay_out_root(root: Path, bundle_dir: Path) -> None:
    binary = root / BINARY_IN_IMAGE
    binary.parent.mkdir(parents=True)
    shutil.copy2(tool_path("scorecard-test"), binary)
    shutil.copytree(bundle_dir, root / POD_BUNDLE_ROOT, symlinks=False)
    for directory in (HOME_IN_IMAGE, "tmp"):
        (root / directory).mkdir(parents=True)
        (root / directory).chmod(0o777)


def _enter(root: Path) -> list[str]:
    """argv prefix that runs a command inside root as the pod's user (root only) or as a
    user-namespace root (anyone else)."""
    if os.geteuid() == 0:
        return [require_command("chroot"), f"--userspec={POD_USER}", str(root)]
    return [require_command("unshare"), "--user", "--map-root-user", f"--root={root}"]


def run(bundle_dir: Path, selector: str | None = None) -> list[TestResult]:
    """Run the configured tests (those matching selector, e.g. suite=olm) on bundle_dir."""
    results = []
    with tempfile.TemporaryDirectory(prefix="pgherd-scorecard-") as tmp:
        root = Path(tmp) / "root"
        _lay_out_root(root, bundle_dir)
        env = {"HOME": f"/{HOME_IN_IMAGE}", "PATH": "/usr/local/bin"}
        for test in configured_tests(bundle_dir):
            labels = dict(test.get("labels") or {})
            if not _selected(labels, selector):
                continue
            entrypoint = list(test["entrypoint"])
            if entrypoint[0] != "scorecard-test":
                raise DevError(f"unknown scorecard entrypoint {entrypoint[0]} ({labels})")
            argv = [*_enter(root), f"/{BINARY_IN_IMAGE}", *entrypoint[1:]]
            done = subprocess.run(
                argv, capture_output=True, text=True, check=False, env=env, timeout=120
            )
            try:
                status = json.loads(done.stdout)
            except json.JSONDecodeError:
                raise DevError(
                    f"scorecard-test {' '.join(entrypoint[1:])} printed no result "
                    f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
                ) from None
            for result in status.get("results") or []:
                results.append(
                    TestResult(
                        labels=labels,
                        name=result.get("name", ""),
                        state=result.get("state", ""),
                        errors=list(result.get("errors") or []),
                        suggestions=list(result.get("suggestions") or []),
                        log=result.get("log", ""),
                    )
                )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgherd_dev.scorecard", description=__doc__)
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("--selector", help="label selector, e.g. suite=olm")
    args = parser.parse_args(argv)
    try:
        results = run(args.bundle, args.selector)
    except DevError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for r in results:
        print(f"{r.state:5} {r.labels.get('suite', '?')}/{r.name}")
        for line in r.errors:
            print(f"      error: {line}")
        for line in r.suggestions:
            print(f"      suggestion: {line}")
        failed += r.state != "pass"
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
