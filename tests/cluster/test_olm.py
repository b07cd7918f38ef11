"""pgherd installed, upgraded, switched between channels and removed by a real OLM.

OLM's olm and catalog operators run against the local control plane; `opm serve` serves
catalogs whose bundles carry their manifests inline (rendered from bundle directories by
pgherd.catalog), reached by CatalogSources with `spec.address`. The operator Deployment's
pods run under kwok, which marks them Ready without running the image, so OLM sees the
Deployment Available exactly as it would on a real cluster.

Two catalogs: `release` is the committed history (what users get); `upgrade` adds a
test-only 0.1.1 (the committed bundle, regenerated as the next version) to `stable`
only, so a Subscription can move N-1 -> N, and a switch from `candidate` (which still ends
at 0.1.0) to `stable` has something to do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgherd import catalog, releases
from pgherd.kube import Kube
from pgherd_dev import kubeconfig
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.olm import GROUP, NAMESPACE, CatalogServer, Olm
from tests.conftest import require_tool, wait_for
from tests.operator_harness import Cluster, Operator

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pgherd-operator"
CRD = "postgresclusters.pgherd.io"
HISTORY = releases.load(REPO / "releases" / "history.yaml")
CURRENT = HISTORY.releases[-1].version
NEXT = "0.1.1"
TIMINGS: dict[str, float] = {}


def csv_name(version: str) -> str:
    return releases.csv_name(PACKAGE, version)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def olm(control_plane: ControlPlane) -> Iterator[Olm]:
    instance = Olm(control_plane)
    try:
        instance.up()
    except DevError as e:
        pytest.fail(f"OLM did not start: {e}", pytrace=False)
    yield instance
    instance.down()
    for name, seconds in TIMINGS.items():
        print(f"OLM timing: {name}: {seconds:.1f}s")


def _write_inline_catalog(history_path: Path, dirs: dict[str, Path], out: Path) -> Path:
    history = releases.load(history_path)
    docs = catalog.documents(
        history, dirs, require_tool("opm"), default_channel="stable", image_tag_base=None
    )
    path = out / PACKAGE / "catalog.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(catalog.file_text(docs))
    return out


def _upgrade_catalog(tmp: Path) -> Path:
    """The committed release plus a test-only NEXT in stable, generated like a real release."""
    history: dict[str, Any] = yaml.safe_load((REPO / "releases" / "history.yaml").read_text())
    history["releases"].append(
        {"version": NEXT, "createdAt": "2030-01-01T00:00:00Z", "channels": ["stable"]}
    )
    rel = tmp / "releases"
    shutil.copytree(REPO / "bundle", rel / CURRENT)
    (rel / "history.yaml").write_text(yaml.safe_dump(history))
    root = tmp / "root"
    argv = [sys.executable, "-m", "pgherd.generate", "--root", str(root)]
    argv += ["--history", str(rel / "history.yaml"), "--version", NEXT]
    argv += ["--img", f"pgherd/pgherd-operator:v{NEXT}", "--image-tag-base", "pgherd/x"]
    argv += ["--channels", "stable", "--default-channel", "stable"]
    argv += ["--scorecard-image", "x", "--opm", str(require_tool("opm")), "bundle"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return _write_inline_catalog(
        rel / "history.yaml",
        {CURRENT: rel / CURRENT, NEXT: root / "bundle"},
        tmp / "catalog",
    )


@pytest.fixture(scope="module")
def catalogs(
    olm: Olm, control_plane: ControlPlane, api: client.ApiClient, tmp_path_factory: Any
) -> Iterator[dict[str, CatalogServer]]:
    tmp = tmp_path_factory.mktemp("catalogs")
    dirs = {
        "release": _write_inline_catalog(
            REPO / "releases" / "history.yaml", {CURRENT: REPO / "bundle"}, tmp / "release"
        ),
        "upgrade": _upgrade_catalog(tmp / "upgrade"),
    }
    servers = {
        name: CatalogServer(control_plane, path, f"pgherd-{name}") for name, path in dirs.items()
    }
    custom = client.CustomObjectsApi(api)
    try:
        for server in servers.values():
            server.__enter__()
            custom.create_namespaced_custom_object(
                GROUP, "v1alpha1", NAMESPACE, "catalogsources", server.catalog_source()
            )
        for server in servers.values():
            wait_for(
                f"CatalogSource {server.name} READY",
                lambda s=server: (
                    _get(api, "catalogsources", NAMESPACE, s.name)
                    .get("status", {})
                    .get("connectionState", {})
                    .get("lastObservedState")
                    == "READY"
                ),
                timeout=60,
            )
        yield servers
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


# --- helpers -----------------------------------------------------------------------------------


def _get(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, "v1alpha1", namespace, plural, name
        )
    except ApiException as e:
        if e.status == 404:
            return {}
        raise
    return obj


def _create(api: client.ApiClient, plural: str, namespace: str, body: dict[str, Any]) -> None:
    version = "v1" if plural == "operatorgroups" else "v1alpha1"
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, version, namespace, plural, body
    )


def _namespace(api: client.ApiClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def _subscribe(
    api: client.ApiClient,
    namespace: str,
    *,
    source: str,
    channel: str,
    targets: list[str] | None,
    starting: str | None = None,
) -> None:
    og: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "OperatorGroup",
        "metadata": {"name": "pgherd"},
        "spec": {},
    }
    if targets is not None:
        og["spec"]["targetNamespaces"] = targets
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, "v1", namespace, "operatorgroups", og
    )
    spec = {
        "name": PACKAGE,
        "source": source,
        "sourceNamespace": NAMESPACE,
        "channel": channel,
        "installPlanApproval": "Automatic",
    }
    if starting:
        spec["startingCSV"] = starting
    subscription = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": PACKAGE},
        "spec": spec,
    }
    _create(api, "subscriptions", namespace, subscription)


def _wait_csv(api: client.ApiClient, namespace: str, name: str, timeout: float = 90) -> float:
    begin = time.monotonic()

    def succeeded() -> Any:
        csv = _get(api, "clusterserviceversions", namespace, name)
        phase = csv.get("status", {}).get("phase")
        return phase == "Succeeded" or phase

    wait_for(f"CSV {name} Succeeded in {namespace}", lambda: succeeded() is True, timeout)
    return time.monotonic() - begin


def _deployment_available(api: client.ApiClient, namespace: str) -> bool:
    try:
        d = client.AppsV1Api(api).read_namespaced_deployment(PACKAGE, namespace)
    except ApiException:
        return False
    return any(c.type == "Available" and c.status == "True" for c in d.status.conditions or [])


def _uninstall(api: client.ApiClient, namespace: str) -> None:
    """What a user does: delete the Subscription and the CSV; OLM removes what the CSV owns.

    InstallPlans are deleted too: one still executing re-creates the CSV it installs.
    """
    custom = client.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(GROUP, "v1alpha1", namespace, "subscriptions", PACKAGE)
    custom.delete_collection_namespaced_custom_object(GROUP, "v1alpha1", namespace, "installplans")

    def gone() -> bool:
        csvs = custom.list_namespaced_custom_object(
            GROUP, "v1alpha1", namespace, "clusterserviceversions"
        )["items"]
        for csv in csvs:
            if not csv["metadata"].get("deletionTimestamp"):
                custom.delete_namespaced_custom_object(
                    GROUP, "v1alpha1", namespace, "clusterserviceversions", csv["metadata"]["name"]
                )
        return not csvs and not _deployment_exists(api, namespace)

    wait_for(f"the CSV and operator Deployment in {namespace} removed", gone, timeout=60)


def _deployment_exists(api: client.ApiClient, namespace: str) -> bool:
    try:
        client.AppsV1Api(api).read_namespaced_deployment(PACKAGE, namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


# --- tests -------------------------------------------------------------------------------------


def test_install_from_stable(
    api: client.ApiClient,
    catalogs: dict[str, CatalogServer],
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    ns = _namespace(api, "olm-own")
    begin = time.monotonic()
    _subscribe(api, ns, source=catalogs["release"].name, channel="stable", targets=[ns])
    _wait_csv(api, ns, csv_name(CURRENT))
    TIMINGS["install (Subscription to CSV Succeeded)"] = time.monotonic() - begin
    sub = _get(api, "subscriptions", ns, PACKAGE)
    plan = sub["status"]["installPlanRef"]["name"]
    wait_for(
        f"InstallPlan {plan} Complete",
        lambda: _get(api, "installplans", ns, plan).get("status", {}).get("phase") == "Complete",
        timeout=30,
    )
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    assert _deployment_available(api, ns)
    # OwnNamespace: OLM grants the namespaced rules as a Role in the watched namespace.
    roles = client.RbacAuthorizationV1Api(api).list_namespaced_role(ns).items
    assert any(
        r.metadata.name.startswith(csv_name(CURRENT)) or "pgherd" in r.metadata.name for r in roles
    )
    _reconcile_as_olm_installed_it(control_plane, api, ns, tmp_path)
    _uninstall(api, ns)


def _reconcile_as_olm_installed_it(
    cp: ControlPlane, api: client.ApiClient, ns: str, tmp: Path
) -> None:
    """The operator from the working tree, with exactly the ServiceAccount and RBAC the CSV
    made OLM create, reconciles a real PostgresCluster: the CSV's permissions are enough."""
    kc = kubeconfig.for_service_account(cp, api, ns, "pgherd-operator", tmp / "olm-sa")
    operator = Operator(kc, cp.log_dir / "operator-olm.log", args=[f"--namespace={ns}"])
    operator.start()
    try:
        cluster = Cluster(Kube(api), ns, "olm-sample")
        cluster.create({"instances": 1})
        cluster.wait_healthy(1, timeout=180)
        Kube(api).delete("PostgresCluster", ns, "olm-sample")
    finally:
        operator.stop()


