"""NATS JetStream for a service: connect, provision streams, publish, consume.

Publishing always sets ``Nats-Msg-Id`` (the stream drops a re-publish inside
its duplicate window) and the current W3C trace context; consuming continues
that trace and sends undecodable messages to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    ConsumerInfo,
    DiscardPolicy,
    ObjectStoreConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from jobwire.contracts.deadletter import DeadLetter
from jobwire.contracts.envelope import CONTENT_TYPE, Contract, Envelope, decode, utcnow
from jobwire.contracts.subjects import Bucket, Stream, Subjects, bucket_name
from jobwire.runtime.health import Readiness
from jobwire.runtime.logs import get_logger
from jobwire.runtime.settings import ServiceSettings
from jobwire.runtime.telemetry import extract_context
from jobwire.runtime.waits import Stopped, backoff_wait, retry_delay

MSG_ID_HEADER = "Nats-Msg-Id"
#: Header of a dead letter whose payload was too large for NATS: where it is kept instead.
PAYLOAD_OBJECT_HEADER = "jobwire-payload-object"
# Room for the dead letter's envelope and headers around its base64 payload.
_ENVELOPE_MARGIN = 16 * 1024
log = get_logger("jobwire.broker")
tracer = trace.get_tracer("jobwire.runtime.broker")

C = TypeVar("C", bound=Contract)


def redact(url: str) -> str:
    """``nats://user:pw@host:4222`` → ``nats://host:4222``: URLs may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: ``data`` enveloped, de-duplicated on ``msg_id``."""

    subject: str
    data: Contract
    msg_id: str
    ce_subject: str | None = None


@dataclass(frozen=True, slots=True)
class Encoded:
    """A message ready for the wire: what :meth:`Broker.encode` returns, with its subject."""

    subject: str
    payload: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PublishContext:
    """What every message published at one moment in one span shares:
    the CloudEvents ``time`` and the W3C trace context (as envelope attributes
    and as NATS headers)."""

    attributes: bytes
    headers: dict[str, str]

    @classmethod
    def current(cls) -> PublishContext:
        now = utcnow().isoformat().replace("+00:00", "Z")
        attributes = [b',"time":"', now.encode(), b'"']
        headers = {"Content-Type": CONTENT_TYPE}
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            # W3C traceparent, formatted here: the propagator API costs more.
            traceparent = (
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                f"{int(span_context.trace_flags):02x}"
            )
            headers["traceparent"] = traceparent
            attributes += [b',"traceparent":"', traceparent.encode(), b'"']
            if span_context.trace_state:
                tracestate = span_context.trace_state.to_header()
                headers["tracestate"] = tracestate
                attributes += [b',"tracestate":', _json(tracestate)]
        return cls(b"".join(attributes), headers)


class AckPolicy(StrEnum):
    """When :meth:`Broker.consume` acknowledges a message."""

    # Ack after the handler returned; a raising handler gets a delayed nak
    # (redelivery), so a side effect is never acknowledged before it happened.
    AFTER_HANDLER = "after_handler"
    # The handler acks, naks or terms itself (long runs that hand work off).
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Delivery(Generic[C]):
    """A decoded message handed to a consumer's handler."""

    envelope: Envelope[C]
    msg: Msg

    @property
    def data(self) -> C:
        return self.envelope.data

    @property
    def attempt(self) -> int:
        return int(self.msg.metadata.num_delivered or 1)


