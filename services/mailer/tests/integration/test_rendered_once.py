"""An email is rendered once, when it is queued: every attempt sends those bytes.

What the queue keeps (``mailer.rendered``), what goes out on a retry, what a
message too large to keep becomes, and what only rendering can refuse.
"""

from __future__ import annotations

import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from jobwire.contracts.mail import MailEvent
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.domain.message import render_email
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration

FROM = "cases@mailer.test"  # make_account's from_address


async def rendered_row(service, email_id: str):  # type: ignore[no-untyped-def]
    return await service.pool.fetchrow(
        "SELECT data, smtputf8 FROM mailer.rendered WHERE email_id = $1", uuid.UUID(email_id)
    )


async def test_the_bytes_rendered_when_queued_go_out_on_every_attempt_then_are_dropped(
    mailer, smtp_server_factory, command, account, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    files = tmp_path / "files"
    files.mkdir()
    pdf = bytes(range(256)) * 40
    (files / "letter.pdf").write_bytes(pdf)
    server = smtp_server_factory(
        faults=[{"stage": "rcpt", "reply": "451 4.7.1 Greylisted, try later", "count": 1}]
    )
    service = await mailer(
        accounts={"default": account(server)}, storages=[{"kind": "local", "root": str(files)}]
    )
    email = command(
        attachments=[{"file": {"storage": "local", "path": "letter.pdf", "size": len(pdf)}}]
    )
    email_id = await service.send(email)
    queued = await service.event(email_id, MailEvent.QUEUED)
    kept = await rendered_row(service, email_id)
    assert kept is not None
    assert kept["smtputf8"] is False
    # The attachment was read when the email was queued: its file may go now.
    (files / "letter.pdf").unlink()

    first = await service.run()
    assert first.result == {"sent": 0, "deferred": 1, "failed": 0}
    assert await rendered_row(service, email_id) is not None, "kept for the next attempt"

    async def sent_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["sent"] == 1)

    await wait_for(sent_now, timeout=10, interval=0.3, description="the retry sent it")
    [received] = server.messages()
    assert received.raw.replace(b"\r\n", b"\n") == kept["data"].replace(b"\r\n", b"\n")
    assert received.message["Message-ID"] == queued.message_id
    attached = [p.get_content() for p in received.message.iter_attachments()]
    assert attached == [pdf]
    # Date: when it was queued (ready to enter the delivery system), not when sent.
    assert parsedate_to_datetime(received.message["Date"]) == queued.at.replace(microsecond=0)
    assert await rendered_row(service, email_id) is None, "settled: the bytes are dropped"


async def test_a_message_too_large_to_keep_is_rendered_at_its_attempt_to_the_same_bytes(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, keep_rendered_bytes=0)
    email = command(subject="Zu groß zum Aufheben")
    email_id = await service.send(email)
    await service.event(email_id, MailEvent.QUEUED)
    assert await rendered_row(service, email_id) is None

    assert (await service.run()).result == {"sent": 1, "deferred": 0, "failed": 0}

    row = await service.pool.fetchrow(
        "SELECT message_id, queued_at FROM mailer.emails WHERE id = $1", uuid.UUID(email_id)
    )
    expected = render_email(
        email,
        account_from=EmailAddress(address=FROM),
        message_id=row["message_id"],
        date=row["queued_at"],
        references=[],
        attachments=[],
    )
    [received] = smtp_server.messages(rcpt=email.to[0].address)
    assert received.raw.replace(b"\r\n", b"\n") == expected.data.replace(b"\r\n", b"\n")


async def test_a_message_over_the_accounts_size_is_refused_when_queued(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server, max_message_bytes=2048)})
    email_id = await service.send(command(text="Lorem ipsum dolor. " * 200))

    failed = await service.event(email_id, MailEvent.FAILED)

    assert failed.attempt == 0
    assert "attachments: the message is" in failed.reason
    assert "at most 2048" in failed.reason
    assert await rendered_row(service, email_id) is None
    assert (await service.run()).result == {"sent": 0, "deferred": 0, "failed": 0}
