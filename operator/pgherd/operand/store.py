"""An object store location, read from the pod's environment, as barman-cloud arguments.

The pod spec carries the location (PGHERD_BACKUP_*, PGHERD_RESTORE_*: pgherd.contract) and the
credentials (AWS_*, from the user's Secrets); this turns them into barman-cloud command lines.
Credentials stay in the environment of the child process only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pgherd import contract
from pgherd.contract import ARCHIVE_PREFIX, AWS_KEYS


@dataclass(frozen=True)
class Store:
    """One object store location as the operand sees it."""

    destination: str
    server_name: str
    endpoint_url: str | None
    region: str | None
    ca_file: str | None
    compression: str
    credentials: dict[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = ARCHIVE_PREFIX) -> Store | None:
        """The store the pod's environment names, or None when it names none."""
        destination = env.get(prefix + "DESTINATION", "")
        if not destination:
            return None
        ca = env.get(prefix + "CA_FILE") or None
        if ca:
            ca = contract.rooted(env.get("PGHERD_ROOT", "/"), ca)
        # The archive's credentials are the standard AWS_* variables; a restore source has
        # its own, prefixed, so that a restore can read one store and archive to another.
        cred_prefix = "" if prefix == ARCHIVE_PREFIX else prefix
        credentials = {k: env[cred_prefix + k] for k in AWS_KEYS if env.get(cred_prefix + k)}
        return cls(
            destination=destination,
            server_name=env.get(prefix + "SERVER_NAME", ""),
            endpoint_url=env.get(prefix + "ENDPOINT_URL") or None,
            region=env.get(prefix + "REGION") or None,
            ca_file=ca,
            compression=env.get(prefix + "COMPRESSION", "none"),
            credentials=credentials,
        )

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Environment of a barman-cloud process for this store."""
        env = {k: v for k, v in base.items() if k not in AWS_KEYS}
        env.update(self.credentials)
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        if self.ca_file:
            env["AWS_CA_BUNDLE"] = self.ca_file
        # Fail fast instead of retrying for minutes: PostgreSQL retries archiving itself.
        env.setdefault("AWS_MAX_ATTEMPTS", "2")
        return env

    def args(self) -> list[str]:
        """The connection arguments every barman-cloud command takes."""
        out = ["--cloud-provider", "aws-s3"]
        if self.endpoint_url:
            out += ["--endpoint-url", self.endpoint_url]
        return out

    def compression_args(self) -> list[str]:
        return {"gzip": ["--gzip"], "bzip2": ["--bzip2"]}.get(self.compression, [])

    def location(self) -> list[str]:
        return [self.destination, self.server_name]
