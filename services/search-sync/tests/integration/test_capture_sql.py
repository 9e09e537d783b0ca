"""The plan's SQL on a real PostgreSQL: documents the database builds, changes triggers capture."""

from __future__ import annotations

import json

import asyncpg

from jobwire.contracts.search import DocumentProfile
from jobwire.search_sync.domain.catalog import Catalog, Column, ForeignKey, Table
from jobwire.search_sync.domain.plan import resolve
from jobwire.search_sync.domain.sql import CHANGES, documents_of_keys_sql, install_sql

SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.cases (id bigint PRIMARY KEY, title text NOT NULL, blob bytea);
CREATE TABLE app.tasks (
    id bigint PRIMARY KEY,
    case_id bigint NOT NULL REFERENCES app.cases ON DELETE CASCADE,
    title text
);
"""


def _plan():  # type: ignore[no-untyped-def]
    n = lambda name: Column(name, "bigint", "int8", "N")  # noqa: E731
    t = lambda name: Column(name, "text", "text", "S")  # noqa: E731
    cases = Table(
        "app",
        "cases",
        "r",
        {"id": n("id"), "title": t("title"), "blob": Column("blob", "bytea", "bytea", "U")},
        ("id",),
    )
    tasks = Table(
        "app",
        "tasks",
        "r",
        {"id": n("id"), "case_id": n("case_id"), "title": t("title")},
        ("id",),
        (ForeignKey(("case_id",), "app", "cases", ("id",)),),
    )
    catalog = Catalog({("app", "cases"): cases, ("app", "tasks"): tasks})
    return resolve(DocumentProfile(root="app.cases", children=[{"table": "app.tasks"}]), catalog)


async def test_documents_and_captured_changes(database_url: str) -> None:
    plan = _plan()
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(SCHEMA)
        for statement in install_sql(plan):
            await connection.execute(statement)
        for statement in install_sql(plan):  # installing twice is harmless
            await connection.execute(statement)
        await connection.execute(
            "INSERT INTO app.cases VALUES (1, 'first', '\\x01ff'), (2, 'second', NULL)"
        )
        await connection.execute("INSERT INTO app.tasks VALUES (10, 1, 'b'), (11, 1, 'a')")
        await connection.execute("UPDATE app.tasks SET case_id = 2 WHERE id = 11")
        await connection.execute("DELETE FROM app.cases WHERE id = 2")

        rows = await connection.fetch(documents_of_keys_sql(plan), ["[1]", "[2]"])
        # case 2 is gone: its key comes back with no document, to be deleted
        assert [(r["key"], r["id"], r["document"] is None) for r in rows] == [
            ("[1]", "1", False),
            ("[2]", "2", True),
        ]
        assert json.loads(rows[0]["document"]) == {
            "id": 1,
            "title": "first",
            "blob": "Af8=",
            "tasks": [{"id": 10, "title": "b"}],
        }
        assert "\n" not in rows[0]["document"]
        changes = await connection.fetch(
            f"SELECT relation, keys::text AS keys FROM {CHANGES} ORDER BY id"
        )
        assert [(c["relation"], c["keys"]) for c in changes] == [
            ("app.cases(id)", "[1]"),
            ("app.cases(id)", "[2]"),
            ("app.tasks(case_id)", "[1]"),
            ("app.tasks(case_id)", "[1]"),
            ("app.tasks(case_id)", "[2]"),  # moved: the new case's key, then the old one's
            ("app.tasks(case_id)", "[1]"),
            ("app.cases(id)", "[2]"),
            ("app.tasks(case_id)", "[2]"),  # the cascade's delete of task 11, after its case
        ]
    finally:
        await connection.close()
