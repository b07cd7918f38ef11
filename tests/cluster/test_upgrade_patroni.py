"""`pgherd upgrade` on a data directory Patroni really made: a one-instance 15 cluster run by
the operator, its primary copied as a preflight pod would (pg_basebackup over TLS with the
replication role's client certificate from the cluster's Secret), the preflight passing on
it, and that copy (Patroni's own postgresql.conf, postgresql.base.conf, pg_hba, archive
command) upgraded to 18 and read back. The cluster itself is only read.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from pgherd import contract
from pgherd.controller.client import Client as Kube
from pgherd.operand import upgrade
from pgherd.render import names
from tests import upgrade_support as us
from tests.operator_harness import Cluster, Operator

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _replication_conninfo(cluster: Cluster, pod: str, where: Path) -> str:
    secret = cluster.kube.get("Secret", cluster.namespace, names.tls_secret(cluster.name))
    assert secret is not None
    where.mkdir(parents=True, exist_ok=True)
    for key in (contract.TLS_CA, contract.TLS_REPLICATION_CERT, contract.TLS_REPLICATION_KEY):
        path = where / key
        path.write_bytes(base64.b64decode(secret["data"][key]))
        os.chmod(path, 0o600)  # libpq refuses a key others can read
    return (
        f"host={pod}.{cluster.name}-headless.{cluster.namespace}.svc hostaddr=127.0.0.1 "
        f"port={cluster.port(pod)} user=replicator sslmode=verify-full "
        f"sslrootcert={where / contract.TLS_CA} sslcert={where / contract.TLS_REPLICATION_CERT} "
        f"sslkey={where / contract.TLS_REPLICATION_KEY}"
    )


def test_a_patroni_primary_is_checked_and_its_copy_upgraded(
    operator: Operator, kube: Kube, tmp_path: Path
) -> None:
    ns = f"t-upgrade-{uuid.uuid4().hex[:6]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(kube, ns, "fifteen")
    try:
        cluster.create({"instances": 1})
        cluster.wait_healthy(1)
        primary = cluster.primary()
        with cluster.connect_superuser(autocommit=True) as conn:
            conn.execute(us.DATA_SQL)
        proc = subprocess.run(
            us.upgrade_command(
                "check", "--method", "link", "--keep", "--work-dir", str(tmp_path / "work"),
                "--source-conninfo", _replication_conninfo(cluster, primary, tmp_path / "tls"),
            ),
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        report = json.loads(proc.stdout or "{}")
        print(f"pgherd upgrade check of a Patroni primary: {report.get('durations')}")
        assert proc.returncode == 0, (report, proc.stderr)
        assert report["source"] == "pg_basebackup" and report["settings"]["checksums"] is True
    finally:
        kube.delete("Namespace", None, ns)
    # The throwaway copy is a Patroni primary's data directory, cleanly stopped by the check.
    copy = tmp_path / "work" / "old"
    assert "include 'postgresql.base.conf'" in (copy / "postgresql.conf").read_text()
    assert "ssl = 'on'" in (copy / "postgresql.conf").read_text()
    proc = subprocess.run(
        us.upgrade_command("run", "--pgdata", str(copy)),
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == upgrade.EXIT_OK, proc.stderr
    _, new = us.binaries()
    with us.Server(new, copy) as srv, srv.connect() as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (20000,)
        assert conn.execute("SELECT id FROM items WHERE name = 'ITEM-77'").fetchone() == (77,)
        assert str(conn.execute("SHOW server_version").fetchone()[0]).startswith("18.")  # type: ignore[index]
