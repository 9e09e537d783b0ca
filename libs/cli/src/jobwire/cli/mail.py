"""``jobwire mail …`` and ``jobwire contacts``: the mailer's API from the command line.

``mail send`` posts a SendEmail (from options, or a JSON file) and says what
the mailer did with it; the mailer checks it and names each bad field. ``mail
list`` and ``mail show`` read the queue and the server replies of every
attempt; ``contacts`` searches the address book. The mailer has its own URL
(see :mod:`jobwire.cli.config`) and takes the admin API's tokens.
"""

from __future__ import annotations

import uuid
from email.utils import parseaddr
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from jobwire.cli.client import JSON, CliError
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.formats import DocumentError, load_document
from jobwire.cli.output import cell, emit, fields, status_cell, table, when

app = typer.Typer(help="Email through the mailer: send, list, show.", no_args_is_help=True)


class EmailStatusName(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"


def mailbox(text: str) -> dict[str, str]:
    """``alice@example.com`` or ``Alice Example <alice@example.com>`` as an EmailAddress."""
    name, address = parseaddr(text)
    if not address:
        # Not parseable: sent as written, for the mailer to name what is wrong.
        return {"address": text.strip()}
    return {"address": address, "name": name} if name else {"address": address}


AddressOption = Annotated[
    list[str] | None,
    typer.Option(help="A recipient, `a@b.c` or `Name <a@b.c>` (repeatable).", show_default=False),
]
MESSAGE_OPTIONS = ("--to", "--cc", "--bcc", "--from", "--subject", "--text", "--html")


def _from_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--file {path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"--file {path}: not UTF-8 text") from None
    try:
        document = load_document(text, str(path))
    except DocumentError as exc:
        raise CliError(str(exc)) from None
    if not isinstance(document, dict):
        raise CliError(f"--file {path}: must hold one SendEmail object")
    return document


@app.command("send")
@command
def send(
    ctx: typer.Context,
    to: AddressOption = None,
    cc: AddressOption = None,
    bcc: AddressOption = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="The From mailbox (default: the account's).", show_default=False
        ),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="The subject.", show_default=False)] = None,
    text: Annotated[str | None, typer.Option(help="Plain-text body.", show_default=False)] = None,
    html: Annotated[str | None, typer.Option(help="HTML body.", show_default=False)] = None,
    account: Annotated[
        str | None,
        typer.Option(
            help="The mailer account to send with (default: default).", show_default=False
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="Idempotency key: sending again with the same key is the same email "
            "(default: a fresh one, so every call is a new email).",
            show_default=False,
        ),
    ] = None,
    conversation: Annotated[
        str | None, typer.Option(help="The conversation (e.g. a case) it belongs to.")
    ] = None,
    in_reply_to: Annotated[
        str | None, typer.Option(help="Message-ID of the email this answers.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="A SendEmail as JSON (or YAML), instead of the message options; "
            "--key, --account, --conversation and --in-reply-to override its fields.",
            show_default=False,
        ),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Queue an email; the next `email-send` run sends it."""
    given = {
        "--to": to,
        "--cc": cc,
        "--bcc": bcc,
        "--from": from_,
        "--subject": subject,
        "--text": text,
        "--html": html,
    }
    if file is not None:
        clashing = [name for name in MESSAGE_OPTIONS if given[name]]
        if clashing:
            raise CliError(f"--file holds the message: leave out {', '.join(clashing)}")
        command_: dict[str, Any] = _from_file(file)
    else:
        command_ = {
            "to": [mailbox(a) for a in to or []],
            "cc": [mailbox(a) for a in cc or []],
            "bcc": [mailbox(a) for a in bcc or []],
            **({"from": mailbox(from_)} if from_ else {}),
            **({"subject": subject} if subject is not None else {}),
            **({"text": text} if text is not None else {}),
            **({"html": html} if html is not None else {}),
        }
    # What the command line says wins over the file; the mailer fills the rest.
    for field, value in (
        ("account", account),
        ("conversation_id", conversation),
        ("in_reply_to", in_reply_to),
    ):
        if value is not None:
            command_[field] = value
    if key is not None:
        command_["idempotency_key"] = key
    command_.setdefault("idempotency_key", str(uuid.uuid4()))

    cli = cli_of(ctx)
    with cli.mailer_client() as client:
        answer = client.send_email(command_)

    def line() -> str:
        text = f"email {answer['id']} {answer['status']} (Message-ID {answer['message_id']})"
        if not answer.get("created"):
            text += f"; queued earlier with idempotency key {command_['idempotency_key']!r}"
        return text

    emit(answer, cli.format(output), line)


EMAIL_COLUMNS = ("Email", "Status", "To", "Subject", "Attempts", "Last reply", "Queued", "Account")


def _reply(code: int | None, reply: str | None) -> str | None:
    if code is None and not reply:
        return None
    return " ".join(str(part) for part in (code, reply) if part)


def email_row(email: JSON) -> list[Text]:
    return [
        cell(email["id"]),
        status_cell(email.get("status")),
        cell(email.get("to")),
        cell(email.get("subject")),
        cell(email.get("attempts")),
        cell(_reply(email.get("last_code"), email.get("last_reply"))),
        cell(when(email.get("queued_at"))),
        cell(email.get("account")),
    ]


@app.command("list")
@command
def list_mail(
    ctx: typer.Context,
    status: Annotated[
        EmailStatusName | None, typer.Option(help="Only email with this status.")
    ] = None,
    conversation: Annotated[
        str | None, typer.Option(help="Only email of this conversation.")
    ] = None,
    account: Annotated[str | None, typer.Option(help="Only email of this account.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    output: OutputOption = None,
) -> None:
    """Email, newest first: status, recipients, attempts, the last server reply."""
    cli = cli_of(ctx)
    with cli.mailer_client() as client:
        items, cursor = client.list_emails(
            limit,
            status=status.value if status else None,
            conversation_id=conversation,
            account=account,
        )
    caption = None
    if not items:
        caption = "no email" + (" with these filters" if status or conversation or account else "")
    elif cursor is not None:
        caption = f"the newest {len(items)}; --limit shows more"
    emit(
        # The API's page document: what was fetched, and the cursor of the rest.
        {"items": items, "next_cursor": cursor},
        cli.format(output),
        lambda: table(EMAIL_COLUMNS, map(email_row, items), caption),
    )


def _email_view(email: JSON) -> RenderableType:
    refused = [
        f"{r['address']}: {_reply(r.get('code'), r.get('reason'))}"
        for r in email.get("refused") or []
    ]
    summary = fields(
        {
            "Email": email["id"],
            "Status": status_cell(email.get("status")),
            "Subject": email.get("subject"),
            "To": email.get("to"),
            "Account": email.get("account"),
            "Message-ID": email.get("message_id"),
            "Idempotency key": email.get("idempotency_key"),
            "Conversation": email.get("conversation_id"),
            "Tags": email.get("tags"),
            "Queued": when(email.get("queued_at")),
            "Next attempt": when(email.get("next_attempt_at")),
            "Finished": when(email.get("finished_at")),
            "Attempts": email.get("attempts"),
            "Accepted": email.get("accepted"),
            "Refused": refused,
            "Pending": email.get("pending"),
            "Last reply": _reply(email.get("last_code"), email.get("last_reply")),
        }
    )
    history = email.get("attempt_history") or []
    rows = [
        [
            cell(a["attempt"]),
            status_cell(a.get("outcome")),
            cell(a.get("code")),
            cell(a.get("reply")),
            cell(
                [
                    f"{r['address']} {_reply(r.get('code'), r.get('reason')) or ''}".strip()
                    for r in a.get("recipients") or []
                ]
            ),
            cell(when(a.get("started_at"))),
            cell(when(a.get("ended_at"))),
            cell(a.get("host")),
        ]
        for a in history
    ]
    attempts = table(
        ("#", "Outcome", "Code", "Server reply", "Recipients", "Started", "Ended", "Host"),
        rows,
        None if rows else "no attempt yet",
    )
    return Group(summary, Text(""), Text("Attempts:", style="bold"), attempts)


@app.command("show")
@command
def show_mail(
    ctx: typer.Context,
    email_id: Annotated[str, typer.Argument(help="The email's id.", show_default=False)],
    output: OutputOption = None,
) -> None:
    """One email: its status, every attempt and what the server replied."""
    cli = cli_of(ctx)
    with cli.mailer_client() as client:
        email = client.get_email(email_id)
    emit(email, cli.format(output), lambda: _email_view(email))


CONTACT_COLUMNS = ("Address", "Name", "Sent", "Received", "Last seen", "Conversation")


@command
def contacts(
    ctx: typer.Context,
    prefix: Annotated[
        str, typer.Argument(help="Start of an address or a name (any case).", show_default=False)
    ] = "",
    limit: Annotated[int, typer.Option(min=1, max=200, help="Show at most this many.")] = 20,
    output: OutputOption = None,
) -> None:
    """Search the address book: who was written to and who wrote, most frequent first."""
    cli = cli_of(ctx)
    with cli.mailer_client() as client:
        found = client.contacts(prefix, limit)
    rows = (
        [
            cell(c["address"]),
            cell(c.get("name")),
            cell(c.get("sent_count")),
            cell(c.get("received_count")),
            cell(when(c.get("last_seen"))),
            cell(c.get("last_conversation_id")),
        ]
        for c in found
    )
    caption = None if found else f"no contact starts with {prefix!r}" if prefix else "no contacts"
    emit(found, cli.format(output), lambda: table(CONTACT_COLUMNS, rows, caption))
