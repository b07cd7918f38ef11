"""pgherd installed, upgraded, switched between channels and removed by a real OLM.

OLM's olm and catalog operators run against the local control plane; `opm serve` serves
catalogs whose bundles carry their manifests inline (rendered from bundle directories by
pgherd_packaging.catalog), reached by CatalogSources with `spec.address`. The operator Deployment's
pods run under kwok, which marks them Ready without running the image, so OLM sees the
Deployment Available exactly as it would on a real cluster.

The catalogs, all generated like the real one from the release history and the bundles:
- `previous`: 0.1.0 alone, the catalog as users saw it before 0.2.0 was published;
- `release`: the committed history (0.1.0 from releases/0.1.0, 0.2.0 from bundle/);
- `pruned`: `release` without 0.1.0, whose only edge to 0.2.0 is therefore 0.2.0's
  `olm.skipRange` (the CSV annotation, as opm reads it into the channel entry);
- `next`: `release` plus a test-only NEXT (the current sources built as the following version)
  in `stable` only, so a switch from `candidate` to `stable` has something to do;
- `bad-crd`: like `next`, but NEXT's PostgresCluster CRD requires a field existing objects lack.
A test publishes a catalog the way a cluster sees a new release: the CatalogSource its
Subscription follows is pointed at another server (as a polled catalog image would change).
"""

from __future__ import annotations

import copy
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

from pgherd.controller.client import Client as Kube
from pgherd_dev import kubeconfig
from pgherd_dev.controlplane import ControlPlane
from pgherd_dev.errors import DevError
from pgherd_dev.olm import GROUP, NAMESPACE, CatalogServer, Olm
from pgherd_packaging import bundle, catalog, crds, releases
from tests.conftest import require_tool
from tests.operator_harness import Cluster, Operator, audit_writes, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pgherd-operator"
CRD = "postgresclusters.pgherd.io"
HISTORY = releases.load(REPO / "releases" / "history.yaml")
CURRENT = HISTORY.latest.version
PREVIOUS = HISTORY.releases[-2].version
NEXT = "0.3.0"
# The field the bad CRD requires; no existing PostgresCluster has it.
BAD_REQUIRED_FIELD = "tier"
RELEASE_DIRS = {
    r.version: REPO / "bundle" if r.version == CURRENT else REPO / "releases" / r.version
    for r in HISTORY.releases
}
TIMINGS: dict[str, float] = {}


def csv_name(version: str) -> str:
    return releases.csv_name(PACKAGE, version)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def olm(control_plane: ControlPlane, kube: Kube) -> Iterator[Olm]:
    instance = Olm(control_plane)
    try:
        instance.up()
    except DevError as e:
        pytest.fail(f"OLM did not start: {e}", pytrace=False)
    yield instance
    instance.down()
    # OLM installed other versions of the CRDs; the tests after this module expect the
    # committed ones (what the session's operator fixture installs).
    for crd in crds.render_crds():
        kube.apply(crd)
    for name, seconds in TIMINGS.items():
        print(f"OLM timing: {name}: {seconds:.1f}s")


def _inline_documents(history: releases.History, dirs: dict[str, Path]) -> list[dict[str, Any]]:
    return catalog.documents(
        history, dirs, require_tool("opm"), default_channel="stable", image_tag_base=None
    )


def _write_catalog(docs: list[dict[str, Any]], out: Path) -> Path:
    path = out / PACKAGE / "catalog.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(catalog.file_text(docs))
    return out


def _history(releases_list: list[dict[str, Any]]) -> releases.History:
    return releases.History.model_validate({"package": PACKAGE, "releases": releases_list})


def _history_data() -> list[dict[str, Any]]:
    data: dict[str, Any] = yaml.safe_load((REPO / "releases" / "history.yaml").read_text())
    found: list[dict[str, Any]] = data["releases"]
    return found


