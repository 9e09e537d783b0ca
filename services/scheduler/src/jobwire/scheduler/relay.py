"""The outbox relay: publish what claims decided, then forget it.

Rows are locked (``SKIP LOCKED``, so replicas share the work), published
pipelined to JetStream, and deleted in the same transaction only once their
ack arrived. A crash after the publish and before the commit re-publishes the
rows later under the same ``Nats-Msg-Id``: the stream drops them as duplicates.
A broker outage leaves the rows in place; they go out when NATS is back.
"""

from __future__ import annotations

import asyncio
import uuid

import nats.errors

from jobwire.contracts.envelope import utcnow
from jobwire.runtime.broker import MSG_ID_HEADER, Broker, Encoded
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import Stopped, backoff_wait, wait_any
from jobwire.scheduler.adapters.store import PostgresJobStore

log = get_logger("jobwire.scheduler.relay")


# Errors no retry can cure (the message itself is wrong, e.g. over max_payload).
NEVER_PUBLISHABLE: tuple[type[BaseException], ...] = (
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
)
# A row refused this often while the broker took the rows around it is given
# up: whatever is wrong is the row's (say, a subject no stream captures), and
# retrying it at the head of the outbox would only slow every batch behind it.
MAX_ROW_ATTEMPTS = 20


def _run_id(headers: dict[str, str]) -> uuid.UUID | None:
    """The run a message belongs to: its msg id is the run id, or starts with it."""
    try:
        return uuid.UUID(headers.get(MSG_ID_HEADER, "").split(":")[0])
    except ValueError:
        return None


class OutboxRelay:
    def __init__(
        self, store: PostgresJobStore, broker: Broker, *, batch: int, poll_seconds: float
    ) -> None:
        self.store = store
        self.broker = broker
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.wake = asyncio.Event()
        # Set while the outbox holds less than a batch: the firing loop waits
        # on it, so that under overload due jobs wait in the jobs table (cheap,
        # bounded) rather than as an ever-growing outbox starving this relay.
        self.caught_up = asyncio.Event()
        self.caught_up.set()

    async def relay_once(self) -> tuple[int, int]:
        """Publish one batch; returns (rows seen, rows published)."""
        async with self.store.pool.acquire() as conn, conn.transaction():
            rows = await self.store.lock_outbox(conn, self.batch)
            if not rows:
                return 0, 0
            results = await self.broker.publish_encoded(
                [Encoded(r["subject"], r["payload"], r["headers"]) for r in rows]
            )
            published, completed, retried = [], [], []
            errors = []
            unpublishable: list[tuple[uuid.UUID, str]] = []
            broker_up = any(not isinstance(r, BaseException) for r in results)
            for row, result in zip(rows, results, strict=True):
                given_up = isinstance(result, BaseException) and (
                    isinstance(result, NEVER_PUBLISHABLE)
                    or (broker_up and row["attempts"] + 1 >= MAX_ROW_ATTEMPTS)
                )
                if given_up:
                    # Retrying cannot help and would block the rows behind it:
                    # drop the message and fail its run, with the reason.
                    published.append(row["id"])
                    run_id = _run_id(row["headers"])
                    if run_id is not None:
                        unpublishable.append((run_id, f"{type(result).__name__}: {result}"))
                    continue
                if isinstance(result, BaseException):
                    errors.append(result)
                    if broker_up:
                        retried.append(row["id"])
                    continue
                published.append(row["id"])
                if row["completes"] is not None:
                    completed.append(row["completes"])
            await self.store.count_outbox_attempts(conn, retried)
            await self.store.settle_outbox(conn, published, completed, utcnow())
            if unpublishable:
                await self.store.fail_runs(conn, unpublishable, utcnow())
                log.error("relay.unpublishable", runs=[str(r) for r, _ in unpublishable])
        if errors:
            log.warning(
                "relay.publish_failed",
                failed=len(errors),
                published=len(published),
                error=str(errors[0]) or type(errors[0]).__name__,
            )
        return len(rows), len(published)

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while True:
            self.wake.clear()
            try:
                seen, published = await self.relay_once()
            except Exception as exc:  # the relay must outlive any one batch
                seen, published = 0, 0
                failures += 1
                log.warning("relay.failed", error=repr(exc), failures=failures)
            else:
                # A batch the broker took in part is progress, not an outage to
                # back off from: the rows it refused count their own attempts.
                failures = 0 if published or not seen else failures + 1
            if seen < self.batch or failures:
                self.caught_up.set()  # a broker outage must not stop decisions
            else:
                self.caught_up.clear()
            if stop.is_set() and (seen == 0 or failures):
                return  # flushed what could be flushed; the rest waits for any replica
            if failures:
                try:
                    await backoff_wait(min(0.2 * 2**failures, 5.0), stop)
                except Stopped:
                    continue  # one last flush attempt before returning
                continue
            if seen >= self.batch:
                continue
            await wait_any(self.poll_seconds, self.wake, stop)
