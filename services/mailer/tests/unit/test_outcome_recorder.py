"""The sender's group commit: outcomes that arrive while a record is written go into the next."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from jobwire.mailer.adapters.queue import MailQueue, Outcome
from jobwire.mailer.domain.delivery import Settled
from jobwire.mailer.sending import OutcomeRecorder

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeQueue:
    """record_many that waits for ``gate`` and says which email ids it got, batch by batch."""

    def __init__(self, lost: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.lost = lost

    async def record_many(self, outcomes: Sequence[Outcome], host: str) -> list[bool]:
        self.batches.append([cast(Any, o.email).id for o in outcomes])
        await self.gate.wait()
        return [cast(Any, o.email).id not in self.lost for o in outcomes]


class Email:
    def __init__(self, id: str) -> None:
        self.id = id


def recorder(queue: FakeQueue) -> OutcomeRecorder:
    return OutcomeRecorder(cast(MailQueue, queue), "host")


async def record(rec: OutcomeRecorder, email_id: str) -> bool:
    return await rec.record(cast(Any, Email(email_id)), cast(Settled, None), NOW)


async def test_outcomes_arriving_during_a_record_are_written_together_next() -> None:
    queue = FakeQueue(lost={"c"})
    rec = recorder(queue)
    first = asyncio.create_task(record(rec, "a"))
    await asyncio.sleep(0)  # the first record starts at once, alone
    others = [asyncio.create_task(record(rec, i)) for i in ("b", "c", "d")]
    await asyncio.sleep(0)
    assert queue.batches == [["a"]]

    queue.gate.set()

    assert await first is True
    assert [await t for t in others] == [True, False, True]
    assert queue.batches == [["a"], ["b", "c", "d"]]
    await rec.idle()


async def test_a_send_cancelled_while_waiting_still_has_its_outcome_recorded() -> None:
    queue = FakeQueue()
    rec = recorder(queue)
    waiting = asyncio.create_task(record(rec, "a"))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    assert waiting.cancelled()

    queue.gate.set()
    await asyncio.wait_for(rec.idle(), 1)

    assert queue.batches == [["a"]]


async def test_a_failed_record_fails_each_of_its_outcomes_and_not_the_next() -> None:
    class Failing(FakeQueue):
        async def record_many(self, outcomes: Sequence[Outcome], host: str) -> list[bool]:
            if not self.batches:
                self.batches.append(["boom"])
                raise ConnectionError("database gone")
            return await super().record_many(outcomes, host)

    queue = Failing()
    queue.gate.set()
    rec = recorder(queue)
    with pytest.raises(ConnectionError, match="database gone"):
        await record(rec, "a")
    assert await record(rec, "b") is True
