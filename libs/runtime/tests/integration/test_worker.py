"""The worker loop on a real NATS server: outcomes, retries, heartbeats, cancellation, scaling.

Run as a script (``python test_worker.py NATS_URL NAMESPACE``) this file is a
worker process whose handler never returns, for the test that kills one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from jobwire.contracts.deadletter import DeadLetter
from jobwire.contracts.envelope import Contract, Envelope, decode, utcnow
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunCancelRequested, RunFinished, RunProgress, RunStarted
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.runtime.broker import Broker, Outgoing
from jobwire.runtime.settings import ServiceSettings
from jobwire.runtime.worker import ATTEMPTS_EXHAUSTED, Handler, RunContext, Worker, durable_name
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration

JOB = "test-job"
C = TypeVar("C", bound=Contract)


def settings_for(url: str, namespace: str, instance_id: str) -> ServiceSettings:
    return ServiceSettings(
        nats={"url": url}, namespace=namespace, host="test-host", instance_id=instance_id
    )


def job_due(**overrides: Any) -> JobDue:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "run_id": f"run-{uuid.uuid4().hex[:12]}",
        "job_id": "job-1",
        "job_name": "nightly",
        "job_type": JOB,
        "scheduled_for": now,
        "fired_at": now,
        "attempt": 1,
    }
    return JobDue(**(fields | overrides))


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
async def connect(nats_url: str, namespace: str) -> AsyncIterator[Callable[[], Awaitable[Broker]]]:
    """Connect brokers as separate worker instances would; closed after the test."""
    brokers: list[Broker] = []

    async def connect() -> Broker:
        instance_id = f"worker-{len(brokers) + 1}"
        broker = Broker(
            settings_for(nats_url, namespace, instance_id), source=f"/tests/{instance_id}"
        )
        await broker.connect()
        await broker.ensure_streams()
        brokers.append(broker)
        return broker

    yield connect
    for broker in brokers:
        await broker.close()


@pytest.fixture
async def broker(connect: Callable[[], Awaitable[Broker]]) -> Broker:
    return await connect()


class Running:
    """Workers started by a test, each running until the test ends (or stops it)."""

    def __init__(self) -> None:
        self.tasks: dict[Worker, tuple[asyncio.Event, asyncio.Task[None]]] = {}

    def start(self, broker: Broker, handler: Handler, **options: Any) -> Worker:
        options = {"heartbeat_seconds": 1.0, "ack_wait_seconds": 5.0} | options
        worker = Worker(broker, job_type=JOB, handler=handler, **options)
        stop = asyncio.Event()
        self.tasks[worker] = (stop, asyncio.create_task(worker.run(stop)))
        return worker

    async def stop(self, worker: Worker) -> None:
        stop, task = self.tasks.pop(worker)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    async def stop_all(self) -> None:
        # Cancelled rather than stopped: a graceful stop waits out the pending
        # fetch (up to a second), and graceful stopping has its own test.
        tasks = [task for _, task in self.tasks.values()]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        crashed = [r for r in results if not isinstance(r, asyncio.CancelledError | type(None))]
        assert not crashed, crashed


@pytest.fixture
async def workers() -> AsyncIterator[Running]:
    running = Running()
    yield running
    await running.stop_all()


# -- reading what the worker recorded -------------------------------------------


async def stored(broker: Broker, stream: Stream, subject: str, model: type[C]) -> list[Envelope[C]]:
    """Every message ``stream`` holds on ``subject`` (wildcards allowed), in order."""
    name = broker.subjects.stream_name(stream)
    info = await broker.js.stream_info(name, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    if not total:
        return []
    sub = await broker.js.subscribe(subject, stream=name, ordered_consumer=True)
    try:
        return [decode((await sub.next_msg(timeout=5)).data, model) for _ in range(total)]
    finally:
        await sub.unsubscribe()


async def run_events(
    broker: Broker, event: RunEvent, model: type[C], run_id: str | None = None
) -> list[C]:
    s = broker.subjects
    subject = s.run_event(run_id, event) if run_id else s.all_run_events(event)
    return [envelope.data for envelope in await stored(broker, Stream.RUNS, subject, model)]


async def finished(broker: Broker, run_id: str) -> RunFinished | None:
    """The run's outcome, once stored (never more than one)."""
    events = await run_events(broker, RunEvent.FINISHED, RunFinished, run_id)
    assert len(events) <= 1
    return events[0] if events else None


