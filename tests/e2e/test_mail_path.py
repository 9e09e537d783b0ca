"""A real mail path: the mailer sends through Postfix, a customer answers, the email
listener picks the answer up, and the mailer threads it into its conversation.

Postfix (the session's ``postfix`` fixture) delivers into the session's Dovecot. The
mailer and the listeners service run in this process with ``run_services``, as
``jobwire dev`` runs them, on one namespace, a fresh database and real NATS:

1. a SendEmail of case 4711 from support@cases.test to customer@client.test (copy to
   support's own mailbox) goes out over STARTTLS with AUTH, in an `email-send` run;
2. the customer answers it from their own mail program: SMTP into Postfix, threaded
   with In-Reply-To/References, read back here over IMAP with the standard library;
3. an `email-listener` job on support's mailbox turns the answer into a StartWorkflow,
   which the mailer's conversation log takes into case 4711;
4. `address-book-populate` finds the customer on both sides and leaves support out
   (the account's own address); an answer to the answer threads under both.

The test side speaks SMTP and IMAP with ``smtplib``/``imaplib``, sharing no code with
the aiosmtplib/aioimaplib clients under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import smtplib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, NotFoundError

from jobwire.contracts.envelope import decode
from jobwire.contracts.listeners import ListenerDefinition
from jobwire.contracts.mail import SendEmail, email_id
from jobwire.contracts.objects import EmailObject
from jobwire.contracts.runs import RunFinished
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.main import spec as listeners_spec
from jobwire.listeners.settings import ListenersSettings
from jobwire.mailer.adapters.queue import MailQueue
from jobwire.mailer.main import encoder
from jobwire.mailer.main import spec as mailer_spec
from jobwire.mailer.settings import MailerSettings
from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool
from jobwire.runtime.service import run_services
from jobwire.testing import job_due, wait_for
from jobwire.testing.dovecot import DovecotServer, ImapAccount, ImapTestClient
from jobwire.testing.postfix import PostfixServer

pytestmark = pytest.mark.integration

SUPPORT = "support@cases.test"
CUSTOMER = "customer@client.test"
CASE = "case-4711"
WORKFLOW = "support-email"
# A delivery crosses Postfix's queue, a maildir, IDLE and NATS: seconds on a busy machine.
ARRIVAL_TIMEOUT = 30.0


@dataclass
class MailPath:
    """The two services running, their mailboxes, and a client broker to talk to them."""

    postfix: PostfixServer
    support: ImapAccount
    customer: ImapAccount
    broker: Broker
    pool: asyncpg.Pool
    queue: MailQueue
    """The mailer's own reads of its tables (the REST API's conversation and contacts)."""

    async def send(self, command: SendEmail) -> str:
        """Publish ``command`` as an app would; its email id, once the mailer queued it
        (a run started before that would find nothing due)."""
        subject = self.broker.subjects.mail_send(command.account)
        await self.broker.publish(subject, command, msg_id=f"send:{command.idempotency_key}")
        queued = email_id(command.idempotency_key)
        status = await wait_for(
            lambda: self.pool.fetchval(
                "SELECT status FROM mailer.emails WHERE id = $1", uuid.UUID(queued)
            ),
            timeout=15,
            description=f"{command.idempotency_key} queued",
        )
        assert status == "queued", status
        return queued

    async def run(self, job_type: str, **params: Any) -> RunFinished:
        """One run of ``job_type`` as the scheduler fires it, waited for to its end."""
        due = job_due(job_type, params)
        await self.broker.publish(self.broker.subjects.job_due(job_type), due, msg_id=due.run_id)
        subject = self.broker.subjects.run_event(due.run_id, RunEvent.FINISHED)
        stream = self.broker.subjects.stream_name(Stream.RUNS)

        async def finished() -> RunFinished | None:
            try:
                stored = await self.broker.js.get_last_msg(stream, subject)
            except NotFoundError:
                return None
            return decode(stored.data or b"", RunFinished).data

        result = await wait_for(
            finished, timeout=30, description=f"{job_type} run {due.run_id} finished"
        )
        assert result is not None
        return result

    async def starts(self) -> list[StartWorkflow]:
        """Every StartWorkflow of the support mailbox's workflow stored so far."""
        subject = self.broker.subjects.workflow_start(WORKFLOW)
        sub = await self.broker.js.subscribe(subject, ordered_consumer=True)
        found: list[StartWorkflow] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:
                    break
                found.append(decode(msg.data, StartWorkflow).data)
        finally:
            await sub.unsubscribe()
        return found

    async def start_of(self, message_id: str) -> StartWorkflow | None:
        for start in await self.starts():
            if isinstance(start.input, dict) and start.input.get("message_id") == message_id:
                return start
        return None


