"""Sending, end to end: SendEmail on the stream → queue → `email-send` run → a real SMTP server."""

from __future__ import annotations

import pytest

from jobwire.contracts.mail import MailEvent
from jobwire.contracts.subjects import Stream
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration


async def test_an_email_goes_out_once_per_idempotency_key(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    email = command(subject="Grüße aus dem Fall 4711", conversation_id="case-4711", tags=["t"])
    email_id = await service.send(email)
    await service.send(email)  # the same command again (an app retrying): one email
    queued = await service.event(email_id, MailEvent.QUEUED)
    assert queued.conversation_id == "case-4711"

    finished = await service.run()

    assert finished.status == "succeeded", finished.error
    assert finished.result == {"sent": 1, "deferred": 0, "failed": 0}
    received = smtp_server.messages(rcpt=email.to[0].address)
    assert len(received) == 1
    message = received[0].message
    assert message["Subject"] == "Grüße aus dem Fall 4711"
    assert message["Message-ID"] == queued.message_id
    assert queued.message_id.endswith("@mailer.test>")
    sent = await service.event(email_id, MailEvent.SENT)
    assert sent.accepted == [email.to[0].address]
    assert sent.code == 250
    assert sent.tags == ["t"]
    assert [e.event for e in await service.events(email_id)] == ["queued", "sent"]
    # A second run finds nothing due.
    again = await service.run()
    assert again.result == {"sent": 0, "deferred": 0, "failed": 0}
    assert len(smtp_server.messages(rcpt=email.to[0].address)) == 1


async def test_a_greylisted_email_is_deferred_then_sent(
    mailer, smtp_server_factory, command, account
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(
        faults=[{"stage": "rcpt", "reply": "451 4.7.1 Greylisted, try later", "count": 1}]
    )
    service = await mailer(accounts={"default": account(server)})
    email = command()
    email_id = await service.send(email)
    await service.event(email_id, MailEvent.QUEUED)

    first = await service.run()
    deferred = await service.event(email_id, MailEvent.DEFERRED)
    assert first.result == {"sent": 0, "deferred": 1, "failed": 0}
    assert (deferred.code, deferred.attempt) == (451, 1)
    assert deferred.recipients[0].address == email.to[0].address

    async def sent_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["sent"] == 1)

    await wait_for(sent_now, timeout=10, interval=0.3, description="the retry sent it")
    sent = await service.event(email_id, MailEvent.SENT)
    assert sent.attempt == 2
    assert len(server.messages()) == 1
    history = await service.pool.fetch(
        "SELECT attempt, outcome, code FROM mailer.attempts ORDER BY attempt"
    )
    assert [(r["attempt"], r["outcome"], r["code"]) for r in history] == [
        (1, "deferred", 451),
        (2, "sent", 250),
    ]


async def test_recipients_refused_for_good_are_reported_one_by_one(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    good = "kept-recipient@example.com"
    email = command(
        to=[{"address": good}, {"address": "reject-550@example.com"}],
    )
    email_id = await service.send(email)
    await service.event(email_id, MailEvent.QUEUED)
    await service.run()
    sent = await service.event(email_id, MailEvent.SENT)
    assert sent.accepted == [good]
    assert [(r.address, r.code) for r in sent.refused] == [("reject-550@example.com", 550)]

    nobody = command(to=[{"address": "reject-551@example.com"}])
    failed_id = await service.send(nobody)
    await service.event(failed_id, MailEvent.QUEUED)
    await service.run()
    failed = await service.event(failed_id, MailEvent.FAILED)
    assert failed.code == 551
    assert [r.address for r in failed.recipients] == ["reject-551@example.com"]


async def test_a_message_over_the_servers_size_is_failed_before_data(
    mailer, smtp_server_factory, command, account
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(data_size_limit=2000)
    service = await mailer(accounts={"default": account(server)})
    email_id = await service.send(command(text="x" * 5000))
    await service.event(email_id, MailEvent.QUEUED)
    await service.run()
    failed = await service.event(email_id, MailEvent.FAILED)
    assert failed.code == 552
    assert "SIZE" in failed.reason
    assert server.messages() == []


async def test_invalid_commands_are_refused_naming_the_field(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    cases = {
        "subject": command(subject="Hi\r\nBcc: victim@example.com"),
        "headers": command(headers={"X-Case": "1\r\nBcc: victim@example.com"}),
        "to.0.address": command(to=[{"address": "not an address"}]),
        "account": command(account="nobody"),
        "text": command(text=None),
    }
    for field, bad in cases.items():
        email_id = await service.send(bad, account="default")
        failed = await service.event(email_id, MailEvent.FAILED)
        assert failed.attempt == 0
        assert field in failed.reason, (field, failed.reason)
    # Each command is kept in the dead-letter stream with its reason.
    dlq = await wait_for(lambda: _dead_letters(service), timeout=10, description="dead letters")
    assert dlq >= len(cases)
    await service.run()
    assert smtp_server.messages(rcpt="victim@example.com") == []


async def _dead_letters(service) -> int | None:  # type: ignore[no-untyped-def]
    stream = service.broker.subjects.stream_name(Stream.DLQ)
    info = await service.broker.js.stream_info(stream)
    return info.state.messages or None
