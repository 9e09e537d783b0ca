"""The scheduler's outbox relay: the kit's relay over ``scheduler.outbox``, and what
a settled row means for its run.

Publishing, retries, giving up and backpressure are the kit's
(:mod:`jobwire.runtime.outbox`); the scheduler adds only, in the relay's
transaction, that a published start-workflow run (``completes``) succeeded and
that a run whose message was given up failed, with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from jobwire.contracts.envelope import utcnow
from jobwire.runtime.broker import MSG_ID_HEADER, Broker
from jobwire.runtime.outbox import OutboxRelay
from jobwire.scheduler.adapters.store import PostgresJobStore


def _run_id(headers: dict[str, str]) -> uuid.UUID | None:
    """The run a message belongs to: its msg id is the run id, or starts with it."""
    try:
        return uuid.UUID(headers.get(MSG_ID_HEADER, "").split(":")[0])
    except ValueError:
        return None


def scheduler_relay(
    store: PostgresJobStore, broker: Broker, *, batch: int, poll_seconds: float
) -> OutboxRelay:
    async def settle_runs(
        conn: asyncpg.Connection,
        published: Sequence[asyncpg.Record],
        given_up: Sequence[tuple[asyncpg.Record, str]],
    ) -> None:
        now = utcnow()
        completed = [row["completes"] for row in published if row["completes"] is not None]
        if completed:
            await store.complete_published_runs(conn, completed, now)
        failed = [
            (run_id, reason)
            for row, reason in given_up
            if (run_id := _run_id(row["headers"])) is not None
        ]
        if failed:
            await store.fail_runs(conn, failed, now)

    return OutboxRelay(
        store.pool,
        store.outbox,
        broker,
        batch=batch,
        poll_seconds=poll_seconds,
        on_settled=settle_runs,
    )
