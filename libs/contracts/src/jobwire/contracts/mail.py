"""Conversation email: the command to send one, and what then happened to it.

An app or a workflow publishes :class:`SendEmail` on ``jobwire.mail.send.{account}``
(or posts it to the mailer's REST API). The mailer takes it into its queue —
the same ``idempotency_key`` twice is one email — and publishes one event per
step on ``jobwire.mail.events.{emailId}.{event}``: queued, then deferred (a
temporary failure; it will be tried again) any number of times, then sent or
failed. Where the server accepted some recipients and refused others, ``sent``
lists both; ``failed`` means no recipient took the email.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, ConfigDict, Field

from jobwire.contracts.envelope import Contract, Versioned
from jobwire.contracts.job_types import JobParams, job_params
from jobwire.contracts.objects import EmailAddress, FileObject

# The namespace of email ids: uuid5 of the idempotency key, so that every
# replica, the REST API and an app that wants to look its email up derive the
# same id from the same key.
EMAIL_ID_NAMESPACE = uuid.UUID("5b0d3a52-6f43-4d5e-9a44-1f0c2e7a9b10")

MAX_KEY_LENGTH = 200


def email_id(idempotency_key: str) -> str:
    """The id of the email a :class:`SendEmail` with ``idempotency_key`` becomes."""
    return str(uuid.uuid5(EMAIL_ID_NAMESPACE, idempotency_key))


class MailEvent(StrEnum):
    """The last token of a mail event subject."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"


class Attachment(Versioned):
    """A file to attach, by reference: the mailer reads it from storage when sending."""

    file: FileObject = Field(description="The file in one of the mailer's storages.")
    filename: str | None = Field(
        default=None,
        max_length=255,
        description="Name shown to the recipient; empty = the last part of `file.path`.",
    )
    content_type: str | None = Field(
        default=None,
        description="Media type; empty = `file.content_type`, else guessed from the name.",
    )
    content_id: str | None = Field(
        default=None,
        max_length=200,
        description="Set for an inline image: the HTML body refers to it as `cid:<content_id>`.",
    )


class SendEmail(Contract):
    """Send one email.

    Published on ``jobwire.mail.send.{account}`` or posted to the mailer's
    ``POST /api/v1/mail``. Re-sending a command with the same
    ``idempotency_key`` never sends a second email: the mailer answers with
    the first one's id (``email_id(idempotency_key)``).
    """

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    event_type = "io.jobwire.mail.send"

    idempotency_key: str = Field(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Same for every re-send of one email; the email id and its "
        "`Message-ID` derive from it.",
    )
    account: str = Field(
        default="default",
        min_length=1,
        description="The mailer account (SMTP server and sender domain) to send with.",
    )
    from_: EmailAddress | None = Field(
        default=None, alias="from", description="The `From` mailbox; empty = the account's."
    )
    to: list[EmailAddress] = Field(default_factory=list, description="`To` recipients.")
    cc: list[EmailAddress] = Field(default_factory=list, description="`Cc` recipients.")
    bcc: list[EmailAddress] = Field(
        default_factory=list, description="`Bcc` recipients: sent to, never shown."
    )
    reply_to: list[EmailAddress] = Field(default_factory=list, description="`Reply-To` mailboxes.")
    subject: str = Field(default="", max_length=998, description="The subject (UTF-8).")
    text: str | None = Field(default=None, description="Plain-text body.")
    html: str | None = Field(default=None, description="HTML body.")
    attachments: list[Attachment] = Field(
        default_factory=list,
        description="Files to attach, read from storage when the email is queued (and, "
        "for a message too large to keep, when it is sent).",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description='Extra header fields, e.g. `{"X-Case": "4711"}`; the fields the '
        "mailer sets itself (From, To, Subject, Message-ID and the like) cannot be given here.",
    )
    conversation_id: str | None = Field(
        default=None,
        max_length=200,
        description="The conversation (e.g. a case) the email belongs to; the address "
        "book and the conversation view group by it.",
    )
    in_reply_to: str | None = Field(
        default=None,
        description="`Message-ID` of the email this answers (one the mailer sent, or one "
        "an email listener received): In-Reply-To and References are set from it.",
    )
    send_at: AwareDatetime | None = Field(
        default=None, description="Not before this time; empty = as soon as possible."
    )
    tags: list[str] = Field(
        default_factory=list, description="Free labels, repeated in every event of the email."
    )


class RecipientResult(Versioned):
    """What the server answered for one recipient."""

    address: str = Field(description="The recipient's address.")
    code: int | None = Field(default=None, description="SMTP reply code, if a server answered.")
    reason: str = Field(default="", description="The server's reply text, or what went wrong.")


