"""The port every listener source implements, and the registry of sources.

A source knows one technology (Kafka, NATS, file storage …) and nothing about
StartWorkflow, tracing, retries or dead letters: the runner
(``jobwire.listeners.runner``) owns those, written once. Each source is one
module in this package holding its adapter; its parameter model lives in
``jobwire.contracts.listeners`` so the admin API can validate definitions
without importing any client library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from jobwire.contracts.listeners import ListenerDefinition
from jobwire.listeners.domain.triggers import Trigger
from jobwire.runtime.secrets import Secrets

__all__ = ["Source", "SourceContext", "SourceFactory", "Trigger", "source_factory"]


class Source(Protocol):
    """A listener slot's connection to what it listens to.

    The runner calls :meth:`open` once, then :meth:`receive` and :meth:`ack`
    in turn, and :meth:`close` once (also after a failure, and after a failed
    :meth:`open`). It acks every received trigger exactly once, in the order
    received, and only after JetStream stored its StartWorkflow or dead letter:
    a source commits, completes, moves or flags there and nowhere else. A
    trigger never acked is received again after a restart; the idempotency key
    makes that harmless.
    """

    async def open(self) -> None:
        """Connect. Raise on failure; the runner retries with backoff."""

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        """The next triggers, at most ``max_items``, waiting at most ``timeout``
        seconds for the first; an empty list when nothing arrived."""
        ...

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        """Settle triggers whose StartWorkflow (or dead letter) is stored."""

    async def release(self, triggers: Sequence[Trigger]) -> None:
        """Give back triggers the runner could not publish before stopping, so
        the source redelivers them soon (e.g. Service Bus abandon). A source
        that redelivers from its last acked position anyway does nothing."""

    async def close(self) -> None:
        """Disconnect; must not raise."""

    def lag(self) -> int | None:
        """Triggers waiting in the source, when it can tell cheaply."""
        ...


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source may use besides its parameters."""

    definition: ListenerDefinition
    slot: int
    secrets: Secrets
    # jobwire's own NATS connection (a NATS source listening on jobwire's
    # servers shares it; checkpoints live in its KV).
    nc: NatsClient
    js: JetStreamContext
    namespace: str

    @property
    def name(self) -> str:
        """A stable name for this listener in external systems (group, durable)."""
        return f"jobwire-{self.definition.job_id}"


# Each factory takes its own params model (a ListenerParams subclass).
SourceFactory = Callable[[Any, SourceContext], Source]


# Job type → "module:class" of its source. Imported when a slot of that type
# starts: each source pulls in its own client library.
SOURCES: Mapping[str, str] = {
    "kafka-subscriber": "jobwire.listeners.sources.kafka:KafkaSource",
    "message-bus-listener": "jobwire.listeners.sources.nats:NatsSource",
    "file-listener": "jobwire.listeners.sources.files:FileSource",
    "servicebus-listener": "jobwire.listeners.sources.servicebus:ServiceBusSource",
    "email-listener": "jobwire.listeners.sources.imap:ImapSource",
}


def source_factory(job_type: str) -> SourceFactory:
    """The source of ``job_type``; ``KeyError`` when no source serves it."""
    module, _, name = SOURCES[job_type].partition(":")
    factory: SourceFactory = getattr(importlib.import_module(module), name)
    return factory
