"""Message-bus listener: a NATS subject (core) or a JetStream consumer → StartWorkflow.

``jetstream`` is the mode to use when no message may be missed: a durable pull
consumer, each message acked after its StartWorkflow is stored, identified by
stream and stream sequence. ``core`` subscribes (in a queue group if one is
set): core NATS keeps nothing for an absent subscriber and has no ack, so a
message is identified by a random id and is lost if the listener is down —
what core NATS promises, said in the job type's description.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from jobwire.contracts.listeners import MessageBusListenerParams
from jobwire.listeners.domain.triggers import Trigger
from jobwire.listeners.sources import SourceContext

_ACK_WAIT_SECONDS = 15.0
# Messages a core subscription buffers for us between receives.
_CORE_PENDING = 10_000


class NatsSource:
    def __init__(self, params: MessageBusListenerParams, ctx: SourceContext) -> None:
        self.params = params
        self.ctx = ctx
        self._own: NatsClient | None = None  # a connection to other servers, if configured
        self._js: JetStreamContext | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._core: Subscription | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=_CORE_PENDING)
        self._pending: int | None = None
        self._creds_file: str | None = None

    async def open(self) -> None:
        nc, js = self.ctx.nc, self.ctx.js
        if self.params.servers:
            options: dict[str, object] = {"name": self.ctx.name, "allow_reconnect": True}
            if self.params.credentials:
                options["user_credentials"] = self._credentials_file()
            self._own = nc = await nats.connect(self.params.servers, **options)
            js = nc.jetstream()
        self._js = js
        if self.params.mode == "core":
            self._core = await nc.subscribe(
                self.params.subject, queue=self.params.queue_group or "", cb=self._enqueue
            )
            return
        assert self.params.stream is not None
        durable = self.params.durable or self.ctx.name
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=self.params.subject,
            deliver_policy=DeliverPolicy.ALL if self.params.deliver == "all" else DeliverPolicy.NEW,
            # What a crashed owner had in flight is redelivered after this, to
            # its successor; short, since a redelivery costs only a dropped duplicate.
            ack_wait=_ACK_WAIT_SECONDS,
        )
        await js.add_consumer(self.params.stream, config=config)
        self._pull = await js.pull_subscribe_bind(durable, stream=self.params.stream)

    def _credentials_file(self) -> str:
        """nats-py reads credentials from a file: write the secret to a private one
        (mode 0600, removed on close)."""
        assert self.params.credentials is not None
        value = self.ctx.secrets.resolve(self.params.credentials).get_secret_value()
        fd, path = tempfile.mkstemp(prefix="jobwire-nats-", suffix=".creds")
        with os.fdopen(fd, "w") as file:
            file.write(value)
        self._creds_file = path
        return path

    async def _enqueue(self, msg: Msg) -> None:
        # A full queue blocks nats-py's delivery task: the server then counts the
        # subscription as a slow consumer, the one overload signal core NATS has.
        await self._queue.put(msg)

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        if self._pull is not None:
            try:
                msgs = await self._pull.fetch(max_items, timeout=timeout)
            except (NatsTimeoutError, TimeoutError):
                return []
            return [self._stream_trigger(msg) for msg in msgs]
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return []
        msgs = [first]
        while len(msgs) < max_items and not self._queue.empty():
            msgs.append(self._queue.get_nowait())
        return [self._core_trigger(msg) for msg in msgs]

    def _stream_trigger(self, msg: Msg) -> Trigger:
        meta = msg.metadata
        self._pending = meta.num_pending
        stream, sequence = meta.stream, meta.sequence.stream
        return Trigger(
            key=f"{stream}/{sequence}",
            coordinates={"subject": msg.subject, "stream": stream, "sequence": sequence},
            subject=msg.subject,
            body=msg.data,
            headers=dict(msg.headers or {}),
            token=msg,
        )

    def _core_trigger(self, msg: Msg) -> Trigger:
        # Core NATS gives a message no identity; a publisher that wants
        # de-duplication sets Nats-Msg-Id itself, and we keep it.
        headers = dict(msg.headers or {})
        key = headers.get("Nats-Msg-Id") or uuid.uuid4().hex
        return Trigger(
            key=f"core/{key}",
            coordinates={"subject": msg.subject},
            subject=msg.subject,
            body=msg.data,
            headers=headers,
        )

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        for trigger in triggers:
            if isinstance(trigger.token, Msg):
                await trigger.token.ack()

    async def release(self, triggers: Sequence[Trigger]) -> None:
        for trigger in triggers:
            if isinstance(trigger.token, Msg):
                await trigger.token.nak()

    async def close(self) -> None:
        for subscription in (self._pull, self._core):
            if subscription is not None:
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await subscription.unsubscribe()
        self._pull = self._core = None
        if self._own is not None:
            with contextlib.suppress(Exception):
                await self._own.close()
            self._own = None
        if self._creds_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._creds_file)
            self._creds_file = None

    def lag(self) -> int | None:
        if self._core is not None:
            return self._queue.qsize()
        return self._pending
