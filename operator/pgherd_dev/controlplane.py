"""A real local Kubernetes control plane on 127.0.0.1, started in seconds.

etcd, kube-apiserver (RBAC, default admission plugins), kube-controller-manager,
kube-scheduler, kwok (fake nodes whose pods it marks Running, and pods of Jobs Succeeded
except those the test kubelet runs: their containers' exits decide), the test-only volume
provisioner and the test kubelet that runs pgherd's PostgreSQL pods, each a process of
its own with a log in the working directory. Three
nodes are spread over three zones. State (pids, ports) is kept in state.json so another
command can report on it or tear it down.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pgherd_dev import kubeconfig, kubelet, pki, processes, provisioner
from pgherd_dev.errors import DevError
from pgherd_dev.processes import Started
from pgherd_dev.tools import kwok_stages, tool_path

ZONES = ("zone-a", "zone-b", "zone-c")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
STORAGE_CLASS = "standard"
PORT_ENV = "PGHERD_APISERVER_PORT"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
# kwok's pod stages that must leave the test kubelet's pods alone: pod-complete would mark a
# Job's pod Succeeded without running it. pod-ready (Running, before the kubelet starts it)
# and pod-delete stay as they are.
KUBELET_OWNED_STAGES = ("pod-complete",)


def kubelet_pods_query() -> str:
    """A kwok selector key (a jq query over the pod) that is true exactly for the pods the
    test kubelet selects (kubelet.SELECTOR). kwok ANDs a stage's matchExpressions, so "not
    (managed by pgherd and of a kubelet component)" is one query compared with NotIn."""
    labels = ".metadata.labels"
    components = " or ".join(f'. == "{c}"' for c in kubelet.COMPONENTS)
    return (
        f'{labels}["{kubelet.MANAGED_BY}"] == "pgherd" '
        f'and ({labels}["{kubelet.COMPONENT}"] | {components})'
    )


