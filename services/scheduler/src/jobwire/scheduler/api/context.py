"""What the API needs from its service, resolved per request.

The kit starts the HTTP server before it connects the database, so the API is
built with a way to reach the pool rather than the pool; until the service has
started, requests get 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
from fastapi import Request

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.hosts import HostInfo
from jobwire.runtime.broker import Broker
from jobwire.runtime.hosts import live_hosts
from jobwire.runtime.service import VERSION, ServiceContext
from jobwire.scheduler.adapters.store import PostgresJobStore
from jobwire.scheduler.api.problems import ProblemError
from jobwire.scheduler.dispatch import Dispatcher
from jobwire.scheduler.settings import SchedulerSettings

if TYPE_CHECKING:
    from jobwire.scheduler.api.backfills import Backfills


DEFAULT_MAX_PAYLOAD = 1024 * 1024  # NATS' own default max_payload


def _nothing() -> None:
    return None


@dataclass
class ApiContext:
    pool: Callable[[], asyncpg.Pool | None]
    broker: Broker
    stopping: asyncio.Event
    namespace: str
    ready: Callable[[], bool] = lambda: True
    checks: Callable[[], dict[str, dict[str, object]]] = dict
    clock: Callable[[], datetime] = utcnow
    # Wakes this replica's outbox relay after a request wrote outbox rows;
    # main() points it at the relay it builds.
    on_outbox: Callable[[], None] = _nothing
    history_days: float = 30.0
    max_request_bytes: int = 1024 * 1024
    max_concurrent_requests: int = 4
    # Seconds a save waits for a live check of its params; 0 turns live checks off.
    live_check_seconds: float = 3.0
    version: str = VERSION
    hosts_ttl_seconds: float = 2.0
    _store: PostgresJobStore | None = field(default=None, init=False, repr=False)
    _dispatcher: Dispatcher | None = field(default=None, init=False, repr=False)
    _hosts: tuple[float, list[HostInfo]] | None = field(default=None, init=False, repr=False)
    _backfills: Backfills | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_service(cls, ctx: ServiceContext) -> ApiContext:
        settings = ctx.settings
        options = settings.scheduler if isinstance(settings, SchedulerSettings) else None

        def started() -> bool:
            check = ctx.readiness.report().get("started")
            return ctx.db is not None and bool(check and check["ok"])

        return cls(
            pool=lambda: ctx.db,
            broker=ctx.broker,
            stopping=ctx.stopping,
            namespace=settings.namespace,
            ready=started,
            checks=ctx.readiness.report,
            history_days=options.history_days if options else 30.0,
            max_request_bytes=options.max_request_bytes if options else 1024 * 1024,
            max_concurrent_requests=options.max_concurrent_requests if options else 4,
            live_check_seconds=options.live_check_seconds if options else 3.0,
        )

    @property
    def store(self) -> PostgresJobStore:
        if self._store is None:
            pool = self.pool() if self.ready() else None
            if pool is None:
                raise ProblemError(503, "Starting", "the scheduler is starting; try again shortly")
            self._store = PostgresJobStore(pool)
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.broker)
        return self._dispatcher

    @property
    def backfills(self) -> Backfills:
        if self._backfills is None:
            from jobwire.scheduler.api.backfills import Backfills

            self._backfills = Backfills(self)
        return self._backfills

    def max_payload(self) -> int:
        """The largest message the NATS server takes, as its INFO said. nats-py keeps
        the last server's value while disconnected, and before the first connection
        holds NATS' default (1 MiB): a guess then, but the server's default too."""
        try:
            return int(self.broker.nc.max_payload)
        except AssertionError:  # connect() not called yet (a test, or a tool)
            return DEFAULT_MAX_PAYLOAD

    async def hosts(self) -> list[HostInfo]:
        """Live instances from the host registry, cached for a moment: a busy
        Jobs Management page must not scan the registry on every refresh."""
        now = time.monotonic()
        if self._hosts is not None and now - self._hosts[0] < self.hosts_ttl_seconds:
            return self._hosts[1]
        hosts = await live_hosts(self.broker.js, self.namespace)
        self._hosts = (now, hosts)
        return hosts

    async def live_host_names(self) -> frozenset[str]:
        return frozenset(h.host for h in await self.hosts())


async def api_of(request: Request) -> ApiContext:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a thread pool,
    # a thread hand-off on every request.
    api: ApiContext = request.app.state.api
    return api