async def wait_finished(broker: Broker, run_id: str, timeout: float = 10) -> RunFinished:
    outcome = await wait_for(
        lambda: finished(broker, run_id), timeout=timeout, description=f"{run_id} finished"
    )
    assert outcome is not None
    return outcome


async def dead_letters(broker: Broker) -> list[DeadLetter]:
    subject = broker.subjects.dlq(JOB)
    return [e.data for e in await stored(broker, Stream.DLQ, subject, DeadLetter)]


async def consumer(broker: Broker) -> ConsumerInfo:
    info: ConsumerInfo = await broker.js.consumer_info(
        broker.subjects.stream_name(Stream.JOBS), durable_name(JOB)
    )
    return info


async def settled(broker: Broker) -> bool:
    """Every JobDue published so far was delivered and acked or terminated."""
    info = await consumer(broker)
    return info.num_ack_pending == 0 and info.num_pending == 0


async def send(broker: Broker, due: JobDue) -> None:
    await broker.publish(broker.subjects.job_due(JOB), due, msg_id=due.run_id)


async def request_cancel(broker: Broker, run_id: str) -> None:
    request = RunCancelRequested(
        run_id=run_id, job_id="job-1", requested_at=utcnow(), requested_by="tests"
    )
    subject = broker.subjects.run_event(run_id, RunEvent.CANCEL_REQUESTED)
    await broker.publish(subject, request, msg_id=f"{run_id}:cancel")


async def started_count(broker: Broker, run_id: str) -> int:
    return len(await run_events(broker, RunEvent.STARTED, RunStarted, run_id))


# -- outcomes -------------------------------------------------------------------


async def test_success_records_result_and_state_in_the_jobs_trace(
    broker: Broker, workers: Running, spans: InMemorySpanExporter
) -> None:
    seen: list[tuple[int, dict[str, Any] | None]] = []

    async def handle(run: RunContext) -> dict[str, Any]:
        seen.append((run.attempt, run.state))
        run.set_state({"watermark": 2})
        return {"rows": 3}

    workers.start(broker, handle)
    due = job_due(state={"watermark": 1})
    with trace.get_tracer("tests").start_as_current_span("scheduler") as producer:
        await send(broker, due)
        trace_id = producer.get_span_context().trace_id

    outcome = await wait_finished(broker, due.run_id)
    assert seen == [(1, {"watermark": 1})]
    assert (outcome.status, outcome.attempt) == ("succeeded", 1)
    assert outcome.result == {"rows": 3}
    assert outcome.state == {"watermark": 2}
    assert outcome.error is None
    [started] = await run_events(broker, RunEvent.STARTED, RunStarted, due.run_id)
    assert (started.attempt, started.host, started.instance_id) == (1, "test-host", "worker-1")
    # Both events continue the trace the JobDue was published in.
    for event in (RunEvent.STARTED, RunEvent.FINISHED):
        subject = broker.subjects.run_event(due.run_id, event)
        [envelope] = await stored(broker, Stream.RUNS, subject, Contract)
        assert envelope.traceparent is not None
        assert envelope.traceparent.split("-")[1] == f"{trace_id:032x}"
    await wait_for(lambda: settled(broker), timeout=5, description="JobDue acked")


async def test_progress_is_published_with_running_totals(broker: Broker, workers: Running) -> None:
    async def handle(run: RunContext) -> None:
        await run.progress("indexing", percent=50, counters={"docs": 10})
        with pytest.raises(ValidationError):  # the handler's mistake, reported to it
            await run.progress(percent=150)
        await run.progress(counters={"failed": 1})

    workers.start(broker, handle)
    due = job_due()
    await send(broker, due)
    await wait_finished(broker, due.run_id)
    progress = await run_events(broker, RunEvent.PROGRESS, RunProgress, due.run_id)
    assert [(p.message, p.percent, p.counters, p.attempt) for p in progress] == [
        ("indexing", 50, {"docs": 10}, 1),
        ("indexing", 50, {"docs": 10, "failed": 1}, 1),
    ]


