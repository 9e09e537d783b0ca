"""Claims and leases, in one process: the crash windows of sending.py's docstring, one by one.

A sender that vanished is played by a claim the test takes itself
(``MailQueue.claim`` under a made-up owner) and never records; a sender
that lost its lease, by a record the test makes after another run took
the email over. Lease and timeouts are small so that a lease runs out
within the test (settings demand lease_seconds > 4 x timeout_seconds +
data_timeout_seconds of every account).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.mail import MailEvent
from jobwire.contracts.runs import RunProgress
from jobwire.contracts.subjects import RunEvent
from jobwire.mailer.adapters.attachments import AttachmentStore
from jobwire.mailer.adapters.queue import MailQueue, Outcome
from jobwire.mailer.adapters.smtp import SmtpPool
from jobwire.mailer.domain.delivery import AttemptResult, Reply, settle
from jobwire.mailer.main import encoder
from jobwire.mailer.sending import Sender
from jobwire.mailer.settings import MailerOptions, SmtpAccount
from jobwire.runtime.db import connect_pool
from jobwire.runtime.secrets import Secrets
from jobwire.testing import job_due, wait_for

pytestmark = pytest.mark.integration

LEASE = 2.0
# 4 x 0.2 + 0.5 = 1.3 s: the longest send the lease must outlast.
FAST = {"timeout_seconds": 0.2, "data_timeout_seconds": 0.5}


@pytest_asyncio.fixture(loop_scope="session")
async def queue_of(database_url: str) -> AsyncIterator[Callable[[Any], Awaitable[MailQueue]]]:
    """``await queue_of(service)``: a MailQueue of the test's own, on the service's database
    (with the kit's JSON codecs) and encoding events for its namespace."""
    pools = []

    async def make(service: Any) -> MailQueue:
        pool = await connect_pool(database_url, max_size=2)
        pools.append(pool)
        return MailQueue(pool, encoder(service.broker))

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()


async def attempts_of(service: Any, email_id: str) -> list[tuple[int, str, str | None]]:
    rows = await service.pool.fetch(
        "SELECT attempt, host, outcome FROM mailer.attempts WHERE email_id = $1 ORDER BY attempt",
        uuid.UUID(email_id),
    )
    return [(r["attempt"], r["host"], r["outcome"]) for r in rows]


async def test_a_vanished_senders_email_is_sent_after_its_lease_once_with_its_message_id(
    mailer, smtp_server_factory, command, account, queue_of
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory()
    service = await mailer(accounts={"default": account(server, **FAST)}, lease_seconds=LEASE)
    queue = await queue_of(service)
    email = command()
    email_id = await service.send(email)
    queued = await service.event(email_id, MailEvent.QUEUED)

    claimed_at = utcnow()
    [stale] = await queue.claim(
        "vanished-sender", "vanished-host", 10, ["default"], LEASE, claimed_at
    )
    assert (stale.id, stale.attempts, stale.status) == (email_id, 1, "sending")

    held = await service.run()
    assert held.result == {"sent": 0, "deferred": 0, "failed": 0}, "the lease holds it"
    assert server.messages() == []

    async def sent_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["sent"] == 1)

    await wait_for(sent_now, timeout=10, interval=0.2, description="the next run sent it")
    started = await service.pool.fetchval(
        "SELECT started_at FROM mailer.attempts WHERE email_id = $1 AND attempt = 2",
        uuid.UUID(email_id),
    )
    assert started >= claimed_at + timedelta(seconds=LEASE), "not before the lease ran out"
    [received] = server.messages()
    assert received.message["Message-ID"] == queued.message_id == stale.message_id
    assert await attempts_of(service, email_id) == [
        (1, "vanished-host", None),  # the vanished sender's attempt never ended
        (2, "mailer-test", "sent"),
    ]

    # The vanished sender comes back and records its (accepted) attempt: too late.
    rcpt = email.to[0].address
    settled = settle(
        AttemptResult(Reply(250, "2.0.0 OK"), {rcpt: Reply(250, "2.1.5 OK")}),
        pending=stale.pending,
        accepted_before=[],
        refused_before=[],
        attempt=stale.attempts,
        queued_at=stale.queued_at,
        now=utcnow(),
        retry_base_seconds=1,
        retry_max_seconds=1,
        max_defer_seconds=60,
    )
    assert settled.outcome == "sent"
    assert await queue.record(stale, settled, "vanished-host", utcnow()) is False
    assert await attempts_of(service, email_id) == [
        (1, "vanished-host", None),
        (2, "mailer-test", "sent"),
    ]
    assert await service.status(email_id) == "sent"
    sent = await service.event(email_id, MailEvent.SENT)
    assert (sent.attempt, sent.email_id) == (2, email_id)
    assert [e.event for e in await service.events(email_id)] == ["queued", "sent"]


async def test_a_sender_that_lost_its_lease_is_counted_and_records_nothing_twice(
    mailer, smtp_server_factory, command, account, queue_of
) -> None:  # type: ignore[no-untyped-def]
    """The one way past the lease check before DATA: a sender whose clock says its
    lease is still open after another took the email over (here: its lease end
    moved 60 s on). It sends a copy, and its record is refused: counted as
    ``lease_lost``, no second event."""
    server = smtp_server_factory()
    settings = account(server, **FAST)
    service = await mailer(accounts={"default": settings}, lease_seconds=LEASE)
    queue = await queue_of(service)
    email_id = await service.send(command())
    await service.event(email_id, MailEvent.QUEUED)
    [stale] = await queue.claim("slow-sender", "slow-host", 10, ["default"], LEASE, utcnow())

    async def sent_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["sent"] == 1)

    await wait_for(sent_now, timeout=10, interval=0.2, description="the next run sent it")

    secrets = Secrets(None, {})
    options = MailerOptions(accounts={"default": settings}, lease_seconds=LEASE)
    pool = SmtpPool("default", SmtpAccount.model_validate(settings), secrets)
    sender = Sender(
        queue, {"default": pool}, AttachmentStore([], secrets), options, owner="slow", host="slow"
    )
    counts: Counter[str] = Counter()
    behind = dataclasses.replace(stale, due_at=utcnow() + timedelta(seconds=60))
    try:
        await sender._send(behind, counts)
    finally:
        await pool.close()

    assert counts == Counter({"lease_lost": 1})
    copies = server.messages()
    assert len(copies) == 2, "the copy the lost lease let through"
    assert copies[0].raw == copies[1].raw
    assert await attempts_of(service, email_id) == [
        (1, "slow-host", None),
        (2, "mailer-test", "sent"),
    ]
    assert [e.event for e in await service.events(email_id)] == ["queued", "sent"]


