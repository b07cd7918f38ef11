"""The major upgrade's API: spec.upgrade and status.upgrade (models, wire names, defaults) and
where the generated CRD puts their rules (docs/major-upgrade.md). What the API server makes of
the rules is checked on a real one: tests/cluster/test_upgrade_api.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from pgherd.api import v1alpha1
from pgherd.api.v1alpha1 import (
    PostgresClusterSpec,
    PostgresClusterStatus,
    UpgradeProblem,
    UpgradeSpec,
    UpgradeStatus,
)
from pgherd.controller import major_upgrade
from pgherd.operand.upgrade_check import problem
from pgherd_packaging import crds

STATUS_WIRE: dict[str, Any] = {
    "phase": "Failed",
    "fromVersion": 15,
    "toVersion": 18,
    "fromImage": "quay.io/pgherd/postgres:15-0.2.0",
    "toImage": "quay.io/pgherd/postgres:18-0.2.0",
    "method": "link",
    "primary": "db-0",
    "startedAt": "2026-12-01T18:00:00Z",
    "finishedAt": "2026-12-01T18:02:30Z",
    "outageStartedAt": "2026-12-01T18:01:00Z",
    "outageSeconds": 12.5,
    "systemIdentifier": "7442345678901234567",
    "generation": 4,
    "runs": 1,
    "backup": "db-before-18",
    "reason": "PgUpgradeFailed",
    "message": "pg_upgrade failed; the old cluster is back",
    # As `pgherd upgrade check` reports them.
    "problems": [
        problem(
            "extension",
            "adminpack in database app",
            "PostgreSQL 18 has no extension adminpack",
            "DROP EXTENSION adminpack in database 'app'",
        )
    ],
}


@pytest.fixture(scope="module")
def root() -> dict[str, Any]:
    (version,) = crds.postgrescluster_crd()["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_spec_upgrade_defaults() -> None:
    spec = PostgresClusterSpec()
    assert (spec.upgrade.method, spec.upgrade.backup_first) == ("link", False)
    assert spec.model_dump(by_alias=True)["upgrade"] == {
        "method": "link", "backupFirst": False, "rehearsal": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("wire", "method", "backup_first"),
    [
        ({}, "link", False),
        ({"method": "clone"}, "clone", False),
        ({"method": "copy", "backupFirst": True}, "copy", True),
    ],
)
def test_spec_upgrade_from_the_wire(wire: dict[str, Any], method: str, backup_first: bool) -> None:
    spec = PostgresClusterSpec.model_validate({"upgrade": wire})
    assert (spec.upgrade.method, spec.upgrade.backup_first) == (method, backup_first)


@pytest.mark.parametrize(
    "wire",
    [{"method": "swap"}, {"method": "Link"}, {"backupFirst": "maybe"}],
)
def test_spec_upgrade_refuses(wire: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        UpgradeSpec.model_validate(wire)


def test_backup_first_without_backup_is_left_to_the_api_server() -> None:
    # The API server refuses it (CEL); a stored object must still parse, so that the operator
    # can report it rather than fail on it.
    spec = PostgresClusterSpec.model_validate({"upgrade": {"backupFirst": True}})
    assert spec.upgrade.backup_first and spec.backup is None


def test_status_upgrade_round_trip() -> None:
    status = PostgresClusterStatus.model_validate({"upgrade": STATUS_WIRE})
    upgrade = status.upgrade
    assert upgrade is not None
    assert (upgrade.phase, upgrade.from_version, upgrade.to_version) == ("Failed", 15, 18)
    assert upgrade.started_at == datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    assert upgrade.outage_seconds == 12.5
    assert upgrade.problems is not None and upgrade.problems[0].severity == "error"
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)["upgrade"]
    assert dumped == STATUS_WIRE


def test_status_upgrade_is_absent_by_default() -> None:
    assert PostgresClusterStatus().upgrade is None
    assert UpgradeStatus().model_dump(exclude_none=True) == {}


def test_a_preflight_problem_fits_the_status() -> None:
    reported = problem("parameter", "vacuum_defer_cleanup_age", "unknown", "remove it", "warning")
    assert UpgradeProblem.model_validate(reported).model_dump() == reported


@pytest.mark.parametrize(
    "wire",
    [
        {"phase": "Done"},
        {"fromVersion": 12},
        {"outageSeconds": -1},
        {"systemIdentifier": "abc"},
        {"method": "swap"},
        {"problems": [{"check": "x", "subject": "y", "message": "z", "hint": "h"}]},
        {"problems": [{**STATUS_WIRE["problems"][0], "severity": "fatal"}]},
        {"problems": STATUS_WIRE["problems"] * (v1alpha1.MAX_UPGRADE_PROBLEMS + 1)},
    ],
)
def test_status_upgrade_refuses(wire: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        UpgradeStatus.model_validate(wire)


def test_rollback_phases_are_phases() -> None:
    assert set(v1alpha1.ROLLBACK_PHASES) <= set(v1alpha1.UPGRADE_PHASES)
    # Every phase the operator's state machine goes through, and no other.
    assert set(v1alpha1.UPGRADE_PHASES) == set(major_upgrade.PHASES)


def test_the_version_rule_is_on_the_root(root: dict[str, Any]) -> None:
    (rule,) = [
        v
        for v in root["x-kubernetes-validations"]
        if "postgresVersion" in v["rule"]  # the others are metadata.name's
    ]
    assert rule == {
        "rule": "self.spec.postgresVersion >= oldSelf.spec.postgresVersion || ("
        "has(oldSelf.status) && has(oldSelf.status.upgrade)"
        " && has(oldSelf.status.upgrade.phase) && has(oldSelf.status.upgrade.fromVersion)"
        " && oldSelf.status.upgrade.phase in ['PreflightFailed', 'Failed']"
        " && self.spec.postgresVersion == oldSelf.status.upgrade.fromVersion)",
        "message": "postgresVersion cannot be lowered, except back to "
        "status.upgrade.fromVersion after a failed upgrade or preflight",
        "fieldPath": ".spec.postgresVersion",
    }
    spec = root["properties"]["spec"]
    assert "postgresVersion" not in str(spec.get("x-kubernetes-validations", []))


def test_the_pooler_root_has_no_version_rule() -> None:
    # The pooler shares the cluster's rules on names, not the one on spec.postgresVersion.
    assert v1alpha1.POSTGRES_VERSION_RULE not in v1alpha1.POOLER_ROOT_VALIDATIONS
    assert v1alpha1.POSTGRES_VERSION_RULE in v1alpha1.CLUSTER_ROOT_VALIDATIONS


def test_backup_first_rule_sits_on_spec(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]
    (rule,) = [v for v in spec["x-kubernetes-validations"] if "backupFirst" in v["rule"]]
    assert rule["fieldPath"] == ".upgrade.backupFirst"
    assert "spec.upgrade.backupFirst" in rule["message"] and "spec.backup" in rule["message"]


def test_generated_upgrade_schema(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]
    upgrade = spec["properties"]["upgrade"]
    assert upgrade["default"] == {"method": "link", "backupFirst": False}
    assert spec["default"]["upgrade"] == upgrade["default"]
    assert upgrade["properties"]["method"]["enum"] == ["link", "clone", "copy"]
    status = root["properties"]["status"]["properties"]["upgrade"]
    assert status["nullable"] is True
    fields = status["properties"]
    assert set(fields) == set(STATUS_WIRE)
    assert fields["phase"]["enum"] == list(v1alpha1.UPGRADE_PHASES)
    # Bounds the cost the API server estimates for the root rule's comparison of the phase.
    assert fields["phase"]["maxLength"] == 32
    assert fields["outageSeconds"]["type"] == "number"
    assert fields["startedAt"]["format"] == "date-time"
    problems = fields["problems"]
    assert problems["maxItems"] == v1alpha1.MAX_UPGRADE_PROBLEMS
    assert set(problems["items"]["required"]) == {"check", "subject", "message", "hint", "severity"}
    assert problems["items"]["properties"]["severity"]["enum"] == ["error", "warning"]
    assert all(f["description"] for f in fields.values())
