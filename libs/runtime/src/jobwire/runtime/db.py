"""PostgreSQL: an asyncpg pool and a runner for plain, versioned SQL migrations.

Each service owns one schema and ships its migrations as files named
``NNNN_what.sql`` in a package folder. The runner applies each file once, in
order, each in its own transaction, under an advisory lock so that replicas
starting together do not race; an applied file that was edited afterwards stops
the start-up rather than drifting silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import asyncpg

from jobwire.runtime.health import Readiness
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import backoff_wait

log = get_logger("jobwire.db")

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# What a lost or restarting database looks like to asyncpg: loops that talk to
# PostgreSQL back off and retry on these instead of crashing the service.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


# The part of DATABASE_ERRORS that says nothing about the data: the connection,
# the server's state, a conflict with another transaction. Anything else
# PostgreSQL refuses (a value out of range, a constraint) is about the rows,
# and retrying the same rows cannot help.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError included
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, cannot connect now, query cancelled
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.LockNotAvailableError,
)


def connection_lost(exc: BaseException) -> bool:
    """Whether a failure is the database's moment rather than the data's."""
    return isinstance(exc, CONNECTION_ERRORS)


class MigrationError(Exception):
    """Migrations cannot be applied as they are (bad file name, edited file)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(folder: Traversable) -> list[Migration]:
    """Read ``NNNN_name.sql`` files from a package folder, ordered by version."""
    migrations = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.fullmatch(entry.name)
        if not match:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {folder}")
    return migrations


def quote_ident(name: str) -> str:
    """A schema name we create; restricted so it never needs escaping."""
    if not _IDENT.fullmatch(name):
        raise ValueError(f"schema name {name!r} must match {_IDENT.pattern}")
    return f'"{name}"'


async def migrate(pool: asyncpg.Pool, schema: str, migrations: list[Migration]) -> list[int]:
    """Apply pending migrations to ``schema``; returns the versions applied now."""
    quoted = quote_ident(schema)
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        # Session-level lock keyed on the schema: concurrent starters wait here,
        # then find the work done.
        lock_key = f"jobwire.migrate.{schema}"
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        checksum text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch(
                f"SELECT version, name, checksum FROM {quoted}.schema_migrations"
            )
            done = {r["version"]: r for r in rows}
            for migration in migrations:
                previous = done.get(migration.version)
                if previous is not None:
                    if previous["checksum"] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name}.sql was changed "
                            f"after it was applied to schema {schema}; add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {quoted}.schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(migration.version)
                log.info(
                    "db.migrated", schema=schema, version=migration.version, name=migration.name
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key)
    return applied_now


async def _json_codecs(conn: asyncpg.Connection) -> None:
    # json/jsonb columns read and write Python objects, in every service alike.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without the session reset (asyncpg still rolls back an open transaction)."""


async def connect_pool(
    dsn: str,
    *,
    max_size: int = 10,
    readiness: Readiness | None = None,
    stop: asyncio.Event | None = None,
    max_backoff: float = 10.0,
    reset_sessions: bool = True,
) -> asyncpg.Pool:
    """Create a pool, retrying with backoff while the database is unreachable.

    ``reset_sessions=False`` skips asyncpg's reset on every release (a round trip
    of ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), for a
    service that leaves no session state behind: no LISTEN, session SET,
    session advisory lock or cursor outside a transaction.
    """
    readiness = readiness or Readiness()
    delay, attempt = 0.2, 0
    while True:
        attempt += 1
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                init=_json_codecs,
                reset=None if reset_sessions else _keep_session,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            readiness.set("database", False, f"unreachable: {type(exc).__name__}")
            log.warning(
                "db.unreachable",
                attempt=attempt,
                retry_in_seconds=round(delay, 2),
                error=str(exc) or type(exc).__name__,
            )
            await backoff_wait(delay, stop)
            delay = min(delay * 2, max_backoff)
            continue
        readiness.set("database", True)
        return pool
