"""`kubectl pgherd`'s pure parts: the status summary from a recorded cluster and its pods, the
choice of a switchover target, the support bundle's redaction, and the arguments."""

from __future__ import annotations

import base64
import json
import socket
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgherd.kubectl import bundle, choose, cli, connect, redact, summary

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024


def _pod(name: str, role: str, *, ready: bool = True, lsn: int, timeline: int = 2,
         state: str | None = None, node: str = "kwok-node-0") -> dict[str, Any]:  # fmt: skip
    state = state or "running"
    patroni = {"role": role, "state": state, "xlog_location": lsn, "timeline": timeline}
    if role != "primary":
        patroni["replication_state"] = "streaming"
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {"pgherd.io/cluster": "pg", "pgherd.io/role": role},
            "annotations": {"status": json.dumps(patroni)},
        },
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


CLUSTER: dict[str, Any] = {
    "metadata": {"name": "pg", "namespace": "prod"},
    "spec": {"instances": 3, "postgresVersion": 15, "backup": {"objectStore": {}}},
    "status": {
        "phase": "Healthy",
        "currentPrimary": "pg-1",
        "readyInstances": 3,
        "postgresVersion": 15,
        "image": "quay.io/pgherd/postgres:15-0.2.0",
        "pendingRestart": False,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllReady",
                "message": "3/3 instances ready; primary pg-1",
            },
            {
                "type": "ContinuousArchiving",
                "status": "True",
                "reason": "Archiving",
                "message": "WAL archiving works",
            },
        ],
        "instancesStatus": [
            {"name": "pg-0", "role": "sync_standby", "state": "streaming", "lagBytes": 0},
            {"name": "pg-1", "role": "primary", "state": "running", "lagBytes": 0},
            {"name": "pg-2", "role": "replica", "state": "streaming", "lagBytes": 2 * MIB},
        ],
        "backup": {
            "lastArchivedWal": "000000020000000000000007",
            "lastArchivedTime": "2025-01-10T11:59:00Z",
            "lastSuccessfulBackup": "20250109T030000",
            "lastSuccessfulBackupTime": "2025-01-09T03:01:00Z",
        },
        "tls": {
            "source": "operator",
            "serverNotAfter": "2025-03-01T00:00:00Z",
            "caNotAfter": "2030-01-01T00:00:00Z",
        },
        "endpoints": {"readWrite": "pg-rw.prod.svc:5432"},
    },
}
PODS = [
    _pod("pg-0", "replica", lsn=100 * MIB - 512, node="kwok-node-0"),
    _pod("pg-1", "primary", lsn=100 * MIB, node="kwok-node-1"),
    _pod("pg-2", "replica", lsn=97 * MIB, node="kwok-node-2"),
]
BACKUPS = [
    {"metadata": {"name": "nightly"}, "spec": {"cluster": "pg"},
     "status": {"phase": "Completed", "backupId": "20250110T030000",
                "endTime": "2025-01-10T03:02:00Z", "size": 3 * MIB}},
    {"metadata": {"name": "now"}, "spec": {"cluster": "pg"}, "status": {"phase": "Running"}},
]  # fmt: skip


def test_summary_of_a_recorded_cluster() -> None:
    s = summary.summarize(CLUSTER, PODS, BACKUPS)
    members = {m["name"]: m for m in s["members"]}
    assert members["pg-1"]["role"] == "primary" and members["pg-1"]["lagBytes"] == 0
    # Byte-exact from Patroni's positions, not the status's whole MiB.
    assert members["pg-0"]["lagBytes"] == 512
    assert members["pg-0"]["role"] == "replica (sync_standby)"
    assert members["pg-2"]["lagBytes"] == 3 * MIB
    assert [m["timeline"] for m in s["members"]] == [2, 2, 2]
    assert members["pg-2"]["node"] == "kwok-node-2"
    assert s["archiving"]["status"] == "True"
    assert s["lastBackup"] == {"name": "nightly", "backupId": "20250110T030000",
                               "endTime": "2025-01-10T03:02:00Z", "size": 3 * MIB}  # fmt: skip
    assert s["backupsInProgress"] == ["now"]
    json.dumps(s)  # -o json prints it as it is


