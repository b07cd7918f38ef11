"""The PostgresCluster API models; v1alpha1 is the only (storage) version."""

from pgherd.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    PostgresCluster,
    PostgresClusterSpec,
    PostgresClusterStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "PostgresCluster",
    "PostgresClusterSpec",
    "PostgresClusterStatus",
]
