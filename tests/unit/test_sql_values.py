"""SQL as values (pgherd.controller.sql) and their composition by psycopg
(pgherd.controller.postgres.compose): hostile names stay one identifier, secrets are never
shown, templates take only plain placeholders."""

from __future__ import annotations

import pytest
from psycopg import sql as psql

from pgherd.controller.postgres import compose
from pgherd.controller.sql import Ident, Lit, Statement, join

HOSTILE = ['we"ird; DROP TABLE x;--', "ünï cødé", "with space", "o'brien"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_is_one_quoted_identifier(name: str) -> None:
    statement = Statement("CREATE ROLE {}", (Ident(name),))
    expected = '"' + name.replace('"', '""') + '"'
    assert statement.shown() == f"CREATE ROLE {expected}"
    # psycopg quotes it the same way (no connection needed for identifiers).
    assert compose(statement).as_string(None) == f"CREATE ROLE {expected}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [("o'brien", "'o''brien'"), (None, "NULL"), (True, "true"), (7, "7")],
)
def test_literals_are_shown_quoted(value: str | int | bool | None, shown: str) -> None:
    assert Statement("SELECT {}", (Lit(value),)).shown() == f"SELECT {shown}"


def test_a_secret_literal_is_never_shown_nor_in_repr() -> None:
    statement = Statement("ALTER ROLE {} PASSWORD {}", (Ident("a"), Lit("SCRAM-xyz", secret=True)))
    assert "SCRAM-xyz" not in statement.shown()
    assert "SCRAM-xyz" not in repr(statement)


def test_qualified_identifiers_and_fragments_compose() -> None:
    options = join([Statement("LOGIN"), Statement("CONNECTION LIMIT {}", (Lit(3),))])
    statement = Statement("ALTER ROLE {} WITH {}", (Ident("r"), options))
    assert statement.shown() == 'ALTER ROLE "r" WITH LOGIN CONNECTION LIMIT 3'
    assert isinstance(compose(statement), psql.Composed)
    assert Ident("s", "t").shown() == '"s"."t"'


@pytest.mark.parametrize(
    "template",
    ["SELECT {0}", "SELECT {name}", "SELECT {} {}"],
)
def test_templates_take_only_one_plain_placeholder_per_argument(template: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Statement(template, (Lit(1),))


def test_an_identifier_is_never_empty() -> None:
    with pytest.raises(ValueError):
        Ident("")
