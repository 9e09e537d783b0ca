"""Runs as the scheduler fires them, for tests and benchmarks that stand in for it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import NotFoundError

from jobwire.contracts.envelope import decode
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunFinished
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.runtime.broker import Broker
from jobwire.testing.waiting import wait_for


def job_due(job_type: str, params: dict[str, Any] | None = None, **fields: Any) -> JobDue:
    """A first attempt of a one-off run of ``job_type``, due now; ``fields`` override."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "run_id": f"run-{uuid.uuid4().hex[:16]}",
        "job_id": f"job-{job_type}",
        "job_name": job_type,
        "job_type": job_type,
        "scheduled_for": now,
        "fired_at": now,
        "attempt": 1,
        "params": params or {},
    }
    return JobDue(**(values | fields))


async def finished(broker: Broker, run_id: str) -> RunFinished | None:
    """The run's RunFinished, if it was recorded."""
    stream = broker.subjects.stream_name(Stream.RUNS)
    subject = broker.subjects.run_event(run_id, RunEvent.FINISHED)
    try:
        stored = await broker.js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return decode(stored.data or b"", RunFinished).data


async def run_job(
    broker: Broker,
    job_type: str,
    params: dict[str, Any] | None = None,
    *,
    timeout: float = 30.0,
    **fields: Any,
) -> RunFinished:
    """Fire one run of ``job_type`` as the scheduler would; its RunFinished, waited for."""
    due = job_due(job_type, params, **fields)
    await broker.publish(broker.subjects.job_due(job_type), due, msg_id=due.run_id)
    done = await wait_for(
        lambda: finished(broker, due.run_id),
        timeout=timeout,
        description=f"{job_type} run {due.run_id} finished",
    )
    assert done is not None  # wait_for returns only a truthy result
    return done