async def test_data_goes_out_only_while_the_lease_outlasts_it(
    mailer, smtp_server_factory, command, account
) -> None:  # type: ignore[no-untyped-def]
    """One connection, two emails claimed: the second waits for the connection
    while the first's DATA takes 1 s, and then less of its lease is left than
    DATA may take. It is handed back unsent (``lease_short``) and sent by a
    later claim with a fresh lease, once."""
    server = smtp_server_factory(faults=[{"stage": "data", "delay_seconds": 1.0, "count": 1}])
    # 4 x 0.2 + 1.5 = 2.3 s < 2.4 s of lease; the wait leaves ~1.4 s < 1.5 s for DATA.
    slow = {"timeout_seconds": 0.2, "data_timeout_seconds": 1.5, "max_connections": 1}
    service = await mailer(accounts={"default": account(server, **slow)}, lease_seconds=2.4)
    ids = [await service.send(command()) for _ in range(2)]
    for email_id in ids:
        await service.event(email_id, MailEvent.QUEUED)

    finished = await service.run()

    assert finished.status == "succeeded", finished.error
    assert finished.result == {"sent": 2, "deferred": 0, "failed": 0}
    subject = service.broker.subjects.run_event(finished.run_id, RunEvent.PROGRESS)
    progress_event = await service.last(subject, RunProgress)
    assert progress_event.counters == {"sent": 2, "lease_short": 1}
    progress = await service.pool.fetch(
        "SELECT email_id, attempt, outcome FROM mailer.attempts ORDER BY started_at, attempt"
    )
    # The handed-back claim left no attempt behind; each email was sent by attempt 1.
    assert sorted((r["attempt"], r["outcome"]) for r in progress) == [(1, "sent"), (1, "sent")]
    assert len(server.messages()) == 2
    assert sorted(m.message_id or "" for m in server.messages()) == sorted(
        [(await service.event(i, MailEvent.SENT)).message_id for i in ids]
    )


