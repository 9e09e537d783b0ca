"""PostgreSQL: the mail queue, attempts, the conversation log and the address book.

All of the mailer's SQL is here. Every change of an email's state and the
event that tells it are written in one transaction (the event into the
outbox, which the kit's relay publishes), so an event is never lost nor told
twice. A sender holds an email by its claim: ``status = 'sending'``, its name
in ``claimed_by`` and the lease's end in ``due_at``; an outcome is recorded
only while the claim is still the sender's (same attempt), so a sender that
lost its lease (it stalled past ``lease_seconds``) cannot overwrite what the
next sender did.

Sending costs a few statements per batch of emails, not per email: a claim is
one statement (the emails, their attempts, their rendered bytes), and the
outcomes the servers gave meanwhile are recorded together (:meth:`MailQueue.record_many`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from pydantic_core import to_json

from jobwire.contracts.mail import (
    EmailDeferred,
    EmailEvent,
    EmailFailed,
    EmailQueued,
    EmailSent,
    RecipientResult,
    SendEmail,
)
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.domain.contacts import Contact
from jobwire.mailer.domain.delivery import Settled
from jobwire.mailer.domain.message import Rendered
from jobwire.runtime.outbox import OutboxMessage, PostgresOutbox

SCHEMA = "mailer"

# (event, Nats-Msg-Id) → the outbox row that carries it.
Encode = Callable[[EmailEvent, str], OutboxMessage]

STATUSES = ("queued", "sending", "deferred", "sent", "failed")


@dataclass(frozen=True, slots=True)
class Accepted:
    """A validated SendEmail, ready to queue: what the queue row is made of."""

    command: SendEmail
    email_id: str
    message_id: str
    conversation_id: str | None
    references: list[str]
    recipients: list[str]  # the envelope: to + cc + bcc, normalised, once each
    rendered: Rendered | None = None  # its DATA, when small enough to keep


@dataclass(frozen=True, slots=True)
class QueuedEmail:
    """One email as the queue holds it."""

    id: str
    idempotency_key: str
    account: str
    message_id: str
    conversation_id: str | None
    command: SendEmail
    references: list[str]
    status: str
    queued_at: datetime
    due_at: datetime
    attempts: int
    claimed_by: str | None
    pending: list[str]
    accepted: list[str]
    refused: list[RecipientResult]
    last_code: int | None
    last_reply: str | None
    finished_at: datetime | None
    # What it was rendered to when queued, as a claim returns it (None: render it now).
    rendered: Rendered | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one claimed email's attempt ended, to record."""

    email: QueuedEmail
    settled: Settled
    at: datetime


@dataclass(frozen=True, slots=True)
class Parent:
    """A conversation message an email answers."""

    message_id: str
    conversation_id: str | None
    references: list[str]
    in_reply_to: str | None


@dataclass(frozen=True, slots=True)
class ConversationMessage:
    """One email of the conversation log, as address-book-populate reads it."""

    message_id: str
    direction: str
    conversation_id: str | None
    sender: EmailAddress | None
    recipients: list[EmailAddress]
    at: datetime


def _email(row: asyncpg.Record) -> QueuedEmail:
    return QueuedEmail(
        id=str(row["id"]),
        idempotency_key=row["idempotency_key"],
        account=row["account"],
        message_id=row["message_id"],
        conversation_id=row["conversation_id"],
        command=SendEmail.model_validate(row["command"]),
        references=list(row["refs"]),
        status=row["status"],
        queued_at=row["queued_at"],
        due_at=row["due_at"],
        attempts=row["attempts"],
        claimed_by=row["claimed_by"],
        pending=list(row["pending"]),
        accepted=list(row["accepted"]),
        refused=[RecipientResult.model_validate(r) for r in row["refused"]],
        last_code=row["last_code"],
        last_reply=row["last_reply"],
        finished_at=row["finished_at"],
        rendered=(
            None
            if row.get("rendered_data") is None
            else Rendered(row["rendered_data"], row["rendered_smtputf8"])
        ),
    )


def _addresses(items: Sequence[EmailAddress]) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json") for a in items]