async def delivered(account: ImapAccount, message_id: str) -> EmailMessage:
    """The message with ``message_id`` in ``account``'s INBOX, waited for."""

    async def find() -> EmailMessage | None:
        async with ImapTestClient(account) as imap:
            for raw in (await imap.messages()).values():
                message = message_from_bytes(raw, policy=policy.default)
                assert isinstance(message, EmailMessage)
                if message["Message-ID"] == message_id:
                    return message
        return None

    found: EmailMessage | None = await wait_for(
        find, timeout=ARRIVAL_TIMEOUT, interval=0.2, description=f"{message_id} delivered"
    )
    assert found is not None
    return found


def submit(server: PostfixServer, message: EmailMessage) -> None:
    """What the customer's mail program does: hand the message to the MTA over SMTP."""
    with smtplib.SMTP(server.host, server.smtp_port, timeout=30) as smtp:
        refused = smtp.send_message(message)
    assert refused == {}


def fresh_mailbox(postfix: PostfixServer, dovecot: DovecotServer, address: str) -> ImapAccount:
    """``address`` as an empty mailbox. The addresses are fixed, so a Dovecot reused
    from an earlier test run (JOBWIRE_TEST_IMAP_DIR) may still hold that run's mail;
    nothing is logged in to it now."""
    shutil.rmtree(dovecot.mail_dir / address, ignore_errors=True)
    return postfix.add_mailbox(address)


@pytest_asyncio.fixture(loop_scope="session")
async def mail_path(
    postfix: PostfixServer,
    dovecot: DovecotServer,
    database_url: str,
    nats_url: str,
    namespace: str,
    tmp_path: Path,
) -> AsyncIterator[MailPath]:
    # Before the mailer's first connection: an open SMTP session keeps the
    # mailbox table it started with.
    support = fresh_mailbox(postfix, dovecot, SUPPORT)
    customer = fresh_mailbox(postfix, dovecot, CUSTOMER)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in {
        "smtp-user": support.user,
        "smtp-password": support.password,
        "smtp-ca": postfix.ca_pem,
        "imap-user": support.user,
        "imap-password": support.password,
    }.items():
        (secrets / name).write_text(value)
    common: dict[str, Any] = {
        "nats": {"url": nats_url},
        "namespace": namespace,
        "http_port": 0,
        "host": "mail-path-test",
        "shutdown_grace_seconds": 5,
    }
    mailer = MailerSettings(
        **common,
        database_url=database_url,
        mailer={
            "accounts": {
                "default": {
                    "host": postfix.host,
                    "port": postfix.smtp_port,
                    "security": "starttls",
                    "username": "smtp-user",
                    "password": "smtp-password",
                    "ca": "smtp-ca",
                    "from_address": SUPPORT,
                    "from_name": "Case Support",
                }
            },
            "secrets_dir": str(secrets),
            "relay_poll_seconds": 0.1,
        },
    )
    listeners = ListenersSettings(
        **common,
        listeners={"poll_seconds": 0.2, "lease_ttl_seconds": 2, "secrets_dir": str(secrets)},
    )
    broker = Broker(mailer, source="/tests/mail-path")
    await broker.connect()
    await broker.ensure_streams()
    await define_listener(broker, namespace, support)
    # The kit's pool, with the json codecs the mailer's own pool has.
    pool = await connect_pool(database_url, max_size=2)
    stop = asyncio.Event()
    services = asyncio.create_task(
        run_services([(mailer_spec, mailer), (listeners_spec, listeners)], stop)
    )
    try:
        await wait_for(
            lambda: _migrated(pool, services), timeout=20, description="the mailer's schema"
        )
        yield MailPath(postfix, support, customer, broker, pool, MailQueue(pool, encoder(broker)))
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(services, timeout=20)
        await pool.close()
        await broker.close()


