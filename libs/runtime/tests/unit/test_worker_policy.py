"""The worker's pure decisions: consumer name, retry delays, refused configurations."""

from __future__ import annotations

from typing import Any

import pytest

from jobwire.runtime.broker import Broker
from jobwire.runtime.settings import ServiceSettings
from jobwire.runtime.waits import retry_delay
from jobwire.runtime.worker import RunContext, Worker, durable_name


async def noop(run: RunContext) -> dict[str, Any] | None:
    return None


def worker(**overrides: Any) -> Worker:
    broker = Broker(ServiceSettings(namespace="unit", host="h1", instance_id="i1"), source="/t")
    return Worker(broker, job_type="archive-data", handler=noop, **overrides)


def test_one_durable_consumer_per_job_type() -> None:
    assert durable_name("archive-data") == "worker-archive-data"
    with pytest.raises(ValueError, match="job type"):
        durable_name("archive.data")


def test_retry_delay_doubles_from_the_base_up_to_the_cap() -> None:
    assert [retry_delay(1.5, attempt, 10.0) for attempt in range(1, 6)] == [
        1.5,
        3.0,
        6.0,
        10.0,
        10.0,
    ]
    # A loop failing for days counts its failures into the thousands: still the cap.
    assert retry_delay(0.4, 100_000, 5.0) == 5.0


def test_defaults_come_from_the_service_settings() -> None:
    w = worker()
    assert (w.durable, w.host, w.instance_id) == ("worker-archive-data", "h1", "i1")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"heartbeat_seconds": 30.0, "ack_wait_seconds": 30.0}, "shorter than ack_wait"),
        ({"heartbeat_seconds": 0.0}, "heartbeat_seconds must be positive"),
        ({"concurrency": 0}, "concurrency"),
        ({"cancel_grace_seconds": -1.0}, "cancel_grace_seconds"),
        ({"retry_backoff_seconds": 60.0, "max_backoff_seconds": 10.0}, "retry_backoff"),
        ({"concurrency": 8, "max_ack_pending": 4}, "max_ack_pending"),
    ],
)
def test_configurations_that_cannot_work_are_refused(
    overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        worker(**overrides)