async def test_heartbeats_keep_a_run_longer_than_the_ack_wait(
    broker: Broker, workers: Running
) -> None:
    async def handle(run: RunContext) -> dict[str, Any]:
        await run.progress("working")
        await asyncio.sleep(4)  # the job's work: twice the ack wait
        return {"done": True}

    workers.start(broker, handle, ack_wait_seconds=2.0, heartbeat_seconds=0.5)
    due = job_due()
    await send(broker, due)
    outcome = await wait_finished(broker, due.run_id, timeout=15)
    assert (outcome.status, outcome.attempt) == ("succeeded", 1)
    assert await started_count(broker, due.run_id) == 1
    info = await consumer(broker)
    assert info.num_redelivered == 0
    assert info.config.ack_wait == 2.0
    assert info.config.max_deliver in (None, -1)  # the worker counts attempts, not the server
    # The heartbeats are visible to whoever watches the run, too.
    progress = await run_events(broker, RunEvent.PROGRESS, RunProgress, due.run_id)
    assert len(progress) >= 5
    assert {p.message for p in progress} == {"working"}


async def test_a_failing_run_is_retried_with_backoff_then_dead_lettered(
    broker: Broker, workers: Running
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[int, float]] = []

    async def handle(run: RunContext) -> None:
        calls.append((run.attempt, loop.time()))
        raise RuntimeError("disk full")

    workers.start(broker, handle)
    due = job_due(max_attempts=3, retry_backoff_seconds=0.3)
    await send(broker, due)
    outcome = await wait_finished(broker, due.run_id)

    assert [attempt for attempt, _ in calls] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(calls)]
    assert gaps[0] >= 0.3 - 0.05
    assert gaps[1] >= 0.6 - 0.05  # doubled
    assert (outcome.status, outcome.attempt) == ("failed", 3)
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.message) == ("RuntimeError", "disk full")
    assert outcome.error.traceback is not None
    assert 'raise RuntimeError("disk full")' in outcome.error.traceback
    assert await started_count(broker, due.run_id) == 3
    progress = await run_events(broker, RunEvent.PROGRESS, RunProgress, due.run_id)
    assert [p.message for p in progress] == [
        "attempt 1 failed (RuntimeError: disk full); retrying in 0.3 s",
        "attempt 2 failed (RuntimeError: disk full); retrying in 0.6 s",
    ]

    [letter] = await dead_letters(broker)
    assert letter.reason == ATTEMPTS_EXHAUSTED
    assert letter.attempts == 3
    assert "disk full" in letter.detail
    assert letter.subject == broker.subjects.job_due(JOB)
    assert decode(letter.payload, JobDue).data == due  # the original JobDue, byte for byte
    await wait_for(lambda: settled(broker), timeout=5, description="JobDue terminated")


async def test_a_run_past_its_timeout_is_cancelled_and_fails(
    broker: Broker, workers: Running
) -> None:
    interrupted = asyncio.Event()

    async def handle(run: RunContext) -> None:
        try:
            await asyncio.Event().wait()  # never finishes by itself
        except asyncio.CancelledError:
            interrupted.set()
            raise

    workers.start(broker, handle)
    due = job_due(timeout_seconds=0.3)
    await send(broker, due)
    outcome = await wait_finished(broker, due.run_id)
    assert interrupted.is_set()
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.type == "timeout"
    assert "0.3 s" in outcome.error.message
    assert [letter.reason for letter in await dead_letters(broker)] == [ATTEMPTS_EXHAUSTED]


# -- cancellation ---------------------------------------------------------------


