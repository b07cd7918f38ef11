"""The pydantic API model: wire names, defaults and the rules it checks itself."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pgherd.api.v1alpha1 import PostgresCluster, PostgresClusterSpec, PostgresClusterStatus


def cluster(spec: dict[str, Any] | None = None) -> PostgresCluster:
    body: dict[str, Any] = {"metadata": {"name": "db", "namespace": "ns", "uid": "u-1"}}
    if spec is not None:
        body["spec"] = spec
    return PostgresCluster.model_validate(body)


def test_defaults() -> None:
    spec = cluster().spec
    assert spec.instances == 3
    assert spec.postgres_version == 15
    assert spec.storage.size == "1Gi"
    assert spec.storage.reclaim_policy == "Retain"
    assert spec.bootstrap.database == spec.bootstrap.owner == "app"
    assert spec.synchronous_mode == "off"
    assert spec.scheduling.affinity is None


def test_camel_case_on_the_wire_and_snake_case_in_python() -> None:
    spec = PostgresClusterSpec.model_validate(
        {"postgresVersion": 16, "patroni": {"loopWait": 5}, "storage": {"storageClassName": "x"}}
    )
    assert (spec.postgres_version, spec.patroni.loop_wait) == (16, 5)
    dumped = spec.model_dump(by_alias=True)
    assert dumped["storage"]["storageClassName"] == "x"
    assert PostgresClusterSpec(postgres_version=16).postgres_version == 16


def test_quantities_accept_numbers() -> None:
    spec = PostgresClusterSpec.model_validate({"resources": {"requests": {"cpu": 2}}})
    assert spec.resources.requests == {"cpu": "2"}
    with pytest.raises(ValidationError):
        PostgresClusterSpec.model_validate({"resources": {"limits": {"memory": "lots"}}})


def test_patroni_timing_rule() -> None:
    with pytest.raises(ValidationError, match="loopWait"):
        PostgresClusterSpec.model_validate({"patroni": {"ttl": 20}})
    PostgresClusterSpec.model_validate({"patroni": {"ttl": 30, "loopWait": 10, "retryTimeout": 10}})


@pytest.mark.parametrize("owner", ["postgres", "replicator", "pg_monitor"])
def test_reserved_owner(owner: str) -> None:
    with pytest.raises(ValidationError):
        PostgresClusterSpec.model_validate({"bootstrap": {"owner": owner}})


def test_status_round_trip() -> None:
    status = PostgresClusterStatus.model_validate(
        {
            "phase": "Running",
            "instancesStatus": [{"name": "db-0", "role": "leader", "lagBytes": None}],
            "endpoints": {"readWrite": "db-rw.ns.svc:5432", "any": "db-r.ns.svc:5432"},
            "kopf": {"progress": {}},
        }
    )
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["endpoints"] == {"readWrite": "db-rw.ns.svc:5432", "any": "db-r.ns.svc:5432"}
    assert dumped["instancesStatus"][0] == {"name": "db-0", "role": "leader", "ready": False}
