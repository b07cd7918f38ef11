"""Bad input: what the API can check is refused there with the field named; what only the
operator can detect shows as Degraded with a reason and one Event, and other clusters keep
being served."""

from __future__ import annotations

import pytest

from pgherd.controller.client import ApiError
from pgherd.controller.client import Client as Kube
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"instances": 10}, "spec.instances", "less than or equal to 9"),
        ({"instances": 0}, "spec.instances", "greater than or equal to 1"),
        ({"synchronousMode": "sometimes"}, "spec.synchronousMode", "Unsupported value"),
        ({"storage": {"size": "lots"}}, "spec.storage.size", ""),
        ({"patroni": {"ttl": 20, "loopWait": 10, "retryTimeout": 10}}, "spec.patroni", ""),
    ],
)
def test_invalid_spec_is_refused_naming_the_field(
    operator: Operator,
    kube: Kube,
    namespace: str,
    spec: dict[str, object],
    field: str,
    words: str,
) -> None:
    with pytest.raises(ApiError) as refused:
        Cluster(kube, namespace, "bad").create(spec)
    assert refused.value.status == 422
    assert field in refused.value.message
    assert words in refused.value.message


@pytest.mark.parametrize(
    ("first", "change", "field"),
    [
        ({"storage": {"size": "2Gi"}}, {"storage": {"size": "1Gi"}}, "spec.storage"),
        ({"postgresVersion": 15}, {"postgresVersion": 14}, "spec.postgresVersion"),
        (
            {"bootstrap": {"database": "app"}},
            {"bootstrap": {"database": "other"}},
            "spec.bootstrap",
        ),
    ],
)
def test_forbidden_changes_are_refused(
    operator: Operator,
    kube: Kube,
    namespace: str,
    first: dict[str, object],
    change: dict[str, object],
    field: str,
) -> None:
    # No instance needs to run for the API to judge a change: park the pods off every node.
    cluster = Cluster(kube, namespace, "frozen")
    cluster.create({**first, "instances": 1, "scheduling": {"nodeSelector": {"none": "x"}}})
    with pytest.raises(ApiError) as refused:
        cluster.patch_spec(change)
    assert refused.value.status == 422
    assert field in refused.value.message


def test_unknown_storage_class_degrades_with_one_event_and_others_are_served(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    broken = Cluster(kube, namespace, "nostorage")
    healthy = Cluster(kube, namespace, "fine")
    broken.create({"instances": 1, "storage": {"storageClassName": "does-not-exist"}})
    healthy.create({"instances": 1})
    wait_for(
        "Degraded=True StorageClassNotFound",
        lambda: (
            broken.condition("Degraded").get("reason") == "StorageClassNotFound"
            and broken.condition("Degraded").get("status") == "True"
        ),
        timeout=60,
    )
    assert "does-not-exist" in broken.condition("Degraded")["message"]
    assert broken.status()["phase"] == "Degraded"
    healthy.wait_healthy(1)
    events = [
        e
        for e in kube.list("Event", namespace)
        if e["involvedObject"]["name"] == "nostorage" and e["reason"] == "StorageClassNotFound"
    ]
    assert len(events) == 1 and events[0].get("count") in (None, 1)


def test_instance_that_never_gets_ready_degrades(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    cluster = Cluster(kube, namespace, "stuck")
    # Valid, but no node has this label: the pod stays Pending.
    cluster.create({"instances": 1, "scheduling": {"nodeSelector": {"disktype": "nvme"}}})
    wait_for(
        "Degraded=True InstanceNeverReady",
        lambda: cluster.condition("Degraded").get("reason") == "InstanceNeverReady",
        timeout=90,
    )
    assert "stuck-0" in cluster.condition("Degraded")["message"]


def test_a_backup_named_as_barman_reserves_is_refused(kube: Kube, namespace: str) -> None:
    """A PostgresBackup is stored under its name, and barman-cloud-backup refuses its reserved
    identifiers ("first", "latest", ...): refused at the API rather than Failed later."""
    with pytest.raises(ApiError) as refused:
        kube.create(
            {
                "apiVersion": "pgherd.io/v1alpha1",
                "kind": "PostgresBackup",
                "metadata": {"name": "latest", "namespace": namespace},
                "spec": {"cluster": "any"},
            }
        )
    assert refused.value.status == 422
    assert "reserved backup names" in refused.value.message
