"""bench.upgrade_cluster (PGHERD_BENCH_ONLY=upgrade_cluster): the operator's major upgrade of a
~1 GiB database, 15 -> 18, end to end in the operand images (the test kubelet's image mode),
once per pg_upgrade method (link, copy).

Each run: a one-instance cluster on 15, filled by pgbench -i (scale 68, ~1 GiB), then
spec.postgresVersion raised to 18 with that method. Reported: the write outage the operator
measures (status.upgrade.outageSeconds: from the instances' stop to the upgraded primary
serving), the time from the patch to Completed, when each phase was first seen, and the
database's size. One instance, so that the outage is the stop, pg_upgrade and the start (with
replicas the primary is first switched over to ordinal 0, which adds to the outage too).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from tests.operator_harness import Cluster, wait_for

from pgherd.controller.client import Client as Kube
from pgherd.controller.upgrade_outcome import read_outcome
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.image_mode import add_image
from pgherd_dev.operand_image import operand_image

PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}
# pgbench's scale 1 is ~15 MiB with its indexes; 68 makes ~1 GiB (as bench.upgrade).
SCALE = 68
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
ENDED = ("Completed", "Failed", "PreflightFailed")


def _images(cp: ControlPlane) -> dict[int, str]:
    out = {}
    for major in (15, 18):
        image = operand_image(major)
        add_image(cp.image_index, image.reference, image.rootfs, image.config())
        out[major] = image.reference
    return out


def _fill(cluster: Cluster) -> dict[str, Any]:
    """pgbench -i into the primary, as the superuser over TLS; the database's size."""
    pod = cluster.primary()
    password = cluster.superuser_password()
    conninfo = cluster.tls(pod) | {"port": str(cluster.port(pod)), "user": "postgres",
                                   "password": password, "dbname": "postgres"}  # fmt: skip
    begin = time.monotonic()
    subprocess.run(
        [PGBENCH, "-i", "-q", "-s", str(SCALE), "-I", "dtGvp",
         " ".join(f"{k}={v}" for k, v in conninfo.items())],
        check=True, capture_output=True,
    )  # fmt: skip
    with cluster.connect_superuser(pod) as conn:
        conn.execute("CHECKPOINT")
        size = conn.execute("SELECT pg_database_size('postgres')").fetchone()
    return {"bytes": size[0] if size else None, "fill_seconds": round(time.monotonic() - begin, 1)}


def _upgrade(kube: Kube, ns: str, name: str, images: dict[int, str], method: str) -> dict[str, Any]:
    cluster = Cluster(kube, ns, name)
    cluster.create({"instances": 1, "image": images[15], "patroni": PATRONI,
                    "storage": {"size": "4Gi"}, "upgrade": {"method": method}})  # fmt: skip
    cluster.wait_healthy(1, timeout=300)
    row: dict[str, Any] = {"database": _fill(cluster)}
    begin = time.monotonic()
    cluster.patch_spec({"postgresVersion": 18, "image": images[18]})
    seen: dict[str, float] = {}
    job: dict[str, Any] = {}

    def ended() -> dict[str, Any] | None:
        up = dict(cluster.status().get("upgrade") or {})
        if up.get("phase") and up["phase"] not in seen:
            seen[up["phase"]] = round(time.monotonic() - begin, 1)
        if not job:  # the upgrade Job's own report, before the operator deletes it
            for pod in kube.list("Pod", ns, f"batch.kubernetes.io/job-name={name}-upgrade"):
                outcome = read_outcome(pod)
                if outcome.phase == "succeeded" and outcome.report:
                    job.update(outcome.report)
        return up if up.get("phase") in ENDED else None

    up = wait_for(f"the {method} upgrade to end", ended, timeout=1800, interval=0.5)
    row.update({
        "phase": up["phase"],
        "method": up.get("method"),
        "upgrade_job_durations": job.get("durations"),
        "outage_seconds": up.get("outageSeconds"),
        "patch_to_completed_seconds": round(time.monotonic() - begin, 1),
        "phase_first_seen_seconds": seen,
    })  # fmt: skip
    kube.delete("PostgresCluster", ns, name)
    wait_for(f"{name}'s pods to go", lambda: not cluster.pods(), timeout=180)
    return row


def upgrade_cluster_outage(kube: Kube, cp: ControlPlane, ns: str) -> dict[str, Any]:
    images = _images(cp)
    return {
        "scale": SCALE,
        "instances": 1,
        **{
            method: _upgrade(kube, ns, f"upg-{method}", images, method)
            for method in ("link", "copy")
        },
    }
