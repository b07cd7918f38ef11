"""The release history (releases/history.yaml): which versions exist and how they upgrade.

One file decides the upgrade graph: each release replaces the release before it and skips
(the `olm.skipRange` annotation) every older one, so a cluster on any released version reaches
the newest in one step while every released bundle stays reachable. The CSV carries one
`replaces` for all its channels (community catalogs build their channels from it, in
"replaces-mode"), so a release must replace the same version in every channel it joins; the
history refuses a graph where it would not. The CSV of a version (.bundle) writes the graph,
and the catalog (.catalog) reads it back from the CSVs and checks it against here.
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
        for release in self.releases:
            self._predecessor(release)
        return self

    def _predecessor(self, release: Release) -> str | None:
        """The one release this one replaces: the newest older release in its channels.

        In a channel where some older release exists, the newest of them must be that same
        release, since the CSV's single `replaces` is used for every channel of the bundle.
        """
        per_channel = {
            channel: older[-1].version
            for channel in release.channels
            if (older := self.older(release.version, channel))
        }
        if len(set(per_channel.values())) > 1:
            found = ", ".join(f"{c}: {v}" for c, v in sorted(per_channel.items()))
            raise ValueError(
                f"release {release.version} would replace different versions per channel "
                f"({found}), but a CSV has one `replaces` for all its channels: add the newer "
                "of those releases to the other channel too, or release into one channel"
            )
        return next(iter(per_channel.values()), None)

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

    def replaces(self, version: str) -> str | None:
        """The release this one upgrades from, the same in each of its channels."""
        return self._predecessor(self.get(version))

    def skip_range(self, version: str) -> str | None:
        """`olm.skipRange`: every older release may jump straight to this one."""
        older = self.older(version)
        return f">={older[0].version} <{version}" if older else None

    def channels(self) -> list[str]:
        return sorted({c for r in self.releases for c in r.channels})

    @property
    def latest(self) -> Release:
        return self.releases[-1]


def load(path: Path) -> History:
    return History.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def csv_name(package: str, version: str) -> str:
    """The ClusterServiceVersion (and catalog bundle) name of a version."""
    return f"{package}.v{version}"
