"""The Jobs Management page end to end: a real scheduler over real HTTP, real Chromium.

``served`` runs the scheduler the way the service kit does — its own routes
(``spec.routes``: the page and the API) on the kit's HTTP server, then its
``main`` with every loop running, on real PostgreSQL and NATS — with the HTTP
server on a free loopback port. ``browser`` is Debian's Chromium, driven by
Playwright; Playwright never downloads a browser of its own here.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, async_playwright
from web_harness import Served

from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.runtime.health import HttpServer, Readiness
from jobwire.runtime.service import ServiceContext
from jobwire.scheduler.main import spec
from jobwire.scheduler.settings import SchedulerSettings
from jobwire.testing.waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest_asyncio.fixture(loop_scope="session")
async def served(database_url: str, nats_url: str, namespace: str) -> AsyncIterator[Served]:
    settings = SchedulerSettings(
        nats={"url": nats_url},
        namespace=namespace,
        database_url=database_url,
        shutdown_grace_seconds=5,
        scheduler={"relay_poll_seconds": 0.1},
    )
    readiness = Readiness()
    readiness.set("started", False, "starting")
    broker = Broker(settings, source="/jobwire/scheduler/tests/web", readiness=readiness)
    stop = asyncio.Event()
    ctx = ServiceContext("scheduler", settings, broker, readiness, stop)
    assert spec.routes is not None
    http = HttpServer("127.0.0.1", 0, readiness, spec.routes(ctx))
    await http.start()
    main: asyncio.Task[None] | None = None
    try:
        await broker.connect()
        await broker.ensure_streams()
        ctx.db = await connect_pool(database_url, max_size=8)
        assert spec.migrations is not None
        await migrate(ctx.db, "scheduler", load_migrations(spec.migrations))
        readiness.set("started", True)
        main = asyncio.create_task(spec.main(ctx))
        url = f"http://127.0.0.1:{http.port}"
        async with httpx.AsyncClient(base_url=url) as client:

            async def ready() -> bool:
                return bool((await client.get("/api/v1/health")).json()["ready"])

            await wait_for(ready, description="the scheduler's API is ready")
        yield Served(url, ctx.db)
    finally:
        stop.set()
        try:
            if main is not None:
                await asyncio.wait_for(main, timeout=10)  # a crashed main fails the test
        finally:
            await http.stop()
            await broker.close()
            if ctx.db is not None:
                await ctx.db.close()


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; a failure, not a skip, when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the web page tests need Debian's chromium, which "
            "`.ci/system-packages` installs (`make install`, or `apt-get install chromium`)"
        )
    return CHROMIUM


@pytest_asyncio.fixture(loop_scope="session")
async def browser(chromium: Path) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile whose clock shows Asia/Kolkata (UTC+05:30,
    no DST), so that local times on the page visibly differ from UTC."""
    async with async_playwright() as playwright:
        with tempfile.TemporaryDirectory(prefix="jobwire-chromium-") as profile:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(chromium),
                headless=True,
                args=CHROMIUM_ARGS,
                timezone_id="Asia/Kolkata",
                locale="en-GB",
                viewport={"width": 1440, "height": 900},
            )
            try:
                yield context
            finally:
                with contextlib.suppress(Exception):
                    await context.close()
