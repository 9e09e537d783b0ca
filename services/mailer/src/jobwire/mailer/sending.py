"""An `email-send` run: send what is due in the queue, then report what happened.

A run claims due emails (new, deferred whose time has come, `send_at`
reached, or claimed by a sender that vanished) and sends them over its
accounts' connection pools, as many at once as the pools have connections,
claiming more as sends finish, until nothing is due or the run's limits are
reached. Each email is recorded the moment its server answered, in its own
transaction.

Crash semantics — SMTP has no transaction spanning the server and us:
    * before DATA went out (claimed, connecting, MAIL, RCPT): nothing was
      accepted; the claim's lease runs out and another run sends it — once.
      DATA goes out only while the lease has more than the account's
      ``data_timeout_seconds`` left, so a send that began late (waiting for
      a pooled connection, the rate limit, slow steps) never overlaps the
      next sender's: it is handed back instead (``lease_short``).
    * after the server accepted DATA and before the outcome was committed:
      the email was delivered but the queue still says sending; when the
      lease runs out it is sent again. This is the one window that can
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
from typing import Any

from pydantic import ValidationError

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.mail import EmailSendParams
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.adapters.attachments import AttachmentStore
from jobwire.mailer.adapters.queue import MailQueue, QueuedEmail
from jobwire.mailer.adapters.smtp import (
    CONNECTION_ERRORS,
    SmtpLoginError,
    SmtpPool,
    Stale,
    transact,
)
from jobwire.mailer.domain.addresses import InvalidCommand, needs_smtputf8, normalize_address
from jobwire.mailer.domain.delivery import AttemptResult, Reply, settle
from jobwire.mailer.domain.message import build_message, check_without_smtputf8, render
from jobwire.mailer.settings import MailerOptions
from jobwire.runtime.logs import get_logger
from jobwire.runtime.secrets import SecretNotFound
from jobwire.runtime.worker import RunContext

log = get_logger("jobwire.mailer.sending")

PROGRESS_SECONDS = 2.0


class _LeaseRunningOut(Exception):
    """Too little of the claim's lease is left for DATA: hand the email back unsent."""


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
        capacity = sum(self.pools[a].account.max_connections for a in accounts) * 2
        # Claim in batches, not one email per finished send: a claim is a transaction.
        refill = max(1, capacity // 4)
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
        recorded = await self.queue.record(email, settled, self.host, now)
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
        try:
            attachments = [
                (
                    attachment,
                    await self.attachments.read(attachment, n, self.options.max_attachment_bytes),
                )
                for n, attachment in enumerate(email.command.attachments)
            ]
        except InvalidCommand as exc:
            return _refusal(str(exc))
        account = pool.account
        sender_address = EmailAddress(address=account.from_address, name=account.from_name)
        message = build_message(
            email.command,
            account_from=sender_address,
            message_id=email.message_id,
            date=email.queued_at,
            references=email.references,
            attachments=attachments,
        )
        envelope_from = normalize_address((email.command.from_ or sender_address).address)
        # SMTPUTF8 only where an address needs it: raw UTF-8 headers would make a
        # server that offers it but relays to one that does not bounce the email.
        needs_utf8 = bool(check_without_smtputf8(email.command)) or needs_smtputf8(envelope_from)

        def rendered(offered: bool) -> bytes:
            if needs_utf8 and not offered:
                problems = check_without_smtputf8(email.command)
                raise (
                    problems[0]
                    if problems
                    else InvalidCommand(
                        "from", "the local part is not ASCII and the server does not offer SMTPUTF8"
                    )
                )
            data = render(message, smtputf8=needs_utf8)
            if len(data) > account.max_message_bytes:
                raise InvalidCommand(
                    "attachments",
                    f"the message is {len(data)} bytes; the account {email.account!r} sends "
                    f"at most {account.max_message_bytes}",
                )
            return data

        for reuse in (True, False):
            try:
                async with pool.connection() as smtp:
                    return await transact(
                        smtp,
                        envelope_from,
                        email.pending,
                        rendered,
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


def _refusal(reason: str) -> AttemptResult:
    """A result that fails the email for every recipient (nothing to retry)."""
    return AttemptResult(Reply(554, reason))


def _connection_problem(host: str, exc: BaseException) -> str:
    return f"{host}: {type(exc).__name__}: {exc}" if str(exc) else f"{host}: {type(exc).__name__}"


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())
