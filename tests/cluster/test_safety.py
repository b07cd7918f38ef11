"""Safety, tried the way a hostile tenant or a careless user would: pgherd never touches what
is not its own, cannot be made to read a Secret for someone who may not, refuses settings it
owns, recovers from a bad parameter, keeps credentials true, and never fails silently.

Each test names the item of the safety issue it proves.
"""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
import pytest
from kubernetes import client as k8s

from pgherd.controller.client import ApiError
from pgherd.controller.client import Client as Kube
from pgherd_dev import kubeconfig
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import Cluster, Operator, refused, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Rounds of the operator's resync (3 s in tests) a refused change must survive untouched.
UNTOUCHED_FOR = 12.0


def _secret(kube: Kube, ns: str, name: str, data: dict[str, str], **extra: Any) -> None:
    meta = {"name": name, "namespace": ns, **extra.pop("metadata", {})}
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            **extra,
        }
    )


def _password(kube: Kube, ns: str, name: str) -> str:
    secret = kube.get("Secret", ns, name)
    assert secret is not None
    return base64.b64decode(secret["data"]["password"]).decode()


def _degraded(cluster: Cluster, reason: str, timeout: float = 60) -> dict[str, Any]:
    def degraded() -> dict[str, Any] | None:
        cond = cluster.condition("Degraded")
        return cond if (cond.get("status"), cond.get("reason")) == ("True", reason) else None

    result: dict[str, Any] = wait_for(f"Degraded={reason} on {cluster.name}", degraded, timeout)
    return result


def _events(kube: Kube, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in kube.list("Event", ns)
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    ]


def _unchanged(kube: Kube, kind: str, ns: str, name: str, before: dict[str, Any]) -> None:
    after = kube.get(kind, ns, name)
    assert after is not None, f"{kind} {name} was deleted"
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")


# ---- 1. Patroni's DCS names ---------------------------------------------------------------
def test_neighbours_configmaps_with_dcs_names_are_never_deleted(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    for suffix in ("config", "leader"):
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"myapp-{suffix}", "namespace": namespace},
                "data": {"owner": "myapp"},
            }
        )
    before = {s: kube.get("ConfigMap", namespace, f"myapp-{s}") for s in ("config", "leader")}
    cluster = Cluster(kube, namespace, "myapp")
    cluster.create({"instances": 1})
    cond = _degraded(cluster, "ChildNameConflict")
    assert "ConfigMap 'myapp-config'" in cond["message"]
    time.sleep(UNTOUCHED_FOR)
    for suffix, obj in before.items():
        assert obj is not None
        _unchanged(kube, "ConfigMap", namespace, f"myapp-{suffix}", obj)
    assert kube.get("StatefulSet", namespace, "myapp") is None, "no instance may start"
    # Once the neighbour's objects are gone, the cluster goes ahead by itself.
    for suffix in before:
        kube.delete("ConfigMap", namespace, f"myapp-{suffix}")
    cluster.wait_healthy(1)


# ---- 2. every child name ------------------------------------------------------------------
def test_a_neighbours_service_is_never_taken_over_nor_collected(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "svc-rw", "namespace": namespace},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }
    )
    before = kube.get("Service", namespace, "svc-rw")
    assert before is not None
    cluster = Cluster(kube, namespace, "svc")
    cluster.create({"instances": 1})
    cond = _degraded(cluster, "ChildNameConflict")
    assert "Service 'svc-rw'" in cond["message"]
    wait_for("the cluster's own Service", lambda: kube.get("Service", namespace, "svc-ro"))
    time.sleep(UNTOUCHED_FOR)
    _unchanged(kube, "Service", namespace, "svc-rw", before)
    assert len(_events(kube, namespace, "svc", "ChildNameConflict")) == 1
    kube.delete("PostgresCluster", namespace, "svc")
    wait_for(
        "the cluster's own children collected",
        lambda: kube.get("Service", namespace, "svc-ro") is None,
        timeout=60,
    )
    after = kube.get("Service", namespace, "svc-rw")
    assert after is not None and after["spec"]["selector"] == {"app": "web"}


