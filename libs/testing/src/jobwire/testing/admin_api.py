"""The admin API as other services' API tests need it: the one that knows the tokens.

A service other than the scheduler checks a token by asking the scheduler's
``GET /api/v1/whoami`` (:mod:`jobwire.runtime.rest`). Its tests run the real
scheduler, as a whole service in the test's process (:class:`InProcessService`)
on the test's database, NATS and namespace, with a token per role made with
``create_token``; the service under test is started with ``scheduler_url``
pointing at it, as ``jobwire dev`` and a deployment do.

Fixtures (pytest plugin ``jobwire-admin-api``): ``scheduler``, a started
:class:`TokenScheduler`. :func:`running_scheduler` is the same as a context
manager, for fixtures that start more around it. :class:`RoleClients` holds an
httpx client per role (and one without a token) on another service's URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest_asyncio

from jobwire.runtime.db import connect_pool
from jobwire.runtime.embedded import free_port
from jobwire.testing.services import InProcessService

__all__ = ["ROLES", "RoleClients", "TokenScheduler", "running_scheduler", "scheduler"]

ROLES = ("viewer", "operator", "admin")


@dataclass
class TokenScheduler:
    service: InProcessService
    tokens: dict[str, str] = field(repr=False)  # role → a token of that role

    @property
    def url(self) -> str:
        return self.service.url


@contextlib.asynccontextmanager
async def running_scheduler(
    database_url: str, nats_url: str, namespace: str, **settings: Any
) -> AsyncIterator[TokenScheduler]:
    """The scheduler serving its API on a free port, with a token per role; ``settings``
    override its :class:`SchedulerSettings`."""
    # Imported here: the plugin is loaded by every test session, most need no scheduler.
    from jobwire.scheduler.api.tokens import create_token
    from jobwire.scheduler.main import spec
    from jobwire.scheduler.settings import SchedulerSettings

    values: dict[str, Any] = {
        "nats": {"url": nats_url},
        "namespace": namespace,
        "database_url": database_url,
        "http_port": free_port(),
        "instance_id": "scheduler-test",
        "host": "scheduler-test",
        "shutdown_grace_seconds": 5,
        "scheduler": {"relay_poll_seconds": 0.1},
    }
    service = await InProcessService(spec, SchedulerSettings(**(values | settings))).start()
    try:
        pool = await connect_pool(database_url, max_size=1)  # with the kit's JSON codecs
        try:
            tokens = {role: await create_token(pool, f"{role}-token", role) for role in ROLES}
        finally:
            await pool.close()
        yield TokenScheduler(service, tokens)
    finally:
        await service.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def scheduler(
    database_url: str, nats_url: str, namespace: str
) -> AsyncIterator[TokenScheduler]:
    """The scheduler on the test's database and namespace, with a token per role."""
    async with running_scheduler(database_url, nats_url, namespace) as started:
        yield started


class RoleClients:
    """One httpx client per role on the API at ``url``, plus ``anonymous`` without a token."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        self._clients = {
            name: httpx.AsyncClient(
                base_url=url,
                headers={"Authorization": f"Bearer {tokens[name]}"} if name in tokens else {},
                timeout=10.0,
            )
            for name in (*ROLES, "anonymous")
        }

    def __getattr__(self, role: str) -> httpx.AsyncClient:
        try:
            return self._clients[role]
        except KeyError:
            raise AttributeError(role) from None

    def with_token(self, token: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )
        self._clients[f"extra-{len(self._clients)}"] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
