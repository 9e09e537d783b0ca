"""Refuse, up front, a definition whose runs could never be published.

A run's message carries the job's params (a StartWorkflow's ``input``, a
JobDue's ``params``). One larger than the NATS server's ``max_payload`` is
refused by NATS at publish time, so every run of such a job would fail as
``unpublishable``. The check encodes the very message a run would publish —
through the same :class:`~jobwire.scheduler.dispatch.Dispatcher` — and compares
its size with the limit of the server the scheduler is connected to.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from jobwire.runtime.broker import PublishContext
from jobwire.scheduler.adapters.store import JobRecord
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.problems import invalid
from jobwire.scheduler.domain.definitions import JobDefinition

# Left free for what is added after encoding or may differ between runs: the
# trace context of the request that fires it, NATS' own header framing, a
# longer run id or attempt number.
HEADROOM = 1024
_PROBE_ID = uuid.UUID(int=0)


def message_size(api: ApiContext, job: JobRecord, now: datetime) -> int:
    """Bytes on the wire (payload and headers) of the message a run of ``job`` publishes."""
    row = api.dispatcher.fire(job, _PROBE_ID, now, now, PublishContext.current())
    # NATS/1.0 header block: the status line, "key: value\r\n" per header, a blank line.
    headers = len(b"NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in row.headers.items())
    return len(row.payload) + headers


def check_publishable(
    api: ApiContext, job: JobRecord, now: datetime, field: str = "params"
) -> None:
    """422 naming ``field`` when a run of ``job`` could not be published."""
    limit = api.max_payload()
    size = message_size(api, job, now)
    if size + HEADROOM > limit:
        raise invalid(
            field,
            f"too large to publish: a run's message would be {size} bytes, and the NATS "
            f"server takes at most {limit} (its max_payload), {HEADROOM} of them kept for "
            "headers",
        )


def check_definition(
    api: ApiContext, definition: JobDefinition, now: datetime, job: JobRecord | None = None
) -> None:
    """As :func:`check_publishable`, for a definition about to be stored (``job``: the
    record it replaces, whose state a run would carry)."""
    record = JobRecord(
        id=job.id if job is not None else uuid.uuid4(),
        name=definition.name,
        definition=definition,
        enabled=True,
        paused=False,
        next_fire_at=None,
        state=job.state if job is not None else None,
        version=job.version + 1 if job is not None else 1,
    )
    check_publishable(api, record, now)