async def test_cancel_is_cooperative_and_keeps_what_the_run_reports(
    broker: Broker, workers: Running
) -> None:
    async def handle(run: RunContext) -> dict[str, Any]:
        await run.cancelled.wait()  # a real job checks between batches
        run.set_state({"stopped_at": 5})
        return {"stopped": True}

    workers.start(broker, handle, cancel_grace_seconds=10)
    due = job_due()
    await send(broker, due)
    await wait_for(lambda: started_count(broker, due.run_id), description="run started")
    await request_cancel(broker, due.run_id)
    outcome = await wait_finished(broker, due.run_id)
    assert outcome.status == "cancelled"
    assert outcome.result == {"stopped": True}
    assert outcome.state == {"stopped_at": 5}
    await wait_for(lambda: settled(broker), timeout=5, description="JobDue acked")


async def test_a_run_ignoring_cancel_is_cancelled_after_the_grace_period(
    broker: Broker, workers: Running
) -> None:
    loop = asyncio.get_running_loop()
    interrupted: list[float] = []

    async def handle(run: RunContext) -> None:
        try:
            await asyncio.Event().wait()  # does not look at run.cancelled
        except asyncio.CancelledError:
            interrupted.append(loop.time())
            raise

    workers.start(broker, handle, cancel_grace_seconds=0.3)
    due = job_due(max_attempts=3)
    await send(broker, due)
    await wait_for(lambda: started_count(broker, due.run_id), description="run started")
    requested = loop.time()
    await request_cancel(broker, due.run_id)
    outcome = await wait_finished(broker, due.run_id)
    assert (outcome.status, outcome.attempt) == ("cancelled", 1)  # final: not retried
    assert len(interrupted) == 1
    assert interrupted[0] - requested >= 0.3 - 0.05
    assert await dead_letters(broker) == []
    await wait_for(lambda: settled(broker), timeout=5, description="JobDue acked")


async def test_a_run_cancelled_before_it_reached_a_worker_does_not_run(
    broker: Broker, workers: Running
) -> None:
    handled: list[str] = []

    async def handle(run: RunContext) -> None:
        handled.append(run.run_id)

    due = job_due()
    await request_cancel(broker, due.run_id)
    await send(broker, due)
    workers.start(broker, handle)
    outcome = await wait_finished(broker, due.run_id)
    assert outcome.status == "cancelled"
    assert handled == []
    assert await started_count(broker, due.run_id) == 0


# -- exactly one outcome ----------------------------------------------------------


async def test_a_redelivered_run_that_already_finished_is_acked_without_running(
    broker: Broker, workers: Running
) -> None:
    handled: list[str] = []

    async def handle(run: RunContext) -> None:
        handled.append(run.run_id)

    # A worker published the outcome, then died before it could ack.
    due = job_due()
    outcome = RunFinished(
        run_id=due.run_id,
        job_id=due.job_id,
        job_type=JOB,
        attempt=1,
        status="succeeded",
        finished_at=utcnow(),
    )
    subject = broker.subjects.run_event(due.run_id, RunEvent.FINISHED)
    await broker.publish(subject, outcome, msg_id=f"{due.run_id}:finished")
    await send(broker, due)
    workers.start(broker, handle)

    async def delivered_and_settled() -> bool:
        delivered = (await consumer(broker)).delivered
        return delivered is not None and delivered.stream_seq >= 1 and await settled(broker)

    await wait_for(
        delivered_and_settled, timeout=10, ignore=(NotFoundError,), description="JobDue acked"
    )
    assert handled == []
    assert await started_count(broker, due.run_id) == 0
    assert await finished(broker, due.run_id) == outcome


async def test_a_redelivery_after_the_last_attempt_was_lost_fails_without_running(
    broker: Broker, workers: Running
) -> None:
    handled: list[str] = []

    async def handle(run: RunContext) -> None:
        handled.append(run.run_id)

    due = job_due(max_attempts=1)
    await send(broker, due)
    # A worker takes the only attempt, starts it and vanishes (no ack, no nak).
    await broker.ensure_consumer(
        Stream.JOBS,
        broker.consumer_config(
            durable_name(JOB),
            broker.subjects.job_due(JOB),
            ack_wait_seconds=1.0,
            max_ack_pending=10,
        ),
    )
    lost = await broker.js.pull_subscribe_bind(
        durable=durable_name(JOB), stream=broker.subjects.stream_name(Stream.JOBS)
    )
    [taken] = await lost.fetch(1, timeout=5)
    assert taken.metadata.num_delivered == 1
    started = RunStarted(
        run_id=due.run_id,
        job_id=due.job_id,
        job_name=due.job_name,
        job_type=JOB,
        attempt=1,
        host="gone",
        instance_id="gone",
        started_at=utcnow(),
    )
    subject = broker.subjects.run_event(due.run_id, RunEvent.STARTED)
    await broker.publish(subject, started, msg_id=f"{due.run_id}:1:started")
    await lost.unsubscribe()

    workers.start(broker, handle, ack_wait_seconds=1.0, heartbeat_seconds=0.3)
    outcome = await wait_finished(broker, due.run_id)
    assert (outcome.status, outcome.attempt) == ("failed", 2)
    assert outcome.error is not None
    assert outcome.error.type == "interrupted"
    assert handled == []
    [letter] = await dead_letters(broker)
    assert letter.reason == ATTEMPTS_EXHAUSTED


