"""A service process on the kit: readiness, host registry, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from jobwire.contracts.envelope import Envelope
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.subjects import RunEvent, Stream, Subjects
from jobwire.runtime.embedded import free_port
from jobwire.runtime.hosts import live_hosts
from jobwire.runtime.service import DUPLICATE_SIGNAL_SECONDS
from jobwire.testing import wait_for, with_signals

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).with_name("sample_service.py")


class Process:
    def __init__(self, nats_url: str, namespace: str, grace: float) -> None:
        self.port = free_port()
        self.instance_id = f"sleeper-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "JOBWIRE_NATS__URL": nats_url,
            "JOBWIRE_NAMESPACE": namespace,
            "JOBWIRE_HTTP_PORT": str(self.port),
            "JOBWIRE_SHUTDOWN_GRACE_SECONDS": str(grace),
            "JOBWIRE_HEARTBEAT_SECONDS": "1",
            "JOBWIRE_INSTANCE_ID": self.instance_id,
            "JOBWIRE_LOG_FORMAT": "json",
        }
        self.popen = subprocess.Popen(
            # SIGINT/SIGTERM at their defaults: the tests signal it.
            with_signals([sys.executable, str(SAMPLE)]),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def logs(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.read().decode()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)
        if self.popen.stdout:
            self.popen.stdout.close()


@pytest.fixture
def start_sleeper(nats_url: str, namespace: str) -> Iterator:  # type: ignore[type-arg]
    started: list[Process] = []

    def start(grace: float) -> Process:
        process = Process(nats_url, namespace, grace)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def ready(process: Process) -> None:
    async def is_ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{process.port}/readyz")
        except httpx.TransportError:
            return False
        return r.status_code == 200

    await wait_for(is_ready, timeout=30, description="sample service /readyz")


async def send_job(nc: NatsClient, subjects: Subjects, seconds: float) -> str:
    now = datetime.now(UTC)
    due = JobDue(
        run_id=str(uuid.uuid4()),
        job_id="j",
        job_name="sleep",
        job_type="sleep",
        scheduled_for=now,
        fired_at=now,
        attempt=1,
        params={"seconds": seconds},
    )
    payload = Envelope.wrap(due, source="/tests").model_dump_json().encode()
    await nc.jetstream().publish(
        subjects.job_due("sleep"), payload, headers={"Nats-Msg-Id": due.run_id}
    )
    return due.run_id


async def run_events(nc: NatsClient, subjects: Subjects, run_id: str, event: RunEvent) -> int:
    subject = subjects.run_event(run_id, event)
    info = await nc.jetstream().stream_info(
        subjects.stream_name(Stream.RUNS), subjects_filter=subject
    )
    return (info.state.subjects or {}).get(subject, 0)


async def test_sigterm_lets_in_flight_work_finish_then_deregisters(
    start_sleeper,
    nats_client: NatsClient,
    namespace: str,  # type: ignore[no-untyped-def]
) -> None:
    subjects = Subjects(namespace)
    process = start_sleeper(grace=20)
    await ready(process)
    js = nats_client.jetstream()
    hosts = await live_hosts(js, namespace)
    assert [(h.service, h.instance_id, h.ready) for h in hosts] == [
        ("sleeper", process.instance_id, True)
    ]

    run_id = await send_job(nats_client, subjects, seconds=1.5)
    await wait_for(
        lambda: run_events(nats_client, subjects, run_id, RunEvent.STARTED),
        timeout=20,
        description="run started",
    )
    process.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.popen.wait, 30)
    logs = process.logs()
    assert code == 0, logs
    # The in-flight run finished during the grace period, and was acked.
    assert await run_events(nats_client, subjects, run_id, RunEvent.FINISHED) == 1
    consumer = await js.consumer_info(subjects.stream_name(Stream.JOBS), "sleep-worker")
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0
    assert await live_hosts(js, namespace) == []
    assert '"event": "service.draining"' in logs


async def test_work_outliving_the_grace_period_is_handed_back(
    start_sleeper,
    nats_client: NatsClient,
    namespace: str,  # type: ignore[no-untyped-def]
) -> None:
    subjects = Subjects(namespace)
    process = start_sleeper(grace=0.5)
    await ready(process)
    run_id = await send_job(nats_client, subjects, seconds=60)
    await wait_for(
        lambda: run_events(nats_client, subjects, run_id, RunEvent.STARTED),
        timeout=20,
        description="run started",
    )
    process.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.popen.wait, 15)
    logs = process.logs()
    assert code == 0, logs
    assert "service.grace_expired" in logs
    assert await run_events(nats_client, subjects, run_id, RunEvent.FINISHED) == 0
    # Handed back (nak), not left to time out: the next instance gets it at once.
    successor = start_sleeper(grace=20)
    await ready(successor)

    async def restarted() -> bool:
        return await run_events(nats_client, subjects, run_id, RunEvent.STARTED) == 2

    await wait_for(restarted, timeout=15, description="the successor picked the run up")


def _read_until(process: Process, marker: str, seen: list[str]) -> None:
    assert process.popen.stdout is not None
    for line in process.popen.stdout:
        seen.append(line.decode())
        if marker in seen[-1]:
            return
    raise AssertionError(f"exited before {marker!r}:\n{''.join(seen)}")


async def test_one_signal_delivered_twice_is_one_stop_and_a_forced_stop_is_quick(
    start_sleeper,
    nats_client: NatsClient,
    namespace: str,  # type: ignore[no-untyped-def]
) -> None:
    # `uv run` without a terminal, or a kill of the process group, delivers one
    # Ctrl-C twice: that must not turn into a forced stop.
    subjects = Subjects(namespace)
    process = start_sleeper(grace=60)
    await ready(process)
    run_id = await send_job(nats_client, subjects, seconds=120)
    await wait_for(
        lambda: run_events(nats_client, subjects, run_id, RunEvent.STARTED),
        timeout=20,
        description="run started",
    )
    seen: list[str] = []
    process.popen.send_signal(signal.SIGINT)
    # The second copy arrives once the first was handled (the kernel merges two
    # pending copies of one signal into one).
    await asyncio.to_thread(_read_until, process, '"event": "service.draining"', seen)
    process.popen.send_signal(signal.SIGINT)
    await asyncio.to_thread(_read_until, process, "service.duplicate_signal_ignored", seen)
    # Time has to pass for the next signal to count as a second request.
    await asyncio.sleep(DUPLICATE_SIGNAL_SECONDS + 0.5)
    assert process.popen.poll() is None, "the duplicate signal forced a stop"
    process.popen.send_signal(signal.SIGINT)
    # A forced stop skips the 60 s grace and does not wait 30 s on a NATS drain.
    code = await asyncio.to_thread(process.popen.wait, 15)
    logs = "".join(seen) + process.logs()
    assert code == 130, logs
    assert logs.count('"event": "service.stop_requested"') == 1, logs
    assert logs.count('"event": "service.duplicate_signal_ignored"') == 1, logs
    assert logs.count('"event": "service.forced_stop"') == 1, logs
    assert "draining connection timed out" not in logs
