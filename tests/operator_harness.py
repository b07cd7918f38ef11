"""Runs the real operator (`pgherd operator`) against the local control plane, the way it is
deployed: as its own ServiceAccount with exactly the RBAC of manifests/, so every test also
proves the operator's permissions are enough. Helpers to drive PostgresCluster tests.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client

from pgherd import contract
from pgherd.controller.client import ApiError
from pgherd.controller.client import Client as Kube
from pgherd_dev import kubeconfig
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.kubelet import HOLD_ANNOTATION, PORTS_ANNOTATION
from pgherd_dev.operator_process import OperatorProcess
from pgherd_packaging import crds, manifests

OPERATOR_NAMESPACE = "pgherd-system"
OPERATOR_ACCOUNT = "pgherd-operator"
RESYNC_SECONDS = 3


def install_crds_and_rbac(kube: Kube) -> None:
    """The CRDs and the operator's namespace, ServiceAccount and RBAC, as manifests/ has them."""
    for obj in [*crds.render_crds(), manifests.namespace(), *manifests.rbac()]:
        kube.apply(obj)


def operator_kubeconfig(cp: ControlPlane, api: client.ApiClient, path: Path) -> Path:
    return kubeconfig.for_service_account(cp, api, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, path)


class Operator(OperatorProcess):
    """The operator with the tests' settings: a short resync and a short never-ready limit."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        *,
        extra_env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        env = {
            "PGHERD_RESYNC_SECONDS": str(RESYNC_SECONDS),
            # Short, so that the never-ready test needs no five-minute wait.
            "PGHERD_STUCK_AFTER_SECONDS": "20",
            **(extra_env or {}),
        }
        super().__init__(kubeconfig, log, env=env, args=args or [])


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` in one rename: a client in another thread reading it (libpq's
    sslrootcert) never sees it empty or half written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def refused(create: Any) -> str:
    """The API server's 422 answer to a create it refuses, as text."""
    try:
        create()
    except ApiError as e:
        assert e.status == 422, e
        return e.message
    raise AssertionError("the API server accepted it")


