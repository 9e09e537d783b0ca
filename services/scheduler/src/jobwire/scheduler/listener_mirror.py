"""Mirror enabled listener jobs into NATS KV for the listeners service.

The listeners service needs only NATS: it reads ``<ns>_listeners``, one
:class:`ListenerDefinition` per listener that should run now, and nothing
else. Every scheduler replica keeps that bucket equal to the database on each
definition change (NOTIFY) and every ``sync_seconds`` — the periodic pass
repairs whatever a crash between a commit and a KV write left behind. Replicas
write the same values, so their passes need no coordination.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.job_types import job_types
from jobwire.contracts.listeners import ListenerDefinition, ListenerParams
from jobwire.runtime.broker import Broker
from jobwire.runtime.hosts import open_bucket
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import wait_any
from jobwire.scheduler.adapters.store import JobRecord, PostgresJobStore

log = get_logger("jobwire.scheduler.listeners")


def listener_types() -> list[str]:
    return [name for name, model in job_types().items() if issubclass(model, ListenerParams)]


def should_run(job: JobRecord, group_enabled: bool, now: datetime) -> bool:
    definition = job.definition
    return (
        job.enabled
        and group_enabled
        and not job.paused
        and (definition.start_at is None or definition.start_at <= now)
        and (definition.expires_at is None or now < definition.expires_at)
    )


def mirrored(job: JobRecord) -> ListenerDefinition:
    return ListenerDefinition(
        job_id=str(job.id),
        job_name=job.name,
        job_type=job.definition.type,
        job_version=job.version,
        replicas=job.definition.replicas,
        params=job.definition.params,
    )


class ListenerMirror:
    def __init__(self, store: PostgresJobStore, broker: Broker, *, sync_seconds: float) -> None:
        self.store = store
        self.broker = broker
        self.sync_seconds = sync_seconds
        self.wake = asyncio.Event()
        self._kv: KeyValue | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.sync()
            except Exception as exc:  # database or NATS away: the next pass repairs it
                log.warning("scheduler.listener_sync_failed", error=str(exc) or type(exc).__name__)
            await wait_any(self.sync_seconds, self.wake, stop)

    async def sync(self) -> int:
        """Make the bucket equal to the enabled listeners; the number of writes."""
        now = utcnow()
        wanted = {
            str(job.id): mirrored(job).model_dump_json().encode()
            for job, group_enabled in await self.store.listener_jobs(listener_types())
            if should_run(job, group_enabled, now)
        }
        kv = await self._bucket()
        try:
            keys = set(await kv.keys())
        except NoKeysError:
            keys = set()
        writes = 0
        for key, value in wanted.items():
            try:
                current = (await kv.get(key)).value if key in keys else None
            except KeyNotFoundError:
                current = None
            if current != value:
                try:
                    await kv.put(key, value)
                except Exception as exc:  # one (say, too large) must not stop the rest
                    if not self.broker.nc.is_connected:
                        raise
                    log.error("scheduler.listener_mirror_refused", job_id=key, error=repr(exc))
                    continue
                writes += 1
        for key in keys - wanted.keys():
            await kv.delete(key)
            writes += 1
        if writes:
            log.info("scheduler.listeners_mirrored", listeners=len(wanted), writes=writes)
        return writes

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            bucket = ListenerDefinition.bucket(self.broker.subjects.namespace)
            self._kv = await open_bucket(self.broker.js, bucket)
        return self._kv