def _pruned(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The catalog without PREVIOUS: its bundle and channel entries gone, and with them the
    `replaces` edges to it; what is left are the skipRanges the CSVs carry."""
    gone = csv_name(PREVIOUS)
    out = []
    for doc in copy.deepcopy(docs):
        if doc["schema"] == "olm.bundle" and doc["name"] == gone:
            continue
        if doc["schema"] == "olm.channel":
            doc["entries"] = [e for e in doc["entries"] if e["name"] != gone]
            for entry in doc["entries"]:
                if entry.get("replaces") == gone:
                    del entry["replaces"]
        out.append(doc)
    return out


def _next_release(tmp: Path, bad_crd: bool) -> tuple[releases.History, dict[str, Path]]:
    """The committed releases plus a test-only NEXT in stable, made by the documented procedure
    (freeze bundle/, add NEXT to the history, generate its bundle); with bad_crd, NEXT's
    PostgresCluster CRD then requires a field no existing object has."""
    data = [
        *_history_data(),
        {"version": NEXT, "createdAt": "2030-01-01T00:00:00Z", "channels": ["stable"]},
    ]
    rel = tmp / "releases"
    rel.mkdir(parents=True)
    (rel / "history.yaml").write_text(yaml.safe_dump({"package": PACKAGE, "releases": data}))
    root = tmp / "root"
    base = "quay.io/pgherd/pgherd-operator"
    argv = [sys.executable, "-m", "pgherd_packaging.generate", "--root", str(root)]
    argv += ["--history", str(rel / "history.yaml"), "--version", NEXT]
    argv += ["--img", f"{base}:v{NEXT}", "--image-tag-base", base]
    argv += ["--channels", "stable", "--default-channel", "stable"]
    argv += ["--scorecard-image", "x", "--opm", str(require_tool("opm")), "bundle"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    if bad_crd:
        path = root / "bundle" / "manifests" / "pgherd.io_postgresclusters.yaml"
        crd = yaml.safe_load(path.read_text())
        (version,) = crd["spec"]["versions"]
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"][BAD_REQUIRED_FIELD] = {"type": "string"}
        spec["required"] = [*spec.get("required", []), BAD_REQUIRED_FIELD]
        # The CRD itself stays valid: its default spec has the field (stored objects do not).
        spec["default"][BAD_REQUIRED_FIELD] = "gold"
        path.write_text(yaml.safe_dump(crd))
    return _history(data), {**RELEASE_DIRS, NEXT: root / "bundle"}


@pytest.fixture(scope="module")
def catalogs(
    olm: Olm, control_plane: ControlPlane, api: client.ApiClient, tmp_path_factory: Any
) -> Iterator[dict[str, CatalogServer]]:
    tmp = tmp_path_factory.mktemp("catalogs")
    release = _inline_documents(HISTORY, RELEASE_DIRS)
    previous = _history([r for r in _history_data() if r["version"] == PREVIOUS])
    docs = {
        "previous": _inline_documents(previous, {PREVIOUS: RELEASE_DIRS[PREVIOUS]}),
        "release": release,
        "pruned": _pruned(release),
        "next": _inline_documents(*_next_release(tmp / "work" / "next", bad_crd=False)),
        "bad-crd": _inline_documents(*_next_release(tmp / "work" / "bad-crd", bad_crd=True)),
    }
    servers = {
        name: CatalogServer(control_plane, _write_catalog(d, tmp / name), f"pgherd-{name}")
        for name, d in docs.items()
    }
    custom = client.CustomObjectsApi(api)
    # Catalogs every namespace may subscribe to; the others are published per test.
    shared = ("release", "next")
    try:
        for server in servers.values():
            server.__enter__()
        for name in shared:
            custom.create_namespaced_custom_object(
                GROUP, "v1alpha1", NAMESPACE, "catalogsources", servers[name].catalog_source()
            )
        for name in shared:
            _wait_catalog_ready(api, NAMESPACE, servers[name].name, servers[name].address)
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


def _published(api: client.ApiClient, ns: str, server: CatalogServer) -> str:
    """A CatalogSource in ns serving server's catalog; returns its name."""
    source = "pgherd-published"
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, "v1alpha1", ns, "catalogsources", server.catalog_source(ns, source)
    )
    _wait_catalog_ready(api, ns, source, server.address)
    return source


