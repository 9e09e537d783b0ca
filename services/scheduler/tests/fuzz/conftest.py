"""Fixtures of the API fuzz test: one real ``jobwire scheduler`` process per module.

The helpers and the Hypothesis profiles live in ``fuzz_server`` (a module of
its own name: ``conftest`` names a module in every test folder of the suite).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_server import Background, LiveScheduler, scheduler_command

from jobwire.runtime.db import connect_pool
from jobwire.scheduler.api.tokens import create_token
from jobwire.testing.databases import scratch_database
from jobwire.testing.fleet import Fleet
from jobwire.testing.jetstream import purge_namespace


@pytest.fixture(scope="module")
def live_scheduler(
    postgres_dsn: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveScheduler]:
    background = Background()
    namespace = f"fz{os.urandom(4).hex()}"
    database = scratch_database(postgres_dsn, prefix="fuzz_")
    database_url = background.run(database.__aenter__())
    fleet = Fleet(
        Path(tmp_path_factory.mktemp("fuzz-scheduler")),
        scheduler_command(),
        namespace=namespace,
        env={
            "JOBWIRE_DATABASE_URL": database_url,
            "JOBWIRE_SCHEDULER__RELAY_POLL_SECONDS": "0.2",
            "JOBWIRE_SCHEDULER__LISTENER_SYNC_SECONDS": "1",
            # The firing loop looks at its next due job at least this often: a job
            # it cannot handle as the next one shows within a second, not 30.
            "JOBWIRE_SCHEDULER__MAX_IDLE_SECONDS": "0.5",
        },
        prefix="scheduler",
    )
    live = LiveScheduler(background, fleet, nats_url, namespace, database_url)
    try:
        live.start()

        async def admin_token() -> str:
            pool = await connect_pool(database_url, max_size=1)
            try:
                return await create_token(pool, "fuzz-admin", "admin")
            finally:
                await pool.close()

        live.token = background.run(admin_token())
        yield live
    finally:
        try:
            live.close()
            fleet.close()
        finally:
            background.run(purge_namespace(nats_url, namespace))
            background.run(database.__aexit__(None, None, None))
            background.close()
