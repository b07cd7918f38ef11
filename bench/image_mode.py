"""bench.image_mode (PGHERD_BENCH_ONLY=image): the operand images in the test kubelet's image
mode (docs/testing-images.md).

For each major (15, 18): the build (seconds, or null when the cache had it), the cache
look-up (hashing the build's inputs), a fresh `umoci unpack` of the cached OCI layout, and the
sizes (unpacked root filesystem, OCI layout). Then a one-instance cluster created to Healthy,
PGHERD_BENCH_IMAGE_REPEATS times (default 3) in image mode and in host mode, same spec
otherwise: what running inside the image costs at start-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.operator_harness import Cluster

from pgherd.controller.client import Client as Kube
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.image_mode import add_image
from pgherd_dev.operand_image import cache_root, operand_image, sizes, unpack

PATRONI = {"ttl": 20, "loopWait": 2, "retryTimeout": 5}


def _image(cp: ControlPlane, major: int) -> tuple[str, dict[str, Any]]:
    begin = time.monotonic()
    image = operand_image(major)
    took = time.monotonic() - begin
    add_image(cp.image_index, image.reference, image.rootfs, image.config())
    work = Path(tempfile.mkdtemp(prefix=".bench-unpack-", dir=cache_root()))
    try:
        unpack_seconds = unpack(image.layout, work / "bundle")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image.reference, {
        "build_seconds": None if image.build_seconds is None else round(image.build_seconds, 1),
        "cache_lookup_seconds": round(took, 2) if image.build_seconds is None else None,
        "unpack_seconds": round(unpack_seconds, 1),
        **sizes(image),
    }


def _to_healthy(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> float:
    cluster = Cluster(kube, ns, name)
    begin = time.monotonic()
    cluster.create({"instances": 1, "patroni": PATRONI, **spec})
    cluster.wait_healthy(1, timeout=300)
    took = time.monotonic() - begin
    kube.delete("PostgresCluster", ns, name)
    return round(took, 1)


def image_costs(kube: Kube, cp: ControlPlane, ns: str) -> dict[str, Any]:
    repeats = int(os.environ.get("PGHERD_BENCH_IMAGE_REPEATS", "3"))
    out: dict[str, Any] = {}
    references = {}
    for major in (15, 18):
        references[major], out[f"postgres_{major}"] = _image(cp, major)
    healthy: dict[str, list[float]] = {"image": [], "host": []}
    for i in range(repeats):
        healthy["image"].append(_to_healthy(kube, ns, f"img-{i}", {"image": references[15]}))
        # No spec.image: the operator's default, which the kubelet's index does not know.
        healthy["host"].append(_to_healthy(kube, ns, f"host-{i}", {}))
    out["one_instance_to_healthy_seconds"] = healthy
    return out
