"""Leases on listener slots, in the NATS KV bucket ``<namespace>_leases``.

A slot ``<job id>.<n>`` belongs to whoever created its key. The bucket's TTL
is the lease time: the holder renews by compare-and-set on the revision it
holds, so a holder that stopped renewing (crashed, cut off) loses the key to
expiry and exactly one other instance wins the next create. No leader, no
clock shared between instances: the NATS server's clock decides expiry.
"""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jobwire.contracts.subjects import Bucket, bucket_name
from jobwire.runtime.hosts import open_bucket


def lease_key(job_id: str, slot: int) -> str:
    return f"{job_id}.{slot}"


class Leases:
    def __init__(self, js: JetStreamContext, namespace: str, owner: str, ttl: float) -> None:
        self._js = js
        self._bucket = bucket_name(namespace, Bucket.LEASES)
        self._owner = owner.encode()
        self._ttl = ttl
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self._js, self._bucket, ttl=self._ttl)
        return self._kv

    async def acquire(self, key: str) -> int | None:
        """The lease's revision if this instance got it; None if someone holds it."""
        kv = await self._store()
        try:
            return await kv.create(key, self._owner)
        except KeyWrongLastSequenceError:
            return None

    async def renew(self, key: str, revision: int) -> int | None:
        """The new revision, or None when the lease was lost (expired and taken)."""
        kv = await self._store()
        try:
            return await kv.update(key, self._owner, last=revision)
        except KeyWrongLastSequenceError:
            return None

    async def release(self, key: str, revision: int) -> None:
        """Give the slot up at once (a graceful stop): the standby need not wait
        for expiry. Only our own revision is deleted, never a successor's."""
        kv = await self._store()
        with contextlib.suppress(KeyWrongLastSequenceError):  # a successor's by now
            await kv.delete(key, last=revision)
