"""Rendered children of each scenario, compared with tests/golden/<scenario>.yaml.

Regenerate after an intended change with PGHERD_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from pgherd.render import desired_children, yaml_text
from tests.unit.clusters import PASSWORDS, SCENARIOS, TLS, make_cluster

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden(scenario: str) -> None:
    cluster = make_cluster(SCENARIOS[scenario])
    rendered = yaml_text.dump_all(desired_children(cluster, PASSWORDS, tls=TLS))
    golden = GOLDEN_DIR / f"{scenario}.yaml"
    if os.environ.get("PGHERD_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(rendered, encoding="utf-8")
        return
    if not golden.exists():
        pytest.fail(f"{golden} is missing; create it with PGHERD_UPDATE_GOLDEN=1", pytrace=False)
    expected = golden.read_text(encoding="utf-8")
    if rendered != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                rendered.splitlines(keepends=True),
                fromfile=f"golden/{scenario}.yaml",
                tofile="rendered",
            )
        )
        pytest.fail(
            f"rendered children differ from the golden file "
            f"(PGHERD_UPDATE_GOLDEN=1 to accept):\n{diff}",
            pytrace=False,
        )


def test_no_stray_golden_files() -> None:
    assert {p.stem for p in GOLDEN_DIR.glob("*.yaml")} == set(SCENARIOS)
