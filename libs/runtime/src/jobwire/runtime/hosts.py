"""Host registration: each instance announces itself and heartbeats in NATS KV.

The bucket's TTL is a few heartbeats long, so an instance that dies silently
drops out of the registry by itself; a graceful stop removes it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.hosts import HostInfo
from jobwire.runtime.logs import get_logger

log = get_logger("jobwire.hosts")

MISSED_HEARTBEATS = 3


class HostRegistry:
    """Announce this instance and keep its entry fresh until :meth:`stop`."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        namespace: str,
        service: str,
        instance_id: str,
        host: str,
        version: str,
        heartbeat_seconds: float,
        ready: Callable[[], bool] = lambda: True,
        status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self._js = js
        self._bucket = HostInfo.bucket(namespace)
        self._heartbeat = heartbeat_seconds
        self._ready = ready
        self._status = status
        self._identity = {
            "service": service,
            "instance_id": instance_id,
            "host": host,
            "jobwire_version": version,
        }
        self._started_at = utcnow()
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        # KV keys allow '-', '_', '/', '=', '.'; instance ids are host-pid-hex.
        return str(self._identity["instance_id"]).replace(":", "_")

    def info(self) -> HostInfo:
        return HostInfo(
            **self._identity,
            started_at=self._started_at,
            heartbeat_at=utcnow(),
            ready=self._ready(),
            status=self._status(),
        )

    async def start(self) -> None:
        self._kv = await open_bucket(
            self._js, self._bucket, ttl=self._heartbeat * MISSED_HEARTBEATS
        )
        await self.beat()
        self._task = asyncio.create_task(self._loop(), name="host-heartbeat")

    async def beat(self) -> None:
        assert self._kv is not None
        await self._kv.put(self.key, self.info().model_dump_json().encode())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self.beat()
            except Exception as exc:  # broker outage: keep trying, the TTL decides
                log.warning("hosts.heartbeat_failed", error=str(exc) or type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._kv is not None:
            try:
                await self._kv.purge(self.key)
            except Exception as exc:
                log.warning("hosts.deregister_failed", error=str(exc) or type(exc).__name__)


async def open_bucket(js: JetStreamContext, bucket: str, *, ttl: float | None = None) -> KeyValue:
    """KV bucket ``bucket``, created (one value per key, entries expiring after ``ttl``
    seconds if given) when it does not exist yet."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=ttl, history=1))


async def live_hosts(js: JetStreamContext, namespace: str) -> list[HostInfo]:
    """Every instance with a heartbeat younger than the bucket TTL."""
    try:
        kv = await js.key_value(HostInfo.bucket(namespace))
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return []
    hosts = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue  # expired or deregistered between keys() and get()
        if entry.value:
            hosts.append(HostInfo.model_validate_json(entry.value))
    return sorted(hosts, key=_order)


def _order(h: HostInfo) -> tuple[str, str, datetime]:
    return (h.service, h.host, h.started_at)
