"""SendEmail commands from the MAIL stream into the queue.

Acked once the email is queued (committed), so a crash in between redelivers
the command and the idempotency key makes the second take a no-op. A command
refused by the gate is recorded as a failed email with its reason, and the
command itself goes to the dead-letter stream (``jobwire.dlq.mailer``).
"""

from __future__ import annotations

import asyncio

from jobwire.contracts.mail import SendEmail
from jobwire.contracts.subjects import Stream
from jobwire.mailer.commands import CommandRefused, Gate
from jobwire.runtime.broker import Broker, Delivery, Poison
from jobwire.runtime.logs import get_logger

log = get_logger("jobwire.mailer.intake")

DURABLE = "mailer-intake"
DEAD_LETTERS = "mailer"


class Intake:
    def __init__(self, broker: Broker, gate: Gate, *, batch: int) -> None:
        self.broker = broker
        self.gate = gate
        self.batch = batch

    async def run(self, stop: asyncio.Event) -> None:
        await self.broker.consume(
            stream=Stream.MAIL,
            durable=DURABLE,
            filter_subject=self.broker.subjects.all_mail_send(),
            model=SendEmail,
            handler=self.handle,
            stop=stop,
            batch=self.batch,
            concurrency=min(self.batch, 16),
            dlq_source=DEAD_LETTERS,
        )

    async def handle(self, delivery: Delivery[SendEmail]) -> None:
        command = delivery.data
        account = delivery.msg.subject.rsplit(".", 1)[-1]
        try:
            email, created = await self.gate.submit(command, subject_account=account)
        except CommandRefused as exc:
            log.warning(
                "mailer.refused",
                idempotency_key=command.idempotency_key,
                fields=[p.field for p in exc.problems],
            )
            raise Poison("invalid_command", str(exc)) from None
        if created:
            log.info("mailer.queued", email_id=email.id, account=email.account)
