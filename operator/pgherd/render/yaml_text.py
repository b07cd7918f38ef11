"""Deterministic YAML text for generated files: sorted keys, block style, no anchors.

Generated manifests, the Patroni configuration and golden files are compared byte for byte,
so every writer in pgherd goes through these two functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


# libyaml's emitter (PyYAML's C binding): the Patroni ConfigMap is rendered on every pass,
# and the pure-Python emitter made that most of a pass's time. The text is the same.
class _PlainDumper(yaml.CSafeDumper):
    # Shared dict objects (labels, selectors) would otherwise become &id001 anchors.
    def ignore_aliases(self, data: Any) -> bool:
        return True


# YAML 1.1 readers (kubectl, Go's yaml) take these for booleans; PyYAML leaves y and n bare.
_BOOLEAN_LOOKING = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false"})


def _represent_str(dumper: _PlainDumper, value: str) -> yaml.ScalarNode:
    style: str | None = None
    if "\n" in value:
        # Embedded files (patroni.yaml in its ConfigMap) stay readable as literal blocks.
        style = "|"
    elif value.lower() in _BOOLEAN_LOOKING:
        style = "'"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PlainDumper.add_representer(str, _represent_str)


def dump(document: Any) -> str:
    """One YAML document with sorted keys."""
    return yaml.dump(
        document,
        Dumper=_PlainDumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )


def dump_all(documents: Iterable[Any]) -> str:
    """Several YAML documents separated by `---`."""
    return "---\n".join(dump(d) for d in documents)