async def test_undecodable_job_due_is_dead_lettered_and_the_worker_moves_on(
    broker: Broker, workers: Running
) -> None:
    async def handle(run: RunContext) -> dict[str, Any]:
        return {"ok": True}

    workers.start(broker, handle)
    await broker.js.publish(
        broker.subjects.job_due(JOB), b"{not json", headers={"Nats-Msg-Id": "poison"}
    )
    good = job_due()
    await send(broker, good)
    assert (await wait_finished(broker, good.run_id)).status == "succeeded"
    [letter] = await dead_letters(broker)
    assert (letter.reason, letter.payload) == ("undecodable", b"{not json")


# -- scaling and shutdown -----------------------------------------------------------


async def test_concurrency_runs_that_many_at_once_and_no_more(
    broker: Broker, workers: Running
) -> None:
    release = asyncio.Event()
    running = 0
    peak = 0

    async def handle(run: RunContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1

    worker = workers.start(broker, handle, concurrency=3)
    dues = [job_due() for _ in range(7)]
    await broker.publish_batch(
        [Outgoing(broker.subjects.job_due(JOB), d, msg_id=d.run_id) for d in dues]
    )
    await wait_for(lambda: running == 3, description="three runs in parallel")
    # The others wait in the stream, not in this worker (their ack wait is not ticking).
    info = await consumer(broker)
    assert (info.num_ack_pending, info.num_pending) == (3, 4)
    assert len(worker.in_flight) == 3
    release.set()

    async def all_finished() -> bool:
        return len(await run_events(broker, RunEvent.FINISHED, RunFinished)) == len(dues)

    await wait_for(all_finished, timeout=10, description="all runs finished")
    assert peak == 3


async def test_stopping_lets_the_running_run_finish(broker: Broker, workers: Running) -> None:
    release = asyncio.Event()

    async def handle(run: RunContext) -> dict[str, Any]:
        await release.wait()
        return {"finished": "after stop"}

    worker = workers.start(broker, handle)
    due = job_due()
    await send(broker, due)
    await wait_for(lambda: started_count(broker, due.run_id), description="run started")
    stop, task = workers.tasks[worker]
    stop.set()
    release.set()
    await asyncio.wait_for(task, timeout=10)
    outcome = await finished(broker, due.run_id)
    assert outcome is not None
    assert outcome.result == {"finished": "after stop"}
    assert await settled(broker)


async def test_a_worker_cancelled_mid_run_hands_the_run_back_at_once(
    broker: Broker, workers: Running
) -> None:
    async def hang(run: RunContext) -> None:
        await asyncio.Event().wait()

    async def finish(run: RunContext) -> dict[str, Any]:
        return {"attempt": run.attempt}

    first = workers.start(broker, hang, ack_wait_seconds=30.0)
    due = job_due(max_attempts=2)
    await send(broker, due)
    await wait_for(lambda: started_count(broker, due.run_id), description="run started")
    _, task = workers.tasks.pop(first)
    task.cancel()  # the service's shutdown grace ran out
    await asyncio.gather(task, return_exceptions=True)
    assert await finished(broker, due.run_id) is None

    workers.start(broker, finish, ack_wait_seconds=30.0)
    # Long before the 30 s ack wait: the nak made it available at once.
    outcome = await wait_finished(broker, due.run_id, timeout=5)
    assert (outcome.status, outcome.result) == ("succeeded", {"attempt": 2})


async def test_two_workers_share_the_runs_and_finish_each_exactly_once(
    connect: Callable[[], Awaitable[Broker]], workers: Running
) -> None:
    handled: dict[str, list[str]] = {"worker-1": [], "worker-2": []}

    def handler_of(name: str) -> Handler:
        async def handle(run: RunContext) -> dict[str, Any]:
            handled[name].append(run.run_id)
            await asyncio.sleep(0.01)  # the job's work
            return {"by": name}

        return handle

    one, two = await connect(), await connect()
    workers.start(one, handler_of("worker-1"), concurrency=4)
    workers.start(two, handler_of("worker-2"), concurrency=4)
    await wait_for(lambda: consumer(one), ignore=(Exception,), description="consumer created")
    await wait_for(lambda: _num_waiting(one, 2), description="both workers waiting for messages")
    dues = [job_due() for _ in range(50)]
    await one.publish_batch([Outgoing(one.subjects.job_due(JOB), d, msg_id=d.run_id) for d in dues])

    async def all_finished() -> list[RunFinished] | None:
        events = await run_events(one, RunEvent.FINISHED, RunFinished)
        return events if len(events) == len(dues) else None

    events = await wait_for(all_finished, timeout=20, description="50 runs finished")
    assert events is not None
    assert sorted(e.run_id for e in events) == sorted(d.run_id for d in dues)
    assert all(e.status == "succeeded" for e in events)
    ran = handled["worker-1"] + handled["worker-2"]
    assert sorted(ran) == sorted(d.run_id for d in dues)  # each ran once, by one worker
    assert handled["worker-1"]
    assert handled["worker-2"]
    await wait_for(lambda: settled(one), timeout=5, description="all acked")


async def _num_waiting(broker: Broker, at_least: int) -> bool:
    return ((await consumer(broker)).num_waiting or 0) >= at_least


# -- a worker process killed mid-run ------------------------------------------------


@pytest.fixture
def doomed_worker(
    nats_url: str, namespace: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """This file run as a worker process; its handler never returns."""
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, __file__, nats_url, namespace],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JOBWIRE_LOG_FORMAT": "json"},
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    log.close()


async def test_a_worker_killed_mid_run_leaves_the_run_to_the_next_worker(
    broker: Broker, workers: Running, doomed_worker: subprocess.Popen[bytes]
) -> None:
    due = job_due(max_attempts=2)
    await send(broker, due)
    await wait_for(lambda: started_count(broker, due.run_id), timeout=20, description="run started")
    [started] = await run_events(broker, RunEvent.STARTED, RunStarted, due.run_id)
    assert (started.instance_id, started.attempt) == ("doomed", 1)
    os.kill(doomed_worker.pid, signal.SIGKILL)
    await asyncio.to_thread(doomed_worker.wait, 10)

    async def finish(run: RunContext) -> dict[str, Any]:
        return {"attempt": run.attempt}

    workers.start(broker, finish, ack_wait_seconds=2.0, heartbeat_seconds=0.5)
    outcome = await wait_finished(broker, due.run_id, timeout=10)
    assert (outcome.status, outcome.attempt, outcome.result) == ("succeeded", 2, {"attempt": 2})
    attempts = [s.attempt for s in await run_events(broker, RunEvent.STARTED, RunStarted)]
    assert attempts == [1, 2]
    assert len(await run_events(broker, RunEvent.FINISHED, RunFinished)) == 1


def _doomed_worker_process(nats_url: str, namespace: str) -> None:
    async def hang(run: RunContext) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        broker = Broker(settings_for(nats_url, namespace, "doomed"), source="/tests/doomed")
        await broker.connect()
        await broker.ensure_streams()
        worker = Worker(
            broker, job_type=JOB, handler=hang, ack_wait_seconds=2.0, heartbeat_seconds=0.5
        )
        await worker.run(asyncio.Event())

    asyncio.run(main())


if __name__ == "__main__":
    _doomed_worker_process(sys.argv[1], sys.argv[2])
