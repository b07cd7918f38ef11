"""Patroni's configuration file, its dynamic configuration and the config hash on the pods."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pgherd.render import labels
from pgherd.render.patroni_config import (
    CONFIG_HASH_ANNOTATION,
    config_hash,
    dynamic_config,
    patroni_config,
    pg_hba,
    render_patroni_configmap,
)
from pgherd.render.statefulset import render_statefulset
from tests.unit.clusters import make_cluster


def pod_hash(spec: dict[str, Any]) -> str:
    sts = render_statefulset(make_cluster(spec))
    annotation: str = sts["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    return annotation


def all_keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in all_keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in all_keys(v)}
    return set()


def test_configmap_holds_the_config_file() -> None:
    cluster = make_cluster()
    configmap = render_patroni_configmap(cluster)
    assert configmap["metadata"]["name"] == "db-patroni"
    assert yaml.safe_load(configmap["data"]["patroni.yaml"]) == patroni_config(cluster)


def test_kubernetes_dcs_settings() -> None:
    config = patroni_config(make_cluster())
    assert config["scope"] == "db"
    sts = render_statefulset(make_cluster())
    assert config["kubernetes"] == {
        "namespace": "prod",
        "labels": sts["spec"]["selector"]["matchLabels"],
        "scope_label": "pgherd.io/cluster",
        "role_label": labels.ROLE,
        "leader_label_value": "primary",
        "follower_label_value": "replica",
        "standby_leader_label_value": "primary",
        "use_endpoints": False,
        "bypass_api_service": False,
    }


def test_no_password_in_the_config_file() -> None:
    config = patroni_config(make_cluster())
    assert not {k for k in all_keys(config) if "password" in k}
    tls = "/run/pgherd-tls"
    # Replication authenticates by its client certificate; both verify the server's.
    assert config["postgresql"]["authentication"] == {
        "superuser": {
            "username": "postgres",
            "sslmode": "verify-ca",
            "sslrootcert": f"{tls}/ca.crt",
        },
        "replication": {
            "username": "replicator",
            "sslmode": "verify-ca",
            "sslrootcert": f"{tls}/ca.crt",
            "sslcert": f"{tls}/replication.crt",
            "sslkey": f"{tls}/replication.key",
        },
    }


def test_bootstrap_dcs_is_the_dynamic_config() -> None:
    cluster = make_cluster({"postgresql": {"parameters": {"work_mem": "64MB"}}})
    assert patroni_config(cluster)["bootstrap"]["dcs"] == dynamic_config(cluster)
    assert dynamic_config(cluster) == {
        "ttl": 30,
        "loop_wait": 10,
        "retry_timeout": 10,
        "maximum_lag_on_failover": 1048576,
        "synchronous_mode": False,
        "synchronous_mode_strict": False,
        "failsafe_mode": True,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": {"work_mem": "64MB"},
        },
    }


@pytest.mark.parametrize(
    ("mode", "sync", "strict"), [("off", False, False), ("on", True, False), ("strict", True, True)]
)
def test_synchronous_modes(mode: str, sync: bool, strict: bool) -> None:
    config = dynamic_config(make_cluster({"synchronousMode": mode}))
    assert (config["synchronous_mode"], config["synchronous_mode_strict"]) == (sync, strict)


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        # TLS only: plain TCP is refused before any user rule is read.
        (
            {},
            [
                "local all all scram-sha-256",
                "hostssl replication replicator all cert",
                "hostnossl all all all reject",
                "host all all 10.0.0.0/8 md5",
                "hostssl all all all scram-sha-256",
            ],
        ),
        # Legacy clients allowed: still a password, and replication still by certificate.
        (
            {"allowPlainText": True},
            [
                "local all all scram-sha-256",
                "hostssl replication replicator all cert",
                "host all all 10.0.0.0/8 md5",
                "host all all all scram-sha-256",
            ],
        ),
    ],
)
def test_pg_hba_order(tls: dict[str, Any], expected: list[str]) -> None:
    cluster = make_cluster({"postgresql": {"pgHba": ["host all all 10.0.0.0/8 md5"]}, "tls": tls})
    assert pg_hba(cluster) == expected


def test_tls_parameters() -> None:
    params = patroni_config(make_cluster({"tls": {"minProtocolVersion": "TLSv1.3"}}))["postgresql"][
        "parameters"
    ]
    assert params["ssl"] == "on" and params["ssl_min_protocol_version"] == "TLSv1.3"
    # Client certificates are verified against the cluster's CA only (client-ca.crt).
    assert params["ssl_ca_file"] == "/run/pgherd-tls/client-ca.crt"


def test_config_hash_is_put_on_the_pod_template() -> None:
    assert pod_hash({}) == config_hash(make_cluster())
    assert len(config_hash(make_cluster())) == 64


def test_parameters_never_change_the_pod_template() -> None:
    # Parameters reach Patroni's dynamic configuration (reload or restart as each needs);
    # they must not roll the pods.
    base = pod_hash({})
    assert pod_hash({"postgresql": {"parameters": {"work_mem": "64MB"}}}) == base
    assert pod_hash({"synchronousMode": "strict"}) == base


def test_static_settings_change_the_pod_template() -> None:
    assert pod_hash({"postgresql": {"pgHba": ["host all all 10.0.0.0/8 scram-sha-256"]}}) != (
        pod_hash({})
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"instances": 5},
        {"resources": {"requests": {"cpu": "2"}}},
        {"service": {"type": "LoadBalancer"}},
        {"storage": {"size": "50Gi"}},
        {"image": "other/image:1"},
        {"scheduling": {"antiAffinity": "required"}},
        {"postgresql": {"parameters": {}}},
    ],
)
def test_config_hash_ignores_what_the_config_does_not_hold(spec: dict[str, Any]) -> None:
    assert pod_hash(spec) == pod_hash({})


# ---- issue 16: failsafe mode (API-server outage) ------------------------------------------
@pytest.mark.parametrize(("spec", "failsafe"), [({}, True), ({"failsafeMode": False}, False)])
def test_failsafe_mode_is_on_by_default(spec: dict[str, Any], failsafe: bool) -> None:
    cluster = make_cluster({"patroni": spec})
    assert dynamic_config(cluster)["failsafe_mode"] is failsafe
    # Dynamic configuration only: switching it never rolls the pods.
    assert config_hash(cluster) == config_hash(make_cluster({}))


def test_members_can_call_each_others_failsafe_endpoint() -> None:
    """In failsafe mode the primary POSTs /failsafe to every member (Patroni's own client:
    `ctl` TLS settings, `restapi` credentials). No member may require what a peer does not
    send: no client certificate demanded, no allowlist, and the CA to verify peers given."""
    config = patroni_config(make_cluster({}))
    restapi, ctl = config["restapi"], config["ctl"]
    assert "verify_client" not in restapi and "allowlist" not in restapi
    assert "allowlist_include_members" not in restapi
    assert ctl["cacert"] and ctl["certfile"] and ctl["keyfile"]
