"""`kubectl pgherd`, run as a user runs it: the console script from the virtualenv on PATH,
started by the pinned kubectl as a plugin, against one 2-instance cluster with backups to a
real S3-compatible server. The tests share the cluster and run in file order."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgherd.api.v1alpha1 import RESTARTED_AT_ANNOTATION
from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests import s3_server
from tests.cluster import test_backup as backup_tests
from tests.cluster.test_backup import CREDS, PATRONI, backup_spec
from tests.conftest import require_tool
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NAME = "pg"
# The backup tests' S3 server with its bucket, a module-scoped fixture of this module too.
s3 = backup_tests.s3


def _kubectl() -> Path:
    """kubectl from .tools/bin (the Makefile exports TOOLS_BIN), else the pinned build."""
    tools = os.environ.get("TOOLS_BIN")
    if tools and os.access(Path(tools) / "kubectl", os.X_OK):
        return Path(tools) / "kubectl"
    return require_tool("kubectl")


@pytest.fixture(scope="module")
def cluster(operator: Operator, kube: Kube, s3: s3_server.S3Server) -> Iterator[Cluster]:
    ns = f"t-plugin-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": CREDS, "namespace": ns, "labels": {"pgherd.io/use": "true"}},
            "stringData": {"id": s3.access_key, "secret": s3.secret_key},
        }
    )
    c = Cluster(kube, ns, NAME)
    c.create({"instances": 2, "patroni": PATRONI, "backup": backup_spec(s3.url)})
    c.wait_healthy(2)
    yield c
    kube.delete("Namespace", None, ns)


@pytest.fixture(scope="module")
def plugin(
    control_plane: ControlPlane, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Runs `kubectl pgherd -n <namespace> ARGS...`; returns the CompletedProcess."""
    scripts = Path(sys.executable).parent
    assert (scripts / "kubectl-pgherd").exists(), "the console script is not installed: make venv"
    kubectl = _kubectl()
    home = tmp_path_factory.mktemp("home")
    env = {
        "PATH": f"{scripts}:{kubectl.parent}:/usr/bin:/bin",
        "KUBECONFIG": str(control_plane.kubeconfig),
        "HOME": str(home),  # kubectl's discovery cache
    }

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [str(kubectl), "pgherd", "-n", cluster.namespace, *args]
        return subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    def start(*args: str) -> subprocess.Popen[str]:
        argv = [str(kubectl), "pgherd", "-n", cluster.namespace, *args]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    run.start = start  # type: ignore[attr-defined]
    return run


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    return done.stdout


def _secret(cluster: Cluster, kind: str, key: str = "password") -> str:
    got = cluster.kube.get("Secret", cluster.namespace, f"{NAME}-{kind}")
    assert got is not None
    return base64.b64decode(got["data"][key]).decode()


def test_status(cluster: Cluster, plugin: Any) -> None:
    wait_for(
        "ContinuousArchiving True",
        lambda: cluster.condition("ContinuousArchiving").get("status") == "True",
        timeout=90,
    )
    primary = cluster.primary()
    text = _ok(plugin("status", NAME))
    assert f"PostgresCluster {cluster.namespace}/{NAME}: Healthy" in text, text
    assert f"primary:   {primary}" in text, text
    assert "archiving: working" in text, text
    assert "server expires:" in text, text
    summed = json.loads(_ok(plugin("status", NAME, "-o", "json")))
    members = {m["name"]: m for m in summed["members"]}
    assert sorted(members) == [f"{NAME}-0", f"{NAME}-1"]
    assert members[primary]["role"] == "primary"
    (replica,) = (m for m in members.values() if m["role"] != "primary")
    assert replica["ready"] and replica["lagBytes"] is not None, replica
    assert all(m["timeline"] == 1 and m["node"] for m in members.values()), members
    assert summed["archiving"]["status"] == "True", summed["archiving"]
    assert summed["tls"]["serverNotAfter"], summed


def test_status_of_a_missing_cluster_fails(plugin: Any) -> None:
    done = plugin("status", "nope")
    assert done.returncode != 0
    assert "PostgresCluster 'nope' not found" in done.stderr, done.stderr


def test_psql_runs_queries_on_primary_and_replica(cluster: Cluster, plugin: Any) -> None:
    done = plugin("psql", NAME, "--", "-tAc", "select 1")
    assert _ok(done).strip() == "1", done.stderr
    on_replica = plugin("psql", NAME, "--replica", "--", "-tAc", "select pg_is_in_recovery()")
    assert _ok(on_replica).strip() == "t"
    su = plugin("psql", NAME, "--superuser", "--", "-tAc", "select current_user")
    assert _ok(su).strip() == "postgres"
    # The server was verified (verify-full with the Secret's CA) and no password was shown.
    tls = plugin(
        "psql", NAME, "--", "-tAc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
    )
    assert _ok(tls).strip() == "t"
    for d in (done, on_replica, su):
        for secret in (_secret(cluster, "app"), _secret(cluster, "superuser")):
            assert secret not in d.stdout + d.stderr