def test_status_text() -> None:
    text = summary.render_text(summary.summarize(CLUSTER, PODS, BACKUPS), NOW)
    lines = text.splitlines()
    assert lines[0] == "PostgresCluster prod/pg: Healthy"
    assert "  primary:   pg-1" in lines
    assert any(line.split()[:3] == ["pg-2", "replica", "running/streaming"] and "3.0 MiB" in line
               for line in lines), text  # fmt: skip
    assert "  archiving: working (Archiving)" in lines
    assert (
        "  last successful backup: 20250110T030000 (nightly) ended 2025-01-10T03:02:00Z, 3.0 MiB"
        in lines
    )
    assert "  server expires: 2025-03-01T00:00:00Z (in 50 days)" in lines
    assert "  readWrite: pg-rw.prod.svc:5432" in lines
    assert "AllReady" in text and "3/3 instances ready; primary pg-1" in text


def test_status_without_backups_nor_pods_nor_status() -> None:
    bare = {"metadata": {"name": "new", "namespace": "default"}, "spec": {"instances": 1}}
    s = summary.summarize(bare, [], [])
    assert s["archiving"] is None and s["lastBackup"] is None and s["members"] == []
    text = summary.render_text(s, NOW)
    assert "PostgresCluster default/new: unknown" in text
    assert "archiving: not configured" in text and "no pods" in text


def test_scheduled_backup_known_from_the_status_only() -> None:
    s = summary.summarize(CLUSTER, PODS, [])
    assert s["lastBackup"]["backupId"] == "20250109T030000"
    assert s["lastBackup"]["name"] is None


def _member(name: str, role: str = "replica", *, ready: bool = True, lag: int | None = 0,
            terminating: bool = False) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "role": role, "ready": ready, "podReady": ready, "lagBytes": lag,
            "state": "streaming" if ready else "starting", "terminating": terminating}  # fmt: skip


@pytest.mark.parametrize(
    ("members", "best"),
    [
        ([_member("a-0", "primary"), _member("a-1", lag=5), _member("a-2", lag=1)], "a-2"),
        ([_member("a-0", "primary"), _member("a-1", lag=0), _member("a-2", lag=0)], "a-1"),
        ([_member("a-0", "primary"), _member("a-1", lag=None), _member("a-2", lag=9)], "a-2"),
        ([_member("a-0", "primary"), _member("a-1", ready=False), _member("a-2", lag=9)], "a-2"),
        ([_member("a-0", "primary"), _member("a-1", terminating=True), _member("a-2", lag=7)],
         "a-2"),
        ([_member("a-0", "replica (sync_standby)", lag=3), _member("a-1", "primary"),
          _member("a-2", lag=1)], "a-2"),
        ([_member("a-0", "primary"), _member("a-1", lag=None)], "a-1"),
    ],
)  # fmt: skip
def test_best_replica(members: list[dict[str, Any]], best: str) -> None:
    assert choose.best_replica(members) == best


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([_member("a-0", "primary")], "no ready replica to switch over to (no replica)"),
        ([_member("a-0", "primary"), _member("a-1", ready=False)], "a-1, none ready"),
    ],
)
def test_no_best_replica(members: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(choose.NoTarget, match=why.replace("(", r"\(").replace(")", r"\)")):
        choose.best_replica(members)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("a-1", None),
        ("a-0", "a-0 is already the primary"),
        ("a-2", "a-2 is not ready"),
        ("a-9", "a-9 is not an instance of this cluster"),
    ],
)
def test_check_target(target: str, why: str | None) -> None:
    members = [_member("a-0", "primary"), _member("a-1"), _member("a-2", ready=False)]
    if why is None:
        assert choose.check_target(members, target) == target
    else:
        with pytest.raises(choose.NoTarget, match=why):
            choose.check_target(members, target)


# ---- redaction ---------------------------------------------------------------------------
def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


PASSWORD = "s3cr3t-Pa55word-xyz"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "pg-app", "namespace": "prod", "annotations": {LAST_APPLIED: json.dumps(
        {"data": {"password": _b64(PASSWORD)}})}},
    "type": "kubernetes.io/basic-auth",
    "data": {"username": _b64("app"), "password": _b64(PASSWORD),
             "uri": _b64(f"postgresql://app:{PASSWORD}@pg-rw.prod.svc:5432/app")},
}  # fmt: skip


def test_a_secret_keeps_its_name_and_keys_only() -> None:
    out = redact.redact(SECRET)
    assert out["metadata"]["name"] == "pg-app"
    assert out["keys"] == ["password", "uri", "username"]
    assert "data" not in out and "annotations" not in out["metadata"]
    assert PASSWORD not in json.dumps(out) and _b64(PASSWORD) not in json.dumps(out)