def test_upgrade_from_previous_release(
    api: client.ApiClient, catalogs: dict[str, CatalogServer]
) -> None:
    ns = _namespace(api, "olm-upgrade")
    _subscribe(
        api,
        ns,
        source=catalogs["upgrade"].name,
        channel="stable",
        targets=[ns],
        starting=csv_name(CURRENT),
    )
    begin = time.monotonic()
    # Automatic approval: OLM installs CURRENT, then follows the graph to NEXT by itself.
    TIMINGS["upgrade (Subscription to N Succeeded)"] = 0.0
    _wait_csv(api, ns, csv_name(NEXT), timeout=120)
    TIMINGS["upgrade (Subscription to N Succeeded)"] = time.monotonic() - begin
    wait_for(
        "the replaced CSV removed",
        lambda: not _get(api, "clusterserviceversions", ns, csv_name(CURRENT)),
        timeout=60,
    )
    image = (
        client.AppsV1Api(api)
        .read_namespaced_deployment(PACKAGE, ns)
        .spec.template.spec.containers[0]
        .image
    )
    assert image == f"pgherd/pgherd-operator:v{NEXT}"
    _uninstall(api, ns)


def test_switch_from_candidate_to_stable(
    api: client.ApiClient, catalogs: dict[str, CatalogServer]
) -> None:
    ns = _namespace(api, "olm-switch")
    _subscribe(api, ns, source=catalogs["upgrade"].name, channel="candidate", targets=[ns])
    _wait_csv(api, ns, csv_name(CURRENT))
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, "v1alpha1", ns, "subscriptions", PACKAGE, {"spec": {"channel": "stable"}}
    )
    _wait_csv(api, ns, csv_name(NEXT), timeout=120)
    _uninstall(api, ns)


