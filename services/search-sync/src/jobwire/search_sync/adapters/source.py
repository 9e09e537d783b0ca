"""The application's PostgreSQL database, as the search sync reads it.

Snapshots: every read that feeds the engine runs in a REPEATABLE READ, READ
ONLY transaction, and takes two numbers from its snapshot:

* the **fence**, ``pg_snapshot_xmin``: every transaction with a lower id has
  ended, so every change captured below it is visible now and nothing below it
  can still arrive. A run that has applied all changes below the fence may set
  the consumer's watermark to it;
* the **version**, the number of transactions the snapshot sees as ended
  (``xmax`` minus the ids still in progress). It grows with every commit, and
  two snapshots with the same version see the same data, so documents written
  with it as their external version can never be overwritten by older ones.

Neither holds back the source: a read-only transaction takes no transaction
id, and changes are read by index range and pruned once every consumer passed
them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from jobwire.contracts.search import SourceDatabase
from jobwire.search_sync.domain.catalog import Catalog, Column, ForeignKey, Table, split_name
from jobwire.search_sync.domain.plan import Lookup, Plan
from jobwire.search_sync.domain.sql import (
    CHANGES,
    CONSUMERS,
    SCHEMA,
    count_sql,
    documents_of_keys_sql,
    documents_sql,
    install_sql,
    roots_of_lookup_sql,
    trigger_name,
)

APPLICATION_NAME = "jobwire-search-sync"

_COLUMNS = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind, a.attname AS column,
       format_type(a.atttypid, a.atttypmod) AS sql_type,
       coalesce(e.typname, t.typname)::text AS base_type,
       coalesce(e.typcategory, t.typcategory)::text AS category,
       e.oid IS NOT NULL AS is_array,
       coalesce(e.typtype, t.typtype) = 'e' AS is_enum
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY n.nspname, c.relname, a.attnum
"""

_KEYS = """
SELECT n.nspname AS schema, c.relname AS name, k.contype::text AS kind,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(num, o)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num
             ORDER BY u.o)::text[] AS columns,
       fn.nspname AS ref_schema, fc.relname AS ref_table,
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(num, o)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num
             ORDER BY u.o)::text[] AS referenced
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class fc ON fc.oid = k.confrelid
LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
WHERE k.contype IN ('p', 'f')
  AND (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY k.conname
"""

_SNAPSHOT = """
SELECT pg_snapshot_xmin(s)::text::bigint AS fence,
       pg_snapshot_xmax(s)::text::bigint - (SELECT count(*) FROM pg_snapshot_xip(s)) AS version
FROM pg_current_snapshot() AS s
"""

_CHANGES = f"""
SELECT xid::text::bigint AS xid, relation, keys::text AS keys
FROM {CHANGES}
WHERE xid >= $1::text::xid8 AND relation = ANY($2::text[])
ORDER BY xid
LIMIT $3
"""

_CHANGES_OF_ONE = f"""
SELECT xid::text::bigint AS xid, relation, keys::text AS keys
FROM {CHANGES}
WHERE xid = $1::text::xid8 AND relation = ANY($2::text[])
"""

_LAG = f"""
SELECT extract(epoch FROM clock_timestamp() - min(changed_at))::float8
FROM {CHANGES}
WHERE xid >= $1::text::xid8 AND relation = ANY($2::text[])
"""

_CONSUMER = f"""
SELECT alias, index_name, profile_hash, watermark::text::bigint AS watermark, loaded_at, updated_at
FROM {CONSUMERS} WHERE alias = $1
"""

# A full load starts the consumer over: its index and watermark are the load's.
_LOADED = f"""
INSERT INTO {CONSUMERS} (alias, index_name, profile_hash, watermark)
VALUES ($1, $2, $3, $4::text::xid8)
ON CONFLICT (alias) DO UPDATE SET index_name = excluded.index_name,
    profile_hash = excluded.profile_hash, watermark = excluded.watermark,
    loaded_at = now(), updated_at = now()
"""

# An incremental run only moves the watermark forward, and only for the index it
# wrote to: a full load that swapped the alias meanwhile has the last word.
_ADVANCE = f"""
UPDATE {CONSUMERS} SET watermark = greatest(watermark, $3::text::xid8), updated_at = now()
WHERE alias = $1 AND index_name = $2
"""