def wait_for(what: str, check: Any, timeout: float = 120.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    """One PostgresCluster under test, with ways to reach its instances."""

    kube: Kube
    namespace: str
    name: str

    def create(self, spec: dict[str, Any]) -> None:
        self.kube.create(
            {
                "apiVersion": "pgherd.io/v1alpha1",
                "kind": "PostgresCluster",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": spec,
            }
        )

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.kube.patch("PostgresCluster", self.namespace, self.name, {"spec": spec})

    def obj(self) -> dict[str, Any]:
        got = self.kube.get("PostgresCluster", self.namespace, self.name)
        assert got is not None
        return got

    def status(self) -> dict[str, Any]:
        return dict(self.obj().get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), {})

    def wait_healthy(self, instances: int, timeout: float = 180.0) -> dict[str, Any]:
        def healthy() -> dict[str, Any] | None:
            s = self.status()
            gen = self.obj()["metadata"]["generation"]
            ok = (
                s.get("phase") == "Healthy"
                and s.get("readyInstances") == instances
                and s.get("observedGeneration") == gen
                and len(self.pods()) == instances
            )
            return s if ok else None

        result: dict[str, Any] = wait_for(
            f"{self.name} Healthy with {instances} instances", healthy, timeout
        )
        return result

    def pods(self) -> list[dict[str, Any]]:
        return self.kube.list("Pod", self.namespace, f"pgherd.io/cluster={self.name}")

    def primary(self) -> str:
        return str(self.status()["currentPrimary"])

    def port(self, pod: str) -> int:
        got = self.kube.get("Pod", self.namespace, pod)
        assert got is not None
        return int(json.loads(got["metadata"]["annotations"][PORTS_ANNOTATION])["postgresql"])

    def app_credentials(self) -> tuple[str, str, str]:
        secret = self.kube.get("Secret", self.namespace, f"{self.name}-app")
        assert secret is not None

        def field(k: str) -> str:
            return base64.b64decode(secret["data"][k]).decode()

        return field("username"), field("password"), field("dbname")

    def tls(self, pod: str) -> dict[str, str]:
        """libpq settings that verify the pod's certificate fully (its DNS name through the
        headless Service, the CA bundle of the app Secret) while connecting to its local
        port."""
        secret = self.kube.get("Secret", self.namespace, f"{self.name}-app")
        assert secret is not None
        ca = Path(tempfile.gettempdir()) / f"pgherd-{self.namespace}-{self.name}-ca.crt"
        write_atomically(ca, base64.b64decode(secret["data"]["ca.crt"]))
        return {
            "host": f"{pod}.{self.name}-headless.{self.namespace}.svc",
            "hostaddr": "127.0.0.1",
            "sslmode": "verify-full",
            "sslrootcert": str(ca),
        }

    def connect(self, pod: str, **kwargs: Any) -> psycopg.Connection[Any]:
        user, password, dbname = self.app_credentials()
        return psycopg.connect(
            **(self.tls(pod) | {"port": str(self.port(pod)), "user": user, "password": password,
                                "dbname": dbname, "connect_timeout": "3"} | kwargs)
        )  # fmt: skip

    def superuser_password(self) -> str:
        secret = self.kube.get("Secret", self.namespace, f"{self.name}-superuser")
        assert secret is not None
        return base64.b64decode(secret["data"]["password"]).decode()

    def connect_superuser(self, pod: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection as the postgres superuser (the primary's, unless pod is given)."""
        pod = pod or self.primary()
        password = self.superuser_password()
        return psycopg.connect(
            **(self.tls(pod) | {"port": str(self.port(pod)), "user": "postgres",
                                "password": password, "dbname": "postgres",
                                "connect_timeout": "3"} | kwargs)
        )  # fmt: skip

    def kill(self, pod: str, cp: ControlPlane, *, hold: bool) -> None:
        """Kill the pod's processes, as a crashed container (hold: a lost node)."""
        if hold:
            self.kube.patch(
                "Pod", self.namespace, pod, {"metadata": {"annotations": {HOLD_ANNOTATION: "true"}}}
            )
        pid = int((cp.workdir / "pods" / self.namespace / pod / "current" / "pid").read_text())
        os.killpg(pid, signal.SIGKILL)

    def release(self, pod: str) -> None:
        self.kube.patch(
            "Pod", self.namespace, pod, {"metadata": {"annotations": {HOLD_ANNOTATION: None}}}
        )

    def instance_log(self, pod: str, cp: ControlPlane) -> Path:
        return cp.workdir / "pods" / self.namespace / pod / "current" / "container.log"


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class PoolerClient:
    """Connections to the pooler's pod, verifying its certificate by its Service's name."""

    def __init__(self, kube: Kube, cluster: Cluster, cp: ControlPlane, name: str) -> None:
        self.kube, self.cluster, self.cp, self.name = kube, cluster, cp, name
        ns = cluster.namespace
        pods = kube.list(
            "Pod", ns, f"app.kubernetes.io/name=pgbouncer,app.kubernetes.io/instance={self.name}"
        )
        assert len(pods) == 1, pods
        self.pod = pods[0]
        self.port = int(
            json.loads(self.pod["metadata"]["annotations"][PORTS_ANNOTATION])["pgbouncer"]
        )
        secret = kube.get("Secret", ns, f"{self.name}-tls")
        assert secret is not None
        self.ca = Path(tempfile.gettempdir()) / f"pgherd-{ns}-{self.name}-ca.crt"
        write_atomically(self.ca, base64.b64decode(secret["data"]["ca.crt"]))

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        user, password, dbname = self.cluster.app_credentials()
        return psycopg.connect(
            host=f"{self.name}.{self.cluster.namespace}.svc", hostaddr="127.0.0.1",
            port=str(self.port), sslmode="verify-full", sslrootcert=str(self.ca), user=user,
            password=password, dbname=dbname, connect_timeout="5", autocommit=True,
            application_name="pgherd-pooler-client",
            # Transaction pooling: no server-side prepared statements (PgBouncer 1.18 does
            # not carry them from one server connection to the next).
            prepare_threshold=None, **kwargs,
        )  # fmt: skip

    def pid(self) -> int:
        ns, name = self.cluster.namespace, self.pod["metadata"]["name"]
        return int((self.cp.workdir / "pods" / ns / name / "current" / "pid").read_text())


def _epoch(event: dict[str, Any]) -> float:
    """When the apiserver received an audited request, in epoch seconds."""
    stamp = event["requestReceivedTimestamp"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    seconds = time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def audit_lines(cp: ControlPlane, since: float | None = None) -> list[str]:
    """The audit log's lines, oldest first, across kube-apiserver's rotations
    (--audit-log-maxsize): a rotated file is read when it may hold events after `since`, or,
    without `since`, the last rotated one, so that what came just before the current file
    (the write before a write, a pod's previous state) is not lost at a rotation."""
    rotated = sorted(cp.audit_log.parent.glob(f"{cp.audit_log.stem}-*{cp.audit_log.suffix}"))
    kept = rotated[-1:] if since is None else [f for f in rotated if f.stat().st_mtime >= since]
    files = [*kept, cp.audit_log]
    return [line for f in files for line in f.read_text().splitlines()]


def audit_requests(
    cp: ControlPlane,
    user: str,
    since: float,
    namespace: str | None = None,
    *,
    verbs: frozenset[str] = WRITE_VERBS,
) -> list[dict[str, Any]]:
    """Requests (of verbs) made by user after the given time (epoch seconds), in `namespace`
    if given."""
    out = []
    for line in audit_lines(cp, since):
        event = json.loads(line)
        if (
            event.get("user", {}).get("username") != user
            or event.get("stage") != "ResponseComplete"
            or event.get("verb") not in verbs
            or (namespace is not None and event.get("objectRef", {}).get("namespace") != namespace)
        ):
            continue
        if _epoch(event) >= since:
            out.append(event)
    return out


def audit_writes(
    cp: ControlPlane, user: str, since: float, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Write requests made by user after the given time (epoch seconds), in `namespace` if
    given."""
    return audit_requests(cp, user, since, namespace)


def settle_writes(
    cp: ControlPlane, user: str, period: float, *, namespace: str | None = None, periods: int = 40
) -> float | None:
    """Waits until `user` made no write (in `namespace`, if given) for two periods in a row;
    returns when that quiet began (epoch seconds), or None if it never came within `periods`.
    """
    quiet, began = 0, time.time()
    for _ in range(periods):
        since = time.time()
        time.sleep(period)
        writes = audit_writes(cp, user, since, namespace)
        quiet, began = (0, time.time()) if writes else (quiet + 1, began)
        if quiet >= 2:
            return began
    return None


MIB = 1024 * 1024


def pod_changes(cp: ControlPlane, namespace: str, since: float) -> list[str]:
    """Changes in `namespace` after `since` that a status must reflect: a pod's readiness (the
    kubelet), Patroni's member role, state and WAL position (its pod annotation), the
    instance's volume report, and the leader's WAL position (its DCS key), the positions in
    whole MiB as status reports lag."""
    seen: dict[tuple[str, str], Any] = {}
    out = []
    for line in audit_lines(cp):
        event = json.loads(line)
        ref = event.get("objectRef", {})
        body = event.get("requestObject") or {}
        if (
            event.get("stage") != "ResponseComplete"
            or ref.get("resource") not in ("pods", "configmaps")
            or ref.get("namespace") != namespace
        ):
            continue
        facts = {}
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        leader = ref.get("resource") == "configmaps" and str(ref.get("name")).endswith("-leader")
        if leader and annotations.get("optime"):
            facts["leader position (MiB)"] = int(annotations["optime"]) // MIB
        for cond in (body.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                facts["ready"] = cond.get("status")
        # The instance's own report: its volume figures are republished (at least every 60 s,
        # pgherd.operand.report) and status shows them, so a new report is a real change.
        is_pod = ref.get("resource") == "pods"
        report = annotations.get(contract.INSTANCE_ANNOTATION) if is_pod else None
        if report:
            facts["volume report"] = json.loads(report).get("volume")
        member = annotations.get("status") if ref.get("resource") == "pods" else None
        if member:
            with_state = json.loads(member)
            facts.update(role=with_state.get("role"), state=with_state.get("state"))
            if isinstance(with_state.get("xlog_location"), int):
                facts["position (MiB)"] = with_state["xlog_location"] // MIB
        t = _epoch(event)
        for fact, value in facts.items():
            key = (ref.get("name", ""), fact)
            if key in seen and seen[key] != value and t >= since:
                out.append(
                    f"{event['requestReceivedTimestamp']} {key[0]} {fact}: {seen[key]} -> {value}"
                )
            seen[key] = value
    return out


def write_diffs(cp: ControlPlane, writes: list[dict[str, Any]]) -> str:
    """Each write against the one before it to the same object, as a unified diff: what the
    operator thought had changed."""
    events = [json.loads(line) for line in audit_lines(cp)]
    out = []
    for w in writes:
        ref = w.get("objectRef", {})
        key = (ref.get("resource"), ref.get("namespace"), ref.get("name"), ref.get("subresource"))
        before = None
        for e in events:
            if e.get("auditID") == w.get("auditID"):
                break
            r = e.get("objectRef", {})
            same = (r.get("resource"), r.get("namespace"), r.get("name"), r.get("subresource"))
            if (
                same == key
                and e.get("user") == w.get("user")
                and e.get("stage") == "ResponseComplete"
            ):
                before = e.get("requestObject")
        a = json.dumps(before, indent=1, sort_keys=True).splitlines()
        b = json.dumps(w.get("requestObject"), indent=1, sort_keys=True).splitlines()
        out.append(
            f"{w['verb']} {'/'.join(filter(None, key[:3] + key[3:]))} at "
            f"{w['requestReceivedTimestamp']}:\n"
            + "\n".join(difflib.unified_diff(a, b, "previous write", "this write", lineterm=""))
        )
    return "\n".join(out)
