"""The firing loop: claim due jobs, decide every due slot, write runs and outbox rows.

Exactly once without a leader: any number of replicas run this loop. A claim
locks due jobs with ``FOR UPDATE SKIP LOCKED``, so two replicas never hold the
same job; in the same transaction it inserts the runs (unique on job and slot),
writes their messages to the outbox and advances ``next_fire_at``. A replica
killed mid-claim rolls the whole claim back; another replica claims it again.

The loop sleeps until the earliest ``next_fire_at`` — no polling tick adding
lag — and a NOTIFY from any definition change wakes it early.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from opentelemetry import metrics, trace

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.runs import SkipReason
from jobwire.runtime.broker import PublishContext
from jobwire.runtime.db import connection_lost
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import Stopped, backoff_wait, retry_delay, wait_any
from jobwire.scheduler.adapters.store import (
    NOTIFY_CHANNEL,
    JobRecord,
    NewRun,
    OutboxRow,
    PostgresJobStore,
)
from jobwire.scheduler.dispatch import START_WORKFLOW, Dispatcher, run_id_for
from jobwire.scheduler.domain.definitions import describe_error
from jobwire.scheduler.domain.planner import DuePlan, admit, plan_due

log = get_logger("jobwire.scheduler.firing")
tracer = trace.get_tracer("jobwire.scheduler")
meter = metrics.get_meter("jobwire.scheduler")
fires_counter = meter.create_counter("jobwire.scheduler.runs", description="runs decided")


class Firer:
    def __init__(
        self,
        store: PostgresJobStore,
        dispatcher: Dispatcher,
        *,
        batch: int,
        max_idle_seconds: float,
        on_outbox: Callable[[], None] = lambda: None,
        relay_caught_up: asyncio.Event | None = None,
        on_definitions_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.batch = batch
        self.max_idle = max_idle_seconds
        self.on_outbox = on_outbox  # wakes this replica's relay at once
        self.relay_caught_up = relay_caught_up  # backpressure from the relay
        # The NOTIFY this loop listens to also tells the listener mirror.
        self.on_definitions_changed = on_definitions_changed
        self._changed = asyncio.Event()

    async def fire_due(self, now: datetime, isolate: bool = False) -> int:
        """One claim transaction; returns how many jobs it claimed.

        Nothing about one job may stop the others: a job whose slots cannot be
        planned or whose messages cannot be built is set aside as Faulted, with
        the error, and the rest of the claim goes on. With ``isolate`` each
        job's rows are also written on their own (a savepoint each), so that a
        row PostgreSQL refuses faults its job instead of failing every claim.
        """
        async with self.store.pool.acquire() as conn, conn.transaction():
            jobs = await self.store.claim_due(conn, now, self.batch)
            if not jobs:
                return 0
            context = PublishContext.current()
            faults: list[tuple[uuid.UUID, str, str]] = []
            plans: dict[uuid.UUID, DuePlan] = {}
            for job in jobs:
                try:
                    plans[job.id] = _plan(job, now)
                except Exception as exc:  # any failure is this job's alone
                    faults.append(
                        (
                            job.id,
                            job.name,
                            f"its next fire cannot be computed: {describe_error(exc)}",
                        )
                    )
            guarded = [
                job.id
                for job in jobs
                if job.id in plans
                and job.definition.type != START_WORKFLOW
                and any(s.fire for s in plans[job.id].slots)
            ]
            counts = await self.store.active_counts(conn, guarded)
            decided: list[Decided] = []
            for job in jobs:
                if job.id not in plans:
                    continue
                try:
                    decided.append(self._decide(job, plans[job.id], counts, now, context))
                except Exception as exc:
                    faults.append(
                        (job.id, job.name, f"its run cannot be built: {describe_error(exc)}")
                    )
            if isolate:
                written = []
                for one in decided:
                    try:
                        async with conn.transaction():  # a savepoint
                            await self._write(conn, [one])
                        written.append(one)
                    except Exception as exc:  # the connection is still good
                        if connection_lost(exc):
                            raise
                        job = one.job
                        faults.append(
                            (job.id, job.name, f"its run cannot be stored: {describe_error(exc)}")
                        )
                decided = written
            else:
                await self._write(conn, decided)
            await self.store.fault_jobs(conn, faults, now)
        for one in decided:
            for run in one.runs:
                fires_counter.add(1, {"status": run.status})
        self.on_outbox()
        return len(jobs)

    def _decide(
        self,
        job: JobRecord,
        plan: DuePlan,
        counts: dict[uuid.UUID, tuple[int, int]],
        now: datetime,
        context: PublishContext,
    ) -> Decided:
        """Every due slot of one job: its run row and, where one is due, its message."""
        fires = [s for s in plan.slots if s.fire]
        if job.definition.type == START_WORKFLOW:
            admissions = iter(["dispatch"] * len(fires))
        else:
            active, queued = counts.get(job.id, (0, 0))
            admissions = iter(admit(job.definition.overlap, active, queued, len(fires)))
        runs: list[NewRun] = []
        messages: dict[uuid.UUID, OutboxRow] = {}
        for slot in plan.slots:
            run_id = run_id_for(job.id, slot.scheduled_for)
            decision = next(admissions) if slot.fire else slot.reason
            trigger = "catch_up" if slot.late else "schedule"
            if decision == "dispatch":
                status = "dispatched"
                messages[run_id] = self.dispatcher.fire(
                    job, run_id, slot.scheduled_for, now, context
                )
            elif decision == "queue":
                status = "queued"
            else:
                reason = SkipReason(str(decision))
                status = "missed" if reason is SkipReason.MISSED else "skipped"
                messages[run_id] = self.dispatcher.skip(
                    job, run_id, slot.scheduled_for, reason, now, context
                )
            runs.append(
                NewRun(
                    run_id,
                    job.id,
                    slot.scheduled_for,
                    trigger,
                    status,
                    None if status in ("dispatched", "queued") else str(decision),
                    now,
                    job.version,
                )
            )
        return Decided(job, runs, messages, plan.next_fire_at)

    async def _write(self, conn: asyncpg.Connection, decided: list[Decided]) -> None:
        runs = [run for one in decided for run in one.runs]
        inserted = await self.store.insert_runs(conn, runs)
        await self.store.insert_outbox(
            conn,
            [row for one in decided for run_id, row in one.messages.items() if run_id in inserted],
        )
        await self.store.set_next_fire(conn, [(one.job.id, one.next_fire_at) for one in decided])

    async def run(self, stop: asyncio.Event) -> None:
        async with self.store.pool.acquire() as listener:
            await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            try:
                await self._loop(stop)
            finally:
                await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._changed.set()
        self.on_definitions_changed()

    async def _loop(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._changed.clear()
            if self.relay_caught_up is not None and not self.relay_caught_up.is_set():
                await wait_any(1.0, self.relay_caught_up, stop)
                continue
            try:
                with tracer.start_as_current_span("scheduler.claim") as span:
                    try:
                        claimed = await self.fire_due(utcnow())
                    except Exception as exc:
                        if connection_lost(exc):
                            raise
                        # Something in this claim's rows was refused: claim
                        # again job by job, so that only the culprit is faulted.
                        log.warning("scheduler.claim_isolating", error=repr(exc))
                        claimed = await self.fire_due(utcnow(), isolate=True)
                    span.set_attribute("jobwire.claimed", claimed)
                if claimed >= self.batch:
                    continue  # more may be due right now
                next_due = await self.store.next_due()
                failures = 0
            except Exception as exc:  # the loop must outlive any one claim
                failures += 1
                log.warning("scheduler.claim_failed", error=repr(exc), failures=failures)
                try:
                    await backoff_wait(retry_delay(1.0, failures, 10.0), stop)
                except Stopped:
                    return
                continue
            delay = self.max_idle
            if next_due is not None:
                delay = min(max((next_due - utcnow()).total_seconds(), 0.0), self.max_idle)
                if delay == 0.0 and claimed == 0:
                    delay = 0.005  # due jobs are held by another replica's claim
            await wait_any(delay, stop, self._changed)


@dataclass(frozen=True, slots=True)
class Decided:
    """What one claim decided for one job."""

    job: JobRecord
    runs: list[NewRun]
    messages: dict[uuid.UUID, OutboxRow]
    next_fire_at: datetime | None


def _plan(job: JobRecord, now: datetime) -> DuePlan:
    schedule, due = job.definition.schedule, job.next_fire_at
    if schedule is None or due is None:  # claimed, so it had a time: ±infinity read back
        raise ValueError("its next fire time is out of the supported range")
    return plan_due(schedule, due, now, job.definition.misfire, job.definition.expires_at)
