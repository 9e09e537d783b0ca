"""The scheduler running on its own: wake-ups, relay, and what workers report back."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from jobwire.contracts.envelope import decode, utcnow
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunFinished, RunStarted
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration


async def stream_messages(h, stream: Stream, subject: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    psub = await h.broker.js.pull_subscribe(subject, stream=h.broker.subjects.stream_name(stream))
    out: list[bytes] = []
    try:
        while True:
            try:
                batch = await psub.fetch(500, timeout=0.5)
            except TimeoutError:
                return out
            out += [m.data for m in batch]
            for m in batch:
                await m.ack()
    finally:
        await psub.unsubscribe()


async def run_status(h, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    runs = sorted(await h.store.runs(name), key=lambda r: r["scheduled_for"])
    return [r["status"] for r in runs]


async def test_a_cron_job_fires_every_second_on_time(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler(start=True)
    await h.store.create(
        parse_definition(
            {
                "name": "every-second",
                "type": "start-workflow",
                "schedule": {"kind": "cron", "expression": "* * * * * *"},
                "params": {"workflow": "ping"},
            }
        ),
        now=utcnow(),
    )

    async def three_succeeded() -> bool:
        return (await run_status(h, "every-second")).count("succeeded") >= 3

    await wait_for(three_succeeded, timeout=10, description="three runs relayed")
    runs = sorted(await h.store.runs("every-second"), key=lambda r: r["scheduled_for"])
    slots = [r["scheduled_for"] for r in runs]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(slots))
    # Woken for the slot, not by a polling tick: fired within a fraction of a second.
    lags = [(r["fired_at"] - r["scheduled_for"]).total_seconds() for r in runs]
    assert max(lags) < 0.25, lags
    commands = [
        decode(raw, StartWorkflow).data
        for raw in await stream_messages(
            h, Stream.WORKFLOWS, h.broker.subjects.workflow_start("ping")
        )
    ]
    assert {c.idempotency_key for c in commands} >= {
        str(r["id"]) for r in runs if r["status"] == "succeeded"
    }


async def test_a_new_definition_wakes_a_sleeping_scheduler(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler(start=True, max_idle_seconds=60)
    await wait_for(lambda: h.scheduler.firer._changed is not None, timeout=1)
    at = utcnow() + timedelta(milliseconds=300)
    await h.store.create(
        parse_definition(
            {
                "name": "soon",
                "type": "start-workflow",
                "schedule": {"kind": "once", "at": at.isoformat()},
                "params": {"workflow": "soon"},
            }
        ),
        now=utcnow(),
    )
    await wait_for(lambda: run_status(h, "soon"), timeout=5, description="the once job fired")
    [run] = await h.store.runs("soon")
    assert (run["fired_at"] - at).total_seconds() < 0.25


def work_job(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "test-work", **extra}


async def finish(h, due: JobDue, status: str = "succeeded", **extra: Any) -> None:  # type: ignore[no-untyped-def]
    subjects = h.broker.subjects
    await h.broker.publish(
        subjects.run_event(due.run_id, RunEvent.STARTED),
        RunStarted(
            run_id=due.run_id,
            job_id=due.job_id,
            job_name=due.job_name,
            job_type=due.job_type,
            attempt=1,
            host="test-host",
            instance_id="test-worker",
            started_at=utcnow(),
        ),
        msg_id=f"{due.run_id}:1:started",
    )
    error = {"type": "Boom", "message": "it broke"} if status == "failed" else None
    await h.broker.publish(
        subjects.run_event(due.run_id, RunEvent.FINISHED),
        RunFinished(
            run_id=due.run_id,
            job_id=due.job_id,
            job_type=due.job_type,
            attempt=1,
            status=status,
            finished_at=utcnow(),
            error=error,
            **extra,
        ),
        msg_id=f"{due.run_id}:finished",
    )


async def next_job_due(h, seen: set[str]) -> JobDue:  # type: ignore[no-untyped-def]
    async def fetch() -> JobDue | None:
        for raw in await stream_messages(h, Stream.JOBS, h.broker.subjects.job_due("test-work")):
            due = decode(raw, JobDue).data
            if due.run_id not in seen:
                seen.add(due.run_id)
                return due
        return None

    result = await wait_for(fetch, timeout=10, description="a new JobDue")
    assert result is not None
    return result


async def test_worker_reports_update_runs_and_state_travels_to_the_next_run(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler(start=True)
    await h.store.create(
        parse_definition(
            work_job("sync", schedule={"kind": "interval", "every": "PT1S"}, max_attempts=3)
        ),
        now=utcnow(),
    )
    seen: set[str] = set()
    first = await next_job_due(h, seen)
    assert first.state is None
    assert first.max_attempts == 3
    await finish(h, first, result={"synced": 10}, state={"watermark": 42})

    async def recorded() -> bool:
        runs = await h.store.runs("sync")
        return any(r["status"] == "succeeded" for r in runs)

    await wait_for(recorded, timeout=10, description="RunFinished recorded")
    run = next(r for r in await h.store.runs("sync") if r["status"] == "succeeded")
    assert run["result"] == {"synced": 10}
    assert run["host"] == "test-host"
    assert (await h.store.get("sync")).state == {"watermark": 42}
    later = await next_job_due(h, seen)
    while later.scheduled_for <= first.scheduled_for or later.state is None:
        later = await next_job_due(h, seen)
    assert later.state == {"watermark": 42}


async def test_a_queued_run_starts_when_the_running_one_ends(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler(start=True)
    start = utcnow() + timedelta(milliseconds=200)
    await h.store.create(
        parse_definition(
            work_job(
                "queued",
                schedule={"kind": "interval", "every": "PT1S", "anchor": start.isoformat()},
                overlap={"policy": "queue", "max_queued": 1},
                expires_at=(start + timedelta(seconds=2.1)).isoformat(),
            )
        ),
        now=utcnow(),
    )
    seen: set[str] = set()
    first = await next_job_due(h, seen)

    async def one_queued() -> bool:
        return "queued" in await run_status(h, "queued")

    await wait_for(one_queued, timeout=5, description="a second slot queued")
    await finish(h, first)
    second = await next_job_due(h, seen)
    assert second.scheduled_for > first.scheduled_for
    statuses = await run_status(h, "queued")
    assert statuses[0] == "succeeded"
    assert statuses[1] == "dispatched"


async def test_chained_jobs_fire_when_the_upstream_run_ends(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler(start=True)
    await h.store.create(
        parse_definition(
            work_job(
                "end-of-day",
                schedule={
                    "kind": "once",
                    "at": (utcnow() + timedelta(milliseconds=100)).isoformat(),
                },
            )
        ),
        now=utcnow(),
    )
    await h.store.create(
        parse_definition(work_job("beginning-of-day", after=[{"job": "end-of-day"}])),
        now=utcnow(),
    )
    await h.store.create(
        parse_definition(work_job("on-failure", after=[{"job": "end-of-day", "on": "failed"}])),
        now=utcnow(),
    )
    seen: set[str] = set()
    upstream = await next_job_due(h, seen)
    assert upstream.job_name == "end-of-day"
    await finish(h, upstream)
    downstream = await next_job_due(h, seen)
    assert downstream.job_name == "beginning-of-day"
    [run] = await h.store.runs("beginning-of-day")
    assert run["trigger"] == "chain"
    assert await h.store.runs("on-failure") == []
