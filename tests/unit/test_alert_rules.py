"""The shipped alerting rules are valid Prometheus rules and behave as their cases say.

`promtool` (Debian's prometheus package, installed by `make deps`) checks the rules of
manifests/monitoring/prometheusrule.yaml and runs tests/alerts/pgherd-alerts.test.yaml, in
which each alert has a case that fires (labels and rendered annotations) and one that must
not. tests/cluster/test_prometheus.py evaluates the same rules in a real Prometheus scraping
real instances.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
CASES = REPO / "tests" / "alerts" / "pgherd-alerts.test.yaml"
DOCS = REPO / "docs" / "monitoring.md"

pytestmark = pytest.mark.tools


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make deps` installs Debian's prometheus", pytrace=False)
    return path


def rule_groups() -> dict[str, Any]:
    document = yaml.safe_load(RULE.read_text())
    assert document["kind"] == "PrometheusRule"
    return dict(document["spec"])


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups()["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(CASES, tmp_path / CASES.name)
    return tmp_path


def test_rules_pass_promtool_check(rules_dir: Path) -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", "rules.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_behaves_as_its_cases_say(rules_dir: Path) -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", CASES.name],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_case_severity_and_runbook() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    fired = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in DOCS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        name = rule["alert"]
        assert name in fired, f"{name} has no promtool case in which it fires"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower(), name
        assert anchor in headings, f"docs/monitoring.md has no section for {name}"