def test_env_values_that_look_like_credentials_are_redacted() -> None:
    pod = {
        "kind": "Pod",
        "spec": {"containers": [{"name": "c", "env": [
            {"name": "PGPASSWORD", "value": PASSWORD},
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"},
            {"name": "API_TOKEN", "value": "tok"},
            {"name": "PGHERD_SUPERUSER_PASSWORD_FILE", "value": "/etc/pgherd-superuser/password"},
            {"name": "PGHERD_BACKUP_BUCKET", "value": "backups"},
            {"name": "AWS_ACCESS_KEY_ID",
             "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}},
        ]}], "volumes": [{"name": "tls", "secret": {"secretName": "pg-tls"}}]},
    }  # fmt: skip
    out = redact.redact(pod)
    env = {e["name"]: e.get("value") for e in out["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"] == env["AWS_SECRET_ACCESS_KEY"] == env["API_TOKEN"] == "REDACTED"
    # Where a credential is, and what is not one, stay readable.
    assert env["PGHERD_SUPERUSER_PASSWORD_FILE"] == "/etc/pgherd-superuser/password"
    assert env["PGHERD_BACKUP_BUCKET"] == "backups"
    assert out["spec"]["containers"][0]["env"][5]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    assert out["spec"]["volumes"][0]["secret"]["secretName"] == "pg-tls"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:hunter22@pg-rw:5432/app", "postgresql://app:REDACTED@pg-rw:5432/app"),
        ("password: hunter22\nuser: app", "password: REDACTED\nuser: app"),
        ('{"password": "hunter22", "x": 1}', '{"password": "REDACTED", "x": 1}'),
        ("host=pg user=app password=hunter22 sslmode=verify-full",
         "host=pg user=app password=REDACTED sslmode=verify-full"),
        ("superuser_password: 'a b'", "superuser_password: 'REDACTED'"),
        ("nothing to see: 5432", "nothing to see: 5432"),
    ],
)  # fmt: skip
def test_passwords_inside_text(text: str, expected: str) -> None:
    assert redact.redact_text(text) == expected


def test_scrub_removes_every_known_secret_value() -> None:
    values = redact.secret_values([SECRET])
    assert PASSWORD in values and "app" not in values  # too short to scrub safely
    superuser = {"data": {"username": _b64("postgres"), "password": _b64("long-enough-1"),
                          "ca.crt": _b64("-----BEGIN CERTIFICATE-----")}}  # fmt: skip
    assert redact.secret_values([superuser]) == {"long-enough-1"}  # names, certificates: public
    log = f"connecting with {PASSWORD}; user app"
    assert redact.scrub(log, values) == "connecting with REDACTED; user app"


def test_bundle_files_hold_no_secret_data(tmp_path: Path) -> None:
    cluster = CLUSTER | {"apiVersion": "pgherd.io/v1alpha1", "kind": "PostgresCluster"}
    event = {"kind": "Event", "apiVersion": "v1", "metadata": {"name": "e1"},
             "involvedObject": {"kind": "Pod", "name": "pg-0"},
             "message": f"leaked {PASSWORD} in a message"}  # fmt: skip
    got = bundle.Collected(
        cluster,
        objects={"Pod": PODS, "Secret": [SECRET], "Event": [event], "PostgresBackup": BACKUPS},
        operator_log=f"line 1\nconnect password={PASSWORD}\n",
        notes=["no operator pod (...) in namespace pgherd-system"],
    )
    files = bundle.assemble(got, NOW)
    assert {"postgrescluster.yaml", "pods.yaml", "secrets.yaml", "events.yaml", "status.txt",
            "status.json", "operator.log", "README.txt"} <= set(files)  # fmt: skip
    everything = "\n".join(files.values())
    assert PASSWORD not in everything and _b64(PASSWORD) not in everything
    assert yaml.safe_load(files["postgrescluster.yaml"])["metadata"]["name"] == "pg"
    assert yaml.safe_load(files["secrets.yaml"])["keys"] == ["password", "uri", "username"]
    assert "no operator pod" in files["README.txt"]
    zipped = bundle.write(files, tmp_path / "b.zip", "top")
    assert zipped.is_file()
    directory = bundle.write(files, tmp_path / "dir", "top")
    assert (directory / "status.txt").read_text() == files["status.txt"]


