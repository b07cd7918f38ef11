"""The release history (releases/history.yaml): which versions exist and how they upgrade.

One file decides the upgrade graph: each release replaces the release before it and skips
(skipRange) every older one, so a cluster on any released version reaches the newest in one
step while every released bundle stays reachable. The CSV of a version (pgherd.bundle) and
the catalog's channels (pgherd.catalog) both read their graph from here.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

SEMVER_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$"
# OLM's validators accept these channel names (stable, candidate, fast and their suffixes).
CHANNEL_PATTERN = r"^(stable|candidate|fast)(-[a-z0-9.]+)?$"

Version = Annotated[str, StringConstraints(pattern=SEMVER_PATTERN)]
Channel = Annotated[str, StringConstraints(pattern=CHANNEL_PATTERN)]


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key of a MAJOR.MINOR.PATCH version."""
    if not re.match(SEMVER_PATTERN, version):
        raise ValueError(f"{version!r} is not MAJOR.MINOR.PATCH")
    return tuple(int(part) for part in version.split("."))


class Release(BaseModel):
    """One released (or about to be released) version."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: Version
    created_at: datetime = Field(alias="createdAt")
    channels: list[Channel] = Field(min_length=1)

    @property
    def created_at_text(self) -> str:
        return self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")


class History(BaseModel):
    """The whole history of one package."""

    model_config = ConfigDict(extra="forbid")

    package: str
    releases: list[Release] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> History:
        keys = [version_key(r.version) for r in self.releases]
        if keys != sorted(set(keys)):
            raise ValueError("releases must be listed oldest first, each version once")
        return self

    def get(self, version: str) -> Release:
        for release in self.releases:
            if release.version == version:
                return release
        listed = ", ".join(r.version for r in self.releases)
        raise LookupError(
            f"version {version} is not in the release history ({listed}); add it to "
            "releases/history.yaml (see docs/releasing.md)"
        )

    def older(self, version: str, channel: str | None = None) -> list[Release]:
        """Releases before version, oldest first; only those in channel when given."""
        key = version_key(version)
        return [
            r
            for r in self.releases
            if version_key(r.version) < key and (channel is None or channel in r.channels)
        ]

    def replaces(self, version: str, channel: str | None = None) -> str | None:
        """The release this one upgrades from (the one just before it)."""
        older = self.older(version, channel)
        return older[-1].version if older else None

    def skip_range(self, version: str, channel: str | None = None) -> str | None:
        """Every older release may jump straight to this one."""
        older = self.older(version, channel)
        return f">={older[0].version} <{version}" if older else None

    def channels(self) -> list[str]:
        return sorted({c for r in self.releases for c in r.channels})


def load(path: Path) -> History:
    return History.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def csv_name(package: str, version: str) -> str:
    """The ClusterServiceVersion (and catalog bundle) name of a version."""
    return f"{package}.v{version}"