_PRUNE = f"""
DELETE FROM {CHANGES} WHERE xid < (SELECT min(watermark) FROM {CONSUMERS})
"""


class SourceUnavailable(Exception):
    """The source database could not be reached or answered with an error."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    fence: int
    version: int


@dataclass(frozen=True, slots=True)
class Change:
    xid: int
    relation: str
    keys: str | None  # the captured columns' values as a JSON array; None: truncated


@dataclass(frozen=True, slots=True)
class Consumer:
    alias: str
    index_name: str
    profile_hash: str
    watermark: int
    loaded_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentRow:
    key: str  # the key as JSON array text
    id: str
    document: str | None


async def connect(dsn: str, source: SourceDatabase) -> asyncpg.Connection:
    """A connection with the job's limits on every statement and lock wait."""
    settings = {
        "application_name": APPLICATION_NAME,
        "statement_timeout": str(int(source.statement_timeout_seconds * 1000)),
        "lock_timeout": str(int(source.lock_timeout_seconds * 1000)),
    }
    try:
        return await asyncpg.connect(dsn, server_settings=settings, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise SourceUnavailable(f"cannot connect to the source database: {exc}") from exc


async def read_catalog(connection: asyncpg.Connection, names: Sequence[str]) -> Catalog:
    """What the catalog says about the tables and views ``names``; absent ones are left out."""
    pairs = [split_name(name) for name in names if name]
    schemas, tables = [p[0] for p in pairs], [p[1] for p in pairs]
    columns: dict[tuple[str, str], dict[str, Column]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for row in await connection.fetch(_COLUMNS, schemas, tables):
        where = (row["schema"], row["name"])
        kinds[where] = row["kind"]
        columns.setdefault(where, {})[row["column"]] = Column(
            row["column"],
            row["sql_type"],
            row["base_type"],
            row["category"],
            row["is_array"],
            row["is_enum"],
        )
    primary: dict[tuple[str, str], tuple[str, ...]] = {}
    foreign: dict[tuple[str, str], list[ForeignKey]] = {}
    for row in await connection.fetch(_KEYS, schemas, tables):
        where = (row["schema"], row["name"])
        if row["kind"] == "p":
            primary[where] = tuple(row["columns"])
        else:
            foreign.setdefault(where, []).append(
                ForeignKey(
                    tuple(row["columns"]),
                    row["ref_schema"],
                    row["ref_table"],
                    tuple(row["referenced"]),
                )
            )
    return Catalog(
        {
            where: Table(
                where[0],
                where[1],
                kinds[where],
                cols,
                primary.get(where, ()),
                tuple(foreign.get(where, [])),
            )
            for where, cols in columns.items()
        }
    )


@asynccontextmanager
async def snapshot(connection: asyncpg.Connection) -> AsyncIterator[Snapshot]:
    """A REPEATABLE READ, READ ONLY transaction and its snapshot's fence and version."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        row = await connection.fetchrow(_SNAPSHOT)
        assert row is not None
        yield Snapshot(row["fence"], row["version"])


async def count(connection: asyncpg.Connection, plan: Plan) -> int:
    value = await connection.fetchval(count_sql(plan))
    return int(value)


async def documents(
    connection: asyncpg.Connection, plan: Plan, fetch_size: int
) -> AsyncIterator[list[DocumentRow]]:
    """Every document, in batches of ``fetch_size``, from a server-side cursor (inside
    :func:`snapshot`): memory stays bounded whatever the table's size."""
    cursor = await connection.cursor(documents_sql(plan))
    while True:
        rows = await cursor.fetch(fetch_size)
        if not rows:
            return
        yield [DocumentRow(r["key"], r["id"], r["document"]) for r in rows]


async def documents_of(
    connection: asyncpg.Connection, plan: Plan, keys: Sequence[str]
) -> list[DocumentRow]:
    """The documents of ``keys`` (JSON array text); ``document`` is None where the row is gone."""
    rows = await connection.fetch(documents_of_keys_sql(plan), list(keys))
    return [DocumentRow(r["key"], r["id"], r["document"]) for r in rows]


async def roots_of_lookup(
    connection: asyncpg.Connection, plan: Plan, lookup: Lookup, keys: Sequence[str]
) -> list[str]:
    rows = await connection.fetch(roots_of_lookup_sql(plan, lookup), list(keys))
    return [r[0] for r in rows]


async def changes(
    connection: asyncpg.Connection, relations: Sequence[str], since: int, limit: int
) -> list[Change]:
    """Captured changes of ``relations`` from transaction ``since`` on, in xid order: ``limit``
    of them, or every change of one transaction that has more."""
    rows = await connection.fetch(_CHANGES, str(since), list(relations), limit)
    if len(rows) == limit and rows[0]["xid"] == rows[-1]["xid"]:
        rows = await connection.fetch(_CHANGES_OF_ONE, str(rows[0]["xid"]), list(relations))
    return [Change(r["xid"], r["relation"], r["keys"]) for r in rows]


async def pending(connection: asyncpg.Connection, relations: Sequence[str], since: int) -> int:
    """How many captured changes are not yet behind the watermark ``since``."""
    value = await connection.fetchval(
        f"SELECT count(*) FROM {CHANGES} WHERE xid >= $1::text::xid8 AND relation = ANY($2)",
        str(since),
        list(relations),
    )
    return int(value)


async def lag(connection: asyncpg.Connection, relations: Sequence[str], since: int) -> float:
    """Seconds since the oldest change not yet behind the watermark was made; 0 if none."""
    value = await connection.fetchval(_LAG, str(since), list(relations))
    return round(float(value), 3) if value is not None else 0.0


async def consumer(connection: asyncpg.Connection, alias: str) -> Consumer | None:
    """The alias's consumer row; None when no full load built it (or nothing is installed)."""
    if not await installed_schema(connection):
        return None
    row = await connection.fetchrow(_CONSUMER, alias)
    return None if row is None else Consumer(**dict(row))


async def loaded(
    connection: asyncpg.Connection, alias: str, index: str, profile: str, watermark: int
) -> None:
    await connection.execute(_LOADED, alias, index, profile, str(watermark))


async def advance(connection: asyncpg.Connection, alias: str, index: str, watermark: int) -> bool:
    """Move the watermark of ``alias`` on ``index`` forward; False if the alias moved on."""
    status = await connection.execute(_ADVANCE, alias, index, str(watermark))
    return bool(status.endswith(" 1"))


async def prune(connection: asyncpg.Connection) -> int:
    """Delete the changes every consumer has passed; returns how many."""
    status = await connection.execute(_PRUNE)
    return int(status.split()[-1])


async def installed_schema(connection: asyncpg.Connection) -> bool:
    value = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", CONSUMERS)
    return bool(value)


async def install(connection: asyncpg.Connection, plan: Plan) -> list[str]:
    """Install the change capture ``plan`` needs, in one transaction; returns the triggers."""
    async with connection.transaction():
        for statement in install_sql(plan):
            await connection.execute(statement)
    return [trigger_name(c) for c in plan.captures]


async def missing_triggers(connection: asyncpg.Connection, plan: Plan) -> list[str]:
    """The captured tables of ``plan`` whose trigger is not installed, as ``schema.table``."""
    rows = await connection.fetch(
        """SELECT n.nspname || '.' || c.relname AS table, t.tgname AS trigger
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE t.tgname = ANY($1::text[]) AND t.tgenabled <> 'D'""",
        [trigger_name(c) for c in plan.captures],
    )
    present = {(r["table"], r["trigger"]) for r in rows}
    return [
        c.table.qualified
        for c in plan.captures
        if (c.table.qualified, trigger_name(c)) not in present
    ]


__all__ = [
    "SCHEMA",
    "Change",
    "Consumer",
    "DocumentRow",
    "Snapshot",
    "SourceUnavailable",
    "advance",
    "changes",
    "connect",
    "consumer",
    "count",
    "documents",
    "documents_of",
    "install",
    "installed_schema",
    "lag",
    "loaded",
    "missing_triggers",
    "pending",
    "prune",
    "read_catalog",
    "roots_of_lookup",
    "snapshot",
]
