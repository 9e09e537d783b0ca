"""The life of a service process: start, serve, stop gracefully.

A service package declares a :class:`ServiceSpec` — its name, settings class,
migrations and an ``async def main(ctx)`` — and the kit does the rest the same
way for every service: logging, telemetry, health endpoints, broker connection
and streams, database pool and migrations, host registration, and shutdown:

SIGTERM/SIGINT → ``ctx.stopping`` is set (stop taking work) → ``main`` gets
``shutdown_grace_seconds`` to finish or hand back in-flight work → it is
cancelled → the broker is drained, the instance deregistered, and the process
exits. A second signal skips the grace period and bounds the drain to
``FORCED_DRAIN_SECONDS``: a forced stop is faster than a graceful one. The same
signal again within ``DUPLICATE_SIGNAL_SECONDS`` of the first is not a second
request: ``uv run`` (without a terminal) or a process-group kill delivers one
SIGINT twice.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import asyncpg
from starlette.routing import BaseRoute

from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.runtime.health import HttpServer, Readiness
from jobwire.runtime.hosts import HostRegistry
from jobwire.runtime.logs import get_logger, setup_logging
from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings
from jobwire.runtime.telemetry import setup_telemetry, shutdown_telemetry
from jobwire.runtime.waits import Stopped

log = get_logger("jobwire.service")

FORCED_DRAIN_SECONDS = 1.0
DUPLICATE_SIGNAL_SECONDS = 1.0

try:
    VERSION = version("jobwire-runtime")
except PackageNotFoundError:  # running from a source tree without metadata
    VERSION = "0.0.0"


@dataclass
class ServiceContext:
    """Everything a service's ``main`` gets from the kit."""

    name: str
    settings: ServiceSettings
    broker: Broker
    readiness: Readiness
    stopping: asyncio.Event
    db: asyncpg.Pool | None = None
    # Service-specific fields for the host registry entry (e.g. held leases).
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.db is not None, f"service {self.name} declared no database"
        return self.db


