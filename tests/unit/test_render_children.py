"""desired_children as a whole: purity, metadata every child carries, and the order of objects."""

from __future__ import annotations

import copy

import pytest

from pgherd.render import desired_children, labels, yaml_text
from pgherd.render.ownership import owner_reference
from tests.unit.clusters import PASSWORDS, SCENARIOS, UID, make_cluster


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendering_is_deterministic_and_leaves_the_input_alone(scenario: str) -> None:
    cluster = make_cluster(SCENARIOS[scenario])
    before = cluster.model_dump()
    first = desired_children(cluster, PASSWORDS)
    second = desired_children(make_cluster(copy.deepcopy(SCENARIOS[scenario])), dict(PASSWORDS))
    assert yaml_text.dump_all(first) == yaml_text.dump_all(second)
    assert cluster.model_dump() == before


def test_children_do_not_share_mutable_state() -> None:
    cluster = make_cluster()
    first = desired_children(cluster, PASSWORDS)
    first[0]["metadata"]["labels"]["tampered"] = "yes"
    first[-1]["spec"]["selector"]["matchLabels"]["tampered"] = "yes"
    assert "tampered" not in yaml_text.dump_all(desired_children(cluster, PASSWORDS))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_child_is_ready_for_server_side_apply(scenario: str) -> None:
    cluster = make_cluster(SCENARIOS[scenario])
    for child in desired_children(cluster, PASSWORDS):
        meta = child["metadata"]
        assert child["apiVersion"] and child["kind"]
        assert meta["name"].startswith("db")
        assert meta["namespace"] == "prod"
        assert meta["labels"] == labels.common_labels("db")
        retained_secret = (
            child["kind"] == "Secret" and cluster.spec.storage.reclaim_policy == "Retain"
        )
        if retained_secret:
            # Credentials outlive the cluster with the volumes whose password hashes they match.
            assert "ownerReferences" not in meta
            continue
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "pgherd.io/v1alpha1",
                "kind": "PostgresCluster",
                "name": "db",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_order_and_names() -> None:
    rendered = [
        (c["kind"], c["metadata"]["name"]) for c in desired_children(make_cluster(), PASSWORDS)
    ]
    assert rendered == [
        ("ServiceAccount", "db-instance"),
        ("Role", "db-instance"),
        ("RoleBinding", "db-instance"),
        ("Secret", "db-vault"),
        ("Secret", "db-superuser"),
        ("Secret", "db-replication"),
        ("Secret", "db-app"),
        ("Secret", "db-restapi"),
        ("ConfigMap", "db-patroni"),
        ("Service", "db-headless"),
        ("Service", "db-rw"),
        ("Service", "db-ro"),
        ("Service", "db-r"),
        ("StatefulSet", "db"),
        ("PodDisruptionBudget", "db"),
        ("PodDisruptionBudget", "db-primary"),
    ]


def test_secrets_only_with_passwords() -> None:
    kinds = [c["kind"] for c in desired_children(make_cluster())]
    assert "Secret" not in kinds
    assert "StatefulSet" in kinds


def test_owner_reference_needs_a_uid() -> None:
    cluster = make_cluster()
    cluster.metadata.uid = None
    with pytest.raises(ValueError, match="uid"):
        owner_reference(cluster)


def test_common_labels() -> None:
    assert labels.common_labels("db") == {
        "app.kubernetes.io/name": "postgresql",
        "app.kubernetes.io/instance": "db",
        "app.kubernetes.io/managed-by": "pgherd",
        "app.kubernetes.io/component": "database",
        "pgherd.io/cluster": "db",
    }
    assert labels.selector_string("db") == (
        "app.kubernetes.io/instance=db,app.kubernetes.io/name=postgresql,pgherd.io/cluster=db"
    )
