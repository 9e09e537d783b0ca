"""Sending, end to end: SendEmail on the stream → queue → `email-send` run → a real SMTP server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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


async def test_attachments_come_from_storage_and_inline_images_by_cid(
    mailer, smtp_server, command, account, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    files = tmp_path / "files"
    (files / "4711").mkdir(parents=True)
    pdf = bytes(range(256)) * 400  # 100 KiB, every byte value
    (files / "4711" / "invoice.pdf").write_bytes(pdf)
    (files / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    service = await mailer(
        accounts={"default": account(smtp_server)},
        storages=[{"kind": "local", "root": str(files)}],
    )
    email = command(
        html='<p>Anbei</p><img src="cid:logo">',
        attachments=[
            {
                "file": {"storage": "local", "path": "4711/invoice.pdf", "size": len(pdf)},
                "filename": "Rechnung Nr. 4711 März.pdf",
            },
            {"file": {"storage": "local", "path": "logo.png", "size": 72}, "content_id": "logo"},
        ],
    )
    email_id = await service.send(email)
    await service.event(email_id, MailEvent.QUEUED)
    await service.run()
    await service.event(email_id, MailEvent.SENT)
    message = smtp_server.messages(rcpt=email.to[0].address)[0].message
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    invoice = parts["Rechnung Nr. 4711 März.pdf"]
    assert invoice.get_content() == pdf
    logo = parts["logo.png"]
    assert logo["Content-ID"] == "<logo>"
    assert logo.get_content_type() == "image/png"
    assert logo.get_content_disposition() == "inline"

    missing = command(attachments=[{"file": {"storage": "local", "path": "gone.pdf", "size": 10}}])
    failed = await service.event(await service.send(missing), MailEvent.FAILED)
    assert "attachments.0.file.path" in failed.reason
    elsewhere = command(
        attachments=[{"file": {"storage": "s3", "bucket": "secret", "path": "a", "size": 1}}]
    )
    failed = await service.event(await service.send(elsewhere), MailEvent.FAILED)
    assert "attachments.0.file.storage" in failed.reason


async def test_a_dropped_connection_defers_until_too_old_then_fails(
    mailer, smtp_server_factory, command, account
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(faults=[{"stage": "rcpt", "action": "drop"}])
    service = await mailer(accounts={"default": account(server)}, max_defer_seconds=1.0)
    email_id = await service.send(command())
    await service.event(email_id, MailEvent.QUEUED)
    await service.run()
    deferred = await service.event(email_id, MailEvent.DEFERRED)
    assert deferred.code is None
    assert "127.0.0.1" in deferred.reason

    async def failed_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["failed"] == 1)

    await wait_for(failed_now, timeout=15, interval=0.3, description="the email given up")
    failed = await service.event(email_id, MailEvent.FAILED)
    assert "still deferred" in failed.reason
    assert server.messages() == []


async def test_without_a_run_nothing_is_sent_and_the_queue_keeps_filling(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    emails = [command() for _ in range(5)]
    for email in emails:
        await service.event(await service.send(email), MailEvent.QUEUED)
    assert (
        await service.pool.fetchval("SELECT count(*) FROM mailer.emails WHERE status = 'queued'")
        == 5
    )
    assert all(smtp_server.messages(rcpt=e.to[0].address) == [] for e in emails)
    run = await service.run(max_emails=2)
    assert run.result == {"sent": 2, "deferred": 0, "failed": 0}
    assert (await service.run()).result == {"sent": 3, "deferred": 0, "failed": 0}


async def test_send_at_waits_for_its_time(mailer, smtp_server, command, account) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    later = datetime.now(UTC) + timedelta(seconds=2)
    email_id = await service.send(command(send_at=later))
    await service.event(email_id, MailEvent.QUEUED)
    assert (await service.run()).result == {"sent": 0, "deferred": 0, "failed": 0}

    async def sent_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["sent"] == 1)

    await wait_for(sent_now, timeout=10, interval=0.3, description="sent at its time")
    sent = await service.event(email_id, MailEvent.SENT)
    assert sent.at >= later
