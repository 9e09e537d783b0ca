"""The admin API on a real scheduler (PostgreSQL + NATS), called through httpx.

``api`` gives one client per role (``api.admin``, ``api.operator``,
``api.viewer``) and one without a token (``api.anonymous``), all talking to
the FastAPI app in-process (ASGI), so requests and the scheduler share the
test's event loop and database pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest_asyncio

from jobwire.contracts.envelope import utcnow
from jobwire.scheduler.api import ApiContext, create_app
from jobwire.scheduler.api.tokens import create_token

ROLES = ("viewer", "operator", "admin")


@dataclass
class ApiHarness:
    harness: Any  # conftest.Harness: the scheduler, its broker and settings
    context: ApiContext
    tokens: dict[str, str]
    clients: dict[str, httpx.AsyncClient]
    app: Any

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.clients["admin"]

    @property
    def operator(self) -> httpx.AsyncClient:
        return self.clients["operator"]

    @property
    def viewer(self) -> httpx.AsyncClient:
        return self.clients["viewer"]

    @property
    def anonymous(self) -> httpx.AsyncClient:
        return self.clients["anonymous"]

    @property
    def store(self) -> Any:
        return self.harness.scheduler.store

    @property
    def pool(self) -> Any:
        return self.harness.scheduler.store.pool

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://jobwire.test",
            headers=headers,
        )
        self.clients[f"extra-{len(self.clients)}"] = client
        return client


@pytest_asyncio.fixture(loop_scope="session")
async def make_api(make_scheduler: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    made: list[ApiHarness] = []

    async def make(
        start: bool = True, clock: Callable[[], datetime] = utcnow, **options: Any
    ) -> ApiHarness:
        h = await make_scheduler(start=start, **options)
        scheduler = h.scheduler
        context = ApiContext(
            pool=lambda: scheduler.store.pool,
            broker=h.broker,
            stopping=scheduler.stopping,
            namespace=h.settings.namespace,
            clock=clock,
            on_outbox=scheduler.relay.wake.set,
        )
        app = create_app(context)
        tokens = {
            role: await create_token(scheduler.store.pool, f"{role}-token", role) for role in ROLES
        }
        clients = {}
        for role in (*ROLES, "anonymous"):
            headers = {"Authorization": f"Bearer {tokens[role]}"} if role in tokens else {}
            clients[role] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://jobwire.test",
                headers=headers,
            )
        harness = ApiHarness(h, context, tokens, clients, app)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.context.stopping.set()
        await harness.context.backfills.wait_stopped()
        for client in harness.clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def api(make_api: Callable[..., Any]) -> ApiHarness:
    harness: ApiHarness = await make_api()
    return harness