ServiceMain = Callable[[ServiceContext], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ServiceSpec:
    """What a service declares; see the module docstring for what the kit adds."""

    name: str
    main: ServiceMain
    settings: type[ServiceSettings] = ServiceSettings
    # Package folder of NNNN_name.sql files, applied to schema `schema`.
    migrations: Traversable | None = None
    schema: str | None = None
    routes: Callable[[ServiceContext], Sequence[BaseRoute]] | None = None
    # Settings `jobwire dev` applies on top of the environment (e.g. a sample job),
    # given the folder it keeps its data in.
    dev_overrides: Callable[[Path], dict[str, Any]] = lambda _: {}
    # False: pooled connections are not reset on release (see connect_pool), for a
    # service whose SQL leaves no session state behind.
    reset_db_sessions: bool = True


async def run_service(spec: ServiceSpec, settings: ServiceSettings, stop: asyncio.Event) -> None:
    """Run one service until ``stop`` is set or its ``main`` returns."""
    readiness = Readiness()
    readiness.set("started", False, "starting")
    broker = Broker(
        settings, source=f"/jobwire/{spec.name}/{settings.instance_id}", readiness=readiness
    )
    ctx = ServiceContext(spec.name, settings, broker, readiness, stop)
    http: HttpServer | None = None
    hosts: HostRegistry | None = None
    try:
        if settings.http_port:
            routes = spec.routes(ctx) if spec.routes else ()
            http = HttpServer(settings.http_host, settings.http_port, readiness, routes)
            await http.start()
            log.info(
                "http.listening", service=spec.name, url=f"http://{settings.http_host}:{http.port}"
            )
        await broker.connect(stop)
        await broker.ensure_streams()
        if spec.migrations is not None:
            if settings.database_url is None:
                raise SettingsError(
                    f"invalid settings: JOBWIRE_DATABASE_URL: required by {spec.name}"
                )
            ctx.db = await connect_pool(
                settings.database_url.get_secret_value(),
                max_size=settings.database_pool_max,
                readiness=readiness,
                stop=stop,
                reset_sessions=spec.reset_db_sessions,
            )
            await migrate(ctx.db, spec.schema or spec.name, load_migrations(spec.migrations))
        hosts = HostRegistry(
            broker.js,
            namespace=settings.namespace,
            service=spec.name,
            instance_id=settings.instance_id,
            host=settings.host,
            version=VERSION,
            heartbeat_seconds=settings.heartbeat_seconds,
            ready=lambda: readiness.ready,
            status=lambda: ctx.status,
        )
        await hosts.start()
        readiness.set("started", True)
        await hosts.beat()  # announce readiness now, not a heartbeat later
        log.info("service.started", service=spec.name, instance_id=settings.instance_id)
        await _serve(spec, ctx)
    except Stopped:
        log.info("service.stopped_before_ready", service=spec.name)
    finally:
        readiness.set("started", False, "stopping")
        if hosts is not None:
            await hosts.stop()
        await broker.close(FORCED_DRAIN_SECONDS if _forced() else None)
        if ctx.db is not None:
            await ctx.db.close()
        if http is not None:
            await http.stop()
        log.info("service.stopped", service=spec.name)


async def _serve(spec: ServiceSpec, ctx: ServiceContext) -> None:
    main = asyncio.create_task(spec.main(ctx), name=f"{spec.name}-main")
    stopping = asyncio.create_task(ctx.stopping.wait())
    await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not main.done():
        grace = ctx.settings.shutdown_grace_seconds
        log.info("service.draining", service=spec.name, grace_seconds=grace)
        _, pending = await asyncio.wait({main}, timeout=grace)
        if pending:
            log.warning("service.grace_expired", service=spec.name)
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            return
    main.result()  # a crashed main fails the process, with its traceback logged


async def run_services(
    services: Sequence[tuple[ServiceSpec, ServiceSettings]], stop: asyncio.Event
) -> None:
    """Run several services in one process (``jobwire dev``); one stops → all stop."""

    async def one(spec: ServiceSpec, settings: ServiceSettings) -> None:
        try:
            await run_service(spec, settings, stop)
        finally:
            stop.set()

    results = await asyncio.gather(*(one(s, c) for s, c in services), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _forced() -> bool:
    """True inside a task being cancelled: a forced stop, not a graceful one."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def install_signal_handlers(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: stop now.

    The event loop's handlers replace whatever disposition the process
    inherited: a service started from a script (a background job of a
    non-interactive shell starts with SIGINT ignored) still stops on SIGINT.
    """
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    first: tuple[int, float] | None = None

    def handle(signum: int) -> None:
        nonlocal first
        name = signal.Signals(signum).name
        now = time.monotonic()
        if first is None and not stop.is_set():
            first = (signum, now)
            log.info("service.stop_requested", signal=name)
            stop.set()
            return
        if first is not None and first[0] == signum and now - first[1] < DUPLICATE_SIGNAL_SECONDS:
            log.info("service.duplicate_signal_ignored", signal=name)
            return
        log.warning("service.forced_stop", signal=name)
        if main_task is not None:
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)


def tune_garbage_collector() -> None:
    """Collect less often, and never rescan what start-up allocated.

    A busy service allocates many short-lived objects (messages, rows) while
    holding many long-lived ones (modules, cached definitions); with CPython's
    default thresholds the collector rescanned the latter so often that it took
    over a third of the scheduler's time under load (bench/results/scheduler.json).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def serve(spec: ServiceSpec, **overrides: Any) -> int:
    """Process entry point of one service; returns the exit code."""
    try:
        settings = load_settings(spec.settings, **overrides)
    except SettingsError as exc:
        print(f"jobwire {spec.name}: {exc}", file=sys.stderr)
        return SettingsError.exit_code
    setup_logging(settings.log_level, settings.log_format, service=spec.name)
    setup_telemetry(spec.name, VERSION, settings.instance_id, settings.host)
    tune_garbage_collector()

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await run_service(spec, settings, stop)

    try:
        asyncio.run(main())
    except SettingsError as exc:
        print(f"jobwire {spec.name}: {exc}", file=sys.stderr)
        return SettingsError.exit_code
    except asyncio.CancelledError:
        return 130
    except Exception:
        log.exception("service.crashed", service=spec.name)
        return 1
    finally:
        shutdown_telemetry()
    return 0
