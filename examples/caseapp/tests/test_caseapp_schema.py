"""The schema on a real PostgreSQL: idempotent install, indexed foreign keys, cascades."""

from __future__ import annotations

import asyncpg
import pytest

from caseapp import TABLES, count_rows, drop, generate, install

pytestmark = pytest.mark.integration

CHILDREN = ("tasks", "comments", "attachments", "emails")


async def test_install_twice_is_fine_and_creates_every_table(database_url: str) -> None:
    await install(database_url)
    await install(database_url)
    assert await count_rows(database_url) == dict.fromkeys(TABLES, 0)


async def test_every_foreign_key_column_is_indexed(database_url: str) -> None:
    await install(database_url)
    connection = await asyncpg.connect(database_url)
    try:
        foreign_keys = await connection.fetch(
            """
            SELECT c.conrelid::regclass::text AS table_name, a.attname AS column_name
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.contype = 'f' AND c.connamespace = 'caseapp'::regnamespace
            """
        )
        leading = await connection.fetch(
            """
            SELECT i.indrelid::regclass::text AS table_name, a.attname AS column_name
            FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            JOIN pg_class t ON t.oid = i.indrelid
            WHERE t.relnamespace = 'caseapp'::regnamespace
            """
        )
        status_index = await connection.fetchval(
            "SELECT pg_get_indexdef('caseapp.cases_status_closed_at_idx'::regclass)"
        )
    finally:
        await connection.close()
    indexed = {(row["table_name"], row["column_name"]) for row in leading}
    keys = {(row["table_name"], row["column_name"]) for row in foreign_keys}
    assert len(keys) == 1 + len(CHILDREN)
    assert keys <= indexed, keys - indexed
    assert "(status, closed_at)" in status_index


async def test_deleting_a_case_deletes_its_children_and_nothing_else(database_url: str) -> None:
    await install(database_url)
    await generate(database_url, cases=3, seed=1)
    connection = await asyncpg.connect(database_url)
    try:
        doomed, kept = [
            row["id"]
            for row in await connection.fetch("SELECT id FROM caseapp.cases ORDER BY id LIMIT 2")
        ]
        await connection.execute("DELETE FROM caseapp.cases WHERE id = $1", doomed)
        for table in CHILDREN:
            left = await connection.fetchval(
                f"SELECT count(*) FROM caseapp.{table} WHERE case_id = $1", doomed
            )
            assert left == 0, table
            other = await connection.fetchval(
                f"SELECT count(*) FROM caseapp.{table} WHERE case_id = $1", kept
            )
            assert other > 0, table
    finally:
        await connection.close()
    assert (await count_rows(database_url))["customers"] == 1


async def test_a_closed_case_needs_closed_at(database_url: str) -> None:
    await install(database_url)
    await generate(database_url, cases=1, closed_fraction=0.0)
    connection = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="cases_closed_at_iff_closed"):
            await connection.execute("UPDATE caseapp.cases SET status = 'closed'")
    finally:
        await connection.close()


async def test_drop_removes_the_schema_and_may_run_twice(database_url: str) -> None:
    await install(database_url)
    await drop(database_url)
    await drop(database_url)
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT to_regnamespace('caseapp')") is None
    finally:
        await connection.close()
