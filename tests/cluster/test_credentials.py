"""Password rotation on request (spec.credentials.rotate) on real PostgreSQL and Patroni: the
new password works and the old one is refused, open connections survive, status and an Event
record it, and a rotated superuser password reaches the running Patroni (a switchover, which
restarts the old primary and makes Patroni log in again, still works)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from tests.operator_harness import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def rotating(operator: Operator, kube: Kube) -> Iterator[Cluster]:
    ns = f"t-cred-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(kube, ns, "rot")
    cluster.create({"instances": 2})
    cluster.wait_healthy(2)
    yield cluster
    kube.delete("Namespace", None, ns)


def _rotated(cluster: Cluster, kind: str, count: int) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        got = (cluster.status().get("credentials") or {}).get(kind) or {}
        return got if got.get("rotation") == count else None

    result: dict[str, object] = wait_for(f"{kind} rotation {count}", done, 60)
    return result


def test_the_app_password_rotates_and_open_connections_survive(rotating: Cluster) -> None:
    primary = rotating.primary()
    user, old, _ = rotating.app_credentials()
    with rotating.connect(primary, autocommit=True) as opened:
        opened.execute("CREATE TABLE IF NOT EXISTS t (n int)")
        rotating.patch_spec({"credentials": {"rotate": {"app": 1}}})
        record = _rotated(rotating, "app", 1)
        assert record["lastRotated"]
        # The connection opened before the rotation still works.
        opened.execute("INSERT INTO t VALUES (1)")
    _, new, _ = rotating.app_credentials()
    assert new != old
    with rotating.connect(primary) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        rotating.connect(primary, password=old).close()
    events = [e for e in rotating.kube.list("Event", rotating.namespace)
              if e.get("reason") == "PasswordRotated"]  # fmt: skip
    assert len(events) == 1 and "role app" in events[0]["message"]
    # Nothing more happens until the counter is raised again.
    assert rotating.condition("Progressing").get("reason") != "RotatingCredentials"


def test_a_rotated_superuser_password_reaches_patroni(
    rotating: Cluster, control_plane: ControlPlane
) -> None:
    old = rotating.superuser_password()
    rotating.patch_spec({"credentials": {"rotate": {"superuser": 1}}})
    _rotated(rotating, "superuser", 1)
    new = rotating.superuser_password()
    assert new != old
    with rotating.connect_superuser() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        rotating.connect_superuser(password=old).close()
    # Each instance reloads Patroni with the new password (no restart)...
    for pod in [p["metadata"]["name"] for p in rotating.pods()]:
        log = rotating.instance_log(pod, control_plane)
        wait_for(f"{pod} reloaded", lambda log=log: "the configuration: reloading" in
                 log.read_text(errors="replace"), 60)  # fmt: skip
    # ...so that Patroni logs in again after the old primary restarts as a replica.
    primary = rotating.primary()
    replica = next(p["metadata"]["name"] for p in rotating.pods()
                   if p["metadata"]["name"] != primary)  # fmt: skip
    rotating.patch_spec({"switchover": {"targetInstance": replica}})
    wait_for(f"{replica} primary", lambda: rotating.status().get("currentPrimary") == replica, 90)
    rotating.wait_healthy(2, timeout=120)
