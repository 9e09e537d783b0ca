from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.errors import BucketNotFoundError

from jobwire.contracts.deadletter import DeadLetter
from jobwire.contracts.envelope import decode
from jobwire.contracts.listeners import ListenerDefinition
from jobwire.contracts.subjects import Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.settings import ListenersSettings
from jobwire.listeners.sources import source_factory
from jobwire.listeners.supervisor import SERVICE, Supervisor
from jobwire.runtime.broker import Broker
from jobwire.runtime.health import Readiness
from jobwire.runtime.hosts import HostRegistry
from jobwire.runtime.secrets import Secrets
from jobwire.testing import wait_for


@dataclass
class Listeners:
    """Listener instances in this process, on real NATS, and what they published."""

    broker: Broker
    namespace: str
    supervisors: list[Supervisor] = field(default_factory=list)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    stops: dict[int, asyncio.Event] = field(default_factory=dict)

    async def define(
        self,
        job_type: str,
        params: Mapping[str, Any],
        *,
        name: str | None = None,
        replicas: int = 1,
        version: int = 1,
        job_id: str | None = None,
    ) -> ListenerDefinition:
        """What the scheduler's mirror writes when a listener job is saved."""
        definition = ListenerDefinition(
            job_id=job_id or str(uuid.uuid4()),
            job_name=name or f"listener-{uuid.uuid4().hex[:6]}",
            job_type=job_type,
            job_version=version,
            replicas=replicas,
            params=dict(params),
        )
        kv = await self._definitions()
        await kv.put(definition.job_id, definition.model_dump_json().encode())
        return definition

    async def undefine(self, job_id: str) -> None:
        await (await self._definitions()).delete(job_id)

    async def _definitions(self):  # type: ignore[no-untyped-def]
        bucket = ListenerDefinition.bucket(self.namespace)
        try:
            return await self.broker.js.key_value(bucket)
        except BucketNotFoundError:
            return await self.broker.js.create_key_value(KeyValueConfig(bucket=bucket))

    def start(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        secrets: Secrets | None = None,
        **options: Any,
    ) -> Supervisor:
        """One listener instance (a Supervisor) running in this event loop."""
        settings = ListenersSettings(
            namespace=self.namespace,
            instance_id=f"test-{uuid.uuid4().hex[:8]}",
            listeners={"poll_seconds": 0.2, "lease_ttl_seconds": 2, **options},
        )
        status: dict[str, Any] = {}
        registry = HostRegistry(
            self.broker.js,
            namespace=self.namespace,
            service=SERVICE,
            instance_id=settings.instance_id,
            host="test",
            version="0",
            heartbeat_seconds=0.5,
            status=lambda: status,
        )
        supervisor = Supervisor(
            self.broker,
            settings.listeners,
            secrets or Secrets(None, environ or {}),
            instance_id=settings.instance_id,
            factories=source_factory,
            status=status,
        )
        stop = asyncio.Event()
        index = len(self.supervisors)
        self.supervisors.append(supervisor)
        self.stops[index] = stop
        self.tasks[index] = asyncio.create_task(_registered(registry, supervisor, stop))
        return supervisor

    async def stop(self, supervisor: Supervisor) -> None:
        index = self.supervisors.index(supervisor)
        self.stops[index].set()
        await asyncio.wait_for(self.tasks[index], timeout=30)

    async def starts(self, workflow: str = ">") -> list[StartWorkflow]:
        """Every StartWorkflow stored so far (de-duplicated by JetStream already)."""
        msgs = await self._read(Stream.WORKFLOWS, workflow)
        return [decode(m.data, StartWorkflow).data for m in msgs]

    async def stored(self, stream: Stream = Stream.WORKFLOWS) -> int:
        """How many messages the namespace's stream holds: cheap to poll, unlike
        reading them all."""
        info = await self.broker.js.stream_info(self.broker.subjects.stream_name(stream))
        return info.state.messages

    async def wait_starts(self, count: int, timeout: float = 30) -> list[StartWorkflow]:
        """Every StartWorkflow once at least ``count`` are stored."""

        async def enough() -> bool:
            return await self.stored() >= count

        await wait_for(enough, timeout=timeout, interval=0.1, description=f"{count} starts")
        return await self.starts()

    async def dead_letters(self) -> list[DeadLetter]:
        return [decode(m.data, DeadLetter).data for m in await self._read(Stream.DLQ, ">")]

    async def _read(self, stream: Stream, last_token: str) -> list[Msg]:
        """Every message stored on the stream so far (an ephemeral ordered read)."""
        subjects = self.broker.subjects
        name = subjects.stream_name(stream)
        info = await self.broker.js.stream_info(name)
        if info.state.messages == 0:
            return []
        subject = (
            subjects.workflow_start("x")[: -len("x")] + last_token
            if stream is Stream.WORKFLOWS
            else f"{subjects.namespace}.dlq.{last_token}"
        )
        sub = await self.broker.js.pull_subscribe(
            subject,
            stream=name,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30
            ),
        )
        found: list[Msg] = []
        try:
            # A fetch may return fewer than asked while more are stored: read
            # until the stream's count (others' subjects excluded by the filter
            # can only make us stop on the timeout).
            while len(found) < info.state.messages:
                try:
                    found += await sub.fetch(1000, timeout=0.5)
                except TimeoutError:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return found


async def _registered(registry: HostRegistry, supervisor: Supervisor, stop: asyncio.Event) -> None:
    """Run like the service does: announced in the host registry, which the
    supervisors read to share slots fairly."""
    await registry.start()
    try:
        await supervisor.run(stop)
    finally:
        await registry.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def listeners_on(namespace: str) -> AsyncIterator[Callable[[str], Awaitable[Listeners]]]:
    """``await listeners_on(url)``: the harness on a NATS server of the test's own
    (outage tests); everything it started is stopped after the test."""
    made: list[Listeners] = []

    async def make(url: str) -> Listeners:
        settings = ListenersSettings(nats={"url": url}, namespace=namespace)
        broker = Broker(settings, source="/jobwire/listeners/tests", readiness=Readiness())
        await broker.connect()
        await broker.ensure_streams()
        made.append(Listeners(broker, namespace))
        return made[-1]

    yield make
    for harness in made:
        for index, stop in harness.stops.items():
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(harness.tasks[index], timeout=30)
        await harness.broker.close()


@pytest_asyncio.fixture(loop_scope="session")
async def listeners(
    nats_url: str, listeners_on: Callable[[str], Awaitable[Listeners]]
) -> Listeners:
    return await listeners_on(nats_url)
