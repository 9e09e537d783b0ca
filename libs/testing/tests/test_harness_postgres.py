"""PostgreSQL fixtures: one server per session, one fresh database per test."""

from __future__ import annotations

import asyncpg
import pytest

from jobwire.runtime.embedded import pid_alive
from jobwire.testing.plugin import PostgresServerFactory

pytestmark = pytest.mark.integration

# Filled by the parametrised test below, checked by the test after it (file order).
_seen_databases: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
async def test_database_url_is_a_fresh_database_per_test(database_url: str, run: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        name = await connection.fetchval("SELECT current_database()")
        tables = await connection.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        assert tables == 0, "another test's tables leaked into this database"
        await connection.execute("CREATE TABLE leftover (run int)")
        await connection.execute("INSERT INTO leftover VALUES ($1)", run)
    finally:
        await connection.close()
    assert name not in _seen_databases
    _seen_databases.append(name)


async def test_databases_are_dropped_after_their_test(postgres_dsn: str) -> None:
    assert len(_seen_databases) == 2
    connection = await asyncpg.connect(postgres_dsn)
    try:
        remaining = await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = ANY($1::text[])", _seen_databases
        )
    finally:
        await connection.close()
    assert remaining == 0


_factory_pids: list[int] = []


async def test_postgres_server_factory_starts_a_dedicated_server(
    postgres_server_factory: PostgresServerFactory, postgres_dsn: str
) -> None:
    server = postgres_server_factory()
    assert server.dsn != postgres_dsn
    connection = await asyncpg.connect(server.dsn)
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()
    assert server.pid is not None
    _factory_pids.append(server.pid)


def test_postgres_server_factory_stopped_its_server() -> None:
    assert len(_factory_pids) == 1
    assert not pid_alive(_factory_pids[0])
