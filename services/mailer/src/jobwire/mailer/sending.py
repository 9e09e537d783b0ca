"""An `email-send` run: send what is due in the queue, then report what happened.

A run claims due emails (new, deferred whose time has come, `send_at`
reached, or claimed by a sender that vanished) and sends them over its
accounts' connection pools, as many at once as the pools have connections,
claiming more as sends finish, until nothing is due or the run's limits are
reached. Each email goes out as the bytes it was rendered to when it was
queued (a message too large to keep is rendered again, to the same bytes).
An outcome is recorded as soon as its server answered: the outcomes that
arrived while the previous record was being written are written together, in
one transaction (a group commit: none waits for others to arrive).

Crash semantics — SMTP has no transaction spanning the server and us:
    * before DATA went out (claimed, connecting, MAIL, RCPT): nothing was
      accepted; the claim's lease runs out and another run sends it — once.
      DATA goes out only while the lease has more than the account's
      ``data_timeout_seconds`` left, so a send that began late (waiting for
      a pooled connection, the rate limit, slow steps) never overlaps the
      next sender's: it is handed back instead (``lease_short``).
    * after the server accepted DATA and before the outcome was committed
      (its own record, or the one under way when its reply came, then its
      own): the email was delivered but the queue still says sending; when
      the lease runs out it is sent again. This is the one window that can
      send an email twice; the resend has the same Message-ID (and the same
      bytes), so receivers that de-duplicate on it drop it.
    * after the outcome was committed: the event is in the outbox, and the
      relay publishes it exactly once.
A run stopped gracefully hands back the emails it had not begun sending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.mail import EmailSendParams
from jobwire.mailer.adapters.attachments import AttachmentStore
from jobwire.mailer.adapters.queue import MailQueue, Outcome, QueuedEmail
from jobwire.mailer.adapters.smtp import (
    CONNECTION_ERRORS,
    SmtpLoginError,
    SmtpPool,
    Stale,
    transact,
)
from jobwire.mailer.domain.addresses import InvalidCommand
from jobwire.mailer.domain.delivery import AttemptResult, Reply, Settled, settle
from jobwire.mailer.domain.message import Rendered, check_without_smtputf8, envelope_sender
from jobwire.mailer.rendering import account_sender, render_with_attachments, size_problem
from jobwire.mailer.settings import MailerOptions
from jobwire.runtime.logs import get_logger
from jobwire.runtime.secrets import SecretNotFound
from jobwire.runtime.worker import RunContext

log = get_logger("jobwire.mailer.sending")

PROGRESS_SECONDS = 2.0


class _LeaseRunningOut(Exception):
    """Too little of the claim's lease is left for DATA: hand the email back unsent."""


class OutcomeRecorder:
    """Records outcomes in groups: one transaction for all that arrived meanwhile.

    A send hands its outcome over and waits for it to be committed. If no
    record is being written, one starts at once with what is there; outcomes
    that arrive while it is written go into the next one. So an outcome waits
    at most for one record before its own, and a busy sender writes one
    record per handful of emails instead of one per email. A send cancelled
    while it waits still has its outcome recorded (its server answered).
    """

    def __init__(self, queue: MailQueue, host: str) -> None:
        self.queue = queue
        self.host = host
        self._waiting: list[tuple[Outcome, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, email: QueuedEmail, settled: Settled, now: datetime) -> bool:
        """True once recorded; False if the claim was lost (another sender has the email)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((Outcome(email, settled, now), future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def idle(self) -> None:
        """Wait until every outcome handed over is recorded (or failed to be)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    recorded = await self.queue.record_many([o for o, _ in batch], self.host)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), ok in zip(batch, recorded, strict=True):
                    if not future.done():
                        future.set_result(ok)
        finally:
            self._writer = None
            # Only if this task was cancelled (the loop is closing): nobody must wait forever.
            for _, future in self._waiting:
                future.cancel()
            self._waiting = []


