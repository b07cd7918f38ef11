"""The contract between the rendered pod and the operand image: ports, paths, user, command.

The operand image (PostgreSQL + Patroni + `pgherd instance`) must agree with these values;
keeping them in one module makes that agreement visible.
"""

from __future__ import annotations

from pathlib import Path

CONTAINER = "postgres"
COMMAND = ["pgherd", "instance"]

POSTGRES_PORT = 5432
POSTGRES_PORT_NAME = "postgresql"
PATRONI_PORT = 8008
PATRONI_PORT_NAME = "patroni"

# The data volume is mounted one level above PGDATA: a fresh filesystem's root holds
# lost+found, and initdb refuses a non-empty directory.
DATA_VOLUME = "pgdata"
DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"

CONFIG_DIR = "/etc/pgherd"
CONFIG_KEY = "patroni.yaml"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"

# Writable scratch space: the root filesystem is read-only.
TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir private to the pod, not a shared /tmp
SOCKET_DIR = "/run/postgresql"
SHM_DIR = "/dev/shm"  # noqa: S108 - a memory emptyDir mounted over it


def rooted(root: str, path: str) -> str:
    """A pod path as seen from the process: under root (PGHERD_ROOT, which the test
    kubelet sets; "/" in a real pod)."""
    return str(Path(root) / path.lstrip("/")) if root not in ("", "/") else path


PGPASS = f"{TMP_DIR}/pgpass"

# uid/gid 999 is `postgres` in Debian's postgresql packages and the official postgres image,
# which the operand image builds on; files on the data volume stay owned consistently.
POSTGRES_UID = 999
POSTGRES_GID = 999

# What an instance publishes about itself (the `pgherd instance` supervisor writes it on its
# own pod; the operator reads it): JSON with the keys below.
INSTANCE_ANNOTATION = "pgherd.io/instance"
REPORT_MAJOR = "postgresMajor"  # int: the major version of the image's PostgreSQL
REPORT_LIBRARIES = "libraries"  # list[str]: loadable libraries in the image ($libdir)
REPORT_ERROR = "error"  # str | None: why PostgreSQL does not run, in its own words
REPORT_IGNORED = "ignoredParameters"  # dict[str, str]: parameter -> why Patroni drops it
