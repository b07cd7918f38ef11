"""TLS on real PostgreSQL and Patroni: clients verify the server with only what the app
Secret holds (also a pod reaching `-rw` by its Service name, as the major upgrade's pods
will), plain TCP is refused, certificates renew (and the CA rotates) under a writer with no
failed write, and a user's bad certificate is refused while the cluster keeps serving.

The renewal test runs an operator of its own with certificates that live a minute.
"""

from __future__ import annotations

import base64
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from kubernetes import client as k8s

from pgherd import pki
from pgherd.controller.client import Client as Kube
from pgherd.render import names
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import Cluster, Operator, operator_kubeconfig, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _secret_data(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    secret = kube.get("Secret", namespace, name)
    assert secret is not None, name
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _app_conninfo(cluster: Cluster, tmp: Path) -> tuple[str, dict[str, str]]:
    """The app Secret's URI and the libpq settings that reach its host on this machine: the
    Secret's CA as sslrootcert, and hostaddr for the Service name no DNS here resolves."""
    app = _secret_data(cluster.kube, cluster.namespace, f"{cluster.name}-app")
    ca = tmp / f"{cluster.name}-ca.crt"
    ca.write_text(app["ca.crt"])
    # The proxy-less way to reach `-rw` here: the primary's local port.
    return app["uri"], {
        "sslrootcert": str(ca),
        "hostaddr": "127.0.0.1",
        "port": str(cluster.port(cluster.primary())),
    }


@pytest.fixture(scope="module")
def secure(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = f"t-tls-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(kube, ns, "secure")
    cluster.create({"instances": 2})
    cluster.wait_healthy(2)
    yield cluster
    kube.delete("Namespace", None, ns)


def test_psql_and_psycopg_connect_with_only_what_the_app_secret_holds(
    secure: Cluster, tmp_path: Path
) -> None:
    uri, local = _app_conninfo(secure, tmp_path)
    assert uri.endswith("?sslmode=verify-full") and f"@secure-rw.{secure.namespace}.svc:" in uri
    with psycopg.connect(uri, **local) as conn:
        ssl = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert ssl is not None and ssl[0] is True and ssl[1] in ("TLSv1.2", "TLSv1.3")
    # psql: the same URI; here the query string routes it (its values win over the host part).
    routed = f"{uri}&hostaddr=127.0.0.1&port={local['port']}&sslrootcert={local['sslrootcert']}"
    out = subprocess.run(
        ["psql", routed, "-XAtc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "t", out.stderr


def test_plain_tcp_and_a_wrong_name_are_refused(secure: Cluster, tmp_path: Path) -> None:
    uri, local = _app_conninfo(secure, tmp_path)
    with pytest.raises(psycopg.OperationalError, match=r"no encryption|hostnossl|rejects"):
        psycopg.connect(uri, **(local | {"sslmode": "disable"})).close()
    # verify-full checks the name: the certificate does not name `localhost`.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(uri, **(local | {"host": "localhost"})).close()


def test_a_pod_reaches_the_primary_by_the_rw_service_name_with_verify_full(
    secure: Cluster, api: k8s.ApiClient
) -> None:
    # As the major upgrade's pods will: libpq's standard variables name the -rw Service, and
    # the test kubelet routes that name to the primary (its stand-in for DNS and kube-proxy)
    # while libpq verifies the server's certificate against it.
    begin = time.monotonic()
    core, ns = k8s.CoreV1Api(api), secure.namespace
    app = names.secret(secure.name, "app")

    def from_app(var: str, key: str) -> dict[str, object]:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": app, "key": key}}}

    query = (
        "SELECT s.ssl AND NOT pg_is_in_recovery() FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"
    )
    # Host mode maps the pod's paths under PGHERD_ROOT (the mounted CA, the message file).
    script = (
        'export PGSSLROOTCERT="${PGHERD_ROOT:-}/tls/ca.crt"; '
        f'out=$(psql -XAtc "{query}") || exit; '
        'echo "$out" > "${PGHERD_ROOT:-}/dev/termination-log"; test "$out" = t'
    )
    container = {
        "name": "client",
        "image": "example.invalid/upgrade:1",
        "command": ["/bin/sh", "-c", script],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [
            {"name": "PGHOST", "value": names.service_host(names.service_rw(secure.name), ns)},
            {"name": "PGPORT", "value": "5432"},
            {"name": "PGSSLMODE", "value": "verify-full"},
            {"name": "PGCONNECT_TIMEOUT", "value": "10"},
            from_app("PGUSER", "user"),
            from_app("PGPASSWORD", "password"),
            from_app("PGDATABASE", "dbname"),
        ],
        "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": True}],
    }
    core.create_namespaced_pod(ns, {
        "metadata": {"name": "libpq-client", "labels": {
            "app.kubernetes.io/managed-by": "pgherd", "app.kubernetes.io/component": "upgrade"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [{"name": "tls", "secret": {
                "secretName": names.tls_secret(secure.name),
                "items": [{"key": "ca.crt", "path": "ca.crt"}]}}],
        },
    })  # fmt: skip

    def finished() -> k8s.V1Pod | None:
        pod = core.read_namespaced_pod("libpq-client", ns)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for("the client pod to finish", finished, timeout=60)
    (status,) = pod.status.container_statuses
    message = status.state.terminated.message
    assert pod.status.phase == "Succeeded", message
    assert message == "t\n"
    duration = time.monotonic() - begin
    print(f"client pod reached the primary by {names.service_rw(secure.name)} in {duration:.1f}s")
    core.delete_namespaced_pod("libpq-client", ns)


def test_replication_uses_tls_and_the_client_certificate(secure: Cluster) -> None:
    with secure.connect_superuser() as conn:
        rows = conn.execute(
            "SELECT s.ssl, s.client_dn, r.usename FROM pg_stat_replication r "
            "JOIN pg_stat_ssl s ON s.pid = r.pid"
        ).fetchall()
    assert rows and all(ssl and dn.endswith("/CN=replicator") and user == "replicator"
                        for ssl, dn, user in rows), rows  # fmt: skip


def test_the_operator_and_patroni_verify_patronis_certificate(secure: Cluster) -> None:
    # Patroni's REST API answers over TLS only, with the cluster's certificate.
    pod = secure.kube.get("Pod", secure.namespace, secure.primary())
    assert pod is not None
    status = pod["metadata"]["annotations"]["status"]
    assert '"api_url": "https://' in status or '"api_url":"https://' in status
    tls = _secret_data(secure.kube, secure.namespace, "secure-tls")
    assert pki.signed_by(tls["tls.crt"], tls["ca.crt"])
    # A switchover goes through Patroni's REST API with the operator's verified calls.
    replica = next(p["metadata"]["name"] for p in secure.pods()
                   if p["metadata"]["name"] != secure.primary())  # fmt: skip
    secure.patch_spec({"switchover": {"targetInstance": replica}})
    wait_for(f"{replica} primary", lambda: secure.status().get("currentPrimary") == replica, 90)
    secure.wait_healthy(2)


def test_status_shows_certificate_expiry(secure: Cluster) -> None:
    tls = secure.status()["tls"]
    assert tls["source"] == "operator"
    server = pki.inspect(_secret_data(secure.kube, secure.namespace, "secure-tls")["tls.crt"])
    assert tls["serverNotAfter"].startswith(server.not_after.strftime("%Y-%m-%dT%H:%M:%S"))
    assert tls["caNotAfter"] and tls["replicationNotAfter"] and tls["renewAt"]


def test_plain_text_allowed_is_a_standing_warning(secure: Cluster, tmp_path: Path) -> None:
    secure.patch_spec({"tls": {"allowPlainText": True}})
    cond = wait_for(
        "InsecureAuthentication",
        lambda: (
            (c := secure.condition("InsecureAuthentication")).get("reason") == "PlainTextAllowed"
            and c
        ),
        60,
    )
    assert cond["status"] == "True" and "allowPlainText" in cond["message"]
    secure.patch_spec({"tls": {"allowPlainText": False}})
    wait_for("no warning", lambda: not secure.condition("InsecureAuthentication"), 60)
    secure.wait_healthy(2, timeout=240)


# ---- a user's certificate ------------------------------------------------------------------
def test_a_users_certificate_serves_and_a_bad_one_is_refused(
    operator: Operator, kube: Kube, tmp_path: Path
) -> None:
    ns = f"t-tlsu-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    now = pki.inspect(pki.new_ca("x", now=_utcnow(), lifetime=_days(1)).cert_pem).not_before
    corp = pki.new_ca("corp CA", now=now, lifetime=_days(30))
    good = pki.issue(corp, common_name="mine-rw", dns_names=names.server_names("mine", ns),
                     now=now, lifetime=_days(10))  # fmt: skip
    short = pki.issue(corp, common_name="mine-rw", dns_names=["mine-rw"], now=now,
                      lifetime=_days(10))  # fmt: skip

    def put(pair: pki.KeyPair) -> None:
        data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": corp.cert_pem}
        kube.apply({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "corp-tls", "namespace": ns, "labels": {"pgherd.io/use": "true"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        })  # fmt: skip

    put(good)
    cluster = Cluster(kube, ns, "mine")
    cluster.create({"instances": 1, "tls": {"serverSecret": {"name": "corp-tls"}}})
    cluster.wait_healthy(1)
    uri, local = _app_conninfo(cluster, tmp_path)
    with psycopg.connect(uri, **local) as conn:
        assert conn.pgconn.ssl_in_use
    assert cluster.status()["tls"]["source"] == "user"
    # A certificate that does not cover the Services: Degraded, and the old one keeps serving.
    put(short)
    cond = wait_for(
        "Degraded TLSCertificateInvalid",
        lambda: (c := cluster.condition("Degraded")).get("reason") == "TLSCertificateInvalid" and c,
        60,
    )
    assert "do not cover" in cond["message"] and "corp-tls" in cond["message"]
    assert _secret_data(kube, ns, "mine-tls")["tls.crt"] == good.cert_pem
    with psycopg.connect(uri, **local) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    events = [e for e in kube.list("Event", ns) if e.get("reason") == "TLSCertificateInvalid"]
    assert len(events) == 1, events
    kube.delete("Namespace", None, ns)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _days(n: float) -> timedelta:
    return timedelta(days=n)


# ---- renewal under load ------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_lived(
    operator: Operator,  # installs the CRDs and RBAC
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    kube: Kube,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """An operator of its own whose certificates live a minute and whose CA lives two, each
    renewed at half its life: the renewals come every 30 s and the CA rotates after 60 s,
    with as much margin before each expiry as the renewal took."""
    ns = f"tls-{uuid.uuid4().hex[:6]}"  # outside the session operator's patterns
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    directory = tmp_path_factory.mktemp("tls-operator")
    op = Operator(
        operator_kubeconfig(control_plane, api, directory / "kubeconfig"),
        control_plane.log_dir / "operator-tls.log",
        extra_env={
            "PGHERD_TLS_CERTIFICATE_LIFETIME_SECONDS": "60",
            "PGHERD_TLS_CA_LIFETIME_SECONDS": "120",
            "PGHERD_TLS_RENEW_FRACTION": "0.5",
        },
        args=[f"--namespace={ns}"],
    )
    op.start()
    yield ns
    op.stop()
    kube.delete("Namespace", None, ns)


def test_certificates_renew_and_the_ca_rotates_with_no_failed_write(
    short_lived: str, kube: Kube, tmp_path: Path
) -> None:
    cluster = Cluster(kube, short_lived, "renew")
    cluster.create({"instances": 2})
    cluster.wait_healthy(2)
    primary = cluster.primary()
    with cluster.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE beats (n int)")
    first = _secret_data(kube, short_lived, "renew-tls")
    first_ca = _secret_data(kube, short_lived, "renew-ca")["ca.crt"]
    seen_servers = {first["tls.crt"]}
    seen_trust_sizes = {len(pki.inspect_all(first["ca.crt"]))}
    failures: list[str] = []
    counts = {"kept": 0, "new": 0}
    stop = threading.Event()

    def keep_one_connection() -> None:
        # A connection opened before the renewals outlives them all.
        with cluster.connect(primary, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    conn.execute("INSERT INTO beats VALUES (1)")
                    counts["kept"] += 1
                except psycopg.Error as e:
                    failures.append(f"kept: {e}")
                time.sleep(0.1)

    def new_connections() -> None:
        # Each connection verifies the server afresh with the CA bundle the Secret holds now,
        # as a client re-reading its mounted Secret does.
        while not stop.is_set():
            try:
                with cluster.connect(primary, autocommit=True) as conn:
                    conn.execute("INSERT INTO beats VALUES (2)")
                counts["new"] += 1
            except psycopg.Error as e:
                failures.append(f"new: {e}")
            time.sleep(0.3)

    threads = [threading.Thread(target=f) for f in (keep_one_connection, new_connections)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 200
    try:
        while time.monotonic() < deadline:
            data = _secret_data(kube, short_lived, "renew-tls")
            seen_servers.add(data["tls.crt"])
            seen_trust_sizes.add(len(pki.inspect_all(data["ca.crt"])))
            ca_now = _secret_data(kube, short_lived, "renew-ca")["ca.crt"]
            if (
                ca_now != first_ca
                and pki.signed_by(data["tls.crt"], ca_now)
                and len(seen_servers) > 3
            ):
                break
            time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [], failures[:5]
    assert counts["kept"] > 100 and counts["new"] > 30, counts
    assert len(seen_servers) > 3, "the server certificate was not renewed"
    assert 2 in seen_trust_sizes, "the CA rotation had no overlap with both CAs trusted"
    # The instances serve the renewed certificate (reloaded, not restarted).
    with cluster.connect(primary) as conn:
        started = conn.execute("SELECT pg_postmaster_start_time() < now() - interval '60 s'")
        assert started.fetchone() == (True,)
    cluster.wait_healthy(2)
