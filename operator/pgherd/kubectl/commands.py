"""The subcommands, each a function of a Session and its options returning an exit code: they
read with pgherd.kubectl.session, decide with the pure modules, and print progress on stderr
(results on stdout)."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgherd.api.v1alpha1 import API_VERSION, BACKUP_KIND, RESTARTED_AT_ANNOTATION
from pgherd.kubectl import bundle, choose, connect, summary
from pgherd.kubectl.session import (
    PluginError,
    Session,
    cluster_backups,
    cluster_pods,
    create_backup,
    get_backup,
    get_cluster,
    kubectl_binary,
    patch_cluster,
)
from pgherd.render import names

Obj = dict[str, Any]
T = TypeVar("T")
POLL_SECONDS = 2.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def follow(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """check() until it returns something, or PluginError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def cluster_summary(session: Session, name: str) -> Obj:
    cluster = get_cluster(session, name)
    return summary.summarize(cluster, cluster_pods(session, name), cluster_backups(session, name))


# ---- status ------------------------------------------------------------------------------
def status(session: Session, name: str, output: str) -> int:
    summed = cluster_summary(session, name)
    if output == "json":
        print(json.dumps(summed, indent=2))
    else:
        print(summary.render_text(summed, now()), end="")
    return 0


# ---- psql --------------------------------------------------------------------------------
def _secret(session: Session, name: str) -> Obj:
    try:
        got = client.CoreV1Api(session.api).read_namespaced_secret(name, session.namespace)
    except ApiException as e:
        raise PluginError(f"cannot read Secret {name!r}: {e.status} {e.reason}") from None
    out: Obj = {"metadata": {"name": name}, "data": dict(got.data or {})}
    return out


def _direct_port(session: Session, service: str) -> int | None:
    core = client.CoreV1Api(session.api)
    try:
        svc = session.api.sanitize_for_serialization(
            core.read_namespaced_service(service, session.namespace)
        )
    except ApiException as e:
        raise PluginError(f"cannot read Service {service!r}: {e.status} {e.reason}") from None
    pods = core.list_namespaced_pod(session.namespace)
    return connect.test_kubelet_port(
        svc, [session.api.sanitize_for_serialization(p) for p in pods.items]
    )


def psql(
    session: Session,
    name: str,
    *,
    replica: bool,
    superuser: bool,
    direct: str | None,
    psql_args: list[str],
    psql_binary: str,
) -> int:
    get_cluster(session, name)  # a clear message when there is no such cluster
    app = _secret(session, names.secret(name, "app"))
    su = _secret(session, names.secret(name, "superuser")) if superuser else None
    try:
        creds = connect.credentials(app, su)
    except ValueError as e:
        raise PluginError(str(e)) from None
    if shutil.which(psql_binary) is None:
        raise PluginError(f"{psql_binary} not found: install the PostgreSQL client (psql)")
    service = connect.service_name(name, replica)
    host = names.service_host(service, session.namespace)
    with connect.private_directory() as directory:
        if direct:
            try:
                addr, port = connect.parse_direct(direct)
            except ValueError as e:
                raise PluginError(str(e)) from None
            return connect.run_psql(
                psql_binary,
                psql_args,
                connect.libpq_environment(creds, host, addr, port, directory),
            )
        local = _direct_port(session, service)
        if local is not None:
            say(f"test control plane: connecting to {service}'s pod at 127.0.0.1:{local}")
            env = connect.libpq_environment(creds, host, "127.0.0.1", local, directory)
            return connect.run_psql(psql_binary, psql_args, env)
        try:
            with connect.port_forward(kubectl_binary(), session.kubectl_flags(), service) as p:
                env = connect.libpq_environment(creds, host, "127.0.0.1", p, directory)
                return connect.run_psql(psql_binary, psql_args, env)
        except (RuntimeError, OSError) as e:
            raise PluginError(str(e)) from None


