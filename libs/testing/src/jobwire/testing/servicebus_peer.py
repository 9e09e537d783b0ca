"""An Azure Service Bus test peer: the AMQP 1.0 side the azure-servicebus SDK talks to.

No Service Bus emulator can be installed on these machines (the official one is a
Docker image) and generic AMQP brokers fail the SDK's ``$cbs`` authentication. This
peer, built on python-qpid-proton, answers the real ``azure-servicebus`` aio SDK
over a real socket so that listener code is tested against the real client:

- plain TCP with SASL ANONYMOUS: the connection string carries
  ``UseDevelopmentEmulator=true``, which makes the SDK skip TLS;
- ``$cbs`` put-token requests are accepted whatever the token (status-code 200);
- queues and topic subscriptions (``<topic>/Subscriptions/<name>``), created on
  first use; a message sent to a topic is copied to each of its subscriptions
  (create them first: attach a receiver or call :meth:`ServiceBusPeer.create_subscription`);
- senders, single messages and batches (one transfer whose data sections are
  each a whole message);
- peek-lock receivers (receiver-settle-mode second): 16-byte lock tokens as
  delivery tags, ``x-opt-locked-until`` / ``x-opt-sequence-number`` /
  ``x-opt-enqueued-time`` annotations and the header's delivery-count;
- settlement echoed back settled: complete = Accepted; abandon =
  Modified(delivery-failed), redelivered with delivery count + 1; dead-letter =
  Rejected(``com.microsoft:dead-letter``), moved to ``<entity>/$DeadLetterQueue``
  with ``DeadLetterReason`` / ``DeadLetterErrorDescription`` application
  properties; release (what the SDK does with messages it fetched but did not
  hand out) = available again, count unchanged; a lock that expired or is
  unknown = Rejected(``com.microsoft:message-lock-lost``);
- lock expiry: the message becomes available again with delivery count + 1;
  after ``max_delivery_count`` deliveries it is dead-lettered
  (``MaxDeliveryCountExceeded``);
- ``<entity>/$management``: ``com.microsoft:renew-lock`` and
  ``com.microsoft:update-disposition`` (the SDK's fallback settlement by lock
  token, used when the receiving link is gone); other operations get 501;
- :meth:`ServiceBusPeer.stop` drops every connection and the listening socket
  at once (like a crash) and keeps the messages and their locks, so
  :meth:`ServiceBusPeer.start` on the same port is a restart.

What it does NOT prove — test against a real namespace for these: TLS and
certificate handling, SAS token validation, Entra ID (AAD) auth, sessions,
quotas and throttling (ServerBusy), duplicate detection, scheduled and deferred
messages, peek/browse, TTL expiry, auto-forwarding, filters and rules on
subscriptions, partitioned entities, transactions, and real lock semantics
under load (Service Bus spreads locks over brokers; this peer is one thread
with one clock). A batch is recognised by its shape (data sections that each
hold an encoded message), not by its message-format, which proton's Python
binding does not expose. Like any proton peer it closes a connection whose
client reuses a delivery-id on a session ("sequencing error"); azure-servicebus
7.15 does that when two management requests (lock renewals) race on one session.

Run it as a process with ``python -m jobwire.testing.servicebus_peer --port N``
(prints the connection string, serves until SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import logging
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, cast

from proton import (
    Array,
    Condition,
    Data,
    Delivery,
    Described,
    Endpoint,
    Handler,
    Link,
    Message,
    symbol,
    timestamp,
    ulong,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

from jobwire.runtime.embedded import LOOPBACK, free_port
from jobwire.runtime.logs import get_logger

__all__ = ["EntityCounts", "PeerMessage", "ServiceBusPeer"]

log = get_logger("jobwire.testing.servicebus_peer")

CBS: Final = "$cbs"
MANAGEMENT: Final = "/$management"
DEAD_LETTER_QUEUE: Final = "/$deadletterqueue"
SUBSCRIPTIONS: Final = "/subscriptions/"

LOCK_LOST: Final = symbol("com.microsoft:message-lock-lost")
RECEIVER_NAME: Final = symbol("com.microsoft:receiver-name")
DEAD_LETTER: Final = "com.microsoft:dead-letter"

# Section descriptors of an AMQP 1.0 message (spec 3.2).
_HEADER, _DELIVERY_ANNOTATIONS, _MESSAGE_ANNOTATIONS = 0x70, 0x71, 0x72
_DATA = 0x75

_CREDIT = 500  # credit the peer gives each incoming link, topped up at half
_TICK = 0.05  # how often locks are checked for expiry and entities for work
_MAX_MESSAGE_SIZE = 1024 * 1024


@dataclass(frozen=True)
class PeerMessage:
    """A message as the peer holds it (for assertions)."""

    entity: str
    sequence_number: int
    message_id: str | None
    body: Any
    application_properties: dict[str, Any]
    delivery_count: int
    locked: bool


@dataclass(frozen=True)
class EntityCounts:
    active: int  # waiting to be delivered
    locked: int  # delivered, not settled, lock not expired
    completed: int
    dead_lettered: int  # now in <entity>/$DeadLetterQueue
    # Times a message was made available again after a failed delivery (abandoned,
    # or its lock expired); releases of never-handed-out prefetch do not count.
    redelivered: int

    @property
    def pending(self) -> int:
        return self.active + self.locked


@dataclass(eq=False)
class _Stored:
    sequence_number: int
    enqueued_ms: int
    # The bare message (properties, application properties, body, footer) as
    # its sender encoded it, and what the peer re-encodes around it per delivery.
    bare: bytes
    annotations: dict[Any, Any]
    durable: bool = False
    ttl_ms: int | None = None
    delivery_count: int = 0
    lock: uuid.UUID | None = None
    locked_until: float = 0.0

    def __lt__(self, other: _Stored) -> bool:  # heap order: by sequence number
        return self.sequence_number < other.sequence_number


@dataclass(eq=False)
class _Entity:
    path: str  # as first named, e.g. "orders/Subscriptions/jobs"
    lock_duration: float | None = None  # None: the peer's
    available: list[_Stored] = field(default_factory=list)  # a heap
    locked: dict[uuid.UUID, _Stored] = field(default_factory=dict)
    consumers: list[Link] = field(default_factory=list)
    next_sequence: int = 1
    completed: int = 0
    redelivered: int = 0
    # Completions on a receiving link, by the receiver's name (the SDK's
    # client_identifier, else the link name).
    completed_by: Counter[str] = field(default_factory=Counter)


class _Store:
    """Entities, messages and locks. Outlives the reactor, so a restart keeps them.
    Every access holds ``mutex``: the reactor thread and test threads share it."""

    def __init__(self, lock_duration: float, max_delivery_count: int) -> None:
        self.mutex = threading.RLock()
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.entities: dict[str, _Entity] = {}
        self.locks: dict[uuid.UUID, tuple[_Entity, _Stored]] = {}

    def entity(self, path: str) -> _Entity:
        key = path.lower()
        found = self.entities.get(key)
        if found is None:
            found = self.entities[key] = _Entity(path)
        return found

    def enqueue(self, path: str, raw: bytes) -> None:
        """A transfer from a sender: one message, or a batch of them."""
        messages = _unbatch(raw)
        key = path.lower()
        prefix = key + SUBSCRIPTIONS
        subscriptions = [
            e for k, e in self.entities.items() if k.startswith(prefix) and "/$" not in k
        ]
        targets = subscriptions or [self.entity(path)]
        now_ms = int(time.time() * 1000)
        for sections in messages:
            for target in targets:
                target_msg = _stored_from(sections, target.next_sequence, now_ms)
                target.next_sequence += 1
                heapq.heappush(target.available, target_msg)

    def lock(self, entity: _Entity) -> _Stored:
        message = heapq.heappop(entity.available)
        message.lock = uuid.uuid4()
        message.locked_until = time.time() + (entity.lock_duration or self.lock_duration)
        entity.locked[message.lock] = message
        self.locks[message.lock] = (entity, message)
        return message

    def settle(
        self,
        token: uuid.UUID,
        outcome: str,
        reason: str | None = None,
        description: str | None = None,
    ) -> bool:
        """Apply ``outcome`` (complete, abandon, release, dead-letter) to a lock; False
        when the lock is unknown or expired."""
        found = self.locks.get(token)
        if found is None:
            return False
        entity, message = found
        if message.locked_until < time.time():
            self._unlock(entity, message, failed=True)
            return False
        self._forget(entity, message)
        if outcome == "complete":
            entity.completed += 1
        elif outcome == "dead-letter":
            self.dead_letter(entity, message, reason or "", description or "")
        else:
            self._requeue(entity, message, failed=outcome == "abandon")
        return True

    def renew(self, token: uuid.UUID) -> float | None:
        found = self.locks.get(token)
        if found is None:
            return None
        entity, message = found
        now = time.time()
        if message.locked_until < now:
            self._unlock(entity, message, failed=True)
            return None
        message.locked_until = now + (entity.lock_duration or self.lock_duration)
        return message.locked_until

    def expire_locks(self) -> None:
        now = time.time()
        expired = [found for found in self.locks.values() if found[1].locked_until < now]
        for entity, message in expired:
            self._unlock(entity, message, failed=True)

    def dead_letter(self, entity: _Entity, message: _Stored, reason: str, description: str) -> None:
        decoded: Any = Message()  # proton types `properties` as None
        decoded.decode(message.bare)
        properties = dict(decoded.properties or {})
        properties["DeadLetterReason"] = reason
        properties["DeadLetterErrorDescription"] = description
        decoded.properties = properties
        message.bare = _bare(decoded)
        message.annotations[symbol("x-opt-deadletter-source")] = entity.path
        dlq = self.entity(entity.path + "/$DeadLetterQueue")
        heapq.heappush(dlq.available, message)

    def _unlock(self, entity: _Entity, message: _Stored, *, failed: bool) -> None:
        self._forget(entity, message)
        self._requeue(entity, message, failed=failed)

    def _forget(self, entity: _Entity, message: _Stored) -> None:
        if message.lock is not None:
            entity.locked.pop(message.lock, None)
            self.locks.pop(message.lock, None)
        message.lock = None

    def _requeue(self, entity: _Entity, message: _Stored, *, failed: bool) -> None:
        if failed:
            message.delivery_count += 1
            entity.redelivered += 1
            dead_letter_queue = entity.path.lower().endswith(DEAD_LETTER_QUEUE)
            if message.delivery_count >= self.max_delivery_count and not dead_letter_queue:
                self.dead_letter(
                    entity,
                    message,
                    "MaxDeliveryCountExceeded",
                    f"Message could not be consumed after {self.max_delivery_count} "
                    "delivery attempts.",
                )
                return
        heapq.heappush(entity.available, message)


class ServiceBusPeer:
    """A Service Bus namespace on ``host:port`` for the azure-servicebus SDK.

    ``start()`` runs the proton reactor in a background thread; ``stop()`` drops
    every connection; ``start()`` again listens on the same port with the same
    messages. Use as a context manager, or start and stop it yourself.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        lock_duration: float = 30.0,
        max_delivery_count: int = 10,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port()
        self._store = _Store(lock_duration, max_delivery_count)
        self._thread: threading.Thread | None = None
        self._handler: _Handler | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def connection_string(self) -> str:
        # Lowercase `true` exactly: anything else makes the SDK use TLS on 5671.
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=peer;"
            "SharedAccessKey=peer;UseDevelopmentEmulator=true"
        )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            raise RuntimeError(f"the Service Bus peer already runs on port {self.port}")
        # Proton's listen() leaks its socket when bind fails: find out first.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as error:
                raise RuntimeError(
                    f"cannot start the Service Bus peer: {self.host}:{self.port} is in use"
                ) from error
        logging.getLogger("proton").addFilter(_QUIET)  # idempotent
        handler = _Handler(self._store, self.host, self.port)
        thread = threading.Thread(
            target=handler.run, name=f"servicebus-peer-{self.port}", daemon=True
        )
        self._handler, self._thread = handler, thread
        thread.start()
        if not handler.listening.wait(timeout):
            self.stop()
            raise RuntimeError(f"the Service Bus peer did not listen within {timeout:g} s")
        if handler.failure is not None:
            self._thread = None
            raise RuntimeError(f"the Service Bus peer failed to start: {handler.failure!r}")
        log.info("servicebus_peer.started", port=self.port)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listening socket and drop every connection; keep messages and locks."""
        handler, thread = self._handler, self._thread
        self._handler = self._thread = None
        if handler is None or thread is None:
            return
        handler.request_stop()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the Service Bus peer on port {self.port} did not stop")
        log.info("servicebus_peer.stopped", port=self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ServiceBusPeer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """Connections open now."""
        handler = self._handler
        return handler.connection_count if handler is not None else 0

    # -------------------------------------------------------- entities (tests)

    def create_queue(self, name: str, *, lock_duration: float | None = None) -> str:
        """A queue (entities are also created on first use), with its own lock duration."""
        with self._store.mutex:
            self._store.entity(name).lock_duration = lock_duration
        return name

    def create_subscription(
        self, topic: str, subscription: str, *, lock_duration: float | None = None
    ) -> str:
        """Make ``topic`` fan out to ``subscription``; its entity path."""
        path = f"{topic}/Subscriptions/{subscription}"
        with self._store.mutex:
            self._store.entity(path).lock_duration = lock_duration
        return path

    def delete(self, entity: str) -> None:
        """Forget an entity, its dead letters and its locks (receivers keep their links)."""
        with self._store.mutex:
            for key in (entity.lower(), entity.lower() + DEAD_LETTER_QUEUE):
                found = self._store.entities.pop(key, None)
                if found is not None:
                    for token in found.locked:
                        self._store.locks.pop(token, None)

    def send(
        self,
        entity: str,
        body: bytes,
        *,
        message_id: str | None = None,
        application_properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Enqueue a message directly (as if a sender had), e.g. to preload a queue."""
        message = Message(id=message_id, properties=dict(application_properties or {}))
        payload = _bare(message) + _data_section(body)
        with self._store.mutex:
            self._store.enqueue(entity, payload)
        self._poke()

    def counts(self, entity: str) -> EntityCounts:
        with self._store.mutex:
            self._store.expire_locks()
            found = self._store.entities.get(entity.lower())
            dlq = self._store.entities.get(entity.lower() + DEAD_LETTER_QUEUE)
            if found is None:
                return EntityCounts(0, 0, 0, 0, 0)
            dead = len(dlq.available) + len(dlq.locked) if dlq is not None else 0
            return EntityCounts(
                len(found.available), len(found.locked), found.completed, dead, found.redelivered
            )

    def messages(self, entity: str) -> list[PeerMessage]:
        """What ``entity`` holds now (available and locked), by sequence number;
        ``<entity>/$DeadLetterQueue`` for its dead letters."""
        with self._store.mutex:
            found = self._store.entities.get(entity.lower())
            if found is None:
                return []
            held = [(m, False) for m in found.available] + [
                (m, True) for m in found.locked.values()
            ]
            return sorted(
                (_snapshot(found.path, m, locked) for m, locked in held),
                key=lambda m: m.sequence_number,
            )

    def dead_letters(self, entity: str) -> list[PeerMessage]:
        return self.messages(entity + "/$DeadLetterQueue")

    def completed_by(self, entity: str) -> dict[str, int]:
        """Messages completed on a receiving link, by receiver name (the SDK's
        ``client_identifier``): who of competing consumers did the work."""
        with self._store.mutex:
            found = self._store.entities.get(entity.lower())
            return dict(found.completed_by) if found is not None else {}

    def _poke(self) -> None:
        handler = self._handler
        if handler is not None:
            handler.request_dispatch()


