"""Pool and migrations on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from jobwire.runtime.db import MigrationError, connect_pool, load_migrations, migrate
from jobwire.runtime.embedded import free_port
from jobwire.runtime.health import Readiness
from jobwire.runtime.waits import Stopped

pytestmark = pytest.mark.integration


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    (tmp_path / "0001_jobs.sql").write_text(
        "CREATE TABLE jobs (id bigserial PRIMARY KEY, name text UNIQUE NOT NULL);"
    )
    (tmp_path / "0002_seed.sql").write_text("INSERT INTO jobs (name) VALUES ('first');")
    return tmp_path


async def test_replicas_starting_together_apply_each_migration_once(
    database_url: str, migrations_dir: Path
) -> None:
    migrations = load_migrations(migrations_dir)
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in range(5)]
    try:
        applied = await asyncio.gather(*(migrate(p, "svc", migrations) for p in pools))
        # Exactly one starter applied both; the others found them done.
        assert sorted(applied, key=len) == [[], [], [], [], [1, 2]]
        rows = await pools[0].fetch("SELECT name FROM svc.jobs")
        assert [r["name"] for r in rows] == ["first"]
        versions = await pools[0].fetch("SELECT version FROM svc.schema_migrations ORDER BY 1")
        assert [r["version"] for r in versions] == [1, 2]
    finally:
        for pool in pools:
            await pool.close()


async def test_an_edited_applied_migration_stops_the_start(
    database_url: str, migrations_dir: Path
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await migrate(pool, "svc", load_migrations(migrations_dir))
        (migrations_dir / "0002_seed.sql").write_text("INSERT INTO jobs (name) VALUES ('other');")
        with pytest.raises(MigrationError, match=r"0002_seed\.sql was changed"):
            await migrate(pool, "svc", load_migrations(migrations_dir))
    finally:
        await pool.close()


async def test_a_failing_migration_leaves_nothing_half_applied(
    database_url: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003_broken.sql").write_text(
        "ALTER TABLE jobs ADD COLUMN note text; SELECT * FROM no_such_table;"
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(pool, "svc", load_migrations(migrations_dir))
        columns = await pool.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'svc' AND table_name = 'jobs'"
        )
        assert "note" not in {c["column_name"] for c in columns}
        versions = await pool.fetch("SELECT version FROM svc.schema_migrations ORDER BY 1")
        assert [r["version"] for r in versions] == [1, 2]
    finally:
        await pool.close()


async def test_unreachable_database_is_retried_and_reported() -> None:
    readiness = Readiness()
    stop = asyncio.Event()
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    task = asyncio.create_task(connect_pool(dsn, readiness=readiness, stop=stop))
    from jobwire.testing import wait_for

    await wait_for(
        lambda: "unreachable" in str(readiness.report().get("database")),
        timeout=10,
        description="readiness reports the database unreachable",
    )
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, timeout=5)


@pytest.mark.parametrize(("reset_sessions", "after_release"), [(True, "0"), (False, "1234ms")])
async def test_a_pool_resets_sessions_on_release_unless_told_not_to(
    database_url: str, reset_sessions: bool, after_release: str
) -> None:
    pool = await connect_pool(database_url, max_size=1, reset_sessions=reset_sessions)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = '1234ms'")
        # One connection: the next acquire is the same session.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == after_release
            # Either way an open transaction never outlives its release.
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()
