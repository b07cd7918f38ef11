"""A TEST-ONLY volume provisioner for the local control plane.

kwok's nodes have no disks and no CSI driver runs, so nothing would ever give a
PersistentVolumeClaim a volume. This small controller plays the external provisioner
for the `standard` StorageClass (provisioner `pgherd.dev/local-test`): for a claim the
scheduler has placed on a node (WaitForFirstConsumer) it creates a hostPath
PersistentVolume pinned to that node and pre-bound to the claim; the PV controller in
kube-controller-manager completes the binding. Released volumes of reclaim policy
Delete are removed. It also grows a volume when its claim asks for more (the job of an
external resizer), since storage expansion is something the operator must handle.

Volumes of a real size (TEST-ONLY, for disks that do not fill): a StorageClass with the
parameter `pgherd.dev/tmpfs: "true"` gets each volume's directory mounted as a tmpfs of the
claim's size (this needs root: CAP_SYS_ADMIN), so statvfs inside the pod sees the claim's
size and a volume can really fill; an expansion of the claim remounts the tmpfs bigger
before the PV's capacity and the claim's status.capacity say so, as a real resizer would.
A released volume's tmpfs is unmounted (its data is gone: memory, not storage).

It is level-based (lists on a short timer) because simplicity beats latency here.
Never use it outside the local control plane: hostPath volumes are not storage.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pgherd.controller.storage import quantity_bytes
from pgherd_dev.processes import api_down

PROVISIONER = "pgherd.dev/local-test"
_SELECTED_NODE = "volume.kubernetes.io/selected-node"
_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
TMPFS_PARAMETER = "pgherd.dev/tmpfs"

log = logging.getLogger("pgherd-dev.provisioner")


def _our_classes(storage: client.StorageV1Api) -> dict[str, Any]:
    return {
        sc.metadata.name: sc
        for sc in storage.list_storage_class().items
        if sc.provisioner == PROVISIONER
    }


def tmpfs_bytes(sc: Any, request: str) -> int | None:
    """The tmpfs size of a volume of this class for this request (None: a plain directory,
    the class does not ask for tmpfs or the request is not a size)."""
    if ((sc.parameters or {}).get(TMPFS_PARAMETER) or "").lower() != "true":
        return None
    return quantity_bytes(str(request))


def mount_command(path: Path, size: int, *, remount: bool) -> list[str]:
    """mount(8) for a volume's tmpfs of size bytes; remount grows (or shrinks) it in place,
    its files kept."""
    if remount:
        return ["mount", "-o", f"remount,size={size}", str(path)]
    return ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)]


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def mount_tmpfs(path: Path, size: int) -> None:
    """The volume's directory as a tmpfs of size bytes: mounted, or remounted to the size."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(mount_command(path, size, remount=_mounted(path)), check=True)


def _pv_for(pvc: Any, sc: Any, node: str | None, root: Path) -> dict[str, Any]:
    name = f"pvc-{pvc.metadata.uid}"
    spec: dict[str, Any] = {
        "capacity": {"storage": pvc.spec.resources.requests["storage"]},
        "accessModes": pvc.spec.access_modes,
        "persistentVolumeReclaimPolicy": sc.reclaim_policy or "Delete",
        "storageClassName": sc.metadata.name,
        "volumeMode": pvc.spec.volume_mode or "Filesystem",
        "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": pvc.metadata.namespace,
            "name": pvc.metadata.name,
            "uid": pvc.metadata.uid,
        },
    }
    if node:
        spec["nodeAffinity"] = {
            "required": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                        ]
                    }
                ]
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {_PROVISIONED_BY: PROVISIONER}},
        "spec": spec,
    }


def reconcile_once(core: client.CoreV1Api, storage: client.StorageV1Api, root: Path) -> None:
    """One level-based pass: provision, resize and delete as the objects ask."""
    classes = _our_classes(storage)
    pvs = {pv.metadata.name: pv for pv in core.list_persistent_volume().items}
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        sc = classes.get(pvc.spec.storage_class_name or "")
        if sc is None or pvc.metadata.deletion_timestamp:
            continue
        if pvc.status.phase == "Pending" and not pvc.spec.volume_name:
            node = (pvc.metadata.annotations or {}).get(_SELECTED_NODE)
            if sc.volume_binding_mode == "WaitForFirstConsumer" and not node:
                continue
            body = _pv_for(pvc, sc, node, root)
            if body["metadata"]["name"] not in pvs:
                size = tmpfs_bytes(sc, pvc.spec.resources.requests["storage"])
                if size is not None:
                    mount_tmpfs(Path(body["spec"]["hostPath"]["path"]), size)
                try:
                    core.create_persistent_volume(body)
                    log.info(
                        "provisioned %s for %s/%s on %s",
                        body["metadata"]["name"],
                        pvc.metadata.namespace,
                        pvc.metadata.name,
                        node,
                    )
                except ApiException as e:
                    if e.status != 409:
                        raise
        elif pvc.status.phase == "Bound":
            _resize(core, pvc, pvs.get(pvc.spec.volume_name), sc)
    for pv in pvs.values():
        _delete_released(core, pv)


def _delete_released(core: client.CoreV1Api, pv: Any) -> None:
    ours = (pv.metadata.annotations or {}).get(_PROVISIONED_BY) == PROVISIONER
    if not (
        ours
        and pv.status.phase == "Released"
        and pv.spec.persistent_volume_reclaim_policy == "Delete"
    ):
        return
    path = Path(pv.spec.host_path.path) if pv.spec.host_path else None
    if path is not None and _mounted(path):
        subprocess.run(["umount", str(path)], check=False)
    try:
        core.delete_persistent_volume(pv.metadata.name)
        log.info("deleted released %s", pv.metadata.name)
    except ApiException as e:
        if e.status != 404:
            raise


def _resize(core: client.CoreV1Api, pvc: Any, pv: Any, sc: Any) -> None:
    if pv is None:
        return
    want = pvc.spec.resources.requests["storage"]
    have = (pvc.status.capacity or {}).get("storage")
    if want == have:
        return
    size = tmpfs_bytes(sc, want)
    if size is not None and pv.spec.host_path is not None:
        # The filesystem first: capacity says what the pod can use only once it can.
        mount_tmpfs(Path(pv.spec.host_path.path), size)
    if pv.spec.capacity.get("storage") != want:
        core.patch_persistent_volume(pv.metadata.name, {"spec": {"capacity": {"storage": want}}})
    core.patch_namespaced_persistent_volume_claim_status(
        pvc.metadata.name, pvc.metadata.namespace, {"status": {"capacity": {"storage": want}}}
    )
    log.info("resized %s/%s to %s", pvc.metadata.namespace, pvc.metadata.name, want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path, help="directory for volume data")
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
    args.root.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            reconcile_once(core, storage, args.root)
        except Exception as e:  # keep serving: one bad pass must not end the provisioner
            if (down := api_down(e)) is not None:
                log.warning("provisioning pass failed: %s", down)
            else:
                log.exception("provisioning pass failed")
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