def _remove_other_operator_groups(api: client.ApiClient, keep: str) -> None:
    """Earlier tests leave their OperatorGroups (uninstall keeps them, as for a user). OLM
    refuses an AllNamespaces install while another group still lists the same API, so an
    AllNamespaces install starts from a cluster without them."""
    custom = client.CustomObjectsApi(api)

    def others() -> list[dict[str, Any]]:
        items = custom.list_cluster_custom_object(GROUP, "v1", "operatorgroups")["items"]
        return [g for g in items if g["metadata"]["namespace"] not in (keep, NAMESPACE)]

    for group in others():
        meta = group["metadata"]
        custom.delete_namespaced_custom_object(
            GROUP, "v1", meta["namespace"], "operatorgroups", meta["name"]
        )
    wait_for("other OperatorGroups removed", lambda: not others(), timeout=60)


@pytest.mark.parametrize("mode", ["SingleNamespace", "MultiNamespace", "AllNamespaces"])
def test_install_mode(api: client.ApiClient, catalogs: dict[str, CatalogServer], mode: str) -> None:
    ns = _namespace(api, "olm-mode")
    targets: list[str] | None
    if mode == "SingleNamespace":
        targets = [_namespace(api, "olm-target")]
    elif mode == "MultiNamespace":
        targets = [_namespace(api, "olm-target"), _namespace(api, "olm-target")]
    else:
        targets = None
        _remove_other_operator_groups(api, ns)
    _subscribe(api, ns, source=catalogs["release"].name, channel="stable", targets=targets)
    _wait_csv(api, ns, csv_name(CURRENT))
    pod_annotations = (
        client.AppsV1Api(api)
        .read_namespaced_deployment(PACKAGE, ns)
        .spec.template.metadata.annotations
    )
    # The operator reads WATCH_NAMESPACE from this annotation ("" means all namespaces).
    assert pod_annotations["olm.targetNamespaces"] == ",".join(sorted(targets or []))
    rbac = client.RbacAuthorizationV1Api(api)
    for target in targets or []:
        bindings = rbac.list_namespaced_role_binding(target).items
        assert any(
            s.name == PACKAGE and s.namespace == ns for b in bindings for s in b.subjects or []
        ), f"no RoleBinding for the operator in {target}"
    _uninstall(api, ns)


def test_uninstall_leaves_crds_and_clusters(
    api: client.ApiClient, catalogs: dict[str, CatalogServer]
) -> None:
    """Documented in the README: OLM never deletes CRDs, so user data survives uninstall."""
    ns = _namespace(api, "olm-uninstall")
    _subscribe(api, ns, source=catalogs["release"].name, channel="stable", targets=[ns])
    _wait_csv(api, ns, csv_name(CURRENT))
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "pgherd.io",
        "v1alpha1",
        ns,
        "postgresclusters",
        {
            "apiVersion": "pgherd.io/v1alpha1",
            "kind": "PostgresCluster",
            "metadata": {"name": "kept"},
        },
    )
    _uninstall(api, ns)
    core = client.CoreV1Api(api)
    assert not any(
        sa.metadata.name == PACKAGE for sa in core.list_namespaced_service_account(ns).items
    )
    assert client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    assert custom.get_namespaced_custom_object(
        "pgherd.io", "v1alpha1", ns, "postgresclusters", "kept"
    )
    og = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, "v1", ns, "operatorgroups", "pgherd"
    )
    assert og, "the OperatorGroup is the user's and stays"
