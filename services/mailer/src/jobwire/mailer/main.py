"""The mailer service: wiring only. ``jobwire mailer`` runs it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Mount

from jobwire.contracts.mail import EmailEvent
from jobwire.mailer.adapters.attachments import AttachmentStore
from jobwire.mailer.adapters.queue import SCHEMA, MailQueue
from jobwire.mailer.adapters.smtp import SmtpPool
from jobwire.mailer.address_book import AddressBook
from jobwire.mailer.api import MailApi, create_app
from jobwire.mailer.commands import Gate
from jobwire.mailer.conversations import ReceivedMail
from jobwire.mailer.intake import Intake
from jobwire.mailer.sending import Sender
from jobwire.mailer.settings import MailerSettings
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import dev_api_url
from jobwire.runtime.mail_sink import dev_smtp_address
from jobwire.runtime.outbox import OutboxMessage, OutboxRelay
from jobwire.runtime.rest import TokenChecker
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.service import ServiceContext, ServiceSpec
from jobwire.runtime.worker import Worker

SERVICE = "mailer"


def encoder(broker: Broker) -> Any:
    """Email events as outbox rows: subject, CloudEvent and headers, written in the transaction."""

    def encode(event: EmailEvent, msg_id: str) -> OutboxMessage:
        payload, headers = broker.encode(event, msg_id=msg_id, ce_subject=event.email_id)
        subject = broker.subjects.mail_event(
            event.email_id, type(event).model_fields["event"].default
        )
        return OutboxMessage(subject=subject, payload=payload, headers=headers)

    return encode


# The kit builds routes before main runs; main finds the API it must complete here.
_apis: dict[int, MailApi] = {}


def routes(ctx: ServiceContext) -> Sequence[BaseRoute]:
    settings = ctx.settings
    assert isinstance(settings, MailerSettings)
    options = settings.mailer
    url = str(options.scheduler_url) if options.scheduler_url else None
    api = _apis[id(ctx)] = MailApi(
        TokenChecker(url, options.token_cache_seconds, "JOBWIRE_MAILER__SCHEDULER_URL")
    )
    return [Mount("", app=create_app(api))]


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, MailerSettings)
    options = settings.mailer
    # The one place the environment is read besides settings: secrets are
    # named by accounts and storages, so their variables cannot be declared ahead.
    secrets = Secrets(options.secrets_dir, os.environ)
    pools = {name: SmtpPool(name, account, secrets) for name, account in options.accounts.items()}
    attachments = AttachmentStore(options.storages, secrets)
    queue = MailQueue(ctx.pool, encoder(ctx.broker))
    relay = OutboxRelay(
        ctx.pool,
        queue.outbox,
        ctx.broker,
        batch=options.relay_batch,
        poll_seconds=options.relay_poll_seconds,
        name="mailer.relay",
    )
    queue.on_outbox = relay.wake.set
    gate = Gate(queue, pools, attachments, options)
    api = _apis.pop(id(ctx), None)
    if api is not None:
        api.queue, api.gate = queue, gate
    sender = Sender(
        queue, pools, attachments, options, owner=settings.instance_id, host=settings.host
    )
    book = AddressBook(queue, [a.from_address for a in options.accounts.values()])
    workers = [
        Worker(ctx.broker, job_type="email-send", handler=sender.run, concurrency=2),
        Worker(ctx.broker, job_type="address-book-populate", handler=book.run),
    ]
    ctx.status["accounts"] = sorted(pools)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(relay.run(ctx.stopping))
            tasks.create_task(
                Intake(ctx.broker, gate, batch=options.intake_batch).run(ctx.stopping)
            )
            tasks.create_task(
                ReceivedMail(ctx.broker, queue, batch=options.intake_batch).run(ctx.stopping)
            )
            for worker in workers:
                tasks.create_task(worker.run(ctx.stopping))
    finally:
        for pool in pools.values():
            await pool.close()
        await attachments.close()
        if api is not None:
            await api.tokens.close()


DEV_FROM = "jobwire@jobwire.localhost"


def dev_overrides(data: Path) -> dict[str, Any]:
    """`jobwire dev`: the account `default` sends to its mail sink, tokens are the admin API's,
    attachments come from `<data>/files/`."""
    options: dict[str, Any] = {
        "scheduler_url": dev_api_url(),
        "storages": [{"kind": "local", "root": str(data / "files")}],
        "secrets_dir": None,
    }
    sink = dev_smtp_address()
    if sink is not None:
        host, port = sink
        options["accounts"] = {
            "default": {"host": host, "port": port, "security": "none", "from_address": DEV_FROM}
        }
    return {"mailer": options}


spec = ServiceSpec(
    name=SERVICE,
    main=main,
    settings=MailerSettings,
    migrations=files("jobwire.mailer") / "migrations",
    schema=SCHEMA,
    routes=routes,
    dev_overrides=dev_overrides,
    # Its SQL is statements and transactions only (the migrations' advisory lock is
    # released by the kit): a reset per release would be a round trip per claim
    # and per record for nothing.
    reset_db_sessions=False,
)
