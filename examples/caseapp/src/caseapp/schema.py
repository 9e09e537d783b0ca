"""Install, drop and count the sample schema (``schema.sql``, next to this file)."""

from __future__ import annotations

from importlib.resources import files

import asyncpg

from caseapp.model import SCHEMA, TABLES


def schema_sql() -> str:
    return files("caseapp").joinpath("schema.sql").read_text(encoding="utf-8")


async def install(dsn: str) -> None:
    """Create schema ``caseapp`` and its tables; a second install changes nothing."""
    connection = await asyncpg.connect(dsn)
    try:
        # Two installs at once could both pass IF NOT EXISTS and then collide on
        # the catalog; an advisory lock makes the second wait for the first.
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext('caseapp.install'))")
            await connection.execute(schema_sql())
    finally:
        await connection.close()


async def drop(dsn: str) -> None:
    """Drop schema ``caseapp`` with everything in it (nothing happens if it is absent)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    finally:
        await connection.close()


async def count_rows(dsn: str) -> dict[str, int]:
    """Rows per table, parents first (exact ``count(*)``: a scan of each table)."""
    connection = await asyncpg.connect(dsn)
    try:
        counts: dict[str, int] = {}
        for table in TABLES:
            # Table names come from TABLES, never from input.
            counts[table] = await connection.fetchval(f"SELECT count(*) FROM {SCHEMA}.{table}")
        return counts
    finally:
        await connection.close()
