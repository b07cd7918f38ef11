"""Locates the pinned tool binaries built by hack/build-tools.sh.

The versions live in hack/versions.env; binaries live in a cache outside the clone,
one directory per tool and version, so every clone on the machine shares one build.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgherd_dev.errors import DevError

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"

# binary name -> (cache directory prefix, version key in versions.env, make target)
_BINARIES: dict[str, tuple[str, str]] = {
    "kube-apiserver": ("kube", "KUBE_VERSION"),
    "kube-controller-manager": ("kube", "KUBE_VERSION"),
    "kube-scheduler": ("kube", "KUBE_VERSION"),
    "kubectl": ("kube", "KUBE_VERSION"),
    "etcd": ("etcd", "ETCD_VERSION"),
    "kwok": ("kwok", "KWOK_VERSION"),
    "olm": ("olm", "OLM_VERSION"),
    "catalog": ("olm", "OLM_VERSION"),
    "opm": ("opm", "OPM_VERSION"),
    "operator-sdk": ("operator-sdk", "OPERATOR_SDK_VERSION"),
    # The binary of operator-sdk's scorecard-test image, same module and version.
    "scorecard-test": ("scorecard-test", "OPERATOR_SDK_VERSION"),
}


def versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse KEY=VALUE lines of the versions file."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def cache_dir() -> Path:
    """The tool cache, shared by all clones; same rule as hack/build-tools.sh."""
    if explicit := os.environ.get("PGHERD_TOOLS_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgherd" / "tools"


def tool_path(name: str) -> Path:
    """Path of a pinned binary, or a DevError telling how to build it."""
    prefix, key = _BINARIES[name]
    version = versions()[key]
    path = cache_dir() / f"{prefix}-{version}" / name
    if not os.access(path, os.X_OK):
        raise DevError(
            f"{name} {version} is not built (looked for {path}). "
            f"Run `make tools` (or `hack/build-tools.sh {prefix}`) to build it; "
            "cold builds take several minutes and are cached for later runs."
        )
    return path


def kwok_stages() -> Path:
    """kwok's default node and pod stages, installed beside its binary by the build script."""
    path = tool_path("kwok").parent / "stages.yaml"
    if not path.is_file():
        raise DevError(f"{path} is missing. Run `make tools` to install kwok's stages.")
    return path
