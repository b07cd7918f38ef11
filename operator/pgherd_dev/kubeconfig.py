"""Writes kubeconfig files for the local control plane's clients."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from kubernetes import client

from pgherd_dev.pki import Pair

if TYPE_CHECKING:
    from pgherd_dev.controlplane import ControlPlane


def write(path: Path, server: str, ca: Path, client: Pair, user: str) -> Path:
    """A kubeconfig with one cluster, one user (client certificate) and one context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pgherd-local",
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(client.cert),
                    "client-key": str(client.key),
                },
            }
        ],
        "contexts": [
            {"name": "pgherd-local", "context": {"cluster": "pgherd-local", "user": user}}
        ],
        "current-context": "pgherd-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def for_service_account(
    cp: ControlPlane, api: client.ApiClient, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig authenticating as a ServiceAccount with a bound token (valid one day),
    so that a process run from the working tree has exactly that account's permissions."""
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": 86400}}
        )
        .status.token
    )
    admin = yaml.safe_load(cp.kubeconfig.read_text())
    cluster_name = admin["clusters"][0]["name"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": cluster_name, "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