# ---- psql's connection -------------------------------------------------------------------
def test_libpq_environment_keeps_the_password_in_a_private_file(tmp_path: Path) -> None:
    app = {"data": {"user": _b64("app"), "username": _b64("app"), "password": _b64("p:w\\x"),
                    "dbname": _b64("appdb"), "sslmode": _b64("verify-full"),
                    "ca.crt": _b64("-----BEGIN CERTIFICATE-----\n")}}  # fmt: skip
    creds = connect.credentials(app)
    env = connect.libpq_environment(creds, "pg-rw.prod.svc", "127.0.0.1", 6543, tmp_path)
    assert env["PGHOST"] == "pg-rw.prod.svc" and env["PGHOSTADDR"] == "127.0.0.1"
    assert env["PGSSLMODE"] == "verify-full" and env["PGDATABASE"] == "appdb"
    assert "p:w" not in json.dumps(env)
    passfile = Path(env["PGPASSFILE"])
    assert passfile.read_text() == "*:*:*:app:p\\:w\\\\x\n"
    for path in (passfile, Path(env["PGSSLROOTCERT"])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    su = connect.credentials(app, {"data": {"username": _b64("postgres"), "password": _b64("z")}})
    assert (su.user, su.dbname, su.ca) == ("postgres", "postgres", creds.ca)


def test_test_kubelet_port_of_a_ready_selected_pod() -> None:
    service = {"spec": {"selector": {"pgherd.io/cluster": "pg", "pgherd.io/role": "primary"}}}
    pods = [dict(p) for p in PODS]
    assert connect.test_kubelet_port(service, pods) is None  # real pods: port-forward
    for i, p in enumerate(pods):
        p["metadata"] = p["metadata"] | {"annotations": {
            connect.TEST_PORTS_ANNOTATION: json.dumps({"postgresql": 40000 + i})}}  # fmt: skip
    assert connect.test_kubelet_port(service, pods) == 40001
    assert connect.parse_direct("127.0.0.1:5432") == ("127.0.0.1", 5432)
    with pytest.raises(ValueError, match="HOST:PORT"):
        connect.parse_direct("nowhere")


# ---- arguments ---------------------------------------------------------------------------
def test_arguments() -> None:
    a = cli.parse(["status", "pg", "-n", "prod", "-o", "json"])
    assert (a.command, a.cluster, a.namespace, a.output) == ("status", "pg", "prod", "json")
    a = cli.parse(["--context", "ctx", "-n", "prod", "status", "pg"])
    assert (a.context, a.namespace, a.kubeconfig) == ("ctx", "prod", None)
    a = cli.parse(["psql", "pg", "--replica", "--", "-c", "select 1", "--", "x"])
    assert a.replica and not a.superuser and a.psql_args == ["-c", "select 1", "--", "x"]
    a = cli.parse(["switchover", "pg", "--to", "pg-2", "--wait", "--timeout", "30"])
    assert (a.to, a.wait, a.timeout) == ("pg-2", True, 30.0)
    a = cli.parse(["backup", "pg", "--name", "b1"])
    assert (a.name, a.wait) == ("b1", False)
    a = cli.parse(["restart", "pg", "--wait"])
    assert a.wait
    a = cli.parse(["report", "pg", "-o", "out.zip"])
    assert (a.output, a.operator_namespace) == ("out.zip", "pgherd-system")


@pytest.mark.parametrize(
    "argv",
    [[], ["status"], ["status", "pg", "-o", "yaml"], ["status", "pg", "--", "x"], ["nope", "pg"]],
)
def test_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse(argv)
    assert exited.value.code == 2
    assert "usage: kubectl pgherd" in capsys.readouterr().err


FAKE_KUBECTL = """#!{python}
import json, socket, sys, time
open({record!r}, "w").write(json.dumps(sys.argv[1:]))
if "--fail" in sys.argv:
    print("error: services \\"pg-rw\\" not found"); sys.exit(1)
local = int(sys.argv[-1].split(":")[0])
s = socket.socket(); s.bind(("127.0.0.1", local)); s.listen(); time.sleep(60)
"""


def test_port_forward_waits_for_the_local_port_and_stops_kubectl(tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable, record=str(record)))
    fake.chmod(0o700)
    with connect.port_forward(str(fake), ["--namespace", "prod"], "pg-rw") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        argv = json.loads(record.read_text())
    assert argv == ["port-forward", "--namespace", "prod", "--address", "127.0.0.1",
                    "service/pg-rw", f"{port}:5432"]  # fmt: skip
    with pytest.raises(OSError):  # kubectl was stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    failing = connect.port_forward(str(fake), ["--fail"], "pg-rw")
    with pytest.raises(RuntimeError, match='services "pg-rw" not found'), failing:
        pass