# ------------------------------------------------------------------ reactor


def _guarded(method: Callable[[_Handler, Any], None]) -> Callable[[_Handler, Any], None]:
    """Log what a handler raises: an exception would end the reactor thread, and
    with it every connection of the peer."""

    @functools.wraps(method)
    def guarded(handler: _Handler, event: Any) -> None:
        try:
            method(handler, event)
        except Exception:
            log.exception("servicebus_peer.event_failed", handler=method.__name__)

    return guarded


class _QuietDisconnects(logging.Filter):
    """Proton logs a client that resets its socket as an error; for a test peer
    that is a normal way for a client to leave."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Couldn't send", "Couldn't recv"))


_QUIET = _QuietDisconnects()


class _Handler(Handler):
    """Proton event handler; runs on the reactor thread only."""

    def __init__(self, store: _Store, host: str, port: int) -> None:
        self.store = store
        self.host, self.port = host, port
        self.listening = threading.Event()
        self.failure: BaseException | None = None
        self.container = Container(self)
        self.injector = EventInjector()
        self.container.selectable(self.injector)
        self.acceptor: Any = None
        self.connection_count = 0
        self._connections: set[Any] = set()
        # Peer link → entity it serves (consumers), or the node it answers for.
        self._consumer_of: dict[Link, _Entity] = {}
        self._receiver_name: dict[Link, str] = {}
        self._replies: dict[Link, deque[bytes]] = {}
        # Delivery → its lock token. Proton's Python binding decodes a delivery
        # tag as UTF-8 text, so binary lock tokens cannot be read back from it.
        self._tokens: dict[Delivery, uuid.UUID] = {}
        self._stopping = False
        self._tags = itertools.count()

    # Cross-thread requests go through the injector; the reactor is not thread-safe.
    def request_stop(self) -> None:
        self.injector.trigger(ApplicationEvent("peer_stop"))

    def request_dispatch(self) -> None:
        self.injector.trigger(ApplicationEvent("peer_dispatch"))

    def run(self) -> None:
        try:
            self.container.run()
        except BaseException as error:  # surfaced by start(); the thread ends
            self.failure = error
            log.exception("servicebus_peer.reactor_failed", port=self.port)
        finally:
            self.listening.set()

    # ---------------------------------------------------------- reactor events

    @_guarded
    def on_reactor_init(self, event: Any) -> None:
        try:
            self.acceptor = self.container.listen(f"{self.host}:{self.port}")
        except Exception as error:  # e.g. the port is taken; start() raises it
            self.failure = error
            self._shutdown()
            return
        self.container.schedule(_TICK, self)
        self.listening.set()

    @_guarded
    def on_timer_task(self, event: Any) -> None:
        if self._stopping:
            return
        with self.store.mutex:
            self.store.expire_locks()
            self._dispatch_all()
        self.container.schedule(_TICK, self)

    @_guarded
    def on_peer_dispatch(self, event: Any) -> None:
        with self.store.mutex:
            self._dispatch_all()

    @_guarded
    def on_peer_stop(self, event: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        self._stopping = True
        if self.acceptor is not None:
            self.acceptor.close()
        for connection in list(self._connections):
            _drop(connection)
        self._connections.clear()
        self.connection_count = 0
        self.injector.close()

    # ------------------------------------------------------- endpoint events

    @_guarded
    def on_connection_bound(self, event: Any) -> None:
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")

    @_guarded
    def on_connection_remote_open(self, event: Any) -> None:
        connection = event.connection
        if self._stopping:
            _drop(connection)
            return
        self._connections.add(connection)
        self.connection_count = len(self._connections)
        connection.container = "servicebus-peer"
        connection.open()

    @_guarded
    def on_session_remote_open(self, event: Any) -> None:
        event.session.incoming_capacity = 64 * _MAX_MESSAGE_SIZE
        event.session.open()

    @_guarded
    def on_link_remote_open(self, event: Any) -> None:
        link = event.link
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.max_message_size = _MAX_MESSAGE_SIZE
        if link.is_sender:
            link.snd_settle_mode = link.remote_snd_settle_mode
            link.rcv_settle_mode = link.remote_rcv_settle_mode
            path = _path(link.remote_source.address)
            if path == CBS or path.lower().endswith(MANAGEMENT):
                self._replies[link] = deque()
            else:
                with self.store.mutex:
                    entity = self.store.entity(path)
                    entity.consumers.append(link)
                    self._consumer_of[link] = entity
                properties = link.remote_properties or {}
                self._receiver_name[link] = str(properties.get(RECEIVER_NAME) or link.name)
            link.open()
        else:
            link.open()
            link.flow(_CREDIT)

    @_guarded
    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if not link.is_sender:
            return
        if link in self._replies:
            self._flush_replies(link)
            return
        entity = self._consumer_of.get(link)
        if entity is None:
            return
        with self.store.mutex:
            self._dispatch(entity)
        if link.drain_mode:
            link.drained()

    @_guarded
    def on_link_remote_close(self, event: Any) -> None:
        self._forget_link(event.link)
        event.link.close()

    @_guarded
    def on_session_remote_close(self, event: Any) -> None:
        event.session.close()

    @_guarded
    def on_connection_remote_close(self, event: Any) -> None:
        self._forget_connection(event.connection)
        event.connection.close()

    @_guarded
    def on_transport_closed(self, event: Any) -> None:
        connection = event.connection
        if connection is not None:
            self._forget_connection(connection)
            event.transport.unbind()

    @_guarded
    def on_delivery(self, event: Any) -> None:
        delivery = event.delivery
        link = delivery.link
        if link.is_receiver:
            self._incoming(link, delivery)
        elif delivery.updated:
            self._outcome(delivery)

    # -------------------------------------------------------------- incoming

    def _incoming(self, link: Any, delivery: Any) -> None:
        if delivery.partial:
            return
        raw = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        path = _path(link.remote_target.address)
        try:
            if path == CBS or path.lower().endswith(MANAGEMENT):
                self._request(link, path, raw)
            else:
                with self.store.mutex:
                    self.store.enqueue(path, raw)
                    self._dispatch_all()
            delivery.update(Delivery.ACCEPTED)
        except Exception as error:  # a malformed transfer must not end the reactor
            log.warning("servicebus_peer.transfer_rejected", path=path, error=repr(error))
            delivery.local.condition = Condition("amqp:decode-error", str(error)[:200])
            delivery.update(Delivery.REJECTED)
        delivery.settle()
        if link.credit < _CREDIT // 2:
            link.flow(_CREDIT - link.credit)

    def _request(self, link: Any, path: str, raw: bytes) -> None:
        request = Message()
        request.decode(raw)
        properties: dict[str, Any] = request.properties or {}
        operation = str(properties.get("operation", ""))
        if path == CBS:
            # Any token will do: the peer proves the SDK's flow, not SAS validation.
            reply = _reply(request, {"status-code": 200, "status-description": "OK"})
        else:
            entity = path[: -len(MANAGEMENT)]
            reply = self._management(entity, operation, request)
        for sender in self._replies:
            if sender.connection == link.connection and _path(sender.remote_source.address) == path:
                self._replies[sender].append(reply)
                self._flush_replies(sender)
                return
        log.warning("servicebus_peer.no_reply_link", path=path, operation=operation)

    def _management(self, entity: str, operation: str, request: Message) -> bytes:
        body = request.body if isinstance(request.body, dict) else {}
        tokens = [_uuid(t) for t in _elements(body.get("lock-tokens"))]
        with self.store.mutex:
            if operation == "com.microsoft:renew-lock":
                expirations = [self.store.renew(token) for token in tokens]
                if any(expiry is None for expiry in expirations):
                    return _failure(request, 410, LOCK_LOST, "The lock supplied is invalid.")
                stamps = [timestamp(int(e * 1000)) for e in expirations if e is not None]
                return _reply(
                    request,
                    {"statusCode": 200, "statusDescription": "OK"},
                    {"expirations": Array(None, Data.TIMESTAMP, *stamps)},
                )
            if operation == "com.microsoft:update-disposition":
                status = str(body.get("disposition-status", ""))
                outcome = {
                    "completed": "complete",
                    "abandoned": "abandon",
                    "suspended": "dead-letter",
                }.get(status)
                if outcome is None:
                    return _failure(request, 400, None, f"disposition {status!r} not supported")
                settled = [
                    self.store.settle(
                        token,
                        outcome,
                        _text(body.get("deadletter-reason")),
                        _text(body.get("deadletter-description")),
                    )
                    for token in tokens
                ]
                self._dispatch_all()
                if not all(settled):
                    return _failure(request, 410, LOCK_LOST, "The lock supplied is invalid.")
                return _reply(request, {"statusCode": 200, "statusDescription": "OK"}, {})
        log.info("servicebus_peer.unsupported_operation", entity=entity, operation=operation)
        return _failure(request, 501, None, f"{operation} is not implemented by the test peer")

    def _flush_replies(self, link: Any) -> None:
        pending = self._replies.get(link)
        while pending and link.credit > 0:
            delivery = link.delivery(b"r%d" % next(self._tags))
            link.send(pending.popleft())
            link.advance()
            delivery.settle()

    # -------------------------------------------------------------- outgoing

    def _dispatch_all(self) -> None:
        for entity in list(self.store.entities.values()):
            if entity.available and entity.consumers:
                self._dispatch(entity)

    def _dispatch(self, entity: _Entity) -> None:
        """Hand available messages to consumer links with credit, round-robin."""
        ready = [link for link in entity.consumers if _open(link) and link.credit > 0]
        while entity.available and ready:
            for link in list(ready):
                if not entity.available:
                    break
                if link.credit <= 0:
                    ready.remove(link)
                    continue
                message = self.store.lock(entity)
                assert message.lock is not None
                # Typed `str` in proton; bytes are what the wire tag is made of.
                delivery = link.delivery(cast(str, message.lock.bytes_le))
                link.send(_encode_delivery(message))
                link.advance()
                if link.snd_settle_mode == Link.SND_SETTLED:  # receive-and-delete
                    delivery.settle()
                    self.store.settle(message.lock, "complete")
                else:
                    self._tokens[delivery] = message.lock

    def _outcome(self, delivery: Any) -> None:
        """The client settled a delivery: apply it and echo the outcome, settled."""
        state = delivery.remote_state
        token = self._tokens.pop(delivery, None)
        if token is None:  # not a message delivery (a reply), or already settled
            delivery.settle()
            return
        with self.store.mutex:
            if state == Delivery.ACCEPTED:
                applied, outcome = self.store.settle(token, "complete"), Delivery.ACCEPTED
                entity = self._consumer_of.get(delivery.link)
                if applied and entity is not None:
                    entity.completed_by[self._receiver_name.get(delivery.link, "")] += 1
            elif state == Delivery.RELEASED:
                applied, outcome = self.store.settle(token, "release"), Delivery.RELEASED
            elif state == Delivery.MODIFIED:
                remote = delivery.remote
                # defer (undeliverable-here) is not supported: treated as abandon.
                kind = "abandon" if remote.failed or remote.undeliverable else "release"
                applied, outcome = self.store.settle(token, kind), Delivery.MODIFIED
                delivery.local.failed = remote.failed
                delivery.local.undeliverable = remote.undeliverable
            elif state == Delivery.REJECTED:
                reason, description = _dead_letter_reason(delivery.remote.condition)
                applied = self.store.settle(token, "dead-letter", reason, description)
                outcome = Delivery.REJECTED
            else:  # received/none: not an outcome yet
                self._tokens[delivery] = token
                return
            self._dispatch_all()
        if delivery.settled:  # settled by the client already: nothing to echo
            delivery.settle()
            return
        if not applied:
            delivery.local.condition = Condition(
                LOCK_LOST,
                "The lock supplied is invalid. Either the lock expired, or the "
                "message has already been removed from the queue.",
            )
            outcome = Delivery.REJECTED
        delivery.update(outcome)
        delivery.settle()

    # ------------------------------------------------------------- teardown

    def _forget_link(self, link: Any) -> None:
        self._replies.pop(link, None)
        # Locks outlive links, as in Service Bus: they expire or are settled by
        # lock token through $management.
        for delivery in [d for d in self._tokens if d.link == link]:
            del self._tokens[delivery]
        self._receiver_name.pop(link, None)
        entity = self._consumer_of.pop(link, None)
        if entity is not None:
            with self.store.mutex:
                if link in entity.consumers:
                    entity.consumers.remove(link)

    def _forget_connection(self, connection: Any) -> None:
        for link in [*self._consumer_of, *self._replies]:
            if link.connection == connection:
                self._forget_link(link)
        self._connections.discard(connection)
        self.connection_count = len(self._connections)


# ---------------------------------------------------------------- encoding


def _drop(connection: Any) -> None:
    """Close the socket under a connection without an AMQP close, like a crash."""
    transport = connection.transport
    if transport is None:
        return
    transport.close_head()
    transport.close_tail()
    selectable = getattr(transport, "_selectable", None)
    if selectable is not None:
        selectable.terminate()
        selectable.update()


def _open(link: Any) -> bool:
    return bool(link.state & Endpoint.LOCAL_ACTIVE and link.state & Endpoint.REMOTE_ACTIVE)


def _path(address: str | None) -> str:
    """``amqps://host:port/orders/Subscriptions/x`` → ``orders/Subscriptions/x``."""
    text = address or ""
    if "://" in text:
        text = text.split("://", 1)[1]
        text = text.split("/", 1)[1] if "/" in text else ""
    return text.strip("/")


