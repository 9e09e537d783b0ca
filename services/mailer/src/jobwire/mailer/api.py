"""The mail REST API (``/api/v1/mail``, ``/api/v1/contacts``, ``/api/v1/conversations``).

Same tokens and roles as the admin API: a token is checked by asking the
scheduler who it belongs to (``GET /api/v1/whoami``), and the answer is
trusted for ``token_cache_seconds``. viewer reads; operator also sends.
Tokens are checked before a body is read, and a body is read only up to
``max_request_bytes``: the one body this API takes, a SendEmail, is read
by the route itself rather than by FastAPI, so that the token dependency
runs first.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field, ValidationError

from jobwire.contracts.mail import RecipientResult, SendEmail
from jobwire.mailer.adapters.queue import MailQueue, QueuedEmail
from jobwire.mailer.commands import CommandRefused, Gate
from jobwire.runtime.problems import ProblemError, validation_problems
from jobwire.runtime.rest import Operator, TokenChecker, Viewer, json_body, service_app
from jobwire.runtime.service import VERSION

MAX_REQUEST_BYTES = 1024 * 1024


class MailApi:
    """What the routes need. The kit serves routes before the service's main has
    built the queue (the database is connected after the HTTP server starts), so
    main fills ``queue`` and ``gate`` in; until then requests get 503."""

    def __init__(self, tokens: TokenChecker) -> None:
        self.tokens = tokens
        self.queue: MailQueue | None = None
        self.gate: Gate | None = None


@dataclass(frozen=True, slots=True)
class _Ready:
    tokens: TokenChecker
    queue: MailQueue
    gate: Gate


def _api(request: Request) -> _Ready:
    api: MailApi = request.app.state.api
    if api.queue is None or api.gate is None:
        raise ProblemError(503, "Starting", "the mailer is starting; try again shortly")
    return _Ready(api.tokens, api.queue, api.gate)


Api = Annotated[_Ready, Depends(_api)]


class Attempt(BaseModel):
    attempt: int
    host: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    code: int | None
    reply: str | None
    recipients: list[RecipientResult]


class EmailItem(BaseModel):
    id: str
    idempotency_key: str
    account: str
    message_id: str
    conversation_id: str | None
    status: str
    subject: str
    to: list[str]
    queued_at: datetime
    next_attempt_at: datetime | None = Field(
        description="When it will be tried (queued, deferred) or its lease ends (sending)."
    )
    attempts: int
    accepted: list[str]
    refused: list[RecipientResult]
    pending: list[str]
    last_code: int | None
    last_reply: str | None
    finished_at: datetime | None
    tags: list[str]


class EmailDetail(EmailItem):
    command: dict[str, Any]
    references: list[str]
    attempt_history: list[Attempt]


class EmailPage(BaseModel):
    items: list[EmailItem]
    next_cursor: str | None


class SendAnswer(BaseModel):
    id: str
    status: str
    message_id: str
    created: bool = Field(description="False when the idempotency key was seen before.")


class Contact(BaseModel):
    address: str
    name: str | None
    first_seen: datetime
    last_seen: datetime
    sent_count: int
    received_count: int
    last_conversation_id: str | None


def _item(email: QueuedEmail) -> dict[str, Any]:
    command = email.command
    return {
        "id": email.id,
        "idempotency_key": email.idempotency_key,
        "account": email.account,
        "message_id": email.message_id,
        "conversation_id": email.conversation_id,
        "status": email.status,
        "subject": command.subject,
        "to": [a.address for a in [*command.to, *command.cc, *command.bcc]],
        "queued_at": email.queued_at,
        "next_attempt_at": email.due_at
        if email.status in ("queued", "deferred", "sending")
        else None,
        "attempts": email.attempts,
        "accepted": email.accepted,
        "refused": email.refused,
        "pending": email.pending if email.status not in ("sent", "failed") else [],
        "last_code": email.last_code,
        "last_reply": email.last_reply,
        "finished_at": email.finished_at,
        "tags": command.tags,
    }


def _cursor(email: QueuedEmail) -> str:
    raw = json.dumps([email.queued_at.isoformat(), email.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _uncursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, email_id = json.loads(raw)
        return datetime.fromisoformat(at), str(email_id)
    except (ValueError, TypeError) as exc:
        raise ProblemError(
            422,
            "Invalid input",
            "cursor: not a cursor this API gave",
            errors=[("cursor", "not a cursor this API gave")],
        ) from exc


router = APIRouter(prefix="/api/v1")


@router.post(
    "/mail",
    status_code=202,
    tags=["mail"],
    summary="Queue an email (a SendEmail); the same idempotency key again is the same email",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SendEmail.model_json_schema(by_alias=True)}},
        }
    },
)
async def send(request: Request, api: Api, _: Operator) -> SendAnswer:
    body = await json_body(request, MAX_REQUEST_BYTES)
    try:
        command = SendEmail.model_validate_json(body)
    except ValidationError as exc:
        errors = validation_problems(exc)
        raise ProblemError(
            422, "Invalid input", "; ".join(f"{f}: {m}" for f, m in errors), errors=errors
        ) from None
    try:
        email, created = await api.gate.submit(command)
    except CommandRefused as exc:
        errors = [(p.field, p.message) for p in exc.problems]
        raise ProblemError(422, "Invalid email", str(exc), errors=errors) from None
    return SendAnswer(
        id=email.id, status=email.status, message_id=email.message_id, created=created
    )


@router.get("/mail", tags=["mail"], summary="Emails, newest first")
async def list_mail(
    api: Api,
    _: Viewer,
    status: Annotated[
        Literal["queued", "sending", "deferred", "sent", "failed"] | None, Query()
    ] = None,
    account: str | None = None,
    conversation_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> EmailPage:
    before = _uncursor(cursor) if cursor else None
    emails = await api.queue.list_emails(
        status=status,
        account=account,
        conversation_id=conversation_id,
        before=before,
        limit=limit + 1,
    )
    more = len(emails) > limit
    emails = emails[:limit]
    return EmailPage(
        items=[EmailItem(**_item(e)) for e in emails],
        next_cursor=_cursor(emails[-1]) if more else None,
    )


@router.get("/mail/stats", tags=["mail"], summary="How many emails are in each status")
async def stats(api: Api, _: Viewer) -> dict[str, int]:
    return await api.queue.counts()


@router.get(
    "/mail/{email_id}", tags=["mail"], summary="One email with every attempt and server reply"
)
async def show(email_id: str, api: Api, _: Viewer) -> EmailDetail:
    email = await api.queue.get(email_id)
    if email is None:
        raise ProblemError(404, "Not found", f"no email {email_id!r}")
    attempts = await api.queue.attempts(email.id)
    return EmailDetail(
        **_item(email),
        command=email.command.model_dump(mode="json", by_alias=True),
        references=email.references,
        attempt_history=[Attempt(**a) for a in attempts],
    )


@router.get(
    "/contacts",
    tags=["contacts"],
    summary="Address book entries whose address or name starts with `prefix`",
)
async def contacts(
    api: Api,
    _: Viewer,
    prefix: Annotated[str, Query(max_length=254)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> list[Contact]:
    return [Contact(**c) for c in await api.queue.search_contacts(prefix, limit)]


@router.get(
    "/conversations/{conversation_id}",
    tags=["contacts"],
    summary="A conversation's email, sent and received, oldest first",
)
async def conversation(conversation_id: str, api: Api, _: Viewer) -> list[dict[str, Any]]:
    return await api.queue.conversation(conversation_id)


@router.get("/health", tags=["system"], summary="Liveness (no token needed)")
async def health() -> dict[str, str]:
    return {"status": "ok", "version": VERSION}


def create_app(api: MailApi) -> FastAPI:
    return service_app("jobwire mailer API", __doc__, "mailer", router, api)
