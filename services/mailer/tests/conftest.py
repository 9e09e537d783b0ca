"""The mailer on real PostgreSQL, NATS and SMTP servers, run in this process.

``mailer(**options)`` starts the whole service (``run_service`` with the
mailer's spec: migrations, intake, relay, workers, API) with the given
``MailerOptions`` on a fresh database and namespace. The test talks to it as
apps and the scheduler do: SendEmail on the MAIL stream, a JobDue for an
`email-send` run, and reads the events back from JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from nats.js.errors import NotFoundError

from jobwire.contracts.envelope import decode
from jobwire.contracts.mail import MAIL_EVENT_MODELS, EmailEvent, MailEvent, SendEmail, email_id
from jobwire.contracts.runs import RunFinished
from jobwire.contracts.subjects import Stream
from jobwire.mailer.main import spec
from jobwire.mailer.settings import MailerSettings
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import free_port
from jobwire.runtime.service import run_service
from jobwire.testing import run_job, wait_for


class Mailer:
    """One running mailer and a client broker to talk to it."""

    def __init__(self, settings: MailerSettings, broker: Broker, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.broker = broker
        self.pool = pool
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    async def send(self, command: SendEmail, account: str | None = None) -> str:
        """Publish ``command`` as an app would; returns its email id."""
        subject = self.broker.subjects.mail_send(account or command.account)
        await self.broker.publish(subject, command, msg_id=f"send:{command.idempotency_key}")
        return email_id(command.idempotency_key)

    async def run(
        self, job_type: str = "email-send", timeout: float = 30.0, **params: Any
    ) -> RunFinished:
        """One run of ``job_type``, as the scheduler would fire it; its RunFinished."""
        return await run_job(self.broker, job_type, params, timeout=timeout)

    async def last(self, subject: str, model: type[Any]) -> Any:
        stream = self.broker.subjects.stream_name(
            Stream.RUNS if ".runs." in subject else Stream.MAIL
        )
        try:
            stored = await self.broker.js.get_last_msg(stream, subject)
        except NotFoundError:
            return None
        return decode(stored.data or b"", model).data

    async def event(self, email: str, kind: MailEvent, timeout: float = 15.0) -> Any:
        """The last ``kind`` event of ``email``, waited for."""
        subject = self.broker.subjects.mail_event(email, kind.value)
        return await wait_for(
            lambda: self.last(subject, MAIL_EVENT_MODELS[kind]),
            timeout=timeout,
            description=f"{kind.value} event of {email}",
        )

    async def events(self, email: str) -> list[EmailEvent]:
        """Every event of ``email`` on the stream, in order."""
        subject = self.broker.subjects.mail_event(email, "*")
        sub = await self.broker.js.subscribe(subject, ordered_consumer=True)
        found: list[EmailEvent] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:
                    break
                kind = MailEvent(msg.subject.rsplit(".", 1)[-1])
                found.append(decode(msg.data, MAIL_EVENT_MODELS[kind]).data)
        finally:
            await sub.unsubscribe()
        return found

    async def status(self, email: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT status FROM mailer.emails WHERE id = $1", uuid.UUID(email)
        )


def make_command(key: str | None = None, **fields: Any) -> SendEmail:
    """A valid SendEmail to one made-up recipient; ``fields`` override."""
    key = key or f"test-{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {
        "idempotency_key": key,
        "to": [{"address": f"{key}@example.com", "name": "Test Recipient"}],
        "subject": f"Hello {key}",
        "text": "Hello from the mailer tests.\n",
    }
    return SendEmail.model_validate(values | fields)


Start = Callable[..., Awaitable[Mailer]]


@pytest_asyncio.fixture(loop_scope="session")
async def mailer(
    database_url: str, nats_url: str, namespace: str, tmp_path: Path
) -> AsyncIterator[Start]:
    started: list[Mailer] = []

    async def start(**options: Any) -> Mailer:
        settings = MailerSettings(
            nats={"url": nats_url},
            namespace=namespace,
            database_url=database_url,
            http_port=free_port(),
            instance_id=f"mailer-test-{len(started) + 1}",
            host="mailer-test",
            shutdown_grace_seconds=5,
            mailer={
                "secrets_dir": str(tmp_path / "secrets"),
                "retry_base_seconds": 0.2,
                "relay_poll_seconds": 0.1,
                **options,
            },
        )
        broker = Broker(settings, source="/tests/mailer-client")
        await broker.connect()
        await broker.ensure_streams()
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        mailer = Mailer(settings, broker, pool)
        mailer.task = asyncio.create_task(run_service(spec, settings, mailer.stop))
        started.append(mailer)
        await wait_for(lambda: _migrated(pool), timeout=20, description="the mailer's schema")
        return mailer

    yield start
    for mailer in started:
        mailer.stop.set()
    for mailer in started:
        assert mailer.task is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mailer.task, timeout=15)
        await mailer.broker.close()
        await mailer.pool.close()


async def _migrated(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass('mailer.outbox') IS NOT NULL"))


def make_account(server: Any, **fields: Any) -> dict[str, Any]:
    """A plain account on the test SMTP server ``server``."""
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "from_address": "cases@mailer.test",
        **fields,
    }


@pytest.fixture
def command() -> Callable[..., SendEmail]:
    """``command(key=None, **fields)``: a valid SendEmail to one made-up recipient."""
    return make_command


@pytest.fixture
def account() -> Callable[..., dict[str, Any]]:
    """``account(server, **fields)``: a plain account on the test SMTP server ``server``."""
    return make_account
