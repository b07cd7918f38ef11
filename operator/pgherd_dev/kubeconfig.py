"""Writes kubeconfig files for the local control plane's clients."""

from __future__ import annotations

from pathlib import Path

import yaml

from pgherd_dev.pki import Pair


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
