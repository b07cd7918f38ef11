"""pgherd installed, upgraded, switched between channels and removed by a real OLM.

OLM's olm and catalog operators run against the local control plane; `opm serve` serves
catalogs whose bundles carry their manifests inline (rendered from bundle directories by
pgherd.catalog), reached by CatalogSources with `spec.address`. The operator Deployment's
pods run under kwok, which marks them Ready without running the image, so OLM sees the
Deployment Available exactly as it would on a real cluster.

Two catalogs: `release` is the committed history (what users get); `upgrade` adds a
test-only 0.1.1 (the committed bundle, regenerated as the next version) to `stable`
only, so a Subscription can move N-1 -> N, and a switch from `candidate` (which still ends
at 0.1.0) to `stable` has something to do. The upgrade test publishes N the way a cluster
sees a new release: its CatalogSource, serving `release`, is pointed at `upgrade`.
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
from pgherd.controller.client import Client as Kube
from pgherd_dev import kubeconfig
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.olm import GROUP, NAMESPACE, CatalogServer, Olm
from tests.conftest import require_tool
from tests.operator_harness import Cluster, Operator, audit_writes, wait_for

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
            _wait_catalog_ready(api, NAMESPACE, server.name, server.address)
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


def _wait_catalog_ready(api: client.ApiClient, namespace: str, name: str, address: str) -> None:
    """OLM connected to the catalog server at address and can read it."""

    def ready() -> bool:
        state = _get(api, "catalogsources", namespace, name).get("status", {})
        state = state.get("connectionState", {})
        return bool(state.get("address") == address and state.get("lastObservedState") == "READY")

    wait_for(f"CatalogSource {name} READY at {address}", ready, timeout=60)


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
    source_namespace: str = NAMESPACE,
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
        "sourceNamespace": source_namespace,
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
        # An AllNamespaces install elsewhere copies its CSV, Succeeded, into every namespace
        # (label olm.copiedFrom); only this namespace's own install counts.
        if (csv.get("metadata", {}).get("labels") or {}).get("olm.copiedFrom"):
            return "copied from another namespace"
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


def _operator_identity(api: client.ApiClient, ns: str) -> tuple[str, dict[str, str]]:
    """The uid of the operator's ServiceAccount, and who owns it and each RBAC object OLM
    made for it: "Kind/name" -> the owning CSVs (ownerReferences; OLM's olm.owner label for
    the cluster-scoped objects, which cannot have a namespaced owner)."""
    rbac = client.RbacAuthorizationV1Api(api)
    sa = client.CoreV1Api(api).read_namespaced_service_account(PACKAGE, ns)
    found = {
        f"ServiceAccount/{PACKAGE}": ",".join(
            sorted(r.name for r in sa.metadata.owner_references or [])
        )
    }
    listed: list[tuple[str, Any]] = [
        ("Role", rbac.list_namespaced_role(ns).items),
        ("RoleBinding", rbac.list_namespaced_role_binding(ns).items),
        ("ClusterRole", rbac.list_cluster_role().items),
        ("ClusterRoleBinding", rbac.list_cluster_role_binding().items),
    ]
    for kind, items in listed:
        for obj in items:
            labels = obj.metadata.labels or {}
            if (
                labels.get("olm.owner.kind") == "ClusterServiceVersion"
                and labels.get("olm.owner.namespace") == ns
            ):
                found[f"{kind}/{obj.metadata.name}"] = labels["olm.owner"]
    return sa.metadata.uid, found


def _pod_uids(cluster: Cluster) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}


def test_upgrade_from_previous_release(
    api: client.ApiClient,
    catalogs: dict[str, CatalogServer],
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """Subscribed at N-1, with a PostgresCluster the operator reconciles; then N is published,
    OLM moves to it along the graph, and the existing cluster keeps being reconciled.

    Published as on a real cluster: the CatalogSource the Subscription follows starts serving
    a newer catalog (its address moves from the release catalog, N-1 only, to the upgrade
    catalog, N-1 and N, as a polled catalog image would change), and OLM, with Automatic
    approval, upgrades by itself.
    """
    ns = _namespace(api, "olm-upgrade")
    custom = client.CustomObjectsApi(api)
    kube = Kube(api)
    release, upgrade = catalogs["release"], catalogs["upgrade"]
    source = "pgherd-published"
    custom.create_namespaced_custom_object(
        GROUP, "v1alpha1", ns, "catalogsources", release.catalog_source(ns, source)
    )
    _wait_catalog_ready(api, ns, source, release.address)
    begin = time.monotonic()
    _subscribe(
        api,
        ns,
        source=source,
        source_namespace=ns,
        channel="stable",
        targets=[ns],
        starting=csv_name(CURRENT),
    )
    _wait_csv(api, ns, csv_name(CURRENT))
    TIMINGS["upgrade test: install N-1 (Subscription to CSV Succeeded)"] = time.monotonic() - begin
    sa_uid, owners = _operator_identity(api, ns)
    assert set(owners.values()) == {csv_name(CURRENT)}, owners

    # The operator from the working tree, as the ServiceAccount OLM created for N-1, kept
    # running through the upgrade (where a real operator pod would be replaced). OLM keeps
    # that ServiceAccount (asserted below), so its bound token stays valid, while the RBAC
    # behind it changes hands from N-1's Roles to N's.
    kc = kubeconfig.for_service_account(control_plane, api, ns, PACKAGE, tmp_path / "olm-sa")
    operator = Operator(
        kc, control_plane.log_dir / "operator-olm-upgrade.log", args=[f"--namespace={ns}"]
    )
    operator.start()
    try:
        cluster = Cluster(kube, ns, "kept")
        cluster.create({"instances": 1, "postgresql": {"parameters": {"work_mem": "4MB"}}})
        cluster.wait_healthy(1, timeout=180)
        before = cluster.obj()
        pods = _pod_uids(cluster)

        begin = time.monotonic()
        custom.patch_namespaced_custom_object(
            GROUP, "v1alpha1", ns, "catalogsources", source, {"spec": {"address": upgrade.address}}
        )
        _wait_csv(api, ns, csv_name(NEXT), timeout=120)
        wait_for(
            "the replaced CSV removed",
            lambda: not _get(api, "clusterserviceversions", ns, csv_name(CURRENT)),
            timeout=60,
        )
        TIMINGS["upgrade (N published to CSV N Succeeded, N-1 removed)"] = time.monotonic() - begin
        image = (
            client.AppsV1Api(api)
            .read_namespaced_deployment(PACKAGE, ns)
            .spec.template.spec.containers[0]
            .image
        )
        assert image == f"pgherd/pgherd-operator:v{NEXT}"
        wait_for("the operator Deployment Available", lambda: _deployment_available(api, ns), 60)
        # N-1's RBAC goes with its CSV: its Role and RoleBinding by garbage collection, its
        # ClusterRole and ClusterRoleBinding by OLM's CSV finalizer. The ServiceAccount stays
        # (same uid), owned by N alone now, and bound to N's new Roles and ClusterRoles.
        # OLM removes N-1's objects and labels N's in no fixed order (a CI run saw N's Role
        # before its bindings), so wait for the whole set: one of each kind N-1 had, all N's.
        kinds = sorted(k.split("/")[0] for k in owners)

        def only_next() -> bool:
            found = _operator_identity(api, ns)[1]
            return set(found.values()) == {csv_name(NEXT)} and (
                sorted(k.split("/")[0] for k in found) == kinds
            )

        begin = time.monotonic()
        wait_for("only N's RBAC left, complete", only_next, timeout=60)
        TIMINGS["upgrade (N-1 removed to N's RBAC complete)"] = time.monotonic() - begin
        new_uid = _operator_identity(api, ns)[0]
        assert new_uid == sa_uid, "OLM re-created the ServiceAccount"
        assert operator.running()

        # The CRD, as N installed it, serves the very object, unchanged.
        after = cluster.obj()
        for key in ("uid", "generation"):
            assert after["metadata"][key] == before["metadata"][key]
        assert after["spec"] == before["spec"]
        # A change made after the upgrade, on N's RBAC alone, is applied: a reload-only
        # parameter, so the instance is not even restarted.
        since = float(int(time.time()))  # the audit log's timestamps are whole seconds
        cluster.patch_spec({"postgresql": {"parameters": {"work_mem": "8MB"}}})

        def applied() -> bool:
            with cluster.connect("kept-0") as conn:
                return conn.execute("SHOW work_mem").fetchone() == ("8MB",)

        wait_for("work_mem=8MB after the upgrade", applied, timeout=90)
        status = cluster.wait_healthy(1, timeout=120)
        assert status["observedGeneration"] == before["metadata"]["generation"] + 1
        assert _pod_uids(cluster) == pods, "the PostgreSQL instance was re-created"
        writes = audit_writes(control_plane, f"system:serviceaccount:{ns}:{PACKAGE}", since)
        codes = {e["responseStatus"]["code"] for e in writes}
        assert writes, "the operator wrote nothing after the upgrade"
        assert not codes & {401, 403}, f"the operator was refused after the upgrade: {codes}"
        kube.delete("PostgresCluster", ns, "kept")
        wait_for("the instance pods gone", lambda: not cluster.pods(), timeout=60)
    finally:
        operator.stop()
    _uninstall(api, ns)
    custom.delete_namespaced_custom_object(GROUP, "v1alpha1", ns, "catalogsources", source)


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
    if targets is None:
        # The AllNamespaces group still lists pgherd's API for every namespace; OLM holds
        # any later install's CSV while it does (two CI runs: the uninstall test's CSV never
        # reached Succeeded). A user moving to another mode removes it the same way.
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            GROUP, "v1", ns, "operatorgroups", "pgherd"
        )
    # OLM removes an AllNamespaces install's copies of its CSV lazily; later tests must not
    # find them in their namespaces.
    wait_for(
        f"copies of the CSV from {ns} removed",
        lambda: (
            not client.CustomObjectsApi(api).list_cluster_custom_object(
                GROUP, "v1alpha1", "clusterserviceversions", label_selector=f"olm.copiedFrom={ns}"
            )["items"]
        ),
        timeout=60,
    )


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
