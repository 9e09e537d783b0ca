"""The conversation log's other half: the email that email listeners received.

An email listener turns each email into a StartWorkflow whose ``input`` is
an EmailObject. The mailer reads those commands on a durable consumer of its
own and logs each email — its sender, recipients and threading headers — so
that a reply the mailer sends threads to it, a received reply joins the
conversation of the email it answers, and address-book-populate finds its
addresses. Other StartWorkflows are passed over.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.objects import EmailObject
from jobwire.contracts.subjects import Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.mailer.adapters.queue import MailQueue
from jobwire.runtime.broker import Broker, Delivery
from jobwire.runtime.logs import get_logger

log = get_logger("jobwire.mailer.conversations")

DURABLE = "mailer-conversations"


class ReceivedMail:
    def __init__(self, broker: Broker, queue: MailQueue, *, batch: int) -> None:
        self.broker = broker
        self.queue = queue
        self.batch = batch

    async def run(self, stop: asyncio.Event) -> None:
        await self.broker.consume(
            stream=Stream.WORKFLOWS,
            durable=DURABLE,
            filter_subject=self.broker.subjects.all_workflow_start(),
            model=StartWorkflow,
            handler=self.handle,
            stop=stop,
            batch=self.batch,
            dlq_source="mailer",
        )

    async def handle(self, delivery: Delivery[StartWorkflow]) -> None:
        command = delivery.data
        if command.origin.kind != "listener" or not isinstance(command.input, dict):
            return
        try:
            email = EmailObject.model_validate(command.input)
        except ValidationError:
            return  # not an email: a Kafka message, a file …
        # The conversation of the first ancestor the log knows: the parent
        # first, then the References from the newest back.
        ancestors = [m for m in (email.in_reply_to, *reversed(email.references)) if m]
        conversation = await self.queue.conversation_of(ancestors)
        logged = await self.queue.log_received(
            message_id=email.message_id,
            conversation_id=conversation,
            in_reply_to=email.in_reply_to,
            references=email.references,
            sender=email.from_,
            recipients=[*email.to, *email.cc],
            subject=email.subject,
            at=email.date or utcnow(),
        )
        if logged:
            log.info(
                "mailer.received_logged",
                message_id=email.message_id,
                conversation_id=conversation,
                workflow=command.workflow,
            )
