"""What a source hands the runner: one trigger per message, file or email."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobwire.contracts.envelope import Versioned


@dataclass(slots=True)
class Trigger:
    """One thing that arrived and should start one workflow.

    ``key`` identifies it in its source for good (``orders/3/1042`` for a
    Kafka record, ``<path>@<etag>`` for a file): it becomes the idempotency key
    and the ``Nats-Msg-Id``, so a trigger received twice starts one workflow.
    """

    key: str
    coordinates: dict[str, str | int]
    # Where it was received (topic, subject, path): dead letters and spans name it.
    subject: str
    # A message's payload, mapped to the input as the job's `input` settings say.
    body: bytes | None = None
    message_key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # A file or an email, described by a contract model: it is the input as is.
    obj: Versioned | None = None
    # Set by a source that already knows it cannot be handled: (reason, detail).
    poison: tuple[str, str] | None = None
    # Set by the runner when it stored a dead letter for this trigger instead of a
    # StartWorkflow: (reason, detail). A source whose system keeps dead letters of
    # its own (Service Bus) settles such a trigger there when acked.
    dead_letter: tuple[str, str] | None = None
    # Bytes kept in a dead letter when `body` is None (e.g. a raw email).
    raw: bytes | None = None
    # Whatever the source needs to acknowledge this trigger.
    token: Any = None
