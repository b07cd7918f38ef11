"""The major upgrade's Jobs (pgherd.render.upgrade_jobs) against the real API server and the
local control plane: their pods pass the API server's own PodSecurity admission at the
restricted level, and the preflight's scratch volume, a generic ephemeral volume, is made by
kube-controller-manager for the pod, provisioned, mounted by the test kubelet, and deleted
with the pod; the upgrade pod finds PGDATA on the primary's claim where the instances have it.

The Jobs' own commands are not run here: their init container copies the image's
/usr/lib/postgresql/<old>, which in the test kubelet's host mode is this machine's, and the
preflight reaches the primary by its Service's DNS name, which neither mode resolves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgherd import contract
from pgherd.render import labels
from pgherd.render.upgrade_jobs import (
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    UpgradeImages,
    render_check_job,
    render_rollback_job,
    render_upgrade_job,
)
from pgherd_dev.controlplane import STORAGE_CLASS
from tests.operator_harness import wait_for
from tests.unit.clusters import make_cluster

pytestmark = pytest.mark.cluster

IMAGES = UpgradeImages(
    15, "example.invalid/pgherd/postgres:15", 18, "example.invalid/pgherd/postgres:18"
)
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def _jobs(namespace: str) -> list[dict[str, Any]]:
    cluster = make_cluster(name="db", namespace=namespace)
    return [
        render_check_job(cluster, IMAGES, method="link"),
        render_upgrade_job(cluster, IMAGES, method="copy", claim="pgdata-db-0"),
        render_rollback_job(cluster, IMAGES, claim="pgdata-db-0", force=True),
    ]


def _pod_of(job: dict[str, Any]) -> dict[str, Any]:
    template = job["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job['metadata']['name']}-pod", **template["metadata"]},
        "spec": template["spec"],
    }


def _has_default_account(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def test_the_pods_pass_restricted_pod_security_admission(
    api: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    # Pod admission wants the pod's ServiceAccount, which a new namespace gets in a moment.
    wait_for("the default ServiceAccount", lambda: _has_default_account(core, namespace))
    # The admission really enforces here: a pod on the node's network is refused.
    bad = _pod_of(_jobs(namespace)[0])
    bad["spec"] = {**bad["spec"], "hostNetwork": True}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, bad, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)
    for job in _jobs(namespace):
        # The Job as the API validates it, and its pod as PodSecurity admits pods (a Job's
        # template only draws warnings; its pods are what is enforced).
        batch.create_namespaced_job(namespace, job, dry_run="All")
        core.create_namespaced_pod(namespace, _pod_of(job), dry_run="All")


def _shell(job: dict[str, Any], script: str, volumes: tuple[str, ...]) -> dict[str, Any]:
    """The Job as rendered with only these volumes, a shell in place of its containers, its
    plain environment (no Secret here), and no owner (no PostgresCluster exists here)."""
    job = copy.deepcopy(job)
    del job["metadata"]["ownerReferences"]
    pod = job["spec"]["template"]["spec"]
    pod["initContainers"] = []
    main = pod["containers"][0]
    main["command"] = ["/bin/sh", "-c", script]
    # Only what the script needs: no Secret's keys, no primary to reach (the test kubelet
    # holds a pod whose PGHOST names a Service that does not exist).
    main["env"] = [e for e in main["env"] if "value" in e and e["name"] not in ("PGHOST", "PGPORT")]
    main["volumeMounts"] = [m for m in main["volumeMounts"] if m["name"] in volumes]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] in volumes]
    return job


def _run(api: client.ApiClient, namespace: str, job: dict[str, Any]) -> Any:
    """Create the Job, wait until it is Complete, return its pod."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    name = job["metadata"]["name"]
    batch.create_namespaced_job(namespace, job)

    def complete() -> Any:
        status = batch.read_namespaced_job(name, namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Complete") == "True" or conditions

    wait_for(f"Job {name} Complete", lambda: complete() is True, timeout=90)
    (pod,) = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    return pod


# Host mode: the pod's paths are under PGHERD_ROOT.
ROOT = "${PGHERD_ROOT:-}"


def test_the_scratch_volume_is_made_mounted_and_goes_with_its_pod(
    api: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    script = (
        f'echo copy > "{ROOT}{SCRATCH_MOUNT}/copy" && echo written > "{ROOT}/dev/termination-log"'
    )
    job = _shell(_jobs(namespace)[0], script, (SCRATCH_VOLUME, "tmp"))
    pod = _run(api, namespace, job)
    assert pod.status.container_statuses[0].state.terminated.message == "written\n"
    claim = core.read_namespaced_persistent_volume_claim(f"{pod.metadata.name}-scratch", namespace)
    (owner,) = claim.metadata.owner_references
    assert (owner.kind, owner.uid, owner.controller) == ("Pod", pod.metadata.uid, True)
    assert claim.metadata.labels == labels.upgrade_labels("db")
    assert claim.spec.storage_class_name == STORAGE_CLASS  # the data volumes' (the default)
    assert claim.spec.resources.requests == {"storage": "1Gi"}
    assert claim.status.phase == "Bound"
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert (Path(volume.spec.host_path.path) / "copy").read_text() == "copy\n"

    batch.delete_namespaced_job(job["metadata"]["name"], namespace, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespaced_persistent_volume_claim(claim.metadata.name, namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for("the scratch claim to go with its pod", gone, timeout=60)


def test_the_upgrade_pod_finds_pgdata_on_the_primarys_claim(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    # The claim the StatefulSet's template makes for db-0.
    claim = {
        "metadata": {"name": "pgdata-db-0"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, claim)
    script = (
        f'mkdir -p "{ROOT}$PGDATA" && echo 15 > "{ROOT}$PGDATA/PG_VERSION" '
        f'&& echo "$PGDATA" > "{ROOT}/dev/termination-log"'
    )
    job = _shell(_jobs(namespace)[1], script, (contract.DATA_VOLUME, "tmp"))
    pod = _run(api, namespace, job)
    assert pod.status.container_statuses[0].state.terminated.message == f"{contract.PGDATA}\n"
    bound = core.read_namespaced_persistent_volume_claim("pgdata-db-0", namespace)
    volume = core.read_persistent_volume(bound.spec.volume_name)
    # PGDATA is where the instances have it: pgdata/ on the volume.
    assert (Path(volume.spec.host_path.path) / "pgdata" / "PG_VERSION").read_text() == "15\n"
