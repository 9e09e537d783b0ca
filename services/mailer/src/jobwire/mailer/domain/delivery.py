"""What one attempt's SMTP replies mean for the email: sent, deferred or failed.

SMTP answers per recipient (RCPT) and then once for the message (DATA). A 2xx
is accepted, a 4xx is "try again later", a 5xx is "never". Connection trouble
(refused, dropped, timed out) is treated like a 4xx: nothing was accepted, the
email goes out on a later attempt. An email keeps the recipients still
pending between attempts, so a recipient accepted or refused for good is not
sent to again; it is deferred until ``max_defer_seconds`` after it was queued,
then failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from jobwire.contracts.mail import RecipientResult
from jobwire.runtime.waits import retry_delay

Outcome = Literal["sent", "deferred", "failed"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A server's reply, or a connection error (``code`` None)."""

    code: int | None
    text: str

    @property
    def temporary(self) -> bool:
        return self.code is None or 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code is not None and self.code >= 500


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What the SMTP exchange of one attempt produced.

    ``message`` is the reply to the whole transaction: DATA's (or the error
    that ended it early: MAIL refused, connection lost, size over the
    server's limit). ``recipients`` holds each recipient's RCPT reply; those
    not listed got no RCPT (the transaction ended before).
    """

    message: Reply
    recipients: dict[str, Reply] = field(default_factory=dict)

    @property
    def accepted(self) -> list[str]:
        """Recipients that have the email: their RCPT and the DATA were accepted."""
        if self.message.code is None or not 200 <= self.message.code < 300:
            return []
        return [a for a, r in self.recipients.items() if r.code is not None and r.code < 300]


@dataclass(frozen=True, slots=True)
class Settled:
    """The email after an attempt: its new status and what goes in its event."""

    outcome: Outcome
    accepted: list[str]  # over every attempt
    refused: list[RecipientResult]  # refused for good, over every attempt
    pending: list[str]  # to try again (deferred only)
    deferred: list[RecipientResult]  # this attempt's temporary refusals (deferred only)
    code: int | None
    reason: str
    next_attempt_at: datetime | None = None


def settle(
    result: AttemptResult,
    *,
    pending: list[str],
    accepted_before: list[str],
    refused_before: list[RecipientResult],
    attempt: int,
    queued_at: datetime,
    now: datetime,
    retry_base_seconds: float,
    retry_max_seconds: float,
    max_defer_seconds: float,
) -> Settled:
    """The email's state after one attempt to ``pending`` recipients."""
    message = result.message
    accepted_now = result.accepted
    refused = list(refused_before)
    retry: list[str] = []
    deferred: list[RecipientResult] = []
    for address in pending:
        if address in accepted_now:
            continue
        reply = result.recipients.get(address)
        if reply is None or (reply.code is not None and reply.code < 300):
            # No RCPT reply of its own, or accepted at RCPT but the message
            # was not: the message's reply decides.
            reply = message
        if reply.permanent:
            refused.append(RecipientResult(address=address, code=reply.code, reason=reply.text))
        else:
            retry.append(address)
            deferred.append(RecipientResult(address=address, code=reply.code, reason=reply.text))
    accepted = [*accepted_before, *accepted_now]
    if retry:
        next_at = now + timedelta(
            seconds=retry_delay(retry_base_seconds, attempt, retry_max_seconds)
        )
        if next_at <= queued_at + timedelta(seconds=max_defer_seconds):
            code, reason = _first_problem(deferred, message)
            return Settled(
                "deferred",
                accepted,
                refused,
                retry,
                deferred,
                code,
                reason,
                next_attempt_at=next_at,
            )
        # Deferred for too long: what is still pending is refused now.
        waited = f"still deferred {_age(queued_at, now)} after it was queued"
        for item in deferred:
            refused.append(
                RecipientResult(
                    address=item.address, code=item.code, reason=f"{item.reason} ({waited})"
                )
            )
    if accepted:
        return Settled("sent", accepted, refused, [], [], message.code, message.text)
    code, reason = _first_problem(refused, message)
    if retry:
        reason = f"{reason} ({waited})"
    return Settled("failed", [], refused, [], [], code, reason)


def _first_problem(items: list[RecipientResult], message: Reply) -> tuple[int | None, str]:
    """The reply that says best why: the message's if it failed, else a recipient's."""
    if message.code is None or message.code >= 400 or not items:
        return message.code, message.text
    return items[0].code, items[0].reason


def _age(since: datetime, now: datetime) -> str:
    seconds = int((now - since).total_seconds())
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds} s"