# ---- 3. Secrets are adopted only by explicit reference ------------------------------------
def test_preexisting_secrets_are_not_adopted_by_name(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    _secret(
        kube,
        namespace,
        "weak-superuser",
        {"username": "admin", "password": "a"},
        type="kubernetes.io/basic-auth",
    )
    _secret(kube, namespace, "weak-app", {"token": "x"}, type="Opaque")
    before = {n: kube.get("Secret", namespace, n) for n in ("weak-superuser", "weak-app")}
    cluster = Cluster(kube, namespace, "weak")
    cluster.create({"instances": 1})
    cond = _degraded(cluster, "ChildNameConflict")
    # Reported, not silent: both names, and a status the user can read.
    assert "Secret 'weak-superuser'" in cond["message"]
    assert "Secret 'weak-app'" in cond["message"]
    assert cluster.status()["phase"] == "Degraded"
    time.sleep(UNTOUCHED_FOR)
    for name, obj in before.items():
        assert obj is not None
        _unchanged(kube, "Secret", namespace, name, obj)
    assert kube.get("StatefulSet", namespace, "weak") is None


def test_a_secret_named_in_the_spec_is_adopted_after_opting_in(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    chosen = "Chosen-by-the-DBA-2026"
    _secret(
        kube,
        namespace,
        "dba-superuser",
        {"username": "postgres", "password": chosen},
        type="kubernetes.io/basic-auth",
    )
    cluster = Cluster(kube, namespace, "adopt")
    cluster.create({"instances": 1, "bootstrap": {"superuserSecret": {"name": "dba-superuser"}}})
    cond = _degraded(cluster, "SecretNotPermitted")
    assert "dba-superuser" in cond["message"] and "pgherd.io/use" in cond["message"]
    kube.patch(
        "Secret", namespace, "dba-superuser", {"metadata": {"labels": {"pgherd.io/use": "true"}}}
    )
    cluster.wait_healthy(1)
    assert _password(kube, namespace, "adopt-superuser") == chosen
    with psycopg.connect(
        **cluster.tls("adopt-0"),
        port=str(cluster.port("adopt-0")),
        user="postgres",
        password=chosen,
        dbname="postgres",
        connect_timeout="3",
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


# ---- 4. no confused deputy ----------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def _any(self) -> None:
        type(self).seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        self.send_response(403)
        self.end_headers()

    do_GET = do_PUT = do_POST = do_HEAD = _any

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[str]]]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()


def _tenant(cp: ControlPlane, api: k8s.ApiClient, namespace: str, tmp_path: Any) -> Kube:
    """A user who may edit PostgresClusters in the namespace and nothing else."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    k8s.CoreV1Api(api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "tenant"}}
    )
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "tenant"},
            "rules": [
                {
                    "apiGroups": ["pgherd.io"],
                    "resources": ["postgresclusters"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    path = kubeconfig.for_service_account(cp, api, namespace, "tenant", tmp_path / "tenant")
    from kubernetes import config  # noqa: PLC0415

    return Kube(config.new_client_from_config(str(path)))


def test_a_tenant_cannot_exfiltrate_a_secret_through_the_operator(
    operator: Operator,
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    namespace: str,
    endpoint: tuple[str, list[str]],
    tmp_path: Any,
) -> None:
    url, seen = endpoint
    _secret(kube, namespace, "team-secret", {"token": "the-team's-token"})
    tenant = _tenant(control_plane, api, namespace, tmp_path)
    with pytest.raises(ApiError) as refused:
        tenant.get("Secret", namespace, "team-secret")
    assert refused.value.status == 403
    ref = {"name": "team-secret", "key": "token"}
    Cluster(tenant, namespace, "exfil").create(
        {
            "instances": 1,
            "backup": {
                "objectStore": {
                    "endpointURL": url,
                    "bucket": "loot",
                    "credentials": {"accessKeyId": ref, "secretAccessKey": ref},
                }
            },
        }
    )
    cluster = Cluster(kube, namespace, "exfil")
    cond = _degraded(cluster, "SecretNotPermitted")
    assert "team-secret" in cond["message"]
    # An opt-in for other clusters only is no opt-in for this one.
    kube.patch(
        "Secret",
        namespace,
        "team-secret",
        {
            "metadata": {
                "labels": {"pgherd.io/use": "true"},
                "annotations": {"pgherd.io/allowed-clusters": "payments"},
            }
        },
    )
    time.sleep(15)
    assert cluster.condition("Degraded")["reason"] == "SecretNotPermitted"
    assert kube.get("StatefulSet", namespace, "exfil") is None
    assert seen == [], f"the endpoint received requests: {seen}"


# ---- 5. operator-owned settings -----------------------------------------------------------
@pytest.mark.parametrize(
    ("postgresql", "words"),
    [
        ({"parameters": {"archive_command": "env > /tmp/x"}}, "archive_command"),
        ({"parameters": {"Restore_Command": "cp x %p"}}, "Restore_Command"),
        ({"parameters": {"archive_library": "basic_archive"}}, "archive_library"),
        ({"parameters": {"listen_addresses": "*"}}, "listen_addresses"),
        ({"parameters": {"port": "6543"}}, "port"),
        ({"parameters": {"hba_file": "/var/lib/hba"}}, "hba_file"),
        ({"parameters": {"data_directory": "/var/lib/x"}}, "data_directory"),
        ({"parameters": {"ssl_key_file": "/etc/passwd"}}, "ssl_key_file"),
        ({"parameters": {"synchronous_standby_names": "*"}}, "synchronous_standby_names"),
        ({"parameters": {"wal_level": "minimal"}}, "wal_level must be replica or logical"),
        ({"parameters": {"work_mem\nevil": "1"}}, "is not a parameter name"),
        ({"parameters": {"work_mem": "4MB'\narchive_command = 'x"}}, "contains a line break"),
        ({"pgHba": ["host all all 0.0.0.0/0 trust"]}, "allowInsecureAuthentication"),
        ({"pgHba": ["local all all trust\nhost all all all trust"]}, "spec.postgresql.pgHba"),
    ],
)
def test_settings_pgherd_owns_are_refused_naming_the_key(
    operator: Operator, kube: Kube, namespace: str, postgresql: dict[str, Any], words: str
) -> None:
    assert words in refused(
        lambda: Cluster(kube, namespace, "owned").create({"postgresql": postgresql})
    )


# ---- 8. bad input the API refuses ---------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"storage": {"size": "-1Gi"}}, "storage.size must be greater than zero"),
        ({"storage": {"size": "0"}}, "storage.size must be greater than zero"),
        ({"resources": {"limits": {"memory": "-1Gi"}}}, "limits must be greater than zero"),
        ({"resources": {"limits": {"memory": "0"}}}, "limits must be greater than zero"),
        ({"resources": {"requests": {"cpu": "-1"}}}, "requests must not be negative"),
        (
            {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}},
            "a request must not exceed its limit",
        ),
        (
            {
                "backup": {
                    "schedule": "whenever",
                    "objectStore": {
                        "bucket": "b-1",
                        "credentials": {
                            "accessKeyId": {"name": "s", "key": "a"},
                            "secretAccessKey": {"name": "s", "key": "b"},
                        },
                    },
                }
            },
            "backup.schedule must be a cron schedule",
        ),
    ],
)
def test_bad_values_are_refused_by_the_api(
    operator: Operator, kube: Kube, namespace: str, spec: dict[str, Any], words: str
) -> None:
    assert words in refused(lambda: Cluster(kube, namespace, "bad").create(spec))


def test_what_only_the_operator_sees_is_degraded_with_one_event_and_others_are_served(
    operator: Operator, kube: Kube, namespace: str
) -> None:
    rejected = Cluster(kube, namespace, "odd")
    rejected.create({"instances": 1, "scheduling": {"affinity": {"foo": "bar"}}})
    mismatch = Cluster(kube, namespace, "newer")
    mismatch.create({"instances": 1, "postgresVersion": 17, "image": "example.com/pg:15"})
    no_image = Cluster(kube, namespace, "nothing")
    no_image.create({"instances": 1, "postgresVersion": 17})
    healthy = Cluster(kube, namespace, "fine")
    healthy.create({"instances": 1})
    cond = _degraded(rejected, "ChildRejected")
    assert "StatefulSet 'odd'" in cond["message"] and "foo" in cond["message"]
    cond = _degraded(mismatch, "VersionMismatch", timeout=120)
    assert "postgresVersion is 17" in cond["message"] and "PostgreSQL 15" in cond["message"]
    cond = _degraded(no_image, "NoImageForVersion")
    assert "RELATED_IMAGE_POSTGRES_17" in cond["message"]
    healthy.wait_healthy(1)
    time.sleep(6)  # two more resyncs: still one Event each
    assert len(_events(kube, namespace, "odd", "ChildRejected")) == 1
    assert len(_events(kube, namespace, "newer", "VersionMismatch")) == 1
    assert len(_events(kube, namespace, "nothing", "NoImageForVersion")) == 1


# ---- shared: one healthy instance for the configuration and credential tests --------------
@pytest.fixture(scope="module")
def safe(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = f"t-safety-{int(time.time())}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(kube, ns, "safe")
    cluster.create(
        {
            "instances": 1,
            "postgresql": {
                "parameters": {"work_mem": "4MB"},
                "pgHba": ["host all all 192.0.2.0/24 trust"],
                "allowInsecureAuthentication": True,
            },
        }
    )
    cluster.wait_healthy(1)
    yield cluster
    kube.delete("Namespace", None, ns)


def _parameters(cluster: Cluster, parameters: dict[str, str]) -> None:
    """Set spec.postgresql.parameters to exactly these (a merge patch keeps other keys)."""
    have = cluster.obj()["spec"]["postgresql"].get("parameters") or {}
    patch: dict[str, str | None] = {k: None for k in have if k not in parameters}
    cluster.patch_spec({"postgresql": {"parameters": {**patch, **parameters}}})


def _setting(cluster: Cluster, name: str) -> str:
    with cluster.connect_superuser() as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_bootstrap_is_not_a_warning_and_trust_is(safe: Cluster, kube: Kube) -> None:
    """Status accuracy: a normal bootstrap posts no Warning; an allowed trust rule shows a
    standing warning condition (and one Warning Event)."""
    warnings = [
        e
        for e in kube.list("Event", safe.namespace)
        if e["involvedObject"]["name"] == "safe" and e["type"] == "Warning"
    ]
    reasons = [e["reason"] for e in warnings]
    # Readiness changing while the cluster comes up is not a warning (the tests' 20 s limit
    # for "never ready" may be reached on a busy machine: that one is a real warning).
    assert not {"NoPrimary", "InstancesNotReady"} & set(reasons), reasons
    assert reasons.count("TrustAuthenticationAllowed") == 1
    cond = safe.condition("InsecureAuthentication")
    assert cond["status"] == "True" and "192.0.2.0/24" in cond["message"]


def test_parameters_postgresql_cannot_take_are_reported(safe: Cluster) -> None:
    _parameters(
        safe,
        {
            "work_mem": "4MB",
            "work_mme": "8MB",
            "shared_preload_libraries": "pg_stat_statements,does_not_exist",
        },
    )
    cond = _degraded(safe, "LibraryNotAvailable")
    assert "does_not_exist" in cond["message"]

    def ignored() -> dict[str, str] | None:
        got = {p["name"]: p["reason"] for p in safe.status().get("ignoredParameters") or []}
        return got if {"work_mme", "shared_preload_libraries"} <= got.keys() else None

    reasons = wait_for("both parameters in status.ignoredParameters", ignored, timeout=60)
    assert "has no parameter work_mme" in reasons["work_mme"]
    assert "no library does_not_exist" in reasons["shared_preload_libraries"]
    # Held back: the server never saw the library, so it keeps running.
    assert "does_not_exist" not in _setting(safe, "shared_preload_libraries")
    _parameters(safe, {"work_mem": "4MB"})
    safe.wait_healthy(1)
    assert not safe.status().get("ignoredParameters")


def test_a_parameter_that_stops_postgresql_can_be_reverted(safe: Cluster) -> None:
    # huge_pages=on needs huge pages this machine does not have: PostgreSQL cannot start.
    _parameters(safe, {"work_mem": "4MB", "huge_pages": "on"})
    cond = _degraded(safe, "PostgresNotRunning", timeout=120)
    assert "could not map anonymous shared memory" in cond["message"]
    _parameters(safe, {"work_mem": "4MB"})
    safe.wait_healthy(1, timeout=60)
    assert _setting(safe, "huge_pages") == "try"


@pytest.mark.parametrize("kind", ["app", "superuser", "replication", "restapi"])
def test_a_deleted_credential_secret_comes_back_with_the_working_password(
    safe: Cluster, kube: Kube, kind: str
) -> None:
    name = f"safe-{kind}"
    before = _password(kube, safe.namespace, name)
    kube.delete("Secret", safe.namespace, name)
    wait_for(f"{name} re-created", lambda: kube.get("Secret", safe.namespace, name), timeout=30)
    assert _password(kube, safe.namespace, name) == before
    if kind in ("app", "superuser"):
        user = {"app": "app", "superuser": "postgres"}[kind]
        # Logging in with the Secret's password proves the database has that password.
        psycopg.connect(
            **safe.tls("safe-0"),
            port=str(safe.port("safe-0")),
            user=user,
            password=before,
            dbname="postgres",
            connect_timeout="3",
        ).close()
    elif kind == "replication":
        # Replication logs in by its client certificate, not this password (pg_hba `cert`),
        # so nothing breaks if the two disagree; the Secret still comes back unchanged.
        pass
    else:
        # Patroni's REST API still takes the operator's calls: a parameter change applies.
        _parameters(safe, {"work_mem": "6MB"})
        wait_for("work_mem applied", lambda: _setting(safe, "work_mem") == "6MB", timeout=60)
