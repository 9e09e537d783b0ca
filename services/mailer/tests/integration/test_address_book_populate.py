"""address-book-populate on the conversation log: sent and received email, incremental."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobwire.contracts.mail import MailEvent
from jobwire.contracts.objects import EmailObject
from jobwire.contracts.workflows import Origin, StartWorkflow
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration


async def test_sent_and_received_addresses_fill_the_address_book_once(
    mailer, smtp_server, command, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    first = command(
        to=[{"address": "Jörg@Bücher.Example", "name": "Jörg Groß"}],
        cc=[{"address": "no-reply@example.com"}, {"address": "team@internal.example"}],
        conversation_id="case-1",
    )
    email_id = await service.send(first)
    queued = await service.event(email_id, MailEvent.QUEUED)
    await service.run()
    await service.event(email_id, MailEvent.SENT)

    # An email listener received the customer's answer (a StartWorkflow with an EmailObject).
    reply = EmailObject.model_validate(
        {
            "message_id": "<answer-1@xn--bcher-kva.example>",
            "from": {"address": "Jörg@bücher.example", "name": "Jörg G."},
            "to": [{"address": "cases@mailer.test"}],
            "subject": "Re: Hello",
            "in_reply_to": queued.message_id,
            "references": [queued.message_id],
            "size": 100,
            "date": datetime(2030, 1, 1, tzinfo=UTC),
        }
    )
    start = StartWorkflow(
        workflow="case-reply",
        input=reply.model_dump(mode="json", by_alias=True),
        idempotency_key="imap:INBOX:1:1",
        origin=Origin(
            kind="listener",
            job_id="job-imap",
            coordinates={"mailbox": "INBOX", "uidvalidity": 1, "uid": 1},
        ),
    )
    await service.broker.publish(
        service.broker.subjects.workflow_start("case-reply"), start, msg_id=start.idempotency_key
    )
    # It joins the conversation of the email it answers.
    logged = await wait_for(
        lambda: service.pool.fetchval(
            "SELECT conversation_id FROM mailer.messages WHERE message_id = $1", reply.message_id
        ),
        timeout=10,
        description="the reply in the conversation log",
    )
    assert logged == "case-1"

    run = await service.run("address-book-populate", exclude=["*@internal.example"])
    assert run.status == "succeeded", run.error
    assert run.result == {"messages": 2, "addresses": 2, "excluded": 3}
    rows = await service.pool.fetch("SELECT * FROM mailer.contacts ORDER BY key")
    assert [r["key"] for r in rows] == ["jörg@xn--bcher-kva.example"]
    contact = rows[0]
    assert (contact["sent_count"], contact["received_count"]) == (1, 1)
    assert contact["name"] == "Jörg G."  # the latest name seen
    assert contact["last_conversation_id"] == "case-1"

    again = await service.run("address-book-populate", exclude=["*@internal.example"])
    assert again.result == {"messages": 0, "addresses": 0, "excluded": 0}
    assert [tuple(r) for r in await service.pool.fetch("SELECT * FROM mailer.contacts")] == [
        tuple(contact)
    ]

    found = await service.pool.fetch("SELECT key FROM mailer.contacts WHERE key LIKE 'jö%'")
    assert len(found) == 1
