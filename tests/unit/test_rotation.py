"""Password rotation decisions (spec.credentials.rotate), table-driven on snapshots: the next
password is kept in the vault first, set in PostgreSQL next, and only then published."""

from __future__ import annotations

import base64
import copy
from datetime import datetime
from typing import Any

import pytest

from pgherd.api.v1alpha1 import CredentialRotation, PostgresCluster
from pgherd.controller import conditions as c
from pgherd.controller.actions import Apply, SetPassword
from pgherd.controller.diff import stamped
from pgherd.controller.plan import plan
from pgherd.render import names
from pgherd.render.secrets import render_vault
from tests.unit.clusters import PASSWORDS
from tests.unit.snapshots import (
    NOW,
    SETTINGS,
    cluster_raw,
    config_of,
    healthy,
    live_children,
    snapshot,
)


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _world(
    rotate: dict[str, int],
    vault_extra: dict[str, str],
    children_override: dict[Any, Any] | None = None,
    **kw: Any,
) -> Any:
    spec = {"credentials": {"rotate": rotate}}
    kids = dict(
        children_override or live_children(PostgresCluster.model_validate(cluster_raw(spec)))
    )
    # The vault as the operator last applied it, with the rotation state given.
    vault = render_vault(PostgresCluster.model_validate(cluster_raw(spec)), PASSWORDS, vault_extra)
    live = copy.deepcopy(stamped(vault))
    live["metadata"]["resourceVersion"] = "7"
    kids[("Secret", "db-vault")] = live
    kw.setdefault("pods", healthy())
    return snapshot(spec, children=kids, dcs_config=config_of(spec), leader="db-0",
                    status={"phase": "Healthy"}, **kw)  # fmt: skip


def _plan(s: Any) -> Any:
    return plan(s, SETTINGS, new_password=lambda: "n3w-pa55word")


def test_the_api_and_the_renderers_agree_on_what_rotates() -> None:
    assert tuple(sorted(CredentialRotation.model_fields)) == tuple(sorted(names.ROTATABLE_KINDS))


@pytest.mark.parametrize(
    ("rotate", "vault_extra", "expected"),
    [
        # Nothing asked: nothing done, the vault holds no rotation state.
        ({}, {}, "nothing"),
        # Asked: first the next password is kept (the vault is applied with app.next).
        ({"app": 1}, {}, "keep app.next"),
        # Kept: set in PostgreSQL, then vault and Secret.
        ({"app": 1}, {"app.next": "n3w-pa55word"}, "set app"),
        # Carried out: nothing more.
        ({"app": 1}, {"app.rotation": "1", "app.rotated-at": NOW.isoformat()}, "nothing"),
        # Asked again.
        ({"app": 2}, {"app.rotation": "1", "app.rotated-at": NOW.isoformat()}, "keep app.next"),
        ({"superuser": 1}, {"superuser.next": "n3w-pa55word"}, "set superuser"),
    ],
)
def test_rotation_steps(rotate: dict[str, int], vault_extra: dict[str, str], expected: str) -> None:
    decided = _plan(_world(rotate, vault_extra))
    sets = [a for a in decided.actions if isinstance(a, SetPassword)]
    vault_applies = [a for a in decided.actions if isinstance(a, Apply) and a.name == "db-vault"]
    if expected == "nothing":
        assert sets == [] and vault_applies == []
        assert decided.activity is None or decided.activity.reason != c.ROTATING_CREDENTIALS
        return
    assert decided.activity is not None and decided.activity.reason == c.ROTATING_CREDENTIALS
    if expected == "keep app.next":
        assert sets == []
        [keep] = vault_applies
        kept = _decoded(keep.manifest)
        assert kept["app.next"] == "n3w-pa55word" and kept["app"] == PASSWORDS["app"]
        return
    kind = expected.split()[1]
    [action] = sets
    assert vault_applies == []  # the vault changes only after PostgreSQL did
    assert action.role == {"app": "app", "superuser": "postgres"}[kind]
    assert action.password == "n3w-pa55word" and action.conn_url.startswith("postgres://10.0.0.0")
    assert action.superuser_passwords[0] == PASSWORDS["superuser"]
    # A superuser rotation cut short may already have set the new one: it is tried second.
    assert action.superuser_passwords[1:] == (("n3w-pa55word",) if kind == "superuser" else ())
    vault, published = (_decoded(a.manifest) for a in action.then)
    assert vault[kind] == "n3w-pa55word" and f"{kind}.next" not in vault
    assert vault[f"{kind}.rotation"] == "1"
    assert datetime.fromisoformat(vault[f"{kind}.rotated-at"]) == NOW
    assert published["password"] == "n3w-pa55word"
    assert all(a.resource_version == "7" for a in action.then)  # conditional on what was seen
    assert "n3w-pa55word" not in repr(action)


def test_no_primary_no_rotation() -> None:
    decided = _plan(_world({"app": 1}, {"app.next": "n3w-pa55word"}, pods=[]))
    assert not [a for a in decided.actions if isinstance(a, SetPassword)]


def test_status_records_each_rotation() -> None:
    decided = _plan(_world({"app": 3}, {"app.rotation": "3", "app.rotated-at": NOW.isoformat()}))
    assert decided.credentials is not None and decided.credentials.app is not None
    assert decided.credentials.app.rotation == 3 and decided.credentials.app.last_rotated == NOW
    assert decided.credentials.superuser is None


def test_a_neighbours_secret_with_the_childs_name_is_never_written_by_a_rotation() -> None:
    s = _world({"app": 1}, {"app.next": "n3w-pa55word"})
    foreign = copy.deepcopy(s.children[("Secret", "db-app")])
    foreign["metadata"]["ownerReferences"] = [
        {"kind": "Deployment", "uid": "x", "controller": True}
    ]
    kids = {**s.children, ("Secret", "db-app"): foreign}
    decided = _plan(_world({"app": 1}, {"app.next": "n3w-pa55word"}, children_override=kids))
    assert not [a for a in decided.actions if isinstance(a, SetPassword)]
