"""Operator actions on real PostgreSQL and NATS: trigger, cancel, backfill."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_helpers import fields, start_workflow_job, worker_job

from jobwire.contracts.envelope import decode, utcnow
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunCancelRequested
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.testing.waiting import wait_for

pytestmark = pytest.mark.integration


async def stream_messages(api, stream: Stream, subject: str) -> list[Any]:  # type: ignore[no-untyped-def]
    """Every message on ``subject`` in ``stream`` (an ordered ephemeral consumer)."""
    broker = api.harness.broker
    name = broker.subjects.stream_name(stream)
    info = await broker.js.stream_info(name, subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    if not count:
        return []
    sub = await broker.js.subscribe(subject, stream=name, ordered_consumer=True)
    try:
        return [await sub.next_msg(timeout=5) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def published(api) -> bool:  # type: ignore[no-untyped-def]
    return await api.pool.fetchval("SELECT count(*) FROM scheduler.outbox") == 0


async def test_a_trigger_fires_a_manual_run_through_the_outbox(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    before = utcnow()
    response = await api.operator.post("/api/v1/jobs/hello/trigger")
    assert response.status_code == 201, response.text
    run = response.json()
    assert response.headers["location"] == f"/api/v1/runs/{run['id']}"
    assert run["trigger"] == "manual"
    assert run["status"] == "dispatched"
    assert run["requested_by"] == "operator-token"
    assert datetime.fromisoformat(run["scheduled_for"]) >= before

    await wait_for(lambda: published(api), description="outbox relayed")
    detail = (await api.viewer.get(f"/api/v1/runs/{run['id']}")).json()
    assert detail["status"] == "succeeded"  # a start-workflow run ends with its publish
    subject = api.harness.broker.subjects.workflow_start("hello")
    [message] = await stream_messages(api, Stream.WORKFLOWS, subject)
    assert message.headers["Nats-Msg-Id"] == run["id"]
    assert decode(message.data, StartWorkflow).data.origin.run_id == run["id"]


async def test_parameter_overrides_are_merged_and_validated_by_the_job_type(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=worker_job())).status_code == 201
    bad = await api.operator.post(
        "/api/v1/jobs/work/trigger", json={"params": {"seconds": "soon", "colour": "red"}}
    )
    assert bad.status_code == 422
    assert fields(bad) == {"params.seconds", "params.colour"}
    shape = await api.operator.post("/api/v1/jobs/work/trigger", json={"parms": {}})
    assert shape.status_code == 422
    assert fields(shape) == {"parms"}

    good = await api.operator.post("/api/v1/jobs/work/trigger", json={"params": {"seconds": 2.5}})
    assert good.status_code == 201, good.text
    run = good.json()
    assert run["params"] == {"seconds": 2.5}
    await wait_for(lambda: published(api), description="outbox relayed")
    subject = api.harness.broker.subjects.job_due("test-work")
    [message] = await stream_messages(api, Stream.JOBS, subject)
    due = decode(message.data, JobDue).data
    assert due.run_id == run["id"]
    assert due.params == {"seconds": 2.5}
    # The job itself is unchanged.
    job = (await api.viewer.get("/api/v1/jobs/work")).json()
    assert job["definition"]["params"] == {"seconds": 0.0}


async def test_an_idempotency_key_returns_the_first_run(api) -> None:  # type: ignore[no-untyped-def]
    for name in ("hello", "other"):
        job = start_workflow_job(name)
        assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    key = {"Idempotency-Key": "deploy-42"}
    first = await api.operator.post("/api/v1/jobs/hello/trigger", headers=key)
    assert first.status_code == 201
    again = await api.operator.post("/api/v1/jobs/hello/trigger", headers=key)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other_job = await api.operator.post("/api/v1/jobs/other/trigger", headers=key)
    assert other_job.status_code == 201
    assert other_job.json()["id"] != first.json()["id"]
    other_params = await api.operator.post(
        "/api/v1/jobs/hello/trigger", headers=key, json={"params": {"input": {"n": 2}}}
    )
    assert other_params.status_code == 422
    assert fields(other_params) == {"Idempotency-Key"}

    # The same key sent concurrently still makes one run.
    burst = await asyncio.gather(
        *(
            api.operator.post("/api/v1/jobs/hello/trigger", headers={"Idempotency-Key": "race"})
            for _ in range(20)
        )
    )
    assert sorted(r.status_code for r in burst) == [200] * 19 + [201]
    assert len({r.json()["id"] for r in burst}) == 1
    count = await api.pool.fetchval(
        "SELECT count(*) FROM scheduler.runs r JOIN scheduler.jobs j ON j.id = r.job_id "
        "WHERE j.name = 'hello'"
    )
    assert count == 2


async def test_a_burst_of_100_triggers_makes_exactly_100_runs_and_messages(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    responses = await asyncio.gather(
        *(api.operator.post("/api/v1/jobs/hello/trigger") for _ in range(100))
    )
    assert [r.status_code for r in responses] == [201] * 100
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 100
    slots = {r.json()["scheduled_for"] for r in responses}
    assert len(slots) == 100

    await wait_for(lambda: published(api), description="outbox relayed")
    rows = await api.pool.fetch("SELECT id::text, status, trigger FROM scheduler.runs")
    assert {r["id"] for r in rows} == ids
    assert {(r["status"], r["trigger"]) for r in rows} == {("succeeded", "manual")}
    subject = api.harness.broker.subjects.workflow_start("hello")
    messages = await stream_messages(api, Stream.WORKFLOWS, subject)
    assert sorted(m.headers["Nats-Msg-Id"] for m in messages) == sorted(ids)
    assert (
        await api.pool.fetchval(
            "SELECT count(*) FROM scheduler.audit_log WHERE action = 'job.trigger'"
        )
        == 100
    )


async def test_a_worker_jobs_trigger_follows_its_overlap_policy(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=worker_job())).status_code == 201
    queue = worker_job("queued", overlap={"policy": "queue", "max_queued": 1})
    assert (await api.admin.post("/api/v1/jobs", json=queue)).status_code == 201

    first = (await api.operator.post("/api/v1/jobs/work/trigger")).json()
    second = (await api.operator.post("/api/v1/jobs/work/trigger")).json()
    assert first["status"] == "dispatched"
    assert (second["status"], second["reason"]) == ("skipped", "overlap")

    statuses = [
        (await api.operator.post("/api/v1/jobs/queued/trigger")).json()["status"] for _ in range(3)
    ]
    assert statuses == ["dispatched", "queued", "skipped"]
    busy = await api.operator.post("/api/v1/jobs/queued/trigger", json={"params": {"seconds": 1}})
    assert busy.status_code in (201, 409)  # queue full → skipped (201); never queued with params


async def test_disabled_jobs_cannot_be_triggered(api) -> None:  # type: ignore[no-untyped-def]
    job = start_workflow_job(enabled=False)
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    refused = await api.operator.post("/api/v1/jobs/hello/trigger")
    assert refused.status_code == 409
    assert (await api.operator.post("/api/v1/jobs/nope/trigger")).status_code == 404


async def test_cancel_asks_the_worker_through_the_outbox_and_refuses_ended_runs(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=worker_job())).status_code == 201
    run = (await api.operator.post("/api/v1/jobs/work/trigger")).json()
    cancelled = await api.operator.post(f"/api/v1/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["cancel_requested_at"] is not None
    assert cancelled.json()["status"] == "dispatched"  # until the worker reports back

    await wait_for(lambda: published(api), description="outbox relayed")
    subject = api.harness.broker.subjects.run_event(run["id"], RunEvent.CANCEL_REQUESTED)
    [message] = await stream_messages(api, Stream.RUNS, subject)
    event = decode(message.data, RunCancelRequested).data
    assert event.run_id == run["id"]
    assert event.requested_by == "operator-token"

    async with api.pool.acquire() as conn, conn.transaction():
        await api.store.run_finished(
            conn, uuid.UUID(run["id"]), "cancelled", 1, utcnow(), None, None, None
        )
    ended = await api.operator.post(f"/api/v1/runs/{run['id']}/cancel")
    assert ended.status_code == 409
    assert ended.json()["type"] == "urn:jobwire:problem:run-ended"
    assert (await api.operator.post(f"/api/v1/runs/{uuid.uuid4()}/cancel")).status_code == 404
    assert (await api.operator.post("/api/v1/runs/not-a-uuid/cancel")).status_code == 422


async def test_a_queued_run_is_cancelled_at_once(api) -> None:  # type: ignore[no-untyped-def]
    job = worker_job(overlap={"policy": "queue"})
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    await api.operator.post("/api/v1/jobs/work/trigger")
    queued = (await api.operator.post("/api/v1/jobs/work/trigger")).json()
    assert queued["status"] == "queued"
    cancelled = await api.operator.post(f"/api/v1/runs/{queued['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None


def minute_floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def test_a_backfill_dry_runs_then_creates_the_missing_slots_at_a_rate(api) -> None:  # type: ignore[no-untyped-def]
    job = start_workflow_job(schedule={"kind": "interval", "every": "PT1M"})
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    end = minute_floor(utcnow())
    start = end - timedelta(minutes=20)
    body = {"from": start.isoformat(), "to": end.isoformat(), "rate_per_second": 50}

    dry = await api.operator.post("/api/v1/jobs/hello/backfill", json={**body, "dry_run": True})
    assert dry.status_code == 200, dry.text
    plan = dry.json()
    assert plan["planned"] == 20
    assert plan["existing"] == 0
    assert plan["slots"][0] == start.isoformat().replace("+00:00", "Z")
    assert await api.pool.fetchval("SELECT count(*) FROM scheduler.runs") == 0

    # A slot already run is left alone.
    taken = await api.operator.post(
        "/api/v1/jobs/hello/backfill",
        json={**body, "to": (start + timedelta(minutes=1)).isoformat()},
    )
    assert taken.status_code == 202

    started = await api.operator.post("/api/v1/jobs/hello/backfill", json=body)
    assert started.status_code == 202, started.text
    backfill_id = started.json()["backfill_id"]
    assert started.json()["planned"] in (19, 20)  # the first backfill may not be done yet

    async def finished() -> dict[str, Any] | None:
        progress = (await api.viewer.get(f"/api/v1/backfills/{backfill_id}")).json()
        return progress if progress["status"] == "succeeded" else None

    progress = await wait_for(finished, description="backfill finished")
    assert progress["created"] == progress["planned"]
    assert progress["from"] == start.isoformat().replace("+00:00", "Z")
    runs = await api.pool.fetch("SELECT scheduled_for, trigger FROM scheduler.runs")
    assert sorted(r["scheduled_for"] for r in runs) == [
        start + timedelta(minutes=i) for i in range(20)
    ]
    assert {r["trigger"] for r in runs} == {"backfill"}
    again = await api.operator.post("/api/v1/jobs/hello/backfill", json={**body, "dry_run": True})
    assert (again.json()["planned"], again.json()["existing"]) == (0, 20)


async def test_a_backfill_refuses_future_ranges_and_too_many_slots(api) -> None:  # type: ignore[no-untyped-def]
    job = start_workflow_job(schedule={"kind": "interval", "every": "PT1S"})
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    now = utcnow()
    future = await api.operator.post(
        "/api/v1/jobs/hello/backfill",
        json={"from": now.isoformat(), "to": (now + timedelta(hours=1)).isoformat()},
    )
    assert future.status_code == 422
    assert fields(future) == {"to"}
    too_many = await api.operator.post(
        "/api/v1/jobs/hello/backfill",
        json={
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": now.isoformat(),
            "max_runs": 100,
        },
    )
    assert too_many.status_code == 422
    assert fields(too_many) == {"max_runs"}
    backwards = await api.operator.post(
        "/api/v1/jobs/hello/backfill",
        json={"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()},
    )
    assert backwards.status_code == 422
    limit = await api.operator.post(
        "/api/v1/jobs/hello/backfill",
        json={"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "max_runs": 10_001},
    )
    assert limit.status_code == 422
    assert fields(limit) == {"max_runs"}
    naive = await api.operator.post(
        "/api/v1/jobs/hello/backfill", json={"from": "2026-01-01T00:00:00", "to": "2026-01-02"}
    )
    assert naive.status_code == 422
    assert "from" in fields(naive)
    unknown = await api.viewer.get(f"/api/v1/backfills/{uuid.uuid4()}")
    assert unknown.status_code == 404


async def test_runs_are_listed_newest_first_with_filters(api) -> None:  # type: ignore[no-untyped-def]
    for name in ("hello", "other"):
        job = start_workflow_job(name)
        assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    ids = [(await api.operator.post("/api/v1/jobs/hello/trigger")).json()["id"] for _ in range(5)]
    other = (await api.operator.post("/api/v1/jobs/other/trigger")).json()["id"]
    await wait_for(lambda: published(api), description="outbox relayed")

    job_runs = (await api.viewer.get("/api/v1/jobs/hello/runs?limit=2")).json()
    assert [r["id"] for r in job_runs["items"]] == ids[::-1][:2]
    assert (job_runs["total"], job_runs["total_exact"]) == (5, True)
    page_two = (await api.viewer.get("/api/v1/jobs/hello/runs?limit=2&offset=2")).json()
    assert [r["id"] for r in page_two["items"]] == ids[::-1][2:4]

    everything = (await api.viewer.get("/api/v1/runs")).json()
    assert [r["id"] for r in everything["items"]] == [other, *ids[::-1]]
    assert everything["items"][0]["job"] == "other"
    by_job = (await api.viewer.get("/api/v1/runs", params={"job": "other"})).json()
    assert [r["id"] for r in by_job["items"]] == [other]
    by_status = (await api.viewer.get("/api/v1/runs?status=failed")).json()
    assert by_status["items"] == []
    assert (await api.viewer.get("/api/v1/runs?status=succeeded")).json()["total"] == 6
    future = (utcnow() + timedelta(days=1)).isoformat()
    assert (await api.viewer.get("/api/v1/runs", params={"from": future})).json()["total"] == 0
    assert (await api.viewer.get("/api/v1/runs", params={"to": future})).json()["total"] == 6
    assert (await api.viewer.get("/api/v1/runs", params={"job": "nope"})).json()["total"] == 0
    assert (await api.viewer.get("/api/v1/jobs/nope/runs")).status_code == 404
    bad = await api.viewer.get("/api/v1/runs?status=sleeping&from=yesterday")
    assert bad.status_code == 422
    assert fields(bad) == {"status.0", "from"}

    detail = (await api.viewer.get(f"/api/v1/runs/{ids[0]}")).json()
    assert {"result", "error", "progress", "params", "heartbeat_at"} <= set(detail)
    assert (await api.viewer.get(f"/api/v1/runs/{uuid.uuid4()}")).status_code == 404


async def test_a_run_detail_shows_progress_result_and_error(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=worker_job())).status_code == 201
    run = (await api.operator.post("/api/v1/jobs/work/trigger")).json()
    run_id = uuid.UUID(run["id"])
    await api.store.run_started(run_id, 1, "worker-1", utcnow())
    await api.pool.execute(
        "UPDATE scheduler.runs SET progress = $2 WHERE id = $1",
        run_id,
        {"message": "half", "percent": 50.0, "counters": {"done": 5}},
    )
    running = (await api.viewer.get(f"/api/v1/runs/{run_id}")).json()
    assert running["status"] == "running"
    assert running["host"] == "worker-1"
    assert running["progress"]["percent"] == 50.0
    async with api.pool.acquire() as conn, conn.transaction():
        await api.store.run_finished(
            conn,
            run_id,
            "failed",
            1,
            datetime(2030, 1, 1, tzinfo=UTC),
            {"done": 5},
            {"type": "Boom", "message": "it broke"},
            None,
        )
    failed = (await api.viewer.get(f"/api/v1/runs/{run_id}")).json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "Boom", "message": "it broke"}
    assert failed["result"] == {"done": 5}