# ---- switchover --------------------------------------------------------------------------
def switchover(session: Session, name: str, *, to: str | None, wait: bool, timeout: float) -> int:
    summed = cluster_summary(session, name)
    members = summed["members"]
    try:
        target = choose.check_target(members, to) if to else choose.best_replica(members)
    except choose.NoTarget as e:
        raise PluginError(f"switchover refused: {e}") from None
    old = summed["primary"]
    if summed["switchover"]["requested"] == target:
        # The operator carries out a request once (status.switchoverHandled); the same target
        # again must first be withdrawn for it to count as new.
        patch_cluster(session, name, {"spec": {"switchover": None}})
        follow("the operator to clear status.switchoverHandled",
               lambda: True if not (get_cluster(session, name).get("status") or {})
               .get("switchoverHandled") else None, timeout)  # fmt: skip
    patch_cluster(session, name, {"spec": {"switchover": {"targetInstance": target}}})
    say(f"switchover of {name} from {old or 'no primary'} to {target} requested")
    if not wait:
        return 0

    def promoted() -> str | None:
        st = get_cluster(session, name).get("status") or {}
        return st.get("currentPrimary") if st.get("currentPrimary") == target else None

    follow(f"{target} to become the primary", promoted, timeout)
    say(f"{target} is the primary")
    return 0


# ---- backup ------------------------------------------------------------------------------
def backup_name(cluster: str, when: datetime) -> str:
    return f"{cluster}-{when.strftime('%Y%m%d%H%M%S')}"


def backup(session: Session, name: str, *, backup: str | None, wait: bool, timeout: float) -> int:
    cluster = get_cluster(session, name)
    if not (cluster.get("spec") or {}).get("backup"):
        raise PluginError(
            f"{name} has no spec.backup (object store): there is nowhere to back up to"
        )
    backup = backup or backup_name(name, now())
    create_backup(
        session,
        {
            "apiVersion": API_VERSION,
            "kind": BACKUP_KIND,
            "metadata": {"name": backup, "namespace": session.namespace},
            "spec": {"cluster": name},
        },
    )
    say(f"PostgresBackup {backup} created")
    print(backup)
    if not wait:
        return 0
    seen: list[str] = []

    def finished() -> Obj | None:
        got = get_backup(session, backup)
        if got is None:
            raise PluginError(f"PostgresBackup {backup} was deleted")
        st = got.get("status") or {}
        phase = st.get("phase") or "Pending"
        if not seen or seen[-1] != phase:
            seen.append(phase)
            where = f" on {st['instance']}" if st.get("instance") else ""
            say(f"backup {backup}: {phase}{where}")
        return st if phase in ("Completed", "Failed") else None

    result = follow(f"backup {backup} to finish", finished, timeout)
    if result.get("phase") == "Failed":
        say(f"backup {backup} failed: {result.get('error') or 'no reason given'}")
        return 1
    size = f", {result['size']} bytes" if result.get("size") else ""
    say(f"backup {backup} completed: id {result.get('backupId')}{size}, "
        f"ended {result.get('endTime')}")  # fmt: skip
    return 0


# ---- restart -----------------------------------------------------------------------------
def restart(session: Session, name: str, *, wait: bool, timeout: float) -> int:
    get_cluster(session, name)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster_pods(session, name)}
    stamp = rfc3339(now())
    patch_cluster(session, name, {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}})
    say(f"rolling restart of {name} requested ({RESTARTED_AT_ANNOTATION}={stamp})")
    if not wait:
        return 0
    done: set[str] = set()

    def restarted() -> bool | None:
        cluster = get_cluster(session, name)
        want = (cluster.get("spec") or {}).get("instances") or len(before)
        members = summary.instances(cluster, cluster_pods(session, name))
        for m in members:
            if m["uid"] != before.get(m["name"]) and m["ready"] and m["name"] not in done:
                done.add(m["name"])
                say(f"{m['name']} restarted and ready ({len(done)}/{want})")
        fresh = [m for m in members if m["uid"] != before.get(m["name"]) and m["ready"]
                 and not m["terminating"]]  # fmt: skip
        healthy = (cluster.get("status") or {}).get("phase") == "Healthy"
        return True if len(fresh) == want == len(members) and healthy else None

    follow(f"every instance of {name} to restart", restarted, timeout)
    say(f"{name}: every instance restarted; Healthy")
    return 0


# ---- report ------------------------------------------------------------------------------
def report(
    session: Session, name: str, *, output: str | None, operator_namespace: str, tail: int
) -> int:
    when = now()
    got = bundle.collect(session, name, operator_namespace, tail)
    files = bundle.assemble(got, when)
    out = Path(output) if output else bundle.default_output(name, when)
    top = bundle.default_output(name, when).stem
    written = bundle.write(files, out, top)
    for note in got.notes:
        say(f"note: {note}")
    say(f"support bundle of {name}: {len(files)} files")
    print(written)
    return 0