async def define_listener(broker: Broker, namespace: str, mailbox: ImapAccount) -> None:
    """What the scheduler's mirror writes when an `email-listener` job is saved."""
    definition = ListenerDefinition(
        job_id=str(uuid.uuid4()),
        job_name="support-mailbox",
        job_type="email-listener",
        job_version=1,
        replicas=1,
        params={
            "workflow": WORKFLOW,
            "host": mailbox.host,
            "port": mailbox.port,
            "tls": False,
            "username": "imap-user",
            "password": "imap-password",
            "poll_seconds": 0.5,
        },
    )
    bucket = ListenerDefinition.bucket(namespace)
    try:
        kv = await broker.js.key_value(bucket)
    except BucketNotFoundError:
        kv = await broker.js.create_key_value(KeyValueConfig(bucket=bucket))
    await kv.put(definition.job_id, definition.model_dump_json().encode())


async def _migrated(pool: asyncpg.Pool, services: asyncio.Task[None]) -> bool:
    if services.done():
        services.result()  # a service that could not start says why
        raise AssertionError("the services stopped while starting")
    return bool(await pool.fetchval("SELECT to_regclass('mailer.messages') IS NOT NULL"))


def references(message: EmailMessage) -> list[str]:
    return str(message["References"] or "").split()


async def test_a_reply_threads_into_the_case_and_both_sides_reach_the_address_book(
    mail_path: MailPath,
) -> None:
    path = mail_path
    # 1. The case system writes to the customer, copying its own mailbox.
    first = SendEmail(
        idempotency_key=f"{CASE}-first-{uuid.uuid4().hex[:8]}",
        to=[{"address": CUSTOMER, "name": "Carla Customer"}],
        cc=[{"address": SUPPORT}],
        subject="Ihr Fall 4711",
        text="Guten Tag, wir kümmern uns um Ihren Fall.\n",
        conversation_id=CASE,
    )
    first_id = await path.send(first)
    sent = await path.run("email-send")
    assert sent.status == "succeeded", sent.error
    assert sent.result == {"sent": 1, "deferred": 0, "failed": 0}
    original_id = await path.pool.fetchval(
        "SELECT message_id FROM mailer.emails WHERE id = $1", uuid.UUID(first_id)
    )
    assert original_id.endswith("@cases.test>")
    original = await delivered(path.customer, original_id)
    assert original["From"].addresses[0].addr_spec == SUPPORT
    assert original["Subject"] == "Ihr Fall 4711"
    # Postfix took it over TLS from an authenticated client (its Received line says so).
    received_line = str(original["Received"])
    assert "ESMTPSA" in received_line, received_line

    # 2. The customer answers from their own mail program, threaded to it.
    reply = EmailMessage()
    reply["From"] = f"Carla Customer <{CUSTOMER}>"
    reply["To"] = f"Case Support <{SUPPORT}>"
    reply["Subject"] = f"Re: {original['Subject']}"
    reply["Date"] = format_datetime(datetime.now(UTC))
    reply["Message-ID"] = reply_id = make_msgid("answer", "client.test")
    reply["In-Reply-To"] = original_id
    reply["References"] = original_id
    reply.set_content("Danke, hier die fehlenden Angaben.\n")
    await asyncio.to_thread(submit, path.postfix, reply)
    await delivered(path.support, reply_id)

    # 3. The listener on support's mailbox starts a workflow with the answer …
    start = await wait_for(
        lambda: path.start_of(reply_id),
        timeout=ARRIVAL_TIMEOUT,
        interval=0.2,
        description="the answer's StartWorkflow",
    )
    assert start is not None
    assert start.origin.kind == "listener"
    answer = EmailObject.model_validate(start.input)
    assert answer.in_reply_to == original_id
    assert answer.references == [original_id]
    assert answer.from_.address == CUSTOMER
    assert [a.address for a in answer.to] == [SUPPORT]
    # … and the copy of the mailer's own email in that mailbox is passed on too,
    # but does not enter the log a second time (the sent entry stays).
    copy = await wait_for(
        lambda: path.start_of(original_id),
        timeout=ARRIVAL_TIMEOUT,
        interval=0.2,
        description="the copy's StartWorkflow",
    )
    assert copy is not None
    assert EmailObject.model_validate(copy.input).from_.address == SUPPORT

    # … which the mailer's conversation log takes into the case.
    async def case_has(count: int) -> list[dict[str, Any]] | None:
        messages = await path.queue.conversation(CASE)
        return messages if len(messages) >= count else None

    conversation = await wait_for(
        lambda: case_has(2), timeout=ARRIVAL_TIMEOUT, description="the answer logged in the case"
    )
    logged = {m["message_id"]: m for m in conversation}
    assert {key: m["direction"] for key, m in logged.items()} == {
        original_id: "sent",
        reply_id: "received",
    }
    assert logged[reply_id]["in_reply_to"] == original_id
    assert logged[reply_id]["sender"] == {"address": CUSTOMER, "name": "Carla Customer"}
    # A received email is logged at its Date (the sender's clock, whole seconds), a
    # sent one when the server took it: within one second the answer may sort first.
    assert logged[reply_id]["at"] == reply["Date"].datetime

    # 4. The address book: the customer on both sides; support, the account's own
    # address (a system address), left out twice: copied on the original, and
    # the reply's To (every mailbox of a received email counts as received).
    populated = await path.run("address-book-populate")
    assert populated.status == "succeeded", populated.error
    assert populated.result == {"messages": 2, "addresses": 2, "excluded": 2}
    [contact] = await path.queue.search_contacts(CUSTOMER)
    assert contact["address"] == CUSTOMER
    assert contact["name"] == "Carla Customer"
    assert (contact["sent_count"], contact["received_count"]) == (1, 1)
    assert contact["last_conversation_id"] == CASE
    assert await path.queue.search_contacts("support@") == []

    # 5. The case system answers the answer: it threads under both, in the same case.
    second = SendEmail(
        idempotency_key=f"{CASE}-second-{uuid.uuid4().hex[:8]}",
        to=[{"address": CUSTOMER}],
        subject=f"Re: {reply['Subject']}",
        text="Vielen Dank, der Fall ist erledigt.\n",
        in_reply_to=reply_id,
    )
    second_id = await path.send(second)
    again = await path.run("email-send")
    assert again.result == {"sent": 1, "deferred": 0, "failed": 0}, again
    row = await path.pool.fetchrow(
        "SELECT message_id, conversation_id FROM mailer.emails WHERE id = $1",
        uuid.UUID(second_id),
    )
    assert row["conversation_id"] == CASE
    closing = await delivered(path.customer, row["message_id"])
    assert closing["In-Reply-To"] == reply_id
    assert references(closing) == [original_id, reply_id]
    conversation = await wait_for(
        lambda: case_has(3), timeout=ARRIVAL_TIMEOUT, description="the second answer logged"
    )
    assert {m["message_id"] for m in conversation} == {original_id, reply_id, row["message_id"]}
    assert conversation[-1]["message_id"] == row["message_id"]
