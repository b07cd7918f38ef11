"""`make run`: the real thing on the local control plane, in one command.

Starts (or reuses) the control plane, installs the CRDs and the operator's RBAC, runs the
operator as its own ServiceAccount, creates the sample three-instance PostgresCluster
(real PostgreSQL under Patroni), waits until it is Healthy and prints how to connect:
through a local port that always reaches the current primary (the `-rw` Service). The
operator runs until Ctrl-C; the control plane stays up until `make cluster-down`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pgherd.controller.client import Client as Kube
from pgherd_dev import kubeconfig, processes, svcproxy
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.kubelet import PORTS_ANNOTATION
from pgherd_dev.operator_process import OperatorProcess
from pgherd_packaging import crds, manifests

SAMPLE = "example"
NAMESPACE = "default"
PROXY_PORT_ENV = "PGHERD_RUN_PORT"


def _sample(repo: Path) -> dict[str, Any]:
    path = repo / "manifests" / "samples" / "pgherd.io_v1alpha1_postgrescluster.yaml"
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    body["metadata"]["namespace"] = NAMESPACE
    return body


def _wait_healthy(kube: Kube, operator: OperatorProcess, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not operator.running():
            raise DevError(f"the operator exited; see {log}")
        obj = kube.get("PostgresCluster", NAMESPACE, SAMPLE) or {}
        status = obj.get("status") or {}
        if status.get("phase") == "Healthy":
            return dict(status)
        time.sleep(1)
    raise DevError(
        f"{SAMPLE} did not become Healthy in 5 minutes; see {log} and "
        "`kubectl describe postgrescluster example`"
    )


def run(cp: ControlPlane, repo: Path) -> int:
    api = cp.api_client()
    kube = Kube(api)
    for obj in [*crds.render_crds(), manifests.namespace(), *manifests.rbac()]:
        kube.apply(obj)
    kc = kubeconfig.for_service_account(
        cp, api, manifests.NAMESPACE, manifests.NAME, cp.workdir / "operator.kubeconfig"
    )
    log = cp.log_dir / "operator.log"
    print(f"starting the operator (log: {log})")
    operator = OperatorProcess(kc, log)
    operator.start()
    try:
        if kube.get("PostgresCluster", NAMESPACE, SAMPLE) is None:
            kube.create(_sample(repo))
            print(f"created PostgresCluster {NAMESPACE}/{SAMPLE} (3 instances); waiting for it")
        status = _wait_healthy(kube, operator, log)
        return asyncio.run(_serve(kube, cp, status, operator))
    finally:
        operator.stop()


def _print_metrics(kube: Kube, operator: OperatorProcess) -> None:
    """Where Prometheus would scrape: the operator's port and each instance's exporter (the
    test kubelet publishes the pods' local ports in an annotation)."""
    print("Prometheus metrics (docs/monitoring.md; alerts in manifests/monitoring/):")
    if operator.metrics_url:
        print(f"  operator:  {operator.metrics_url}")
    for pod in kube.list("Pod", NAMESPACE, f"pgherd.io/cluster={SAMPLE}"):
        ports = json.loads((pod["metadata"].get("annotations") or {}).get(PORTS_ANNOTATION, "{}"))
        if "metrics" in ports:
            print(f"  {pod['metadata']['name']}: http://127.0.0.1:{ports['metrics']}/metrics")


def _print_plugin_status(cp: ControlPlane) -> None:
    """`kubectl pgherd status` of the sample, as the user can run it again."""
    venv_bin = Path(sys.executable).parent
    tools_bin = os.environ.get("TOOLS_BIN", "")
    env = {
        **os.environ,
        "KUBECONFIG": str(cp.kubeconfig),
        "PATH": os.pathsep.join(p for p in (str(venv_bin), tools_bin, os.environ["PATH"]) if p),
    }
    print("The kubectl plugin (docs/kubectl-plugin.md), with the PATH and KUBECONFIG above:")
    print(f"  PATH={venv_bin}:$PATH kubectl pgherd status {SAMPLE}\n")
    done = subprocess.run(
        ["kubectl-pgherd", "status", SAMPLE, "-n", NAMESPACE],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(done.stdout if done.returncode == 0 else f"  (kubectl pgherd failed: {done.stderr})")


async def _serve(
    kube: Kube, cp: ControlPlane, status: dict[str, Any], operator: OperatorProcess
) -> int:
    port = int(os.environ.get(PROXY_PORT_ENV) or processes.free_port())
    processes.ensure_port_free(port, "the -rw proxy", PROXY_PORT_ENV)
    server = await svcproxy.serve(kube, NAMESPACE, f"{SAMPLE}-rw", "postgresql", port)
    secret = kube.get("Secret", NAMESPACE, f"{SAMPLE}-app") or {}
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    print(
        f"\nPostgresCluster {SAMPLE} is Healthy: primary {status['currentPrimary']}, "
        f"{status['readyInstances']} instances ready."
    )
    ca_file = cp.workdir / f"{SAMPLE}-ca.crt"
    ca_file.write_text(data.get("ca.crt", ""))
    print("Connect over TLS, verifying the server as the app Secret says (this port always")
    print("reaches the current primary, like the -rw Service, whose name is checked):")
    print(
        f"  psql 'host={data.get('host')} hostaddr=127.0.0.1 port={port} "
        f"dbname={data.get('dbname')} user={data.get('username')} password={data.get('password')} "
        f"sslmode={data.get('sslmode')} sslrootcert={ca_file}'"
    )
    print(f"  export KUBECONFIG={cp.kubeconfig}   # then: .tools/bin/kubectl get pgc,pods")
    _print_metrics(kube, operator)
    _print_plugin_status(cp)
    print("The operator runs until Ctrl-C; `make cluster-down` stops everything.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set() and operator.running():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1)
    server.close()
    return 0 if operator.running() else 1
