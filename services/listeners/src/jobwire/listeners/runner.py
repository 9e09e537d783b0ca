"""The one loop every listener slot runs: source → StartWorkflow → JetStream → ack.

Written once for all sources. It owns what sources must not each get right on
their own: the mapping to StartWorkflow, the idempotency key (also the
``Nats-Msg-Id``), dead letters for poison, retries with backoff, tracing,
metrics, and the rule that a source is acked only after JetStream stored every
command (or dead letter) of the batch.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from nats.errors import MaxPayloadError
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.listeners import (
    ListenerDefinition,
    ListenerParams,
    ListenerSlotStatus,
    ListenerState,
)
from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.domain.mapping import Poison, StartWorkflowWriter, message_id
from jobwire.listeners.domain.triggers import Trigger
from jobwire.listeners.settings import ListenerOptions
from jobwire.listeners.sources import Source
from jobwire.runtime.broker import Broker, Encoded, PublishContext
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import Stopped, backoff_wait, retry_delay

log = get_logger("jobwire.listeners.runner")
tracer = trace.get_tracer("jobwire.listeners")
meter = metrics.get_meter("jobwire.listeners")
triggers_counter = meter.create_counter(
    "jobwire.listener.triggers", description="triggers handled, by job and outcome"
)
errors_counter = meter.create_counter(
    "jobwire.listener.errors", description="failed attempts, by job and stage"
)
batch_seconds = meter.create_histogram(
    "jobwire.listener.batch.duration", unit="s", description="receive-to-ack time of a batch"
)

# Every live runner, for the lag gauge (read at each metrics export).
_runners: weakref.WeakSet[SlotRunner] = weakref.WeakSet()


def _observe_lag(_: CallbackOptions) -> Iterable[Observation]:
    for runner in list(_runners):
        lag = runner.lag()
        if lag is not None:
            yield Observation(lag, {**runner._labels, "slot": runner.slot})


meter.create_observable_gauge(
    "jobwire.listener.lag",
    callbacks=[_observe_lag],
    description="triggers waiting in the source, where the source can tell",
)


@dataclass
class SlotStats:
    """What one slot reports (host registry, metrics); updated by its runner."""

    state: ListenerState = "Starting"
    since: datetime = field(default_factory=utcnow)
    received: int = 0
    published: int = 0
    dead_lettered: int = 0
    errors: int = 0
    last_error: str | None = None

    def enter(self, state: ListenerState) -> None:
        if state != self.state:
            self.state, self.since = state, utcnow()

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        self.last_error = describe(error)


class SlotRunner:
    """Runs one slot of one listener until ``stop`` is set."""

    def __init__(
        self,
        definition: ListenerDefinition,
        params: ListenerParams,
        slot: int,
        source: Source,
        broker: Broker,
        options: ListenerOptions,
    ) -> None:
        self.definition = definition
        self.params = params
        self.slot = slot
        self.source = source
        self.broker = broker
        self.options = options
        self.stats = SlotStats()
        self.batch_size = int(getattr(params, "batch_max_messages", 0)) or int(
            getattr(params, "batch_max_files", 0) or 500
        )
        self._labels = {"job": definition.job_name, "type": definition.job_type}
        self._dlq_subject = broker.subjects.dlq(definition.job_type)
        self._subject = broker.subjects.workflow_start(params.workflow)
        self.writer = StartWorkflowWriter(definition, params)
        self._failures = 0
        _runners.add(self)

    def lag(self) -> int | None:
        try:
            return self.source.lag()
        except Exception:  # an estimate must not break status or metrics
            return None

    def status(self) -> ListenerSlotStatus:
        stats = self.stats
        return ListenerSlotStatus(
            job_id=self.definition.job_id,
            job_name=self.definition.job_name,
            job_version=self.definition.job_version,
            slot=self.slot,
            state=stats.state,
            since=stats.since,
            received=stats.received,
            published=stats.published,
            dead_lettered=stats.dead_lettered,
            errors=stats.errors,
            last_error=stats.last_error,
            lag=self.lag(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Open the source and pump it; on failure close, back off and open again."""
        fields = {"job": self.definition.job_name, "slot": self.slot}
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.source.open(), self.options.open_timeout_seconds)
                log.info("listener.started", **fields, version=self.definition.job_version)
                self.stats.enter("Running")
                await self._pump(stop)
            except Stopped:
                break
            except Exception as exc:
                self._fail("source", exc)
                log.warning("listener.failed", **fields, error=describe(exc))
            finally:
                await self._close()
            if stop.is_set():
                break
            try:
                await backoff_wait(self._backoff(), stop)
            except Stopped:
                break
        self.stats.enter("Stopping")
        log.info("listener.stopped", **fields)

    async def _pump(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            triggers = await self.source.receive(
                self.batch_size, self.options.receive_timeout_seconds
            )
            if not triggers:
                continue
            started = time.monotonic()
            self.stats.received += len(triggers)
            with tracer.start_as_current_span(
                "listener.batch",
                kind=SpanKind.CONSUMER,
                attributes={
                    "jobwire.job": self.definition.job_name,
                    "jobwire.listener.slot": self.slot,
                    "messaging.batch.message_count": len(triggers),
                },
            ):
                await self._handle(triggers, stop)
            batch_seconds.record(time.monotonic() - started, self._labels)
            self._failures = 0
            if self.stats.state == "Failed":
                self.stats.enter("Running")

    async def _handle(self, triggers: Sequence[Trigger], stop: asyncio.Event) -> None:
        """Publish a StartWorkflow or dead letter per trigger, retrying until all are
        stored, then ack the source. A stop while retrying hands the batch back."""
        context = PublishContext.current()
        outgoing: list[Encoded] = []
        dead = 0
        for trigger in triggers:
            encoded = self._encode(trigger, context)
            if isinstance(encoded, Poison):
                encoded = await self._dead_letter(trigger, encoded, context)
                dead += 1
            outgoing.append(encoded)
        pending = list(range(len(outgoing)))
        while pending:
            results = await self.broker.publish_encoded(
                [outgoing[i] for i in pending], timeout=self.options.publish_timeout_seconds
            )
            retry: list[int] = []
            error: BaseException | None = None
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, MaxPayloadError):
                    # Too big for NATS after all (the envelope adds to the body):
                    # a retry cannot help, a dead letter can.
                    poison = Poison("too_large", "the StartWorkflow exceeds the NATS max payload")
                    outgoing[index] = await self._dead_letter(triggers[index], poison, context)
                    dead += 1
                    retry.append(index)
                elif isinstance(result, BaseException):
                    retry.append(index)
                    error = result
            pending = retry
            if error is None:
                continue
            self._fail("publish", error)
            try:
                await backoff_wait(self._backoff(), stop)
            except Stopped:
                await self.source.release(triggers)
                raise
        await self.source.ack(triggers)
        published = len(triggers) - dead
        self.stats.published += published
        self.stats.dead_lettered += dead
        triggers_counter.add(published, {**self._labels, "outcome": "published"})
        if dead:
            triggers_counter.add(dead, {**self._labels, "outcome": "dead_lettered"})

    def _encode(self, trigger: Trigger, context: PublishContext) -> Encoded | Poison:
        """The trigger's StartWorkflow ready for the wire, or why it is poison.

        Synchronous: it runs once per message, and only a dead letter needs I/O.
        """
        written = self.writer.write(trigger)
        if isinstance(written, Poison):
            return written
        msg_id, data = written
        payload, headers = self.broker.encode_json(
            StartWorkflow, data, msg_id=msg_id, context=context
        )
        if len(payload) > self.broker.nc.max_payload:
            return Poison(
                "too_large",
                f"the StartWorkflow would be {len(payload)} bytes; "
                f"NATS allows {self.broker.nc.max_payload}",
            )
        return Encoded(self._subject, payload, headers)

    async def _dead_letter(
        self, trigger: Trigger, poison: Poison, context: PublishContext
    ) -> Encoded:
        """The dead letter of a trigger, with its original bytes.

        Bytes too big to travel in a NATS message are kept in the object store
        ``<ns>_dead_letters`` and the record names them: nothing is dropped.
        """
        trigger.dead_letter = (poison.reason, poison.detail)
        key = message_id(self.definition, trigger)
        payload = trigger.body if trigger.body is not None else trigger.raw or b""
        headers = {
            **trigger.headers,
            "jobwire-job-id": self.definition.job_id,
            "jobwire-trigger-key": trigger.key,
        }
        record = await self.broker.dead_letter_record(
            self.definition.job_type,
            trigger.subject,
            payload,
            headers,
            poison.reason,
            poison.detail,
            key=key,
        )
        log.warning(
            "listener.dead_lettered",
            job=self.definition.job_name,
            key=trigger.key,
            reason=poison.reason,
            detail=poison.detail,
        )
        msg_id = f"dlq:{key}"
        body, headers_out = self.broker.encode(record, msg_id=msg_id, context=context)
        return Encoded(self._dlq_subject, body, headers_out)

    def _fail(self, stage: str, error: BaseException) -> None:
        self._failures += 1
        self.stats.failed(error)
        self.stats.enter("Failed")
        errors_counter.add(1, {**self._labels, "stage": stage})

    def _backoff(self) -> float:
        return retry_delay(0.4, self._failures, self.options.retry_max_seconds)

    async def _close(self) -> None:
        try:
            await self.source.close()
        except Exception as exc:  # a source must not raise here; keep going if it does
            log.warning("listener.close_failed", job=self.definition.job_name, error=describe(exc))


def describe(error: BaseException) -> str:
    """One line for status and logs: the type and the first line of the message.
    Sources keep credentials out of their messages (URLs go through ``redact``)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__