class MailQueue:
    """The mailer's PostgreSQL state; ``encode`` turns an event into an outbox row."""

    def __init__(self, pool: asyncpg.Pool, encode: Encode, *, schema: str = SCHEMA) -> None:
        self.pool = pool
        self.schema = schema
        self.encode = encode
        self.outbox = PostgresOutbox(schema)
        self.on_outbox: Callable[[], None] = lambda: None

    # -- intake ------------------------------------------------------------------

    async def enqueue(self, accepted: Accepted, now: datetime) -> tuple[QueuedEmail, bool]:
        """Queue an email; (the email, True) if new, (the one queued before, False) if not."""
        command = accepted.command
        due = command.send_at or now
        rendered = accepted.rendered
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""WITH queued AS (
                        INSERT INTO {self.schema}.emails
                        (id, idempotency_key, account, message_id, conversation_id, command, refs,
                         status, queued_at, due_at, pending)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10)
                        ON CONFLICT (id) DO NOTHING
                        RETURNING *
                    ), kept AS (
                        INSERT INTO {self.schema}.rendered (email_id, data, smtputf8)
                        SELECT id, $11::bytea, $12::boolean FROM queued WHERE $11::bytea IS NOT NULL
                    )
                    SELECT * FROM queued""",
                uuid.UUID(accepted.email_id),
                command.idempotency_key,
                command.account,
                accepted.message_id,
                accepted.conversation_id,
                command.model_dump(mode="json", by_alias=True),
                accepted.references,
                now,
                due,
                accepted.recipients,
                rendered.data if rendered else None,
                rendered.smtputf8 if rendered else None,
            )
            if row is None:
                existing = await self._get(conn, accepted.email_id)
                assert existing is not None
                return existing, False
            email = _email(row)
            event = EmailQueued(**self._about(email), at=now, send_at=command.send_at)
            await self._tell(conn, event, f"mail:{email.id}:queued")
        self.on_outbox()
        return email, True

    async def refuse(
        self, accepted: Accepted, reason: str, now: datetime
    ) -> tuple[QueuedEmail, bool]:
        """Record a command refused before sending: a failed email (attempt 0) and its event.

        Kept as an email so the app that sent it can look it up by its key;
        (the email, True) if new.
        """
        command = accepted.command
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""INSERT INTO {self.schema}.emails
                    (id, idempotency_key, account, message_id, conversation_id, command, refs,
                     status, queued_at, due_at, pending, last_reply, finished_at)
                    VALUES ($1, $2, $3, $4, $5, $6, '{{}}', 'failed', $7, $7, '{{}}', $8, $7)
                    ON CONFLICT (id) DO NOTHING
                    RETURNING *""",
                uuid.UUID(accepted.email_id),
                command.idempotency_key,
                command.account,
                accepted.message_id,
                accepted.conversation_id,
                command.model_dump(mode="json", by_alias=True),
                now,
                reason,
            )
            if row is None:
                existing = await self._get(conn, accepted.email_id)
                assert existing is not None
                return existing, False
            email = _email(row)
            event = EmailFailed(**self._about(email), at=now, attempt=0, reason=reason)
            await self._tell(conn, event, f"mail:{email.id}:failed")
        self.on_outbox()
        return email, True

    # -- sending -------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        host: str,
        limit: int,
        accounts: Sequence[str],
        lease_seconds: float,
        now: datetime,
    ) -> list[QueuedEmail]:
        """Take up to ``limit`` due emails of ``accounts`` for one attempt each.

        Due: queued or deferred with ``due_at`` passed, or sending with its
        lease run out (its sender vanished). ``SKIP LOCKED`` lets replicas
        claim side by side; the attempt is counted and recorded here. Each
        comes with the bytes it was rendered to when queued, if they were kept.
        One statement, so one round trip and its own transaction.
        """
        rows = await self.pool.fetch(
            f"""WITH due AS (
                    SELECT id FROM {self.schema}.emails
                    WHERE status IN ('queued', 'sending', 'deferred')
                      AND due_at <= $1 AND account = ANY($2::text[])
                    ORDER BY due_at
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED
                ), claimed AS (
                    UPDATE {self.schema}.emails e
                    SET status = 'sending', attempts = e.attempts + 1, claimed_by = $4,
                        due_at = $1 + $5::interval
                    FROM due WHERE e.id = due.id
                    RETURNING e.*
                ), started AS (
                    INSERT INTO {self.schema}.attempts (email_id, attempt, host, started_at)
                    SELECT id, attempts, $6, $1 FROM claimed
                    ON CONFLICT DO NOTHING
                )
                SELECT claimed.*, r.data AS rendered_data, r.smtputf8 AS rendered_smtputf8
                FROM claimed LEFT JOIN {self.schema}.rendered r ON r.email_id = claimed.id""",
            now,
            list(accounts),
            limit,
            owner,
            timedelta(seconds=lease_seconds),
            host,
        )
        return [_email(r) for r in rows]

    async def release(self, email: QueuedEmail, now: datetime) -> None:
        """Hand a claimed email back before anything was sent (the sender is stopping)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"""UPDATE {self.schema}.emails
                    SET status = CASE WHEN attempts > 1 THEN 'deferred' ELSE 'queued' END,
                        attempts = attempts - 1, claimed_by = NULL, due_at = $3
                    WHERE id = $1 AND status = 'sending' AND attempts = $2""",
                uuid.UUID(email.id),
                email.attempts,
                now,
            )
            await conn.execute(
                f"DELETE FROM {self.schema}.attempts WHERE email_id = $1 AND attempt = $2",
                uuid.UUID(email.id),
                email.attempts,
            )

    async def record(self, email: QueuedEmail, settled: Settled, host: str, now: datetime) -> bool:
        """Record how ``email``'s attempt ended, with its event; False if the claim was lost."""
        [recorded] = await self.record_many([Outcome(email, settled, now)], host)
        return recorded

    async def record_many(self, outcomes: Sequence[Outcome], host: str) -> list[bool]:
        """Record how each claimed email's attempt ended, with its event; for each, False if
        its claim was lost.

        One statement — one round trip, one transaction — changes the emails,
        their attempts, (sent) the conversation log, forgets the rendered bytes
        of what is settled and writes the events into the outbox, each only
        where the claim is still ours (same attempt). The sender records
        what its servers answered while the previous record was being written
        (a group commit): no outcome waits for others to arrive.
        """
        if not outcomes:
            return []
        rows = []
        for outcome in outcomes:
            email, settled, now = outcome.email, outcome.settled, outcome.at
            status = settled.outcome
            command = email.command
            recipients = settled.deferred if status == "deferred" else settled.refused
            rows.append(
                {
                    "id": email.id,
                    "attempt": email.attempts,
                    "status": status,
                    "due_at": settled.next_attempt_at or now,
                    "pending": settled.pending,
                    "accepted": settled.accepted,
                    "refused": settled.refused,
                    "code": settled.code,
                    "reply": settled.reason,
                    "finished_at": None if status == "deferred" else now,
                    "at": now,
                    "recipients": recipients,
                    "message_id": email.message_id,
                    "conversation_id": email.conversation_id,
                    "in_reply_to": command.in_reply_to,
                    "refs": email.references,
                    "sender": command.from_,
                    "to": [*command.to, *command.cc, *command.bcc],
                    "subject": command.subject,
                }
            )
        # Encoded before knowing which claims hold: a lost one is rare, and it costs
        # an event encoded for nothing rather than a second statement.
        told = [
            self.encode(self._outcome_event(o.email, o.settled, o.at), _msg_id(o)) for o in outcomes
        ]
        claimed = await self.pool.fetch(
            f"""WITH outcome AS (
                        SELECT * FROM jsonb_to_recordset($1::text::jsonb) AS o(
                            id uuid, attempt integer, status text, due_at timestamptz,
                            pending text[], accepted text[], refused jsonb, code integer,
                            reply text, finished_at timestamptz, at timestamptz,
                            recipients jsonb, message_id text, conversation_id text,
                            in_reply_to text, refs text[], sender jsonb, "to" jsonb,
                            subject text)
                    ), claimed AS (
                        UPDATE {self.schema}.emails e
                        SET status = o.status, due_at = o.due_at, claimed_by = NULL,
                            pending = o.pending, accepted = o.accepted, refused = o.refused,
                            last_code = o.code, last_reply = o.reply, finished_at = o.finished_at
                        FROM outcome o
                        WHERE e.id = o.id AND e.status = 'sending' AND e.attempts = o.attempt
                        RETURNING e.id
                    ), ours AS (
                        SELECT o.* FROM outcome o JOIN claimed USING (id)
                    ), attempt AS (
                        UPDATE {self.schema}.attempts a
                        SET ended_at = o.at, outcome = o.status, code = o.code, reply = o.reply,
                            recipients = o.recipients
                        FROM ours o WHERE a.email_id = o.id AND a.attempt = o.attempt
                    ), logged AS (
                        INSERT INTO {self.schema}.messages
                        (message_id, direction, conversation_id, email_id, in_reply_to, refs,
                         sender, recipients, subject, at)
                        SELECT message_id, 'sent', conversation_id, id, in_reply_to, refs,
                               sender, "to", subject, at
                        FROM ours WHERE status = 'sent'
                        ON CONFLICT (message_id) DO UPDATE SET
                            -- A copy of our own email (a Cc to a watched mailbox) logged
                            -- first as received: what we sent is the truth about it.
                            direction = 'sent', conversation_id = EXCLUDED.conversation_id,
                            email_id = EXCLUDED.email_id, refs = EXCLUDED.refs,
                            recipients = EXCLUDED.recipients
                    ), forgotten AS (
                        -- Settled: no attempt will send these bytes again.
                        DELETE FROM {self.schema}.rendered r USING ours o
                        WHERE r.email_id = o.id AND o.status <> 'deferred'
                    ), told AS (
                        -- The outbox rows (PostgresOutbox's base columns) of what is ours.
                        INSERT INTO {self.outbox.table} (subject, payload, headers)
                        SELECT m.subject, m.payload, m.headers
                        FROM unnest($2::uuid[], $3::text[], $4::bytea[], $5::jsonb[])
                             AS m(id, subject, payload, headers)
                        JOIN claimed USING (id)
                    )
                    SELECT id FROM claimed""",
            # Models and datetimes to JSON in one pass, as model_dump(mode="json") has them.
            to_json(rows, by_alias=False).decode(),
            [uuid.UUID(o.email.id) for o in outcomes],
            [m.subject for m in told],
            [m.payload for m in told],
            [m.headers for m in told],
        )
        ours = {str(r["id"]) for r in claimed}
        recorded = [o.email.id in ours for o in outcomes]
        if ours:
            self.on_outbox()
        return recorded

    def _outcome_event(self, email: QueuedEmail, settled: Settled, now: datetime) -> EmailEvent:
        about = self._about(email)
        if settled.outcome == "sent":
            return EmailSent(
                **about,
                at=now,
                attempt=email.attempts,
                code=settled.code or 250,
                reply=settled.reason,
                accepted=settled.accepted,
                refused=settled.refused,
            )
        if settled.outcome == "deferred":
            assert settled.next_attempt_at is not None
            return EmailDeferred(
                **about,
                at=now,
                attempt=email.attempts,
                code=settled.code,
                reason=settled.reason,
                next_attempt_at=settled.next_attempt_at,
                recipients=settled.deferred,
            )
        return EmailFailed(
            **about,
            at=now,
            attempt=email.attempts,
            code=settled.code,
            reason=settled.reason,
            recipients=settled.refused,
        )

    def _about(self, email: QueuedEmail) -> dict[str, Any]:
        return {
            "email_id": email.id,
            "idempotency_key": email.idempotency_key,
            "account": email.account,
            "message_id": email.message_id,
            "conversation_id": email.conversation_id,
            "tags": email.command.tags,
        }

    async def _tell(self, conn: asyncpg.Connection, event: EmailEvent, msg_id: str) -> None:
        await self.outbox.insert(conn, [self.encode(event, msg_id)])

    # -- reading -------------------------------------------------------------------

    async def get(self, email_id: str) -> QueuedEmail | None:
        async with self.pool.acquire() as conn:
            return await self._get(conn, email_id)

    async def _get(self, conn: asyncpg.Connection, email_id: str) -> QueuedEmail | None:
        try:
            key = uuid.UUID(email_id)
        except ValueError:
            return None
        row = await conn.fetchrow(f"SELECT * FROM {self.schema}.emails WHERE id = $1", key)
        return None if row is None else _email(row)

    async def attempts(self, email_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"""SELECT attempt, host, started_at, ended_at, outcome, code, reply, recipients
                FROM {self.schema}.attempts WHERE email_id = $1 ORDER BY attempt""",
            uuid.UUID(email_id),
        )
        return [dict(r) for r in rows]

    async def list_emails(
        self,
        *,
        status: str | None = None,
        account: str | None = None,
        conversation_id: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[QueuedEmail]:
        """Newest first; ``before`` = (queued_at, id) of the last email of the previous page."""
        rows = await self.pool.fetch(
            f"""SELECT * FROM {self.schema}.emails
                WHERE ($1::text IS NULL OR status = $1)
                  AND ($2::text IS NULL OR account = $2)
                  AND ($3::text IS NULL OR conversation_id = $3)
                  AND ($4::timestamptz IS NULL OR (queued_at, id) < ($4, $5::uuid))
                ORDER BY queued_at DESC, id DESC
                LIMIT $6""",
            status,
            account,
            conversation_id,
            before[0] if before else None,
            uuid.UUID(before[1]) if before else None,
            limit,
        )
        return [_email(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self.pool.fetch(
            f"SELECT status, count(*) AS n FROM {self.schema}.emails GROUP BY status"
        )
        found = {r["status"]: r["n"] for r in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    # -- the conversation log --------------------------------------------------------

    async def parent(self, message_id: str) -> Parent | None:
        row = await self.pool.fetchrow(
            f"""SELECT message_id, conversation_id, refs, in_reply_to
                FROM {self.schema}.messages WHERE message_id = $1""",
            message_id,
        )
        if row is None:
            return None
        return Parent(
            row["message_id"], row["conversation_id"], list(row["refs"]), row["in_reply_to"]
        )

    async def log_received(
        self,
        *,
        message_id: str,
        conversation_id: str | None,
        in_reply_to: str | None,
        references: list[str],
        sender: EmailAddress,
        recipients: list[EmailAddress],
        subject: str,
        at: datetime,
    ) -> bool:
        """Log an email an email listener received; False if it was logged before."""
        result = await self.pool.execute(
            f"""INSERT INTO {self.schema}.messages
                (message_id, direction, conversation_id, in_reply_to, refs, sender, recipients,
                 subject, at)
                VALUES ($1, 'received', $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (message_id) DO NOTHING""",
            message_id,
            conversation_id,
            in_reply_to,
            references,
            sender.model_dump(mode="json"),
            _addresses(recipients),
            subject,
            at,
        )
        return bool(result == "INSERT 0 1")

    async def conversation_of(self, message_ids: Sequence[str]) -> str | None:
        """The conversation of the first of ``message_ids`` the log knows (threading)."""
        if not message_ids:
            return None
        row = await self.pool.fetchrow(
            f"""SELECT conversation_id FROM {self.schema}.messages
                WHERE message_id = ANY($1::text[]) AND conversation_id IS NOT NULL
                ORDER BY array_position($1::text[], message_id) LIMIT 1""",
            list(message_ids),
        )
        return None if row is None else row["conversation_id"]

    async def conversation(self, conversation_id: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"""SELECT message_id, direction, email_id, in_reply_to, sender, recipients, subject, at
                FROM {self.schema}.messages WHERE conversation_id = $1 ORDER BY at LIMIT $2""",
            conversation_id,
            limit,
        )
        return [dict(r) for r in rows]

    # -- the address book ---------------------------------------------------------------

    async def contacts_todo(self, limit: int) -> list[ConversationMessage]:
        """Logged emails whose addresses are not in the address book yet, oldest first."""
        rows = await self.pool.fetch(
            f"""SELECT message_id, direction, conversation_id, sender, recipients, at
                FROM {self.schema}.messages WHERE NOT contacts_done
                ORDER BY at, message_id LIMIT $1""",
            limit,
        )
        return [
            ConversationMessage(
                message_id=r["message_id"],
                direction=r["direction"],
                conversation_id=r["conversation_id"],
                sender=EmailAddress.model_validate(r["sender"]) if r["sender"] else None,
                recipients=[EmailAddress.model_validate(a) for a in r["recipients"]],
                at=r["at"],
            )
            for r in rows
        ]

    async def add_contacts(self, contacts: Sequence[Contact], message_ids: Sequence[str]) -> None:
        """Fold ``contacts`` into the address book and mark ``message_ids`` done, at once.

        Only messages not yet done are marked, and the contacts counted are
        theirs: two runs racing over one batch cannot count it twice (the
        second finds the rows done and changes nothing).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            marked = await conn.fetch(
                f"""UPDATE {self.schema}.messages SET contacts_done = true
                    WHERE message_id = ANY($1::text[]) AND NOT contacts_done
                    RETURNING message_id""",
                list(message_ids),
            )
            if len(marked) != len(set(message_ids)):
                raise ContactsRace(len(set(message_ids)) - len(marked))
            await conn.executemany(
                f"""INSERT INTO {self.schema}.contacts AS c
                    (key, address, name, first_seen, last_seen, sent_count, received_count,
                     last_conversation_id)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT (key) DO UPDATE SET
                        address = CASE WHEN EXCLUDED.last_seen >= c.last_seen
                                       THEN EXCLUDED.address ELSE c.address END,
                        name = CASE WHEN EXCLUDED.name IS NOT NULL
                                         AND EXCLUDED.last_seen >= c.last_seen
                                    THEN EXCLUDED.name ELSE COALESCE(c.name, EXCLUDED.name) END,
                        first_seen = LEAST(c.first_seen, EXCLUDED.first_seen),
                        last_seen = GREATEST(c.last_seen, EXCLUDED.last_seen),
                        sent_count = c.sent_count + EXCLUDED.sent_count,
                        received_count = c.received_count + EXCLUDED.received_count,
                        last_conversation_id = CASE
                            WHEN EXCLUDED.last_conversation_id IS NOT NULL
                                 AND EXCLUDED.last_seen >= c.last_seen
                            THEN EXCLUDED.last_conversation_id
                            ELSE COALESCE(c.last_conversation_id, EXCLUDED.last_conversation_id)
                        END""",
                [
                    (
                        c.key,
                        c.address,
                        c.name,
                        c.first_seen,
                        c.last_seen,
                        c.sent,
                        c.received,
                        c.last_conversation_id,
                    )
                    for c in contacts
                ],
            )

    async def search_contacts(self, prefix: str, limit: int = 20) -> list[dict[str, Any]]:
        """Contacts whose address or name starts with ``prefix`` (case-insensitive)."""
        like = _like_prefix(prefix.lower())
        rows = await self.pool.fetch(
            f"""SELECT key, address, name, first_seen, last_seen, sent_count, received_count,
                       last_conversation_id
                FROM {self.schema}.contacts
                WHERE key LIKE $1 OR lower(name) LIKE $1
                ORDER BY sent_count + received_count DESC, key
                LIMIT $2""",
            like,
            limit,
        )
        return [dict(r) for r in rows]


def _msg_id(outcome: Outcome) -> str:
    """The event's Nats-Msg-Id: one sent or failed per email, one deferred per attempt."""
    msg_id = f"mail:{outcome.email.id}:{outcome.settled.outcome}"
    if outcome.settled.outcome == "deferred":
        msg_id += f":{outcome.email.attempts}"
    return msg_id


class ContactsRace(RuntimeError):
    """Another run took some of the same messages first; this batch is redone."""

    def __init__(self, taken: int) -> None:
        super().__init__(f"{taken} message(s) of the batch were taken in by another run")


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
