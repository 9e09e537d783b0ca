"""The CLI against a real scheduler and its admin API, over real HTTP.

``api_server`` runs a scheduler (PostgreSQL + NATS from the ``jobwire.testing``
plugin) and serves its API with the kit's uvicorn server on a free port, in
the test's event loop. ``jobwire`` runs the CLI against it: with typer's
CliRunner in a worker thread (the CLI is synchronous; the loop must keep
serving meanwhile), or as a real process with ``jobwire.process``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cli_harness import ROLES, ApiServer, Jobwire
from starlette.routing import Mount

from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.runtime.health import HttpServer, Readiness
from jobwire.runtime.service import ServiceContext
from jobwire.scheduler.api import ApiContext, create_app
from jobwire.scheduler.api.tokens import create_token
from jobwire.scheduler.main import Scheduler, spec
from jobwire.scheduler.settings import SchedulerSettings


@pytest_asyncio.fixture(loop_scope="session")
async def api_server(database_url: str, nats_url: str, namespace: str) -> AsyncIterator[ApiServer]:
    settings = SchedulerSettings(
        nats={"url": nats_url},
        namespace=namespace,
        database_url=database_url,
        scheduler={"relay_poll_seconds": 0.1},
    )
    readiness = Readiness()
    broker = Broker(settings, source="/jobwire/cli/tests", readiness=readiness)
    await broker.connect()
    await broker.ensure_streams()
    pool = await connect_pool(database_url, max_size=8)
    assert spec.migrations is not None
    await migrate(pool, "scheduler", load_migrations(spec.migrations))
    stop = asyncio.Event()
    scheduler = Scheduler(ServiceContext("scheduler", settings, broker, readiness, stop, db=pool))
    task = asyncio.create_task(scheduler.run())
    api = ApiContext(
        pool=lambda: pool,
        broker=broker,
        stopping=stop,
        namespace=namespace,
        on_outbox=scheduler.relay.wake.set,
    )
    http = HttpServer("127.0.0.1", 0, readiness, routes=[Mount("", app=create_app(api))])
    await http.start()
    tokens = {role: await create_token(pool, f"{role}-token", role) for role in ROLES}
    try:
        yield ApiServer(f"http://127.0.0.1:{http.port}", database_url, pool, tokens)
    finally:
        await http.stop()
        stop.set()
        await api.backfills.wait_stopped()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        await broker.close()
        await pool.close()


@pytest.fixture
def jobwire(api_server: ApiServer, tmp_path: Path) -> Jobwire:
    return Jobwire(api_server, tmp_path)


@pytest.fixture
def jobwire_no_server(tmp_path: Path) -> Jobwire:
    """For commands that need no API (tokens): its URL leads nowhere."""
    nowhere = ApiServer("http://127.0.0.1:9", "", None, {})
    return Jobwire(nowhere, tmp_path)