def stages_without_kubelet_pods(text: str, stages: tuple[str, ...] = KUBELET_OWNED_STAGES) -> str:
    """kwok's stages (a multi-document YAML) with the named stages' selectors also requiring
    that the pod is not one the test kubelet runs; every other stage unchanged."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc.get("kind") == "Stage" and doc["metadata"]["name"] in stages:
            selector = doc["spec"].setdefault("selector", {})
            selector.setdefault("matchExpressions", []).append(
                {"key": kubelet_pods_query(), "operator": "NotIn", "values": ["true"]}
            )
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, width=1000)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (kwok's status templates) as block literals, readable as kwok's."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


@dataclass
class Ports:
    """The ports the control plane listens on, all on 127.0.0.1."""

    apiserver: int
    etcd_client: int = field(default_factory=processes.free_port)
    etcd_peer: int = field(default_factory=processes.free_port)
    controller_manager: int = field(default_factory=processes.free_port)
    scheduler: int = field(default_factory=processes.free_port)
    kwok: int = field(default_factory=processes.free_port)


class ControlPlane:
    """One local control plane in one working directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 3,
        die_with_parent: bool = False,
        apiserver_port: int | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.nodes = nodes
        self.die_with_parent = die_with_parent
        self.requested_port = apiserver_port
        self.procs: list[Started] = []
        self.startup_seconds: float | None = None
        self._apiserver: tuple[Ports, Path, pki.Pair] | None = None
        self._apiserver_argv: list[str] = []

    # ---- paths -------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def image_index(self) -> Path:
        """The images the test kubelet has unpacked (pgherd_dev.image_mode.add_image): pods
        naming one run inside its root filesystem."""
        return self.workdir / "image-index.json"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.log_dir / "audit.jsonl"

    def _audit_policy(self) -> Path:
        path = self.workdir / "pki" / "audit-policy.yaml"
        path.write_text(
            "apiVersion: audit.k8s.io/v1\n"
            "kind: Policy\n"
            "omitStages: [RequestReceived, ResponseStarted]\n"
            "rules:\n"
            # Never record a Secret's body; other writes keep theirs, to tell what changed.
            "- level: Metadata\n"
            "  resources: [{group: '', resources: [secrets]}]\n"
            "  verbs: [create, update, patch, delete, deletecollection]\n"
            "- level: Request\n"
            "  verbs: [create, update, patch, delete, deletecollection]\n"
            # The operator's reads too (who, what, not the body): tests and the bench count
            # them, since a reconcile in steady state must make none.
            "- level: Metadata\n"
            "  userGroups: ['system:serviceaccounts:pgherd-system']\n"
            "  verbs: [get, list]\n"
            "- level: None\n"
        )
        return path

    def logs(self) -> dict[str, Path]:
        """Component name -> log file."""
        return {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    # ---- state -------------------------------------------------------------
    def _load_state(self) -> list[Started]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise DevError(
                f"{self.state_file} is unreadable ({e}). Run `make cluster-down` to clear "
                f"{self.workdir}, then start again."
            ) from None
        return [Started.from_json(p) for p in data.get("processes", [])]

    def _save_state(self, ports: Ports) -> None:
        self.state_file.write_text(
            json.dumps(
                {
                    "processes": [p.to_json() for p in self.procs],
                    "ports": ports.__dict__,
                    "kubeconfig": str(self.kubeconfig),
                    "startup_seconds": self.startup_seconds,
                },
                indent=2,
            )
        )

    def _check_workdir(self) -> None:
        previous = self._load_state()
        if any(p.alive() for p in previous):
            raise DevError(
                f"a control plane is already running from {self.workdir} "
                f"(kubeconfig: {self.kubeconfig}). Use it, or run `make cluster-down` first."
            )
        if previous:
            raise DevError(
                f"{self.workdir} holds a stale control plane whose processes are gone "
                "(a previous run was interrupted). Run `make cluster-down` to clear it, "
                "then start again."
            )

    # ---- lifecycle ---------------------------------------------------------
    def up(self) -> float:
        """Start everything and wait until the cluster can run pods; returns seconds taken."""
        begin = time.monotonic()
        self._check_workdir()
        binaries = {
            n: tool_path(n)
            for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
        }
        if self.requested_port is not None:
            processes.ensure_port_free(self.requested_port, "kube-apiserver", PORT_ENV)
        ports = Ports(apiserver=self.requested_port or processes.free_port())
        for sub in ("pki", "etcd", "volumes", "kwok", "pods"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        (self.workdir / "pki").mkdir(parents=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pkidir = self.workdir / "pki"
        ca = pki.CertificateAuthority(pkidir)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
            ),
        )
        sa = pki.service_account_keys(pkidir)
        front_proxy = ca.issue("front-proxy-client", "front-proxy-client")
        server = f"https://127.0.0.1:{ports.apiserver}"
        admin = ca.issue("admin", "pgherd-admin", org="system:masters")
        kubeconfig.write(self.kubeconfig, server, ca.pair.cert, admin, "admin")
        cm_kc = kubeconfig.write(
            pkidir / "controller-manager.kubeconfig",
            server,
            ca.pair.cert,
            ca.issue("controller-manager", "system:kube-controller-manager"),
            "system:kube-controller-manager",
        )
        sched_kc = kubeconfig.write(
            pkidir / "scheduler.kubeconfig",
            server,
            ca.pair.cert,
            ca.issue("scheduler", "system:kube-scheduler"),
            "system:kube-scheduler",
        )
        try:
            self._start(
                "etcd",
                [
                    str(binaries["etcd"]),
                    "--name=local",
                    f"--data-dir={self.workdir / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{ports.etcd_client}",
                    f"--advertise-client-urls=http://127.0.0.1:{ports.etcd_client}",
                    f"--listen-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{ports.etcd_peer}",
                    f"--initial-cluster=local=http://127.0.0.1:{ports.etcd_peer}",
                    # A throwaway test cluster: durability is not worth the fsync latency.
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
            )
            self._start(
                "kube-apiserver",
                [
                    str(binaries["kube-apiserver"]),
                    f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={ports.apiserver}",
                    f"--tls-cert-file={serving.cert}",
                    f"--tls-private-key-file={serving.key}",
                    f"--client-ca-file={ca.pair.cert}",
                    f"--service-account-key-file={sa.cert}",
                    f"--service-account-signing-key-file={sa.key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=RBAC",
                    f"--cert-dir={pkidir}",
                    # Front-proxy settings keep aggregated APIs (and their clients) working.
                    f"--requestheader-client-ca-file={ca.pair.cert}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={front_proxy.cert}",
                    f"--proxy-client-key-file={front_proxy.key}",
                    # The default endpoint reconciler refuses a loopback advertise address.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    # Every write, by whom: tests count the operator's writes here.
                    f"--audit-policy-file={self._audit_policy()}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json",
                    "--audit-log-maxsize=200",
                    "--v=1",
                ],
            )
            self._wait_ready(ports, ca.pair.cert, admin, begin)
            # What restarting the API server needs (stop_apiserver/start_apiserver).
            self._apiserver = (ports, ca.pair.cert, admin)
            common = ["--bind-address=127.0.0.1", "--leader-elect=false"]
            self._start(
                "kube-controller-manager",
                [
                    str(binaries["kube-controller-manager"]),
                    *common,
                    f"--secure-port={ports.controller_manager}",
                    f"--kubeconfig={cm_kc}",
                    f"--authentication-kubeconfig={cm_kc}",
                    f"--authorization-kubeconfig={cm_kc}",
                    f"--service-account-private-key-file={sa.key}",
                    f"--root-ca-file={ca.pair.cert}",
                    f"--cluster-signing-cert-file={ca.pair.cert}",
                    f"--cluster-signing-key-file={ca.pair.key}",
                    "--use-service-account-credentials=true",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--cluster-name=pgherd-local",
                ],
            )
            self._start(
                "kube-scheduler",
                [
                    str(binaries["kube-scheduler"]),
                    *common,
                    f"--secure-port={ports.scheduler}",
                    f"--kubeconfig={sched_kc}",
                    f"--authentication-kubeconfig={sched_kc}",
                    f"--authorization-kubeconfig={sched_kc}",
                ],
            )
            self._start(
                "kwok",
                [
                    str(binaries["kwok"]),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--config={self._kwok_stages()}",
                    "--manage-all-nodes=true",
                    "--node-lease-duration-seconds=40",
                    "--v=WARN",
                    "--node-ip=127.0.0.1",
                    f"--cidr={POD_CIDR}",
                    f"--server-address=127.0.0.1:{ports.kwok}",
                ],
            )
            self._start(
                "provisioner",
                [
                    sys.executable,
                    "-m",
                    "pgherd_dev.provisioner",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--root={self.workdir / 'volumes'}",
                ],
            )
            self._start(
                "kubelet",
                [
                    sys.executable,
                    "-m",
                    "pgherd_dev.kubelet",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--root={self.workdir / 'pods'}",
                    f"--image-index={self.image_index}",
                ],
            )
            self._save_state(ports)
            self._seed_and_wait(begin)
        except BaseException:
            processes.stop(self.procs)
            self.procs.clear()
            self.state_file.unlink(missing_ok=True)
            raise
        self.startup_seconds = time.monotonic() - begin
        self._save_state(ports)
        return self.startup_seconds

    def down(self) -> list[str]:
        """Stop every process this working directory recorded, then remove its data (logs stay)."""
        procs = self.procs or self._load_state()
        stopped = processes.stop(list(reversed(procs)))
        self.procs.clear()
        if self.workdir.exists():
            for child in self.workdir.iterdir():
                if child.name == "logs":
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        """Which recorded processes are alive, and where the kubeconfig is."""
        procs = self._load_state()
        return {
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig) if procs else None,
            "processes": {p.name: ("running" if p.alive() else "gone") for p in procs},
        }

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    # ---- an API-server outage (tests only) -------------------------------------------
    def stop_apiserver(self) -> float:
        """Kill kube-apiserver (SIGKILL: a crash, so the outage begins at once; its graceful
        stop takes over 10 s of half-served requests) and leave everything else running:
        etcd keeps the state, the other components and the pods meet a refused connection.
        Returns when it is gone (seconds taken)."""
        begin = time.monotonic()
        proc = self._apiserver_proc()
        if proc is None:
            raise DevError("kube-apiserver is not running: nothing to stop")
        processes.kill([proc])
        return time.monotonic() - begin

    def start_apiserver(self, timeout: float = 60.0) -> float:
        """Start kube-apiserver again with the very arguments, port and certificates it had
        (so every client's kubeconfig and every ServiceAccount token stays valid), and wait
        for /readyz. Returns the seconds taken. A no-op when it runs."""
        begin = time.monotonic()
        if self._apiserver is None or not self._apiserver_argv:
            raise DevError("this ControlPlane did not start the control plane: cannot restart")
        old = next(p for p in self.procs if p.name == "kube-apiserver")
        if old.alive():
            return 0.0
        ports, ca, admin = self._apiserver
        log = self.log_dir / "kube-apiserver.log"
        with log.open("ab") as out:
            out.write(f"--- restarted at {time.strftime('%H:%M:%S')}\n".encode())
        new = processes.start(
            "kube-apiserver",
            self._apiserver_argv,
            log,
            die_with_parent=self.die_with_parent,
            env=dict(os.environ),
        )
        self.procs[self.procs.index(old)] = new
        self._save_state(ports)
        self._wait_ready(ports, ca, admin, begin, timeout=timeout)
        return time.monotonic() - begin

    def _kwok_stages(self) -> Path:
        """This control plane's copy of kwok's stages (the cached file is shared by every
        clone and stays kwok's own)."""
        path = self.workdir / "kwok" / "stages.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stages_without_kubelet_pods(kwok_stages().read_text()))
        return path

    def _apiserver_proc(self) -> Started | None:
        return next((p for p in self.procs if p.name == "kube-apiserver" and p.alive()), None)

    # ---- internals ---------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> None:
        if name == "kube-apiserver":
            self._apiserver_argv = list(argv)
        log = self.log_dir / f"{name}.log"
        log.write_bytes(b"")
        self.procs.append(
            processes.start(
                name, argv, log, die_with_parent=self.die_with_parent, env=dict(os.environ)
            )
        )

    def _check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                text = processes.tail(Path(p.log), 25)
                hint = ""
                if "address already in use" in text:
                    hint = (
                        " A port it needed was taken by another process; start again "
                        f"(free ports are chosen anew) or unset {PORT_ENV}."
                    )
                raise DevError(
                    f"{p.name} exited during start-up.{hint} Last log lines ({p.log}):\n{text}"
                )

    def _wait(self, what: str, check: Any, begin: float, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                if check():
                    return
            except (ApiException, OSError, urllib.error.URLError, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise DevError(
                    f"timed out after {time.monotonic() - begin:.0f}s waiting for {what}; "
                    f"logs are in {self.log_dir}"
                )
            time.sleep(0.1)

    def _wait_ready(
        self, ports: Ports, ca: Path, admin: pki.Pair, begin: float, timeout: float = 60.0
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        url = f"https://127.0.0.1:{ports.apiserver}/readyz"

        def ready() -> bool:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                return bool(r.status == 200)

        self._wait("kube-apiserver /readyz", ready, begin, timeout)

    def _seed_and_wait(self, begin: float) -> None:
        api = self.api_client()
        core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
        for i in range(self.nodes):
            zone = ZONES[i % len(ZONES)]
            name = f"kwok-node-{i}"
            core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake"},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "type": "kwok",
                            "topology.kubernetes.io/zone": zone,
                            "topology.kubernetes.io/region": "local",
                        },
                    },
                    # No NoSchedule taint, unlike kwok's examples: pods must land here.
                    "status": {
                        "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                        "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                    },
                }
            )
        storage.create_storage_class(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": provisioner.PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "WaitForFirstConsumer",
                "allowVolumeExpansion": True,
            }
        )

        def nodes_ready() -> bool:
            # Schedulable too: a new node carries the not-ready taint (NoSchedule) until the
            # node lifecycle controller has seen it Ready, which can be a monitor pass later.
            items = core.list_node().items
            return len(items) == self.nodes and all(
                any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
                and not any(t.key == NOT_READY_TAINT for t in (n.spec.taints or []))
                for n in items
            )

        def default_sa() -> bool:
            core.read_namespaced_service_account("default", "default")
            return True

        self._wait(
            "kwok to mark the nodes Ready (and their not-ready taint gone)", nodes_ready, begin
        )
        self._wait("the controller manager (default ServiceAccount)", default_sa, begin)