class EmailEvent(Contract):
    """What every email event says about its email."""

    email_id: str = Field(description="The email: `email_id(idempotency_key)`.")
    idempotency_key: str = Field(description="As in the SendEmail.")
    account: str = Field(description="The account sending it.")
    message_id: str = Field(description="The email's `Message-ID`, with angle brackets.")
    conversation_id: str | None = Field(default=None, description="As in the SendEmail.")
    tags: list[str] = Field(default_factory=list, description="As in the SendEmail.")
    at: AwareDatetime = Field(description="When this happened.")


class EmailQueued(EmailEvent):
    """The mailer took the email into its queue; it goes out at ``send_at`` or soon."""

    event_type = "io.jobwire.mail.queued"

    event: Literal["queued"] = "queued"
    send_at: AwareDatetime | None = Field(default=None, description="As in the SendEmail.")


class EmailDeferred(EmailEvent):
    """A temporary failure (4xx reply, connection trouble): the email will be tried again."""

    event_type = "io.jobwire.mail.deferred"

    event: Literal["deferred"] = "deferred"
    attempt: int = Field(ge=1, description="The attempt that was deferred.")
    code: int | None = Field(default=None, description="SMTP reply code, if a server answered.")
    reason: str = Field(description="The server's reply text, or the connection error.")
    next_attempt_at: AwareDatetime = Field(description="When it will be tried again.")
    recipients: list[RecipientResult] = Field(
        default_factory=list, description="Recipients the server deferred one by one, if so."
    )


class EmailSent(EmailEvent):
    """The server accepted the email for at least one recipient."""

    event_type = "io.jobwire.mail.sent"

    event: Literal["sent"] = "sent"
    attempt: int = Field(ge=1, description="The attempt that sent it.")
    code: int = Field(description="The server's reply code to the message data (250).")
    reply: str = Field(description="The server's reply text, often with its queue id.")
    accepted: list[str] = Field(description="Recipients the server accepted.")
    refused: list[RecipientResult] = Field(
        default_factory=list,
        description="Recipients the server refused for good (5xx) in the same attempt.",
    )


class EmailFailed(EmailEvent):
    """The email will not be sent: refused for good, invalid, or deferred for too long."""

    event_type = "io.jobwire.mail.failed"

    event: Literal["failed"] = "failed"
    attempt: int = Field(ge=0, description="Attempts made; 0 = refused before sending.")
    code: int | None = Field(default=None, description="SMTP reply code, if a server answered.")
    reason: str = Field(description="Why, naming the field for an invalid command.")
    recipients: list[RecipientResult] = Field(
        default_factory=list, description="Every recipient's refusal, where the server split them."
    )


MAIL_EVENT_MODELS: dict[MailEvent, type[EmailEvent]] = {
    MailEvent.QUEUED: EmailQueued,
    MailEvent.DEFERRED: EmailDeferred,
    MailEvent.SENT: EmailSent,
    MailEvent.FAILED: EmailFailed,
}


@job_params("email-send")
class EmailSendParams(JobParams):
    """Parameters of an `email-send` job: each run sends what is due in the mail queue.

    The queue fills whether or not the job runs; disabling the job stops
    sending. A run sends new email, deferred email whose next attempt is due
    and `send_at` email whose time has come, until nothing is due or a limit
    below is reached, and reports how many it sent, deferred and failed.
    """

    accounts: list[str] = Field(
        default_factory=list, description="Send only for these accounts; empty = every account."
    )
    max_emails: int = Field(
        default=10_000, ge=1, le=1_000_000, description="At most this many emails per run."
    )
    max_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="A run takes no new email after this long; what is due then waits "
        "for the next run.",
    )


@job_params("address-book-populate")
class AddressBookPopulateParams(JobParams):
    """Parameters of an `address-book-populate` job: add the addresses of conversation email.

    Each run reads, from where the last run stopped, the email the mailer sent
    and the email listeners received, and upserts every address into the
    address book. A rerun changes nothing.
    """

    exclude: list[str] = Field(
        default_factory=list,
        description="Addresses or patterns to leave out, e.g. `*@internal.example` or "
        "`alerts@example.com` (`*` matches any characters).",
    )
    exclude_no_reply: bool = Field(
        default=True,
        description="Leave out no-reply senders (`no-reply@`, `noreply@`, `donotreply@`, "
        "`mailer-daemon@`, `postmaster@`, `bounce...@`).",
    )
    batch_size: int = Field(default=1000, ge=1, le=100_000, description="Emails read per step.")
