"""The one gate into the mail queue, for commands from the stream and from the REST API.

A command is checked whole before it is queued — addresses, headers, body,
account and its secrets, attachments — so what can be refused up front is
refused with the field named, not failed later. A refused command is still
recorded, as a failed email with its reason, so the app that sent it can
look it up by its key.

An accepted command is rendered here, once: the queue keeps its bytes for
every attempt (see rendering.py), and what only rendering can find — a header
that would not be one field, a message over the account's size — is refused
up front too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.mail import SendEmail, email_id
from jobwire.mailer.adapters.attachments import AttachmentStore
from jobwire.mailer.adapters.queue import Accepted, MailQueue, QueuedEmail
from jobwire.mailer.adapters.smtp import SmtpPool
from jobwire.mailer.domain.addresses import InvalidCommand
from jobwire.mailer.domain.message import (
    check_command,
    envelope_recipients,
    message_id,
    references_for,
)
from jobwire.mailer.rendering import render_with_attachments, size_problem
from jobwire.mailer.settings import MailerOptions
from jobwire.runtime.secrets import SecretNotFound


class CommandRefused(Exception):
    """A SendEmail that will not be sent; ``problems`` name the fields."""

    def __init__(self, problems: list[InvalidCommand], email: QueuedEmail | None = None) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
        self.email = email


class Gate:
    def __init__(
        self,
        queue: MailQueue,
        pools: Mapping[str, SmtpPool],
        attachments: AttachmentStore,
        options: MailerOptions,
    ) -> None:
        self.queue = queue
        self.pools = pools
        self.attachments = attachments
        self.options = options

    async def submit(
        self, command: SendEmail, *, subject_account: str | None = None
    ) -> tuple[QueuedEmail, bool]:
        """Queue ``command``: (its email, True if new); :class:`CommandRefused` if refused.

        The same idempotency key again returns the email of the first
        command, whatever this one says: the queue's insert finds it (no
        look-up before, new commands being the common case), and a first
        command that was refused is refused again with its reason.
        """
        problems = await self.check(command, subject_account)
        accepted = await self._accepted(command)
        now = utcnow()
        if not problems:
            accepted, problems = await self._rendered(accepted, now)
        if problems:
            email, new = await self.queue.refuse(accepted, "; ".join(map(str, problems)), now)
            if new:
                raise CommandRefused(problems, email)
        else:
            email, new = await self.queue.enqueue(accepted, now)
        if not new and email.status == "failed" and email.attempts == 0:
            raise CommandRefused([InvalidCommand("command", email.last_reply or "")], email)
        return email, new

    async def check(
        self, command: SendEmail, subject_account: str | None = None
    ) -> list[InvalidCommand]:
        problems = list(
            check_command(command, max_attachments_bytes=self.options.max_attachment_bytes)
        )
        if subject_account is not None and subject_account != command.account:
            problems.append(
                InvalidCommand(
                    "account",
                    f"the command names {command.account!r} but was sent on the subject of "
                    f"{subject_account!r}",
                )
            )
        pool = self.pools.get(command.account)
        if pool is None:
            configured = ", ".join(sorted(self.pools)) or "none"
            problems.append(
                InvalidCommand(
                    "account", f"unknown account {command.account!r}; configured: {configured}"
                )
            )
        else:
            try:
                pool.check_secrets()
            except SecretNotFound as exc:
                problems.append(InvalidCommand("account", f"{command.account}: {exc}"))
        problems += await self.attachments.check(
            command.attachments, self.options.max_attachment_bytes
        )
        return problems

    async def _rendered(
        self, accepted: Accepted, now: datetime
    ) -> tuple[Accepted, list[InvalidCommand]]:
        """``accepted`` with its DATA when it is small enough to keep, or why it cannot be sent.

        ``now`` is when it is queued: its Date. A message whose attachments alone
        are over ``keep_rendered_bytes`` is not rendered (nor its attachments read)
        here: each attempt renders it.
        """
        command = accepted.command
        keep = self.options.keep_rendered_bytes
        if sum(a.file.size for a in command.attachments) > keep:
            return accepted, []
        pool = self.pools[command.account]  # check() refused an unknown account
        try:
            rendered = await render_with_attachments(
                command,
                account=pool.account,
                message_id=accepted.message_id,
                date=now,
                references=accepted.references,
                attachments=self.attachments,
                max_attachment_bytes=self.options.max_attachment_bytes,
            )
        except InvalidCommand as exc:
            return accepted, [exc]
        problem = size_problem(len(rendered.data), pool.account, command.account)
        if problem is not None:
            return accepted, [problem]
        if len(rendered.data) > keep:
            return accepted, []
        return replace(accepted, rendered=rendered), []

    async def _accepted(self, command: SendEmail) -> Accepted:
        pool = self.pools.get(command.account)
        domain = pool.account.message_id_domain if pool else "invalid"
        conversation_id = command.conversation_id
        references: list[str] = []
        if command.in_reply_to:
            parent = await self.queue.parent(command.in_reply_to)
            if parent is None:
                references = references_for(command.in_reply_to, [])
            else:
                # RFC 5322 3.6.4: the parent's References, else its In-Reply-To.
                ancestors = parent.references or (
                    [parent.in_reply_to] if parent.in_reply_to else []
                )
                references = references_for(parent.message_id, ancestors)
                conversation_id = conversation_id or parent.conversation_id
        try:
            recipients = envelope_recipients(command)
        except ValueError:
            recipients = []  # refused anyway; the check said why
        return Accepted(
            command=command,
            email_id=email_id(command.idempotency_key),
            message_id=message_id(command.idempotency_key, domain),
            conversation_id=conversation_id,
            references=references,
            recipients=recipients,
        )
