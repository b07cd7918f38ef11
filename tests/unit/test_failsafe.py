"""Patroni's failsafe mode (issue 16, API-server outage): on by default, and carried to the
dynamic configuration of clusters that run already (an operator upgrade) without calling
that a hand edit; turned off or set back like any other key of the spec."""

from __future__ import annotations

from typing import Any

import pytest

from pgherd.controller import conditions as c
from pgherd.controller.actions import PatroniConfig
from pgherd.controller.plan import plan
from tests.unit.snapshots import SETTINGS, config_of, healthy, snapshot

SETTLED = {"phase": "Healthy", "observedGeneration": 1, "currentPrimary": "db-0"}


def _config_actions(spec: dict[str, Any], live: dict[str, Any]) -> list[PatroniConfig]:
    s = snapshot(spec, pods=healthy(), leader="db-0", dcs_config=live, status=dict(SETTLED))
    return [a for a in plan(s, SETTINGS).actions if isinstance(a, PatroniConfig)]


def _without_failsafe(spec: dict[str, Any]) -> dict[str, Any]:
    """What an operator before failsafe mode left in Patroni's configuration."""
    live = config_of(spec)
    del live["failsafe_mode"]
    return live


def test_a_running_cluster_gets_failsafe_mode_with_no_hand_edit_event() -> None:
    (patched,) = _config_actions({}, _without_failsafe({}))
    assert patched.patch == {"failsafe_mode": True}
    assert patched.member == "db-0"
    assert patched.hand_edit is None


def test_with_failsafe_mode_in_place_nothing_is_patched() -> None:
    assert _config_actions({}, config_of({})) == []


@pytest.mark.parametrize(
    ("spec", "live", "patch"),
    [
        # Turned off in the spec: the next pass tells Patroni.
        ({"patroni": {"failsafeMode": False}}, config_of({}), {"failsafe_mode": False}),
        ({"patroni": {"failsafeMode": False}}, _without_failsafe({}), {"failsafe_mode": False}),
    ],
)
def test_the_spec_decides(
    spec: dict[str, Any], live: dict[str, Any], patch: dict[str, Any]
) -> None:
    (patched,) = _config_actions(spec, live)
    assert patched.patch == patch


def test_failsafe_mode_turned_off_by_hand_is_set_back_with_an_event() -> None:
    live = {**config_of({}), "failsafe_mode": False}
    (patched,) = _config_actions({}, live)
    assert patched.patch == {"failsafe_mode": True}
    assert patched.hand_edit is not None
    assert patched.hand_edit.reason == c.PATRONI_CONFIG_EDITED
    assert "failsafe_mode" in patched.hand_edit.message


def test_an_upgrade_with_a_hand_edit_names_only_the_edit() -> None:
    live = {**_without_failsafe({}), "ttl": 99}
    (patched,) = _config_actions({}, live)
    assert patched.patch == {"failsafe_mode": True, "ttl": 30}
    assert patched.hand_edit is not None
    assert "ttl" in patched.hand_edit.message
    assert "failsafe_mode" not in patched.hand_edit.message