class Sender:
    def __init__(
        self,
        queue: MailQueue,
        pools: Mapping[str, SmtpPool],
        attachments: AttachmentStore,
        options: MailerOptions,
        *,
        owner: str,
        host: str,
    ) -> None:
        self.queue = queue
        self.pools = pools
        self.attachments = attachments
        self.options = options
        self.owner = owner
        self.host = host
        self._recorder = OutcomeRecorder(queue, host)

    async def run(self, run: RunContext) -> dict[str, Any]:
        """The `email-send` handler: returns the counts of sent, deferred and failed email."""
        try:
            params = EmailSendParams.model_validate(run.due.params)
        except ValidationError as exc:
            raise ValueError(f"params: {exc}") from None
        unknown = sorted(set(params.accounts) - set(self.pools))
        if unknown:
            configured = ", ".join(sorted(self.pools)) or "none"
            raise ValueError(
                f"params.accounts: unknown {', '.join(unknown)}; configured: {configured}"
            )
        accounts = params.accounts or sorted(self.pools)
        # Emails in hand, per connection: one being sent, a few waiting for it, and
        # those whose outcomes are being committed (a commit can take as long as
        # several sends), so that no connection waits for the database.
        capacity = sum(self.pools[a].account.max_connections for a in accounts) * 6
        # Claim in batches, not one email per finished send: a claim is a round trip.
        refill = max(1, capacity // 2)
        counts: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + params.max_seconds
        next_report = loop.time() + PROGRESS_SECONDS
        sending: set[asyncio.Task[None]] = set()
        taken = 0
        try:
            while True:
                open_to_more = (
                    not run.cancelled.is_set()
                    and loop.time() < deadline
                    and taken < params.max_emails
                )
                claimed: list[QueuedEmail] = []
                free = capacity - len(sending)
                if open_to_more and free >= refill:
                    claimed = await self.queue.claim(
                        self.owner,
                        self.host,
                        min(free, params.max_emails - taken),
                        accounts,
                        self.options.lease_seconds,
                        utcnow(),
                    )
                    taken += len(claimed)
                    for email in claimed:
                        sending.add(asyncio.create_task(self._send(email, counts)))
                if not sending:
                    break
                if not claimed or len(sending) >= capacity:
                    done, _ = await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
                    sending -= done
                    for task in done:
                        task.result()  # a bug in _send fails the run, loudly
                if loop.time() >= next_report:
                    next_report = loop.time() + PROGRESS_SECONDS
                    await run.progress(counters=dict(counts))
        finally:
            if sending:
                for task in sending:
                    task.cancel()
                await asyncio.gather(*sending, return_exceptions=True)
            # What the servers answered is recorded before the run reports.
            await self._recorder.idle()
        result = {key: counts[key] for key in ("sent", "deferred", "failed")}
        await run.progress(message=_summary(result), counters=dict(counts))
        return result

    async def _send(self, email: QueuedEmail, counts: Counter[str]) -> None:
        started_data = False

        def data_started() -> None:
            nonlocal started_data
            pool = self.pools.get(email.account)
            left = (email.due_at - utcnow()).total_seconds()
            if pool is not None and left <= pool.account.data_timeout_seconds:
                # DATA could still be under way when the lease ends and another
                # sender takes the email: a duplicate no crash caused.
                raise _LeaseRunningOut
            started_data = True

        try:
            result = await self._attempt(email, data_started)
        except _LeaseRunningOut:
            await self.queue.release(email, utcnow())
            counts["lease_short"] += 1
            log.warning("mailer.lease_short", email_id=email.id, attempt=email.attempts)
            return
        except asyncio.CancelledError:
            if not started_data:
                # Nothing went out: hand it back now rather than after the lease.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.queue.release(email, utcnow()))
            raise
        now = utcnow()
        settled = settle(
            result,
            pending=email.pending,
            accepted_before=email.accepted,
            refused_before=email.refused,
            attempt=email.attempts,
            queued_at=email.queued_at,
            now=now,
            retry_base_seconds=self.options.retry_base_seconds,
            retry_max_seconds=self.options.retry_max_seconds,
            max_defer_seconds=self.options.max_defer_seconds,
        )
        recorded = await self._recorder.record(email, settled, now)
        if not recorded:
            # Our lease ran out and another sender took the email meanwhile.
            counts["lease_lost"] += 1
            log.warning("mailer.lease_lost", email_id=email.id, attempt=email.attempts)
            return
        counts[settled.outcome] += 1
        log.info(
            f"mailer.{settled.outcome}",
            email_id=email.id,
            account=email.account,
            attempt=email.attempts,
            code=settled.code,
            reply=settled.reason[:200],
        )

    async def _attempt(self, email: QueuedEmail, data_started: Any) -> AttemptResult:
        """Send ``email`` to its pending recipients once; connection trouble is a result too."""
        pool = self.pools.get(email.account)
        if pool is None:
            return _refusal(f"account: unknown account {email.account!r}")
        account = pool.account
        try:
            rendered = email.rendered or await self._render(email, pool)
        except InvalidCommand as exc:
            return _refusal(str(exc))
        envelope_from = envelope_sender(email.command, account_sender(account))

        def usable(offered: bool) -> bytes:
            if rendered.smtputf8 and not offered:
                problems = check_without_smtputf8(email.command)
                raise (
                    problems[0]
                    if problems
                    else InvalidCommand(
                        "from", "the local part is not ASCII and the server does not offer SMTPUTF8"
                    )
                )
            problem = size_problem(len(rendered.data), account, email.account)
            if problem is not None:
                raise problem
            return rendered.data

        for reuse in (True, False):
            try:
                async with pool.connection() as smtp:
                    return await transact(
                        smtp,
                        envelope_from,
                        email.pending,
                        usable,
                        account=account,
                        reused=reuse,
                        before_data=data_started,
                    )
            except Stale:
                continue  # the server had closed an idle connection: once more, afresh
            except InvalidCommand as exc:
                return _refusal(str(exc))
            except SmtpLoginError as exc:
                return AttemptResult(
                    Reply(None, f"{account.host}: {exc.reply.code} {exc.reply.text}")
                )
            except SecretNotFound as exc:
                return AttemptResult(Reply(None, f"account {email.account}: {exc}"))
            except CONNECTION_ERRORS as exc:
                return AttemptResult(Reply(None, _connection_problem(account.host, exc)))
        return AttemptResult(Reply(None, f"{account.host}: the connection closed at once, twice"))

    async def _render(self, email: QueuedEmail, pool: SmtpPool) -> Rendered:
        """A message too large to keep when queued: rendered again, to the same bytes."""
        return await render_with_attachments(
            email.command,
            account=pool.account,
            message_id=email.message_id,
            date=email.queued_at,
            references=email.references,
            attachments=self.attachments,
            max_attachment_bytes=self.options.max_attachment_bytes,
        )


def _refusal(reason: str) -> AttemptResult:
    """A result that fails the email for every recipient (nothing to retry)."""
    return AttemptResult(Reply(554, reason))


def _connection_problem(host: str, exc: BaseException) -> str:
    return f"{host}: {type(exc).__name__}: {exc}" if str(exc) else f"{host}: {type(exc).__name__}"


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())