class Broker:
    """One NATS connection shared by everything in a service instance."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        source: str,
        readiness: Readiness | None = None,
    ) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.namespace)
        self.source = source  # CloudEvents `source` of everything we publish
        self._source_json = b',"source":' + _json(source)
        self.readiness = readiness or Readiness()
        self.readiness.set("nats", False, "not connected yet")
        self._nc: NatsClient | None = None
        self._shown = ""
        self._attempts = 0
        self._closing = False
        self._js: JetStreamContext | None = None

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "Broker.connect() was not awaited"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "Broker.connect() was not awaited"
        return self._js

    # -- connection -------------------------------------------------------------

    async def connect(self, stop: asyncio.Event | None = None) -> None:
        """Connect, retrying every ``reconnect_wait_seconds`` until ``stop`` is set.

        nats-py itself retries a failed first connection when reconnecting is
        allowed; each failure reaches :meth:`_on_error`, which reports it in
        readiness and in one clear log line. Once connected it reconnects by
        itself forever, and readiness follows the connection state.
        """
        cfg = self.settings.nats
        self._shown = ", ".join(redact(s) for s in cfg.servers)
        self._attempts = 0
        nc = NatsClient()
        self._nc = nc
        connecting = asyncio.create_task(
            nc.connect(
                servers=cfg.servers,
                connect_timeout=cfg.connect_timeout_seconds,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=cfg.reconnect_wait_seconds,
                user=cfg.user,
                password=cfg.password.get_secret_value() if cfg.password else None,
                token=cfg.token.get_secret_value() if cfg.token else None,
                user_credentials=cfg.creds_file,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
                name=self.source,
            )
        )
        waiters: set[asyncio.Future[Any]] = {connecting}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters - {connecting}:
            waiter.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            await nc.close()
            raise Stopped
        connecting.result()
        self._js = nc.jetstream(publish_async_max_pending=4096)
        self.readiness.set("nats", True)
        log.info("nats.connected", servers=self._shown, attempts=self._attempts + 1)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self.readiness.set("nats", False, "disconnected, reconnecting")
        log.warning("nats.disconnected")

    async def _on_reconnected(self) -> None:
        self.readiness.set("nats", True)
        log.info("nats.reconnected")

    async def _on_error(self, exc: Exception) -> None:
        error = str(exc) or type(exc).__name__
        if self._nc is not None and not self._nc.is_connected and self._js is None:
            self._attempts += 1
            self.readiness.set("nats", False, f"unreachable: {type(exc).__name__}")
            log.warning(
                "nats.unreachable",
                servers=self._shown,
                attempt=self._attempts,
                retry_in_seconds=self.settings.nats.reconnect_wait_seconds,
                error=error,
            )
        else:
            log.warning("nats.error", error=error)

    async def close(self, drain_timeout: float | None = None) -> None:
        """Drain: flush what was published, finish subscriptions, close.

        ``drain_timeout`` bounds the drain (a forced stop must not wait the
        client's 30 s for a subscription that will not finish); past it the
        connection is closed as it is.
        """
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), drain_timeout)
            except Exception as exc:  # e.g. reconnecting: nothing can be flushed now
                log.warning("nats.drain_failed", error=str(exc) or type(exc).__name__)
                with contextlib.suppress(Exception):  # the socket may be half gone
                    await self._nc.close()
        self.readiness.set("nats", False, "closed")

    # -- streams ----------------------------------------------------------------

    def stream_config(self, stream: Stream) -> StreamConfig:
        s = self.settings.streams
        return StreamConfig(
            name=self.subjects.stream_name(stream),
            subjects=self.subjects.stream_subjects(stream),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE if s.storage == "file" else StorageType.MEMORY,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window.total_seconds(),
            max_age=s.retention(stream).total_seconds(),
            discard=DiscardPolicy.OLD,
        )

    async def ensure_streams(self) -> None:
        """Create or update jobwire's streams; safe when replicas start together."""
        for stream in Stream:
            config = self.stream_config(stream)
            try:
                await self.js.add_stream(config)
            except BadRequestError as exc:
                # 10058: exists with another configuration → bring it to ours.
                # 10065 "subjects overlap": another replica created this very
                # stream a moment ago (the server's checks race); only a stream
                # of another name on our subjects is a real conflict.
                if exc.err_code == 10065 and await self._stream_exists(config.name):
                    continue
                if exc.err_code != 10058:
                    raise
                await self.js.update_stream(config)
        log.info("nats.streams_ready", namespace=self.subjects.namespace)

    async def _stream_exists(self, name: str | None) -> bool:
        try:
            await self.js.stream_info(name or "")
        except NotFoundError:
            return False
        return True

    # -- publishing -------------------------------------------------------------

    def encode(
        self,
        data: Contract,
        *,
        msg_id: str,
        ce_subject: str | None = None,
        context: PublishContext | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The structured-mode CloudEvent and NATS headers for ``data``.

        This runs once per message on the hottest path, so the envelope is
        written directly rather than through an ``Envelope`` model (a third of
        the cost); tests hold it to what ``decode`` reads back.
        """
        data_json = data.__pydantic_serializer__.to_json(data)
        return self.encode_json(
            type(data), data_json, msg_id=msg_id, ce_subject=ce_subject, context=context
        )

    def encode_json(
        self,
        model: type[Contract],
        data_json: bytes,
        *,
        msg_id: str,
        ce_subject: str | None = None,
        context: PublishContext | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Like :meth:`encode`, for data already serialised as ``model`` JSON
        (a producer that writes its data directly, like the listeners' runner)."""
        context = context or PublishContext.current()
        parts = [
            b'{"specversion":"1.0","id":',
            _json(msg_id),
            self._source_json,
            _type_attributes(model),
            context.attributes,
        ]
        if ce_subject is not None:
            parts += [b',"subject":', _json(ce_subject)]
        parts += [b',"data":', data_json, b"}"]
        return b"".join(parts), {MSG_ID_HEADER: msg_id, **context.headers}

    async def publish(
        self,
        subject: str,
        data: Contract,
        *,
        msg_id: str,
        ce_subject: str | None = None,
        timeout: float = 5.0,
    ) -> PubAck:
        """Publish one message and wait for the stream's ack (raises on failure)."""
        payload, headers = self.encode(data, msg_id=msg_id, ce_subject=ce_subject)
        return await self.js.publish(subject, payload, headers=headers, timeout=timeout)

    async def publish_batch(
        self, items: Sequence[Outgoing], *, timeout: float = 10.0
    ) -> list[PubAck | BaseException]:
        """Publish many messages pipelined; one result per item, in order.

        An item's result is its ``PubAck`` or the exception that kept it from
        being stored — callers retry those (the msg id makes a retry safe).
        """
        context = PublishContext.current()  # one span, one instant for the batch
        encoded = []
        for item in items:
            payload, headers = self.encode(
                item.data, msg_id=item.msg_id, ce_subject=item.ce_subject, context=context
            )
            encoded.append(Encoded(item.subject, payload, headers))
        return await self.publish_encoded(encoded, timeout=timeout)

    async def publish_encoded(
        self, items: Sequence[Encoded], *, timeout: float = 10.0
    ) -> list[PubAck | BaseException]:
        """Publish messages encoded earlier by :meth:`encode` (e.g. kept in an outbox).

        Never raises for a publish failure: each item gets its ack or its error.
        """
        if not self.nc.is_connected:
            # While reconnecting nats-py would buffer (then overflow): fail fast,
            # the caller keeps the messages and retries.
            error = ConnectionError("NATS is not connected")
            return [error] * len(items)
        outcomes: list[asyncio.Future[PubAck] | BaseException] = []
        for item in items:
            try:
                future = await self.js.publish_async(
                    item.subject, item.payload, headers=item.headers
                )
            except Exception as exc:
                self._release_orphan(outcomes)
                if not self.nc.is_connected:  # lost the connection mid-batch
                    outcomes += [exc] * (len(items) - len(outcomes))
                    break
                outcomes.append(exc)  # this message only, e.g. over max_payload
                continue
            outcomes.append(future)
        futures = [o for o in outcomes if isinstance(o, asyncio.Future)]
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        results: list[PubAck | BaseException] = []
        for outcome in outcomes:
            if not isinstance(outcome, asyncio.Future):
                results.append(outcome)
            elif not outcome.done():
                outcome.cancel()
                results.append(TimeoutError("no ack from JetStream in time"))
            elif outcome.exception() is not None:
                results.append(outcome.exception())  # type: ignore[arg-type]
            else:
                results.append(outcome.result())
        return results

    def _release_orphan(self, ours: list[asyncio.Future[PubAck] | BaseException]) -> None:
        """Cancel the ack future of a publish_async that raised after taking a slot.

        nats-py registers the future before writing the message; when the write
        raises, nobody holds that future and its slot of the pending-publish
        limit would stay taken forever. It is the newest one registered.
        """
        pending = getattr(self.js, "_publish_async_futures", {})
        if pending:
            newest = next(reversed(pending.values()))
            if not newest.done() and not any(newest is o for o in ours):
                newest.cancel()

    async def dead_letter(
        self, source: str, msg: Msg, reason: str, detail: str, *, attempts: int = 1
    ) -> None:
        """Keep a message we cannot process, with the reason, on ``<ns>.dlq.<source>``."""
        # The dead letter's id derives from the original message so that a
        # crash between dead-lettering and term() does not store it twice.
        original = (msg.headers or {}).get(MSG_ID_HEADER) or _sequence_id(msg)
        await self.set_aside(
            source,
            msg.subject,
            msg.data,
            dict(msg.headers or {}),
            reason,
            detail,
            key=f"{source}:{original}",
            attempts=attempts,
        )

    async def set_aside(
        self,
        source: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        reason: str,
        detail: str,
        *,
        key: str,
        attempts: int = 1,
    ) -> None:
        """Keep anything we gave up on — a message, a row, a document — on ``<ns>.dlq.<source>``.

        ``key`` names it for good: setting the same thing aside twice (a retry,
        a crash before the caller moved on) stores one dead letter.
        """
        record = await self.dead_letter_record(
            source, subject, payload, headers, reason, detail, key=key, attempts=attempts
        )
        await self.publish(self.subjects.dlq(source), record, msg_id=f"dlq:{key}")
        log.warning("message.dead_lettered", source=source, subject=subject, reason=reason)

    async def dead_letter_record(
        self,
        source: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        reason: str,
        detail: str,
        *,
        key: str,
        attempts: int = 1,
    ) -> DeadLetter:
        """The dead letter of ``payload``, for callers that publish it themselves.

        Bytes too big to travel in a NATS message are kept in the object store
        ``<ns>_dead_letters`` and the record names them in its
        ``jobwire-payload-object`` header: nothing is dropped.
        """
        # base64 in JSON: 4 bytes per 3.
        if len(payload) * 4 // 3 + _ENVELOPE_MARGIN > self.nc.max_payload:
            headers = {**headers, PAYLOAD_OBJECT_HEADER: await self._store_payload(key, payload)}
            payload = b""
        now = utcnow()
        return DeadLetter(
            source=source,
            subject=subject,
            reason=reason,
            detail=detail,
            payload=payload,
            headers=headers,
            first_failed_at=now,
            last_failed_at=now,
            attempts=attempts,
        )

    async def _store_payload(self, key: str, payload: bytes) -> str:
        bucket = bucket_name(self.subjects.namespace, Bucket.DEAD_LETTERS)
        try:
            store = await self.js.object_store(bucket)
        except BucketNotFoundError:
            store = await self.js.create_object_store(bucket, ObjectStoreConfig())
        name = key.replace(":", "_")
        await store.put(name, payload)
        return f"{bucket}/{name}"

    # -- consuming --------------------------------------------------------------

    def consumer_config(
        self, durable: str, filter_subject: str, *, ack_wait_seconds: float, max_ack_pending: int
    ) -> ConsumerConfig:
        """The durable pull consumer :meth:`consume` binds to.

        ``max_deliver`` is left unlimited: a handler that counts attempts
        (the worker loop) decides when to give up, not the server.
        """
        return ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=filter_subject,
            ack_wait=ack_wait_seconds,
            max_ack_pending=max_ack_pending,
        )

    async def ensure_consumer(self, stream: Stream, config: ConsumerConfig) -> ConsumerInfo:
        """Create the durable consumer, or bring an existing one to ``config``.

        :meth:`consume` calls this first: a bare pull_subscribe would keep an
        existing consumer's old configuration (say, an ack wait shorter than a
        worker's heartbeat now needs).
        """
        return await self.js.add_consumer(self.subjects.stream_name(stream), config=config)

    async def consume(
        self,
        *,
        stream: Stream,
        durable: str,
        filter_subject: str,
        model: type[C],
        handler: Callable[[Delivery[C]], Awaitable[Any]],
        stop: asyncio.Event,
        ack: AckPolicy = AckPolicy.AFTER_HANDLER,
        batch: int = 64,
        ack_wait_seconds: float = 30.0,
        dlq_source: str | None = None,
        concurrency: int = 1,
        max_ack_pending: int | None = None,
    ) -> None:
        """Run a durable pull consumer until ``stop`` is set.

        All replicas that use the same ``durable`` share its messages
        (consumer-group scaling). A message that does not decode as ``model``
        is poison: it goes to the DLQ with the reason and is terminated.

        With ``concurrency`` > 1, up to that many handlers run at once, and
        only as many messages are fetched as there are free slots, so that no
        message waits out its ack deadline in a local queue. Once ``stop`` is
        set no more are fetched and the running handlers are awaited; if this
        coroutine is cancelled instead, they are cancelled and their messages
        handed back (nak).
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        config = self.consumer_config(
            durable,
            filter_subject,
            ack_wait_seconds=ack_wait_seconds,
            max_ack_pending=max_ack_pending or batch * 4,
        )
        failures = 0
        while True:  # NATS may be away right now: wait for it like for messages
            try:
                await self.ensure_consumer(stream, config)
                psub = await self.js.pull_subscribe(
                    filter_subject,
                    durable=durable,
                    stream=self.subjects.stream_name(stream),
                    config=config,
                )
                break
            except Exception as exc:
                failures += 1
                log.warning("consume.subscribe_failed", durable=durable, error=str(exc))
                try:
                    await backoff_wait(retry_delay(1.0, failures, 10.0), stop)
                except Stopped:
                    return
        source = dlq_source or durable
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("consume.delivery_crashed", durable=durable, error=repr(task.exception()))

        try:
            while not stop.is_set():
                if len(running) >= concurrency:
                    await _wait_for_any(running, stop)
                    continue
                want = batch if concurrency == 1 else min(batch, concurrency - len(running))
                try:
                    msgs = await psub.fetch(want, timeout=1.0)
                except TimeoutError:
                    continue
                except Exception as exc:  # disconnected, server restarting …
                    log.warning("consume.fetch_failed", durable=durable, error=str(exc))
                    await backoff_wait(1.0, stop)
                    continue
                for msg in msgs:
                    delivery = self._deliver(msg, model, handler, ack, source)
                    if concurrency == 1:
                        await delivery
                        continue
                    task = asyncio.create_task(delivery, name=f"{durable}-delivery")
                    running.add(task)
                    task.add_done_callback(finished)
            if running:  # stopping: let in-flight handlers finish
                await asyncio.wait(set(running))
        except Stopped:
            pass
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            # Best effort: during an outage there is no server to tell, and the
            # durable consumer lives on server-side anyway.
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _deliver(
        self,
        msg: Msg,
        model: type[C],
        handler: Callable[[Delivery[C]], Awaitable[Any]],
        ack: AckPolicy,
        source: str,
    ) -> None:
        try:
            await self._process(msg, model, handler, ack, source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Settling failed (NATS flaky): the message is not acked, so it comes
            # back after its ack wait. The consume loop must go on either way.
            log.warning("consume.settle_failed", subject=msg.subject, error=str(exc))

    async def _process(
        self,
        msg: Msg,
        model: type[C],
        handler: Callable[[Delivery[C]], Awaitable[Any]],
        ack: AckPolicy,
        source: str,
    ) -> None:
        with tracer.start_as_current_span(
            f"{msg.subject} process",
            context=extract_context(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.message.id": (msg.headers or {}).get(MSG_ID_HEADER, ""),
            },
        ) as span:
            try:
                envelope = decode(msg.data, model)
            except ValidationError as exc:
                span.set_status(StatusCode.ERROR, "undecodable")
                await self.dead_letter(source, msg, "undecodable", _first_error(exc))
                await msg.term()
                return
            try:
                await handler(Delivery(envelope, msg))
            except asyncio.CancelledError:
                # Shutdown past its grace period: hand the message back now
                # rather than letting it wait out the ack timeout (unless the
                # handler settled it already).
                with contextlib.suppress(MsgAlreadyAckdError):
                    await msg.nak()
                raise
            except Poison as exc:
                # Retrying cannot help, and a message redelivered for ever
                # holds an ack-pending slot of the consumer: keep it, move on.
                span.set_status(StatusCode.ERROR, "rejected")
                delivered = int(msg.metadata.num_delivered or 1)
                await self.dead_letter(source, msg, exc.reason, exc.detail, attempts=delivered)
                await msg.term()
                return
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, str(exc))
                delivered = int(msg.metadata.num_delivered or 1)
                log.exception("consume.handler_failed", subject=msg.subject, attempt=delivered)
                if ack is AckPolicy.AFTER_HANDLER:
                    await msg.nak(delay=min(2.0 ** (delivered - 1), 60.0))
                return
            if ack is AckPolicy.AFTER_HANDLER:
                await msg.ack()


class Poison(Exception):
    """Raised by a :meth:`Broker.consume` handler for a message that can never be
    handled (its content is refused, not the moment): the message goes to the
    DLQ with ``reason`` and ``detail`` and is terminated instead of redelivered."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


async def _wait_for_any(tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Return when one of ``tasks`` is done or ``stop`` is set."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()


def _json(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


@functools.cache
def _type_attributes(model: type[Contract]) -> bytes:
    """The envelope attributes that depend only on the data's class."""
    return (
        b',"type":'
        + _json(model.ce_type())
        + b',"datacontenttype":"application/json","dataschema":'
        + _json(model.schema_uri())
    )


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _sequence_id(msg: Msg) -> str:
    try:
        return f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    except Exception:
        return f"t{time.time_ns()}"
