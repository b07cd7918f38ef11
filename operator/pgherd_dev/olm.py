"""A real Operator Lifecycle Manager (OLM v0) on the local control plane, and catalogs for it.

`Olm.up()` applies OLM's CRDs from the pinned OLM module (in Go's module cache, where
`make tools` put it), creates the `olm` namespace and starts the `olm` and `catalog`
operators as processes with the admin kubeconfig. `CatalogServer` runs `opm serve` on a
catalog directory; a CatalogSource with `spec.address` reaches it directly, so no registry
pod (and no image) is needed. Catalogs served this way must carry their bundles' manifests
inline (pgherd_packaging.catalog's inline flavour): a bundle with an image makes OLM start an unpack
Job that pulls it, which can never finish without a container runtime.

Logs go to the control plane's log directory, so a failing cluster test shows them too.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from pgherd_dev import processes
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.tools import tool_path, versions

NAMESPACE = "olm"
OLM_MODULE = "github.com/operator-framework/operator-lifecycle-manager"
GROUP = "operators.coreos.com"


def crd_dir() -> Path:
    """deploy/chart/crds of the pinned OLM module in Go's module cache."""
    version = versions()["OLM_VERSION"]
    try:
        cache = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise DevError(f"cannot ask Go for its module cache ({e}); is Go installed?") from None
    path = Path(cache) / f"{OLM_MODULE}@{version}" / "deploy" / "chart" / "crds"
    if not path.is_dir():
        raise DevError(f"OLM's CRDs are not in {path}. Run `make tools`, which downloads them.")
    return path


class Olm:
    """OLM's CRDs, namespace and two operators on one control plane."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.procs: list[processes.Started] = []
        self.startup_seconds: float | None = None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        # The olm binary panics on some writes when CI is set (a test-only code path).
        env["KUBECONFIG"] = str(self.cp.kubeconfig)
        return env

    def up(self) -> float:
        begin = time.monotonic()
        olm, catalog = tool_path("olm"), tool_path("catalog")
        kubectl = tool_path("kubectl")
        done = subprocess.run(
            [str(kubectl), "apply", "--server-side", "-f", str(crd_dir())],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DevError(f"applying OLM's CRDs failed: {done.stderr.strip()}")
        done = subprocess.run(
            [str(kubectl), "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise DevError(f"OLM's CRDs were not established: {done.stderr.strip()}")
        core = client.CoreV1Api(self.cp.api_client())
        if NAMESPACE not in {n.metadata.name for n in core.list_namespace().items}:
            core.create_namespace({"metadata": {"name": NAMESPACE}})
        env = self._env()
        log_dir = self.cp.log_dir
        self.procs.append(
            processes.start(
                "olm",
                [str(olm), f"--namespace={NAMESPACE}", "--writeStatusName="],
                log_dir / "olm.log",
                env=env,
                die_with_parent=True,
            )
        )
        self.procs.append(
            processes.start(
                "catalog",
                [
                    str(catalog),
                    f"--kubeconfig={self.cp.kubeconfig}",
                    f"--namespace={NAMESPACE}",
                    "--writeStatusName=",
                ],
                log_dir / "catalog.log",
                env=env,
                die_with_parent=True,
            )
        )
        self.startup_seconds = time.monotonic() - begin
        return self.startup_seconds

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise DevError(f"{p.name} exited; see {p.log}")

    def down(self) -> None:
        processes.stop(list(reversed(self.procs)))
        self.procs.clear()


class CatalogServer(processes.Server):
    """`opm serve` of one catalog directory on a free 127.0.0.1 port."""

    def __init__(self, cp: ControlPlane, catalog_dir: Path, name: str) -> None:
        self.cp = cp
        self.catalog_dir = catalog_dir
        self.name = name
        self.port = processes.free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CatalogServer:
        opm = tool_path("opm")
        log = self.cp.log_dir / f"opm-serve-{self.name}.log"
        proc = processes.start(
            f"opm-serve-{self.name}",
            [
                str(opm),
                "serve",
                str(self.catalog_dir),
                f"--port={self.port}",
                # opm opens pprof on localhost:6060 by default: a second server would clash.
                f"--pprof-addr=127.0.0.1:{processes.free_port()}",
                "--termination-log=/dev/null",
            ],
            log,
            die_with_parent=True,
        )
        self._await_ready(
            proc,
            lambda: "serving registry" in log.read_text(errors="replace"),
            30,
            f"opm serve did not start; see {log}",
        )
        return self

    def catalog_source(self, namespace: str = NAMESPACE, name: str | None = None) -> dict[str, Any]:
        """A CatalogSource reaching this server by address (no registry pod); named after the
        server unless given a name. Pointing an existing CatalogSource's `spec.address` at
        another server is how a test publishes a new catalog: OLM reconnects, drops what it
        had cached from the old one and resolves the namespaces subscribed to it again."""
        return {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "CatalogSource",
            "metadata": {"name": name or self.name, "namespace": namespace},
            "spec": {
                "sourceType": "grpc",
                "address": self.address,
                "displayName": f"pgherd test catalog {self.name}",
                "publisher": "pgherd tests",
            },
        }
