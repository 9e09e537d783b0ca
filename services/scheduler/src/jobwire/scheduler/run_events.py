"""Recording what workers report: run started, progress, finished.

Each kind has its own durable consumer; handlers only move a run forward
(a late RunStarted never reopens a finished run) and a RunFinished is applied
once, so redeliveries are harmless. A finished run may release the next
queued run of its job and fire the jobs chained after it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.runs import RunFinished, RunProgress, RunStarted
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.runtime.broker import Broker, Delivery, Poison, PublishContext
from jobwire.runtime.db import connection_lost
from jobwire.scheduler.adapters.store import NewRun, OutboxRow, PostgresJobStore
from jobwire.scheduler.dispatch import Dispatcher, run_id_for
from jobwire.scheduler.domain.definitions import JobDefinition
from jobwire.scheduler.domain.planner import admit


class RunRecorder:
    def __init__(
        self,
        store: PostgresJobStore,
        broker: Broker,
        dispatcher: Dispatcher,
        on_outbox: Callable[[], None],
    ) -> None:
        self.store = store
        self.broker = broker
        self.dispatcher = dispatcher
        self.on_outbox = on_outbox

    async def started(self, delivery: Delivery[RunStarted]) -> None:
        event = delivery.data
        await self.store.run_started(
            uuid.UUID(event.run_id), event.attempt, event.host, event.started_at
        )

    async def progress(self, delivery: Delivery[RunProgress]) -> None:
        event = delivery.data
        await self.store.pool.execute(
            f"""UPDATE {self.store.schema}.runs SET progress = $2, heartbeat_at = $3
                WHERE id = $1 AND status = 'running'""",
            uuid.UUID(event.run_id),
            event.model_dump(mode="json", include={"message", "percent", "counters"}),
            event.at,
        )

    async def finished(self, delivery: Delivery[RunFinished]) -> None:
        event = delivery.data
        now = utcnow()
        outbox: list[OutboxRow] = []
        context = PublishContext.current()
        async with self.store.pool.acquire() as conn, conn.transaction():
            # Lock the job before its runs, in the claim's order: a claim deciding
            # "queue" concurrently then either sees this run finished or is seen
            # by the queue release below — never neither.
            job_id = await self.store.job_of_run(conn, uuid.UUID(event.run_id))
            if job_id is None:
                return  # pruned, or the job was deleted
            await self.store.get_for_update(conn, job_id)
            row = await self.store.run_finished(
                conn,
                uuid.UUID(event.run_id),
                event.status,
                event.attempt,
                event.finished_at,
                event.result,
                event.error.model_dump(mode="json") if event.error else None,
                event.state,
            )
            if row is None:
                return  # recorded before: a redelivery
            job_id, job_name = row["job_id"], row["name"]
            definition = JobDefinition.model_validate(row["definition"])
            if definition.overlap.policy == "queue":
                queued = await self.store.next_queued(conn, job_id)
                if queued is not None:
                    job = await self.store.get_for_update(conn, job_id)
                    await self.store.mark_dispatched(conn, queued["id"], now)
                    outbox.append(
                        self.dispatcher.fire(
                            job, queued["id"], queued["scheduled_for"], now, context
                        )
                    )
            chained: dict[uuid.UUID, OutboxRow] = {}
            for job in await self.store.chained_jobs(conn, job_name, now):
                wanted = {a.on for a in job.definition.after if a.job == job_name}
                if not (wanted & {"finished", event.status}):
                    continue
                slot = event.finished_at
                run_id = run_id_for(job.id, slot)
                counts = await self.store.active_counts(conn, [job.id])
                active, queued_count = counts.get(job.id, (0, 0))
                decision = admit(job.definition.overlap, active, queued_count, 1)[0]
                if decision == "dispatch":
                    status, reason = "dispatched", None
                    chained[run_id] = self.dispatcher.fire(job, run_id, slot, now, context)
                elif decision == "queue":
                    status, reason = "queued", None
                else:
                    status, reason = "skipped", str(decision)
                    chained[run_id] = self.dispatcher.skip(
                        job, run_id, slot, decision, now, context
                    )
                inserted = await self.store.insert_runs(
                    conn, [NewRun(run_id, job.id, slot, "chain", status, reason, now, job.version)]
                )
                if run_id not in inserted:  # that slot has a run already
                    chained.pop(run_id, None)
            outbox += chained.values()
            await self.store.insert_outbox(conn, outbox)
        if outbox:
            self.on_outbox()

    async def run(self, stop: asyncio.Event) -> None:
        subjects = self.broker.subjects
        consumers: list[tuple[RunEvent, Any, Callable[[Delivery[Any]], Awaitable[None]]]] = [
            (RunEvent.STARTED, RunStarted, self.started),
            (RunEvent.PROGRESS, RunProgress, self.progress),
            (RunEvent.FINISHED, RunFinished, self.finished),
        ]
        async with asyncio.TaskGroup() as group:
            for event, model, handler in consumers:
                group.create_task(
                    self.broker.consume(
                        stream=Stream.RUNS,
                        durable=f"scheduler-run-{event.value}",
                        filter_subject=subjects.all_run_events(event),
                        model=model,
                        handler=_poison_unless_transient(handler),
                        stop=stop,
                        dlq_source="scheduler-run-events",
                    )
                )


def _poison_unless_transient(
    handler: Callable[[Delivery[Any]], Awaitable[None]],
) -> Callable[[Delivery[Any]], Awaitable[None]]:
    """One event that cannot be recorded (PostgreSQL refuses its values, its
    job's stored definition no longer parses) goes to the DLQ with the error;
    only a lost database is worth redelivering the event for."""

    async def handle(delivery: Delivery[Any]) -> None:
        try:
            await handler(delivery)
        except Exception as exc:
            if connection_lost(exc):
                raise
            raise Poison("unrecordable", f"{type(exc).__name__}: {exc}"[:2000]) from exc

    return handle