def _sections(raw: bytes) -> list[tuple[int, bytes, Any]]:
    """The top-level sections of an encoded message: (descriptor, bytes, value)."""
    found: list[tuple[int, bytes, Any]] = []
    data = Data()
    view = memoryview(raw)
    position = 0
    while position < len(raw):
        data.clear()
        consumed = data.decode(view[position:].tobytes())
        data.rewind()
        data.next()
        value = data.get_object()
        if not isinstance(value, Described) or not isinstance(value.descriptor, int):
            raise ValueError(f"not an AMQP message section at byte {position}")
        section = raw[position : position + consumed]
        found.append((int(value.descriptor), section, _owned(value.value)))
        position += consumed
    return found


def _owned(value: Any) -> Any:
    """``value`` with binaries copied out: proton hands out memoryviews into its
    decode buffer, which the next decode overwrites."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, dict):
        return {_owned(k): _owned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_owned(v) for v in value]
    return value


def _unbatch(raw: bytes) -> list[list[tuple[int, bytes, Any]]]:
    """One message's sections, or each message's of a batch: the SDK sends a batch
    as the first message's properties followed by data sections that each hold
    a whole encoded message."""
    sections = _sections(raw)
    data = [value for code, _, value in sections if code == _DATA]
    if data and all(payload[:2] == b"\x00\x53" for payload in data):
        try:
            return [_sections(payload) for payload in data]
        except ValueError:  # data that merely looked like a message
            pass
    return [sections]


def _stored_from(sections: list[tuple[int, bytes, Any]], sequence: int, now_ms: int) -> _Stored:
    durable, ttl = False, None
    annotations: dict[Any, Any] = {}
    bare: list[bytes] = []
    for code, raw, value in sections:
        if code == _HEADER:
            fields = list(value or [])
            durable = bool(fields[0]) if fields else False
            ttl = int(fields[2]) if len(fields) > 2 and fields[2] is not None else None
        elif code == _MESSAGE_ANNOTATIONS:
            annotations = dict(value or {})
        elif code != _DELIVERY_ANNOTATIONS:
            bare.append(raw)
    return _Stored(
        sequence_number=sequence,
        enqueued_ms=now_ms,
        bare=b"".join(bare),
        annotations=annotations,
        durable=durable,
        ttl_ms=ttl,
    )


def _encode_delivery(message: _Stored) -> bytes:
    data = Data()
    # The header is written by hand: proton leaves out a zero delivery-count,
    # and the SDK then reports None instead of 0.
    data.put_described()
    data.enter()
    data.put_ulong(_HEADER)
    data.put_list()
    data.enter()
    data.put_bool(message.durable)
    data.put_ubyte(4)
    if message.ttl_ms is None:
        data.put_null()
    else:
        data.put_uint(message.ttl_ms)
    data.put_bool(message.delivery_count == 0)
    data.put_uint(message.delivery_count)
    data.exit()
    data.exit()
    annotations = {
        **message.annotations,
        symbol("x-opt-sequence-number"): message.sequence_number,
        symbol("x-opt-enqueued-time"): timestamp(message.enqueued_ms),
        symbol("x-opt-locked-until"): timestamp(int(message.locked_until * 1000)),
    }
    data.put_object(Described(ulong(_MESSAGE_ANNOTATIONS), annotations))
    return bytes(data.encode()) + message.bare


def _bare(message: Message) -> bytes:
    """A proton message without its header (the peer writes its own per delivery)."""
    return b"".join(raw for code, raw, _ in _sections(bytes(message.encode())) if code != _HEADER)


def _data_section(body: bytes) -> bytes:
    data = Data()
    data.put_object(Described(ulong(_DATA), body))
    return bytes(data.encode())


def _reply(request: Message, properties: dict[str, Any], body: Any = None) -> bytes:
    reply = Message(correlation_id=request.id, properties=properties, body=body)
    return bytes(reply.encode())


def _failure(request: Message, status: int, condition: symbol | None, description: str) -> bytes:
    properties: dict[str, Any] = {"statusCode": status, "statusDescription": description}
    if condition is not None:
        properties["errorCondition"] = condition
    return _reply(request, properties)


def _dead_letter_reason(condition: Condition | None) -> tuple[str, str]:
    if condition is None:
        return "", ""
    info: Any = condition.info or {}
    reason = _text(info.get("DeadLetterReason")) or ""
    description = _text(info.get("DeadLetterErrorDescription")) or condition.description or ""
    if condition.name != DEAD_LETTER and not reason:
        reason = str(condition.name)
    return reason, description


def _elements(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    if isinstance(value, Array):
        return value.elements
    if isinstance(value, list | tuple):
        return value
    return (value,)


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes):
        return uuid.UUID(bytes=value)
    return uuid.UUID(str(value))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _snapshot(path: str, message: _Stored, locked: bool) -> PeerMessage:
    decoded = Message()
    decoded.decode(message.bare)
    body = decoded.body
    if isinstance(body, memoryview):
        body = body.tobytes()
    return PeerMessage(
        entity=path,
        sequence_number=message.sequence_number,
        message_id=None if decoded.id is None else str(decoded.id),
        body=body,
        application_properties=dict(decoded.properties or {}),
        delivery_count=message.delivery_count,
        locked=locked,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a Service Bus test peer until stopped.")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--lock-duration", type=float, default=30.0)
    parser.add_argument("--max-delivery-count", type=int, default=10)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ServiceBusPeer(
        args.port, lock_duration=args.lock_duration, max_delivery_count=args.max_delivery_count
    ) as peer:
        print(peer.connection_string, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