def _publish(api: client.ApiClient, ns: str, source: str, server: CatalogServer) -> None:
    """The CatalogSource starts serving server's catalog, as a new catalog image would."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, "v1alpha1", ns, "catalogsources", source, {"spec": {"address": server.address}}
    )


def _install_from(
    api: client.ApiClient, ns: str, server: CatalogServer, version: str
) -> tuple[str, float]:
    """Subscribe ns (OwnNamespace, stable, Automatic) from a CatalogSource of its own serving
    server, starting at version; returns the source's name and the install's duration."""
    source = _published(api, ns, server)
    begin = time.monotonic()
    _subscribe(
        api,
        ns,
        source=source,
        source_namespace=ns,
        channel="stable",
        targets=[ns],
        starting=csv_name(version),
    )
    _wait_csv(api, ns, csv_name(version))
    return source, time.monotonic() - begin


def _upgrade(api: client.ApiClient, ns: str, source: str, server: CatalogServer) -> float:
    """Publish server's catalog; returns how long until CURRENT's CSV Succeeded and the
    PREVIOUS one is gone."""
    begin = time.monotonic()
    _publish(api, ns, source, server)
    _wait_csv(api, ns, csv_name(CURRENT), timeout=120)
    wait_for(
        f"the CSV of {PREVIOUS} removed",
        lambda: not _get(api, "clusterserviceversions", ns, csv_name(PREVIOUS)),
        timeout=60,
    )
    return time.monotonic() - begin


def _crd_columns(api: client.ApiClient) -> list[str]:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    return [c.name for c in crd.spec.versions[0].additional_printer_columns or []]


# --- tests -------------------------------------------------------------------------------------


def test_raw_csv_of_every_release_applies_against_olms_schema(
    olm: Olm, api: client.ApiClient, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """`kubectl apply` of each released CSV file, as is, passes OLM's ClusterServiceVersion
    schema (server-side dry run, strict field validation); what the issue found in 0.1.0's
    first CSV (spec.skipRange, resources without a name) is refused by the same check."""
    ns = _namespace(api, "olm-csv")

    def apply(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [str(require_tool("kubectl")), "apply", "--server-side", "--dry-run=server"]
        argv += ["--validate=strict", "-n", ns, "-f", str(path)]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            env={
                "KUBECONFIG": str(control_plane.kubeconfig),
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),  # kubectl's discovery cache
            },
        )

    for version, directory in RELEASE_DIRS.items():
        done = apply(directory / "manifests" / bundle.CSV_FILE)
        assert done.returncode == 0, (version, done.stderr)
        assert "serverside-applied (server dry run)" in done.stdout, done.stdout
    good = yaml.safe_load((RELEASE_DIRS[CURRENT] / "manifests" / bundle.CSV_FILE).read_text())
    skip_range = copy.deepcopy(good)
    skip_range["spec"]["skipRange"] = skip_range["metadata"]["annotations"].pop("olm.skipRange")
    nameless = copy.deepcopy(good)
    for owned in nameless["spec"]["customresourcedefinitions"]["owned"]:
        for resource in owned["resources"]:
            del resource["name"]
    for broken, expected in (
        (skip_range, ".spec.skipRange: field not declared in schema"),
        (nameless, "name: Required value"),
    ):
        path = tmp_path / "broken-csv.yaml"
        path.write_text(yaml.safe_dump(broken))
        done = apply(path)
        assert done.returncode != 0 and expected in done.stderr, done.stderr
    client.CoreV1Api(api).delete_namespace(ns)


def test_upgrade_along_stable_keeps_live_clusters(
    api: client.ApiClient,
    catalogs: dict[str, CatalogServer],
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """Subscribed to stable at 0.1.0 with live PostgresClusters the operator reconciles; then
    the catalog with 0.2.0 is published and OLM, with Automatic approval, upgrades along
    `replaces`: 0.2.0's CRD (new status fields, a new printer column) and RBAC replace 0.1.0's,
    the clusters keep running (no pod is restarted) and keep being reconciled.

    The operator from the working tree runs as the ServiceAccount OLM created for 0.1.0 and
    keeps running through the upgrade (where a real operator pod would be replaced). OLM keeps
    that ServiceAccount (asserted below), so its bound token stays valid, while the RBAC
    behind it changes hands from 0.1.0's Roles to 0.2.0's.
    """
    ns = _namespace(api, "olm-upgrade")
    kube = Kube(api)
    source, took = _install_from(api, ns, catalogs["previous"], PREVIOUS)
    TIMINGS[f"install {PREVIOUS} (Subscription to CSV Succeeded)"] = took
    sa_uid, owners = _operator_identity(api, ns)
    assert set(owners.values()) == {csv_name(PREVIOUS)}, owners
    assert "PostgreSQL" not in _crd_columns(api), "0.1.0's CRD is installed"

    kc = kubeconfig.for_service_account(control_plane, api, ns, PACKAGE, tmp_path / "olm-sa")
    operator = Operator(
        kc, control_plane.log_dir / "operator-olm-upgrade.log", args=[f"--namespace={ns}"]
    )
    operator.start()
    try:
        single = Cluster(kube, ns, "kept")
        single.create({"instances": 1, "postgresql": {"parameters": {"work_mem": "4MB"}}})
        ha = Cluster(kube, ns, "kept-ha")
        ha.create({"instances": 2})
        live = (single, ha)
        single.wait_healthy(1, timeout=180)
        ha.wait_healthy(2, timeout=180)
        with ha.connect(ha.primary(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("INSERT INTO t VALUES (1)")
        before = {c.name: c.obj() for c in live}
        pods = {c.name: _pod_uids(c) for c in live}
        # 0.1.0's schema has no status.postgresVersion: the API server prunes what the
        # operator writes there.
        assert all("postgresVersion" not in (o.get("status") or {}) for o in before.values())

        upgrade = _upgrade(api, ns, source, catalogs["release"])
        TIMINGS[
            f"upgrade {PREVIOUS} -> {CURRENT} with live clusters (published to CSV "
            f"{CURRENT} Succeeded and {PREVIOUS} removed)"
        ] = upgrade
        print(f"upgrade {PREVIOUS} -> {CURRENT} with {len(live)} live clusters: {upgrade:.1f}s")
        plan = _get(api, "subscriptions", ns, PACKAGE)["status"]["installPlanRef"]["name"]
        steps = _get(api, "installplans", ns, plan)["status"]["plan"]
        assert {(s["resource"]["kind"], s["resource"]["name"]) for s in steps} >= {
            ("ClusterServiceVersion", csv_name(CURRENT)),
            ("CustomResourceDefinition", CRD),
        }
        csv = _get(api, "clusterserviceversions", ns, csv_name(CURRENT))
        assert csv["spec"]["replaces"] == csv_name(PREVIOUS)
        image = (
            client.AppsV1Api(api)
            .read_namespaced_deployment(PACKAGE, ns)
            .spec.template.spec.containers[0]
            .image
        )
        assert image == f"quay.io/pgherd/pgherd-operator:v{CURRENT}"
        wait_for("the operator Deployment Available", lambda: _deployment_available(api, ns), 60)
        # 0.1.0's RBAC goes with its CSV: its Role and RoleBinding by garbage collection, its
        # ClusterRole and ClusterRoleBinding by OLM's CSV finalizer. The ServiceAccount stays
        # (same uid), owned by 0.2.0 alone now, and bound to 0.2.0's Roles and ClusterRoles.
        # OLM removes the old objects and labels the new in no fixed order (a CI run saw the
        # new Role before its bindings), so wait for the whole set.
        kinds = sorted(k.split("/")[0] for k in owners)

        def only_current() -> bool:
            found = _operator_identity(api, ns)[1]
            return set(found.values()) == {csv_name(CURRENT)} and (
                sorted(k.split("/")[0] for k in found) == kinds
            )

        begin = time.monotonic()
        wait_for("only 0.2.0's RBAC left, complete", only_current, timeout=60)
        TIMINGS["upgrade (old CSV removed to new RBAC complete)"] = time.monotonic() - begin
        assert _operator_identity(api, ns)[0] == sa_uid, "OLM re-created the ServiceAccount"
        assert operator.running()

        # The CRD is 0.2.0's, and serves the very objects: nothing changed or removed, only
        # the defaults of 0.2.0's new optional fields added (applied as objects are read).
        assert "PostgreSQL" in _crd_columns(api)
        for cluster in live:
            after = cluster.obj()
            for key in ("uid", "generation"):
                assert after["metadata"][key] == before[cluster.name]["metadata"][key]
            added = _added(before[cluster.name]["spec"], after["spec"])
            assert added == ADDED_BY_0_2_0, added
        # What the new schema keeps: the running PostgreSQL version, now in status.
        for cluster in live:
            wait_for(
                f"{cluster.name} status.postgresVersion",
                lambda c=cluster: c.status().get("postgresVersion") == 15,
                timeout=60,
            )
        # A change made after the upgrade, on 0.2.0's RBAC alone, is applied: a reload-only
        # parameter, so the instance is not even restarted.
        since = float(int(time.time()))  # the audit log's timestamps are whole seconds
        single.patch_spec({"postgresql": {"parameters": {"work_mem": "8MB"}}})

        def applied() -> bool:
            with single.connect("kept-0") as conn:
                return conn.execute("SHOW work_mem").fetchone() == ("8MB",)

        wait_for("work_mem=8MB after the upgrade", applied, timeout=90)
        status = single.wait_healthy(1, timeout=120)
        assert status["observedGeneration"] == before["kept"]["metadata"]["generation"] + 1
        ha.wait_healthy(2)
        with ha.connect(ha.primary(), autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        replica = next(
            p["metadata"]["name"] for p in ha.pods() if p["metadata"]["name"] != ha.primary()
        )
        wait_for(
            "the replica streams after the upgrade",
            lambda: _rows(ha, replica) == [1, 2],
            timeout=60,
        )
        for cluster in live:
            assert _pod_uids(cluster) == pods[cluster.name], f"{cluster.name}: a pod was re-created"
        writes = audit_writes(control_plane, f"system:serviceaccount:{ns}:{PACKAGE}", since)
        codes = {e["responseStatus"]["code"] for e in writes}
        assert writes, "the operator wrote nothing after the upgrade"
        assert not codes & {401, 403}, f"the operator was refused after the upgrade: {codes}"
        for cluster in live:
            kube.delete("PostgresCluster", ns, cluster.name)
        wait_for("the instance pods gone", lambda: not any(c.pods() for c in live), timeout=60)
    finally:
        operator.stop()
    _uninstall(api, ns)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, "v1alpha1", ns, "catalogsources", source
    )


# The defaults of 0.2.0's new optional spec fields, which an object stored by 0.1.0 shows
# once 0.2.0's CRD serves it: nothing else of it changes.
ADDED_BY_0_2_0 = {
    "postgresql.allowInsecureAuthentication": False,
    "imageUpdatePolicy": "Pinned",
    "tls": {"minProtocolVersion": "TLSv1.2", "allowPlainText": False},
    "credentials": {"rotate": {"app": 0, "superuser": 0}},
    # issue 16: Patroni's failsafe mode (API-server outage).
    "patroni.failsafeMode": True,
    # Patroni timing profiles (issue 16): ttl/loopWait/retryTimeout stay as stored.
    "patroni.profile": "default",
    # The major upgrade (issue 15): how one is carried out when postgresVersion is raised.
    "upgrade": {"backupFirst": False, "method": "link"},
}


def _added(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Paths (a.b) after has and before has not, with their values; fails on any path whose
    value changed or that is gone."""
    added = {}
    for key in before.keys() | after.keys():
        path = f"{prefix}{key}"
        assert key in after, f"{path} is gone"
        if key not in before:
            added[path] = after[key]
        elif isinstance(before[key], dict) and isinstance(after[key], dict):
            added |= _added(before[key], after[key], f"{path}.")
        else:
            assert before[key] == after[key], f"{path} changed"
    return added


