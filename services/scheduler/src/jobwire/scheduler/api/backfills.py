"""Backfills: runs for the schedule slots of a past time range that have none.

A slot's run gets the id the scheduler would give it (``run_id_for``), so a
backfill and a scheduler that reach one slot together still make one run, and
a backfill repeated (say after an interruption) creates only what is missing.
Backfill runs are dispatched whatever the overlap policy says: the operator
asked for exactly these runs and paces them with ``rate_per_second``.

A backfill runs as a task of the replica that accepted it, recording how far it
got in ``backfills.created`` with each batch. If that replica stops, the
backfill ends as ``interrupted``; requesting the same range again finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from jobwire.runtime.broker import PublishContext
from jobwire.runtime.logs import get_logger
from jobwire.scheduler.adapters.store import Audit, JobRecord, NewRun, OutboxRow
from jobwire.scheduler.api.problems import ProblemError, invalid
from jobwire.scheduler.dispatch import run_id_for
from jobwire.scheduler.domain.definitions import JobDefinition
from jobwire.scheduler.domain.schedule import next_fire

if TYPE_CHECKING:
    from jobwire.scheduler.api.context import ApiContext

log = get_logger("jobwire.scheduler.backfill")

MAX_RUNNING = 4  # backfills one replica runs at once
_MICROSECOND = timedelta(microseconds=1)
# Batches per second at most: each is one transaction.
_BATCHES_PER_SECOND = 10
_MAX_BATCH = 500


def schedule_slots(
    definition: JobDefinition, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    """The schedule's slots in [start, end), at most ``limit`` of them."""
    if definition.schedule is None:
        return []
    slots: list[datetime] = []
    try:
        before = start - _MICROSECOND  # a slot exactly at start is in the range
    except OverflowError:
        before = start
    slot = next_fire(definition.schedule, before)
    while slot is not None and slot < end and len(slots) < limit:
        slots.append(slot)
        slot = next_fire(definition.schedule, slot)
    return slots


async def plan(
    api: ApiContext, job: JobRecord, start: datetime, end: datetime, max_runs: int
) -> tuple[list[datetime], int]:
    """The slots a backfill would create runs for, and how many already have one."""
    if job.definition.schedule is None:
        raise invalid("from", f"job {job.name!r} has no schedule, so no slots to backfill")
    if end > api.clock():
        raise invalid("to", "must not be in the future: future slots belong to the schedule")
    slots = schedule_slots(job.definition, start, end, max_runs + 1)
    if len(slots) > max_runs:
        raise invalid(
            "max_runs", f"the range holds more than {max_runs} slots: narrow it or raise max_runs"
        )
    existing = await api.store.existing_slots(job.id, slots) if slots else set()
    return [s for s in slots if s not in existing], len(existing)


class Backfills:
    """The backfills this replica is running."""

    def __init__(self, api: ApiContext) -> None:
        self.api = api
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self,
        job: JobRecord,
        start: datetime,
        end: datetime,
        rate_per_second: float,
        slots: Sequence[datetime],
        actor: str,
    ) -> uuid.UUID:
        if len(self._tasks) >= MAX_RUNNING:
            raise ProblemError(
                429,
                "Too many backfills",
                f"this replica runs {MAX_RUNNING} backfills at once; wait for one to finish",
            )
        backfill_id = uuid.uuid4()
        await self.api.store.create_backfill(
            backfill_id,
            job,
            start,
            end,
            rate_per_second,
            slots,
            Audit(actor, "job.backfill"),
            self.api.clock(),
        )
        task = asyncio.create_task(
            self._run(backfill_id, job, list(slots), rate_per_second),
            name=f"backfill-{backfill_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return backfill_id

    async def wait_stopped(self) -> None:
        """Let every backfill record where it stopped (call once stopping is set)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(
        self, backfill_id: uuid.UUID, job: JobRecord, slots: list[datetime], rate: float
    ) -> None:
        api, store = self.api, self.api.store
        batch = max(1, min(_MAX_BATCH, int(rate / _BATCHES_PER_SECOND)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        context = PublishContext.current()
        try:
            for done in range(0, len(slots), batch):
                if api.stopping.is_set():
                    await store.finish_backfill(backfill_id, "interrupted", api.clock())
                    return
                now = api.clock()
                runs: list[NewRun] = []
                messages: dict[uuid.UUID, OutboxRow] = {}
                for slot in slots[done : done + batch]:
                    run_id = run_id_for(job.id, slot)
                    runs.append(
                        NewRun(
                            run_id, job.id, slot, "backfill", "dispatched", None, now, job.version
                        )
                    )
                    messages[run_id] = api.dispatcher.fire(job, run_id, slot, now, context)
                await store.backfill_step(backfill_id, runs, messages, done + len(runs))
                api.on_outbox()
                # Paced against the start, so the rate holds however long a batch takes.
                delay = began + (done + len(runs)) / rate - loop.time()
                if delay > 0 and done + len(runs) < len(slots):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(api.stopping.wait(), timeout=delay)
            await store.finish_backfill(backfill_id, "succeeded", api.clock())
            log.info(
                "backfill.finished", backfill_id=str(backfill_id), job=job.name, runs=len(slots)
            )
        except Exception as exc:
            log.warning(
                "backfill.failed",
                backfill_id=str(backfill_id),
                job=job.name,
                error=str(exc) or type(exc).__name__,
            )
            with contextlib.suppress(Exception):
                await store.finish_backfill(
                    backfill_id, "failed", api.clock(), str(exc) or type(exc).__name__
                )