async def test_a_graceful_stop_hands_back_the_emails_not_yet_at_data(
    mailer, smtp_server_factory, command, account
) -> None:  # type: ignore[no-untyped-def]
    """Stopped while one email waits for its RCPT reply and another for its DATA
    reply, longer than the service's 5 s grace: the first is handed back (queued,
    no attempt counted), the second stays claimed: it may have been delivered."""
    server = smtp_server_factory(
        faults=[
            {"stage": "rcpt", "rcpt": "slow-rcpt@*", "delay_seconds": 8},
            {"stage": "data", "rcpt": "slow-data@*", "delay_seconds": 8},
        ]
    )
    patient = {"timeout_seconds": 10, "data_timeout_seconds": 10}
    service = await mailer(accounts={"default": account(server, **patient)}, lease_seconds=60)
    before = await service.send(command(to=[{"address": "slow-rcpt@example.com"}]))
    at_data = await service.send(command(to=[{"address": "slow-data@example.com"}]))
    for email_id in (before, at_data):
        await service.event(email_id, MailEvent.QUEUED)
    due = job_due("email-send")
    await service.broker.publish(
        service.broker.subjects.job_due("email-send"), due, msg_id=due.run_id
    )
    # The DATA-delayed message is stored before its reply is delayed: it is at DATA.
    await server.wait_for_messages(1, timeout=10)
    assert await service.status(before) == "sending"

    service.stop.set()
    assert service.task is not None
    await asyncio.wait_for(service.task, timeout=20)

    rows = await service.pool.fetch(
        "SELECT id, status, attempts, claimed_by FROM mailer.emails WHERE id = ANY($1::uuid[])",
        [uuid.UUID(before), uuid.UUID(at_data)],
    )
    state = {str(r["id"]): (r["status"], r["attempts"], r["claimed_by"]) for r in rows}
    assert state[before] == ("queued", 0, None), "handed back as if never claimed"
    assert state[at_data] == ("sending", 1, service.settings.instance_id), "left to its lease"
    assert await attempts_of(service, before) == []
    assert await attempts_of(service, at_data) == [(1, "mailer-test", None)]

    # The next mailer sends the handed-back email at once (the interrupted run,
    # handed back to JetStream, is redelivered to it too); the other waits for its lease.
    server.clear_faults()
    again = await mailer(accounts={"default": account(server, **patient)}, lease_seconds=60)
    await again.run()

    async def handed_back_sent() -> bool:
        return bool(await again.status(before) == "sent")

    await wait_for(handed_back_sent, timeout=10, description="the handed-back email sent")
    assert await again.status(at_data) == "sending"
    assert await attempts_of(again, before) == [(1, "mailer-test", "sent")]
    assert [m.rcpt_tos for m in server.messages()] == [
        ["slow-data@example.com"],
        ["slow-rcpt@example.com"],
    ]


async def test_outcomes_recorded_together_keep_each_claims_check(
    mailer, smtp_server, command, account, queue_of
) -> None:  # type: ignore[no-untyped-def]
    """One record of three outcomes (a group commit) whose middle email was taken
    over meanwhile: the other two are recorded with their events; that one is
    refused, changes nothing and tells nothing."""
    service = await mailer(accounts={"default": account(smtp_server, **FAST)}, lease_seconds=LEASE)
    queue = await queue_of(service)
    ids = [await service.send(command()) for _ in range(3)]
    for email_id in ids:
        await service.event(email_id, MailEvent.QUEUED)
    claimed = {e.id: e for e in await queue.claim("s", "h", 10, ["default"], LEASE, utcnow())}
    assert sorted(claimed) == sorted(ids)
    # Another sender took the second one over (its lease ran out): attempt 2 is theirs.
    await service.pool.execute(
        "UPDATE mailer.emails SET attempts = 2, claimed_by = 'other' WHERE id = $1",
        uuid.UUID(ids[1]),
    )

    def sent(email: Any) -> Outcome:
        rcpt = email.pending[0]
        result = AttemptResult(Reply(250, "2.0.0 OK"), {rcpt: Reply(250, "2.1.5 OK")})
        settled = settle(
            result,
            pending=email.pending,
            accepted_before=[],
            refused_before=[],
            attempt=email.attempts,
            queued_at=email.queued_at,
            now=utcnow(),
            retry_base_seconds=1,
            retry_max_seconds=1,
            max_defer_seconds=60,
        )
        return Outcome(claimed[email.id], settled, utcnow())

    recorded = await queue.record_many([sent(claimed[i]) for i in ids], "h")

    assert recorded == [True, False, True]
    assert [await service.status(i) for i in ids] == ["sent", "sending", "sent"]
    for email_id in (ids[0], ids[2]):
        event = await service.event(email_id, MailEvent.SENT)
        assert event.attempt == 1
        assert await attempts_of(service, email_id) == [(1, "h", "sent")]
    assert [e.event for e in await service.events(ids[1])] == ["queued"]
    assert await attempts_of(service, ids[1]) == [(1, "h", None)]
    logged = await service.pool.fetch("SELECT email_id FROM mailer.messages")
    assert sorted(str(r["email_id"]) for r in logged) == sorted([ids[0], ids[2]])
