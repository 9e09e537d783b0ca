"""An email's DATA from what the queue holds: its attachments read from storage, then rendered.

The gate renders an email when it is queued and the queue keeps the bytes
(up to ``keep_rendered_bytes``), so that no attempt renders and every attempt
sends the same bytes. A message too large to keep is rendered here again at
each attempt, from the same inputs, to the same bytes: Date is when it was
queued (RFC 5322 3.6.1: when it was ready to enter the delivery system) and
the MIME boundaries derive from the content.
"""

from __future__ import annotations

from datetime import datetime

from jobwire.contracts.mail import SendEmail
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.adapters.attachments import AttachmentStore
from jobwire.mailer.domain.addresses import InvalidCommand
from jobwire.mailer.domain.message import Rendered, render_email
from jobwire.mailer.settings import SmtpAccount


def account_sender(account: SmtpAccount) -> EmailAddress:
    """The From of the account's email that names none."""
    return EmailAddress(address=account.from_address, name=account.from_name)


async def render_with_attachments(
    command: SendEmail,
    *,
    account: SmtpAccount,
    message_id: str,
    date: datetime,
    references: list[str],
    attachments: AttachmentStore,
    max_attachment_bytes: int,
) -> Rendered:
    """The email's DATA; :class:`InvalidCommand` if an attachment is gone or the headers
    would not be one field each."""
    contents = [
        (attachment, await attachments.read(attachment, number, max_attachment_bytes))
        for number, attachment in enumerate(command.attachments)
    ]
    return render_email(
        command,
        account_from=account_sender(account),
        message_id=message_id,
        date=date,
        references=references,
        attachments=contents,
    )


def size_problem(size: int, account: SmtpAccount, name: str) -> InvalidCommand | None:
    """Why a message of ``size`` bytes cannot go out through the account, if it cannot."""
    if size <= account.max_message_bytes:
        return None
    return InvalidCommand(
        "attachments",
        f"the message is {size} bytes; the account {name!r} sends "
        f"at most {account.max_message_bytes}",
    )
