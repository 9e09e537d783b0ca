"""The scheduler service: wiring only. ``jobwire scheduler`` runs it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Mount

from jobwire.contracts.envelope import utcnow
from jobwire.runtime.db import DATABASE_ERRORS
from jobwire.runtime.logs import get_logger
from jobwire.runtime.service import ServiceContext, ServiceSpec
from jobwire.runtime.waits import wait_any
from jobwire.scheduler.adapters.store import JobExists, PostgresJobStore
from jobwire.scheduler.dispatch import Dispatcher
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.scheduler.firing import Firer
from jobwire.scheduler.listener_mirror import ListenerMirror
from jobwire.scheduler.relay import scheduler_relay
from jobwire.scheduler.run_events import RunRecorder
from jobwire.scheduler.settings import SchedulerSettings

if TYPE_CHECKING:
    from jobwire.scheduler.api import ApiContext

log = get_logger("jobwire.scheduler")

SAMPLE_JOB = {
    "name": "sample-hello",
    "type": "start-workflow",
    "description": "created by `jobwire dev` so that something visibly happens",
    "schedule": {"kind": "cron", "expression": "*/5 * * * * *", "timezone": "UTC"},
    "params": {"workflow": "hello", "input": {"greeting": "hello from jobwire"}},
}


# `jobwire dev` with the mailer: an app asks for an email every minute (the
# example app answers `send-sample-mail` with a SendEmail), the mailer sends
# what is queued every 5 s, and the address book is filled every minute.
SAMPLE_MAIL_JOBS = [
    {
        "name": "sample-mail",
        "type": "start-workflow",
        "description": "created by `jobwire dev`: the example app answers it with an email",
        "schedule": {"kind": "cron", "expression": "0 * * * * *", "timezone": "UTC"},
        "params": {"workflow": "send-sample-mail", "input": {"to": "alice@example.com"}},
    },
    {
        "name": "mail-sender",
        "type": "email-send",
        "description": "created by `jobwire dev`: sends the queued email",
        "schedule": {"kind": "cron", "expression": "*/5 * * * * *", "timezone": "UTC"},
        "params": {},
    },
    {
        "name": "address-book",
        "type": "address-book-populate",
        "description": "created by `jobwire dev`: adds the addresses of sent and received email",
        "schedule": {"kind": "cron", "expression": "30 * * * * *", "timezone": "UTC"},
        "params": {},
    },
]


def sample_listener(folder: str) -> dict[str, object]:
    """A file listener `jobwire dev` creates: drop a file in, see a workflow start."""
    return {
        "name": "sample-inbox",
        "type": "file-listener",
        "description": "created by `jobwire dev`: a file put in the folder starts `hello`",
        "params": {
            "workflow": "hello",
            "storage": {"kind": "local", "root": folder},
            "stable_seconds": 1,
            "poll_seconds": 1,
        },
    }


class Scheduler:
    """The scheduler's parts, built from a service context; ``run`` runs them all."""

    def __init__(self, ctx: ServiceContext) -> None:
        settings = ctx.settings
        assert isinstance(settings, SchedulerSettings)
        self.options = options = settings.scheduler
        self.stopping = ctx.stopping
        self.store = PostgresJobStore(ctx.pool)
        self.dispatcher = Dispatcher(ctx.broker)
        self.relay = scheduler_relay(
            self.store,
            ctx.broker,
            batch=options.relay_batch,
            poll_seconds=options.relay_poll_seconds,
        )
        self.mirror = ListenerMirror(
            self.store, ctx.broker, sync_seconds=options.listener_sync_seconds
        )
        self.firer = Firer(
            self.store,
            self.dispatcher,
            batch=options.claim_batch,
            max_idle_seconds=options.max_idle_seconds,
            on_outbox=self.relay.wake.set,
            relay_caught_up=self.relay.caught_up,
            on_definitions_changed=self.mirror.wake.set,
        )
        self.recorder = RunRecorder(
            self.store, ctx.broker, self.dispatcher, on_outbox=self.relay.wake.set
        )

    async def run(self) -> None:
        if self.options.sample_job:
            with contextlib.suppress(JobExists):  # kept from an earlier run
                await self.store.create(parse_definition(SAMPLE_JOB), utcnow())
        if self.options.sample_mail:
            for job in SAMPLE_MAIL_JOBS:
                with contextlib.suppress(JobExists):
                    await self.store.create(parse_definition(job), utcnow())
        if self.options.sample_inbox:
            folder = Path(self.options.sample_inbox)
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            with contextlib.suppress(JobExists):
                await self.store.create(
                    parse_definition(sample_listener(self.options.sample_inbox)), utcnow()
                )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.relay.run(self.stopping))
            if not self.options.firing:
                # An API-only replica: requests wait on no claim of its own, and a
                # flood of them cannot delay a fire (the firing replicas are apart).
                return
            tasks.create_task(self.firer.run(self.stopping))
            tasks.create_task(self.recorder.run(self.stopping))
            tasks.create_task(self.mirror.run(self.stopping))
            tasks.create_task(_retention(self.store, self.options.history_days, self.stopping))


# The kit builds a service's routes before it runs its main (the HTTP server
# starts first), and the API needs the relay that main builds, to wake it when a
# request wrote outbox rows: main finds its API here, by context.
_apis: dict[int, ApiContext] = {}


def routes(ctx: ServiceContext) -> Sequence[BaseRoute]:
    """The admin API (``/api/v1``) and the Jobs Management page (``/``) on the
    kit's HTTP server."""
    from jobwire.scheduler.api import ApiContext, create_app
    from jobwire.scheduler.web import web_routes

    api = _apis[id(ctx)] = ApiContext.for_service(ctx)
    # The page's routes first: the API's mount at "" takes every path it reaches.
    return [*web_routes(), Mount("", app=create_app(api))]


async def main(ctx: ServiceContext) -> None:
    scheduler = Scheduler(ctx)
    api = _apis.pop(id(ctx), None)
    if api is not None:
        api.on_outbox = scheduler.relay.wake.set
    try:
        await scheduler.run()
    finally:
        ctx.stopping.set()  # a crashed loop must not leave backfills running on
        if api is not None:
            await api.backfills.wait_stopped()


async def _retention(store: PostgresJobStore, days: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            deleted = await store.delete_history(utcnow() - timedelta(days=days))
        except DATABASE_ERRORS as exc:  # pruning can wait for the next round
            log.warning("scheduler.history_prune_failed", error=str(exc))
            deleted = 0
        if deleted:
            log.info("scheduler.history_pruned", runs=deleted)
        if deleted < 10_000:
            await wait_any(3600, stop)


spec = ServiceSpec(
    name="scheduler",
    main=main,
    settings=SchedulerSettings,
    migrations=files("jobwire.scheduler") / "migrations",
    schema="scheduler",
    routes=routes,
    dev_overrides=lambda data: {
        "scheduler": {
            "sample_job": True,
            "sample_inbox": str(data / "inbox"),
            # The mail samples only where a mailer runs their runs.
            "sample_mail": any(
                ep.name == "mailer" for ep in entry_points(group="jobwire.services")
            ),
        }
    },
)
