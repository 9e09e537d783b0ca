from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio

from jobwire.contracts.job_types import JobParams, job_params, job_types
from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.runtime.health import Readiness
from jobwire.runtime.service import ServiceContext
from jobwire.scheduler.main import Scheduler, spec
from jobwire.scheduler.settings import SchedulerSettings

# A job type served by a worker (not start-workflow), for overlap, chaining
# and state tests. Registered once per test process.
if "test-work" not in job_types():

    @job_params("test-work")
    class TestWorkParams(JobParams):
        seconds: float = 0.0


@dataclass
class Harness:
    scheduler: Scheduler
    broker: Broker
    settings: SchedulerSettings

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.scheduler.store


@pytest_asyncio.fixture(loop_scope="session")
async def make_scheduler(
    database_url: str, nats_url: str, namespace: str
) -> AsyncIterator[Callable[..., Any]]:
    """Build a scheduler on real PostgreSQL and NATS; ``start=True`` also runs its loops."""
    stops: list[asyncio.Event] = []
    tasks: list[asyncio.Task[None]] = []
    brokers: list[Broker] = []
    pools = []

    async def make(start: bool = False, **options: Any) -> Harness:
        settings = SchedulerSettings(
            nats={"url": nats_url},
            namespace=namespace,
            database_url=database_url,
            scheduler={"relay_poll_seconds": 0.1, **options},
        )
        readiness = Readiness()
        broker = Broker(settings, source="/jobwire/scheduler/tests", readiness=readiness)
        await broker.connect()
        await broker.ensure_streams()
        brokers.append(broker)
        pool = await connect_pool(database_url, max_size=8)
        pools.append(pool)
        assert spec.migrations is not None
        await migrate(pool, "scheduler", load_migrations(spec.migrations))
        stop = asyncio.Event()
        stops.append(stop)
        ctx = ServiceContext("scheduler", settings, broker, readiness, stop, db=pool)
        scheduler = Scheduler(ctx)
        if start:
            tasks.append(asyncio.create_task(scheduler.run()))
        return Harness(scheduler, broker, settings)

    yield make
    for stop in stops:
        stop.set()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
    for broker in brokers:
        await broker.close()
    for pool in pools:
        await pool.close()
