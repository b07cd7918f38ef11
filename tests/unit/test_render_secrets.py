"""Secrets carry exactly the passwords passed in; nothing else holds a password."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pgherd.render import desired_children, yaml_text
from pgherd.render.secrets import render_secret, render_secrets
from tests.unit.clusters import PASSWORDS, make_cluster


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_secrets_hold_the_passwords_passed_in() -> None:
    cluster = make_cluster({"bootstrap": {"database": "orders", "owner": "orders_owner"}})
    vault, superuser, replication, app, restapi = (
        decoded(s) for s in render_secrets(cluster, PASSWORDS)
    )
    assert vault == PASSWORDS  # the operator's own copy (pgherd.passwords)
    assert superuser == {"username": "postgres", "password": PASSWORDS["superuser"]}
    assert replication == {"username": "replicator", "password": PASSWORDS["replication"]}
    assert restapi == {"username": "pgherd", "password": PASSWORDS["restapi"]}
    assert app["password"] == PASSWORDS["app"]
    assert app["username"] == app["user"] == "orders_owner"
    assert (app["host"], app["port"], app["dbname"]) == ("db-rw.prod.svc", "5432", "orders")


def test_app_uri_escapes_the_password() -> None:
    app = decoded(render_secret(make_cluster(), "app", "app", "p@ss/w:rd %"))
    uri = urlsplit(app["uri"])
    assert uri.scheme == "postgresql"
    assert (uri.hostname, uri.port, uri.path) == ("db-rw.prod.svc", 5432, "/app")
    assert (unquote(uri.username or ""), unquote(uri.password or "")) == ("app", "p@ss/w:rd %")


def test_no_password_that_was_not_passed_in() -> None:
    children = desired_children(make_cluster(), PASSWORDS)
    secrets = [c for c in children if c["kind"] == "Secret" and c["type"] != "Opaque"]
    assert next(c["metadata"]["name"] for c in children if c["kind"] == "Secret") == "db-vault"
    for secret in secrets:
        values = decoded(secret)
        assert values["password"] in PASSWORDS.values()
        others = {k: v for k, v in values.items() if k not in ("password", "uri")}
        assert not set(others.values()) & set(PASSWORDS.values())
    # No other object carries a password, in clear or base64.
    rest = yaml_text.dump_all(c for c in children if c["kind"] != "Secret")
    for password in PASSWORDS.values():
        assert password not in rest
        assert base64.b64encode(password.encode()).decode() not in rest


def test_rendering_a_secret_is_deterministic() -> None:
    cluster = make_cluster()
    assert render_secret(cluster, "superuser", "postgres", "x") == render_secret(
        cluster, "superuser", "postgres", "x"
    )


def test_empty_or_missing_passwords_are_refused() -> None:
    cluster = make_cluster()
    with pytest.raises(ValueError, match="password"):
        render_secret(cluster, "superuser", "postgres", "")
    with pytest.raises(ValueError, match="app"):
        render_secrets(cluster, {"superuser": "a", "replication": "b"})
    with pytest.raises(ValueError, match="app"):
        desired_children(cluster, {"superuser": "a", "replication": "b"})


def test_pods_read_credentials_from_the_rendered_secrets() -> None:
    children = desired_children(make_cluster(), PASSWORDS)
    keys = {c["metadata"]["name"]: set(c["data"]) for c in children if c["kind"] == "Secret"}
    (sts,) = (c for c in children if c["kind"] == "StatefulSet")
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    # Four Secrets, username and password each, but the superuser's password: a mounted file
    # (a rotation reaches the running instance), from the same Secret.
    assert len(refs) == 7
    assert all(r["key"] in keys[r["name"]] for r in refs)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mounted = volumes["superuser"]["secret"]
    assert mounted["secretName"] == "db-superuser"
    assert [i["key"] for i in mounted["items"]] == ["password"]
    assert "password" in keys["db-superuser"]
