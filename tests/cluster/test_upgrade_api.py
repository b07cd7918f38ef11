"""The major upgrade's API rules on the real API server (docs/major-upgrade.md, "The API"):
spec.postgresVersion goes down only back to status.upgrade.fromVersion after a failed upgrade
or preflight, and spec.upgrade.backupFirst needs spec.backup.

No operator runs: the API server alone judges these, and status.upgrade is written here
through the status subresource as the operator will write it. The CRD's apply also shows that
the API server accepts the rules' estimated cost.
"""

from __future__ import annotations

from typing import Any

import pytest

from pgherd.api import v1alpha1
from pgherd.controller.client import KINDS, ApiError
from pgherd.controller.client import Client as Kube
from pgherd.operand.upgrade_check import problem
from tests.operator_harness import Cluster, install_crds_and_rbac, refused, wait_for

pytestmark = [pytest.mark.cluster]

LOWERED = "postgresVersion cannot be lowered, except back to status.upgrade.fromVersion"
BACKUP: dict[str, Any] = {
    "objectStore": {
        "bucket": "backups",
        "credentials": {
            "accessKeyId": {"name": "s3", "key": "id"},
            "secretAccessKey": {"name": "s3", "key": "secret"},
        },
    }
}


@pytest.fixture(scope="module")
def crds(kube: Kube) -> None:
    install_crds_and_rbac(kube)
    wait_for("the PostgresCluster CRD to be served", lambda: kube.serves(v1alpha1.KIND), 30)


def write_status(cluster: Cluster, upgrade: dict[str, Any] | None) -> None:
    cluster.kube.patch(
        v1alpha1.KIND,
        cluster.namespace,
        cluster.name,
        {"status": {"upgrade": upgrade}},
        subresource="status",
    )


def lower(cluster: Cluster, version: int) -> str | None:
    """None when the API server accepts spec.postgresVersion = version, else its answer."""
    try:
        cluster.patch_spec({"postgresVersion": version})
    except ApiError as e:
        assert e.status == 422, e
        return e.message
    return None


def test_lowering_is_refused_without_a_failed_upgrade(
    crds: None, kube: Kube, namespace: str
) -> None:
    cluster = Cluster(kube, namespace, "db")
    cluster.create({"postgresVersion": 18, "instances": 1})
    answer = lower(cluster, 15)
    assert answer is not None and LOWERED in answer and "spec.postgresVersion" in answer
    # Status written through the main resource is ignored: a user cannot grant the permission.
    kube.patch(
        v1alpha1.KIND,
        namespace,
        "db",
        {"status": {"upgrade": {"phase": "Failed", "fromVersion": 15, "toVersion": 18}}},
    )
    assert "upgrade" not in cluster.status()
    assert lower(cluster, 15) is not None
    # Raising stays free.
    assert lower(cluster, 19) is None


@pytest.mark.parametrize(
    ("upgrade", "version", "accepted"),
    [
        ({"phase": "Failed", "fromVersion": 15, "toVersion": 18}, 15, True),
        ({"phase": "Failed", "fromVersion": 15, "toVersion": 18}, 14, False),
        ({"phase": "PreflightFailed", "fromVersion": 15, "toVersion": 18}, 15, True),
        ({"phase": "Completed", "fromVersion": 15, "toVersion": 18}, 15, False),
        ({"phase": "Upgrading", "fromVersion": 15, "toVersion": 18}, 15, False),
        # Incomplete status: refused with the rule's message, not an evaluation error.
        ({"phase": "Failed"}, 15, False),
        ({"fromVersion": 15}, 15, False),
        (None, 15, False),
    ],
)
def test_lowering_back_after_a_failure(
    crds: None,
    kube: Kube,
    namespace: str,
    upgrade: dict[str, Any] | None,
    version: int,
    accepted: bool,
) -> None:
    cluster = Cluster(kube, namespace, "db")
    cluster.create({"postgresVersion": 18, "instances": 1})
    write_status(cluster, upgrade)
    assert cluster.status().get("upgrade") == upgrade
    answer = lower(cluster, version)
    if accepted:
        assert answer is None
        assert cluster.obj()["spec"]["postgresVersion"] == version
    else:
        assert answer is not None and LOWERED in answer, answer


def test_a_null_status_upgrade_is_a_plain_refusal(crds: None, kube: Kube, namespace: str) -> None:
    # status.upgrade is nullable (as every optional status field): a JSON patch stores null,
    # which the rule must answer with its message rather than an evaluation error.
    cluster = Cluster(kube, namespace, "db")
    cluster.create({"postgresVersion": 18, "instances": 1})
    kube.request(
        "PATCH",
        KINDS[v1alpha1.KIND].path(namespace, "db") + "/status",
        [{"op": "add", "path": "/status", "value": {"upgrade": None}}],
        content_type="application/json-patch+json",
    )
    assert cluster.status() == {"upgrade": None}
    answer = lower(cluster, 15)
    assert answer is not None and LOWERED in answer, answer


def test_status_upgrade_is_stored_as_written(crds: None, kube: Kube, namespace: str) -> None:
    cluster = Cluster(kube, namespace, "db")
    cluster.create({"postgresVersion": 18, "instances": 1})
    upgrade = {
        "phase": "PreflightFailed",
        "fromVersion": 15,
        "toVersion": 18,
        "method": "link",
        "primary": "db-0",
        "startedAt": "2026-12-01T18:00:00Z",
        "finishedAt": "2026-12-01T18:00:09Z",
        "outageSeconds": 0.0,
        "reason": "PreflightProblems",
        "message": "1 problem",
        "problems": [
            problem("parameter", "vacuum_defer_cleanup_age", "unknown to 18", "remove it"),
            problem("parameter", "postgresql.auto.conf", "ALTER SYSTEM", "set it", "warning"),
        ],
    }
    write_status(cluster, upgrade)
    stored = cluster.status()["upgrade"]
    assert stored == upgrade
    parsed = v1alpha1.PostgresClusterStatus.model_validate(cluster.status()).upgrade
    assert parsed is not None and parsed.problems is not None
    with pytest.raises(ApiError) as bad:
        write_status(cluster, {"phase": "Done"})
    assert bad.value.status == 422


def test_backup_first_needs_backup(crds: None, kube: Kube, namespace: str) -> None:
    message = refused(
        lambda: Cluster(kube, namespace, "nobackup").create({"upgrade": {"backupFirst": True}})
    )
    assert "spec.upgrade.backupFirst needs spec.backup" in message
    backed = Cluster(kube, namespace, "backed")
    backed.create({"instances": 1, "backup": BACKUP, "upgrade": {"backupFirst": True}})
    assert backed.obj()["spec"]["upgrade"] == {"method": "link", "backupFirst": True}
    plain = Cluster(kube, namespace, "plain")
    plain.create({"instances": 1})
    # The API server fills the defaults in.
    assert plain.obj()["spec"]["upgrade"] == {"method": "link", "backupFirst": False}
    message = refused(lambda: plain.patch_spec({"upgrade": {"backupFirst": True}}))
    assert "spec.upgrade.backupFirst needs spec.backup" in message