def test_switchover_refuses_an_unknown_target(plugin: Any) -> None:
    done = plugin("switchover", NAME, "--to", f"{NAME}-7")
    assert done.returncode != 0
    assert f"{NAME}-7 is not an instance of this cluster" in done.stderr, done.stderr


def test_switchover_to_the_best_replica(cluster: Cluster, plugin: Any) -> None:
    old = cluster.primary()
    (replica,) = {p["metadata"]["name"] for p in cluster.pods()} - {old}
    done = plugin("switchover", NAME, "--wait", "--timeout", "180")
    _ok(done)
    assert f"{replica} is the primary" in done.stderr, done.stderr
    assert cluster.primary() == replica
    cluster.wait_healthy(2)


def test_backup_followed_to_completion(cluster: Cluster, plugin: Any) -> None:
    done = plugin("backup", NAME, "--name", "plugin-1", "--wait", "--timeout", "240")
    assert _ok(done).strip() == "plugin-1"
    assert "backup plugin-1: Completed" in done.stderr, done.stderr
    got = cluster.kube.get("PostgresBackup", cluster.namespace, "plugin-1")
    assert got is not None and got["status"]["phase"] == "Completed", got
    summed = json.loads(_ok(plugin("status", NAME, "-o", "json")))
    assert summed["lastBackup"]["name"] == "plugin-1", summed["lastBackup"]


def test_report_has_the_cluster_and_no_secret_data(
    cluster: Cluster, plugin: Any, s3: s3_server.S3Server, tmp_path: Path
) -> None:
    # A database and a pooler (no instances) of the cluster's: the bundle carries them and
    # the pooler's Deployment.
    group = {"apiVersion": "pgherd.io/v1alpha1", "metadata": {"namespace": cluster.namespace}}
    cluster.kube.create(group | {"kind": "PostgresDatabase", "metadata": {
        "name": "report-db", "namespace": cluster.namespace}, "spec": {
        "cluster": NAME, "name": "reportdb", "owner": "app"}})  # fmt: skip
    cluster.kube.create(group | {"kind": "PostgresPooler", "metadata": {
        "name": "report-pooler", "namespace": cluster.namespace}, "spec": {
        "cluster": NAME, "instances": 0}})  # fmt: skip
    wait_for("the pooler's Deployment",
             lambda: cluster.kube.get("Deployment", cluster.namespace, "report-pooler"),
             timeout=60)  # fmt: skip
    out = tmp_path / "bundle.zip"
    _ok(plugin("report", NAME, "-o", str(out)))
    with zipfile.ZipFile(out) as zf:
        files = {Path(n).name: zf.read(n).decode() for n in zf.namelist()}
    assert f"name: {NAME}\n" in files["postgrescluster.yaml"]
    for name in ("pods.yaml", "statefulsets.yaml", "services.yaml", "secrets.yaml",
                 "postgresbackups.yaml", "events.yaml", "status.txt", "README.txt"):  # fmt: skip
        assert name in files, sorted(files)
    assert "name: report-db\n" in files["postgresdatabases.yaml"]
    assert "name: report-pooler\n" in files["postgrespoolers.yaml"]
    assert "name: report-pooler\n" in files["deployments.yaml"]
    assert f"name: {NAME}-app\n" in files["secrets.yaml"]
    assert "- password\n" in files["secrets.yaml"]  # the keys are listed
    # The operator runs as a process here, not a pod: the bundle says so.
    assert "no operator pod" in files["README.txt"]
    everything = "\n".join(files.values())
    for secret in (
        _secret(cluster, "app"),
        _secret(cluster, "superuser"),
        _secret(cluster, "replication"),
        s3.secret_key,
    ):
        assert secret not in everything
    assert base64.b64encode(_secret(cluster, "app").encode()).decode() not in everything


def test_restart_rolls_every_pod(cluster: Cluster, plugin: Any) -> None:
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    proc = plugin.start("restart", NAME, "--wait", "--timeout", "300")
    try:
        stamp = wait_for(
            "the annotation on the cluster",
            lambda: (cluster.obj()["metadata"].get("annotations") or {}).get(
                RESTARTED_AT_ANNOTATION
            ),
            timeout=30,
        )

        def copied() -> bool:
            sts = cluster.kube.get("StatefulSet", cluster.namespace, NAME) or {}
            template = sts.get("spec", {}).get("template", {}).get("metadata", {})
            return (template.get("annotations") or {}).get(RESTARTED_AT_ANNOTATION) == stamp

        # Fails fast while the operator ignores the annotation, rather than waiting out --wait.
        wait_for("the operator to copy the annotation into the pod template", copied, 30)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out, err)
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    assert set(after) == set(before)
    assert all(after[n] != before[n] for n in before), (before, after)
    cluster.wait_healthy(2)