def _rows(cluster: Cluster, pod: str) -> list[int]:
    with cluster.connect(pod, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id").fetchall()]


def test_upgrade_through_skip_range_from_a_catalog_without_the_installed_release(
    api: client.ApiClient, catalogs: dict[str, CatalogServer], tmp_path: Path
) -> None:
    """Installed at 0.1.0; the catalog then published no longer has 0.1.0 (a catalog pruned to
    its head), so no entry `replaces` it: OLM reaches 0.2.0 through 0.2.0's olm.skipRange alone.
    The PostgresCluster stored under 0.1.0 stays, unchanged."""
    pruned = yaml.safe_load_all(
        (catalogs["pruned"].catalog_dir / PACKAGE / "catalog.yaml").read_text()
    )
    stable = next(d for d in pruned if d["schema"] == "olm.channel" and d["name"] == "stable")
    annotations = yaml.safe_load(
        (RELEASE_DIRS[CURRENT] / "manifests" / bundle.CSV_FILE).read_text()
    )["metadata"]["annotations"]
    assert stable["entries"] == [
        {"name": csv_name(CURRENT), "skipRange": annotations["olm.skipRange"]}
    ]
    ns = _namespace(api, "olm-skiprange")
    source, _ = _install_from(api, ns, catalogs["previous"], PREVIOUS)
    kube = Kube(api)
    Cluster(kube, ns, "stored").create({"instances": 1})
    stored = kube.get("PostgresCluster", ns, "stored")
    assert stored is not None

    TIMINGS["upgrade through olm.skipRange (published to old CSV removed)"] = _upgrade(
        api, ns, source, catalogs["pruned"]
    )
    after = kube.get("PostgresCluster", ns, "stored")
    assert after is not None
    assert after["metadata"]["uid"] == stored["metadata"]["uid"]
    assert _added(stored["spec"], after["spec"]) == ADDED_BY_0_2_0
    kube.delete("PostgresCluster", ns, "stored")
    _uninstall(api, ns)


def test_crd_safety_check_refuses_a_crd_that_invalidates_existing_objects(
    api: client.ApiClient, catalogs: dict[str, CatalogServer], kube: Kube
) -> None:
    """Installed at 0.2.0 with a PostgresCluster; a next release whose CRD requires a field
    that object lacks is published. OLM validates existing objects against the new schema and
    fails the InstallPlan naming the object; the CRD, the running operator and the object
    stay as they were."""
    ns = _namespace(api, "olm-badcrd")
    source, _ = _install_from(api, ns, catalogs["release"], CURRENT)
    Cluster(kube, ns, "existing").create({"instances": 1})
    crd_before = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    try:
        _publish(api, ns, source, catalogs["bad-crd"])

        def failed_plan() -> dict[str, Any] | None:
            for plan in client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, "v1alpha1", ns, "installplans"
            )["items"]:
                if csv_name(NEXT) in plan["spec"]["clusterServiceVersionNames"]:
                    status = plan.get("status") or {}
                    if status.get("phase") == "Failed":
                        return dict(plan)
            return None

        plan = wait_for(f"the InstallPlan of {NEXT} Failed", failed_plan, timeout=120)
        message = " ".join(c.get("message", "") for c in plan["status"].get("conditions", []))
        assert "error validating existing CRs against new CRD's schema" in message, message
        assert f"{ns}/existing" in message and BAD_REQUIRED_FIELD in message, message
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
        assert crd.spec.to_dict() == crd_before.spec.to_dict(), "the CRD was changed"
        schema = crd.spec.versions[0].schema.open_apiv3_schema
        assert BAD_REQUIRED_FIELD not in schema.properties["spec"].properties
        # OLM created NEXT's CSV before the CRD step failed: it waits for its CRD
        # (RequirementsNotMet) and the installed CSV shows Replacing, while the installed
        # operator keeps running, unchanged, until a release that upgrades cleanly is published.
        nxt = _get(api, "clusterserviceversions", ns, csv_name(NEXT)).get("status") or {}
        assert nxt.get("phase") != "Succeeded", nxt
        assert _get(api, "clusterserviceversions", ns, csv_name(CURRENT))["status"]["phase"] in (
            "Succeeded",
            "Replacing",
        )
        deployment = client.AppsV1Api(api).read_namespaced_deployment(PACKAGE, ns)
        assert deployment.spec.template.spec.containers[0].image.endswith(f":v{CURRENT}")
        assert _deployment_available(api, ns)
        assert kube.get("PostgresCluster", ns, "existing") is not None
    finally:
        kube.delete("PostgresCluster", ns, "existing")
        _uninstall(api, ns)


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


def test_switch_from_candidate_to_stable(
    api: client.ApiClient, catalogs: dict[str, CatalogServer]
) -> None:
    ns = _namespace(api, "olm-switch")
    _subscribe(api, ns, source=catalogs["next"].name, channel="candidate", targets=[ns])
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
    # find them in their namespaces. On a loaded machine one CI run saw them still there
    # after 60 s: OLM's sweep of copied CSVs runs on its own resync, not on the deletion.
    wait_for(
        f"copies of the CSV from {ns} removed",
        lambda: (
            not client.CustomObjectsApi(api).list_cluster_custom_object(
                GROUP, "v1alpha1", "clusterserviceversions", label_selector=f"olm.copiedFrom={ns}"
            )["items"]
        ),
        timeout=240,
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
