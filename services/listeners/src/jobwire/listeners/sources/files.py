"""File listener: new files in a local folder, an S3 bucket or an Azure container.

A scan walks the storage listing page by page, so 10,000 files are handed on
as they are listed, never held at once. A file is a trigger once its size and
etag stayed the same for ``stable_seconds`` (a writer may still be at it) and
it matches ``pattern``. After JetStream stored its StartWorkflow, the file is
moved under ``processed_prefix``, deleted, or kept.

The checkpoint — a KV key per (path, etag) in ``<ns>_file_checkpoints`` —
records "published, not yet moved": a restart then completes the move
instead of firing again, and a move that keeps failing (say, permissions) does
not fire the file again every scan. With ``after: keep`` the key stays as long
as the file does: a kept file fires again only when its content changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jobwire.contracts.listeners import FileListenerParams
from jobwire.contracts.subjects import Bucket, bucket_name
from jobwire.listeners.domain.triggers import Trigger
from jobwire.listeners.sources import SourceContext
from jobwire.runtime.hosts import open_bucket
from jobwire.runtime.logs import get_logger
from jobwire.runtime.storage import Page, Storage, StoredFile, file_object, open_storage

log = get_logger("jobwire.listeners.files")

_PAGE = 1000
# Moves and deletes in flight at once: object stores answer each in a round trip.
_CONCURRENCY = 16


@dataclass(slots=True)
class _Seen:
    size: int
    etag: str | None
    since: float  # monotonic time it was first seen with this size and etag


class FileSource:
    def __init__(self, params: FileListenerParams, ctx: SourceContext) -> None:
        self.params = params
        self.ctx = ctx
        self._storage: Storage | None = None
        self._checkpoints: KeyValue | None = None
        self._job = ctx.definition.job_id
        self._seen: dict[str, _Seen] = {}
        self._scan: AsyncIterator[Page] | None = None
        self._listed: set[str] = set()  # paths seen by the scan in progress
        self._done: set[str] = set()  # checkpoint keys (path hash.etag hash) of this job
        self._ready: list[Trigger] = []
        self._next_scan = 0.0
        self._waiting = 0

    async def open(self) -> None:
        self._storage = open_storage(self.params.storage, self.ctx.secrets)
        self._checkpoints = await open_bucket(
            self.ctx.js, bucket_name(self.ctx.namespace, Bucket.FILE_CHECKPOINTS)
        )

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self._scan is None:
                wait = self._next_scan - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                    if time.monotonic() < self._next_scan:
                        return []
                await self._start_scan()
            assert self._scan is not None
            try:
                page = await anext(self._scan)
            except StopAsyncIteration:
                await self._end_scan()
                continue
            await self._take(page)
            if time.monotonic() >= deadline and not self._ready:
                return []
        batch, self._ready = self._ready[:max_items], self._ready[max_items:]
        return batch

    async def _start_scan(self) -> None:
        assert self._storage is not None
        self._done = await self._checkpoint_keys()
        self._listed = set()
        self._waiting = 0
        self._scan = aiter(self._storage.list("", page_size=_PAGE))

    async def _end_scan(self) -> None:
        self._scan = None
        self._next_scan = time.monotonic() + self.params.poll_seconds
        # Forget files that vanished, and checkpoints of kept files deleted since.
        for path in set(self._seen) - self._listed:
            del self._seen[path]
        if self.params.after == "keep":
            listed = {_hash(path) for path in self._listed}
            for checkpoint in [c for c in self._done if c.split(".")[0] not in listed]:
                await self._forget(checkpoint)

    async def _take(self, page: Page) -> None:
        now = time.monotonic()
        settle = self.params.stable_seconds
        finish: list[StoredFile] = []
        ready: list[StoredFile] = []
        for stored in page:
            path = stored.path
            if path.startswith(self.params.processed_prefix):
                continue
            if not fnmatch.fnmatchcase(path, self.params.pattern):
                continue
            self._listed.add(path)
            if self._checkpoint(stored) in self._done:
                if self.params.after != "keep":
                    finish.append(stored)  # published before a crash: only the move is left
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.etag) != (stored.size, stored.etag):
                self._seen[path] = seen = _Seen(stored.size, stored.etag, now)
            if now - seen.since < settle:
                self._waiting += 1
                continue
            ready.append(stored)
        if finish:
            await self._finish(finish)
        self._ready += [self._trigger(stored) for stored in await self._described(ready)]

    async def _described(self, files: list[StoredFile]) -> list[StoredFile]:
        """Files with content type and metadata: S3 listings carry neither, so
        those are asked for one by one (a HEAD each, several at once)."""
        storage = self._storage
        assert storage is not None
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def described(stored: StoredFile) -> StoredFile:
            if stored.content_type is not None:
                return stored
            async with gate:
                found = await storage.stat(stored.path)
            # Gone or rewritten since the listing: the next scan sees it as it is now.
            return found if found is not None and found.etag == stored.etag else stored

        return list(await asyncio.gather(*(described(f) for f in files)))

    def _trigger(self, stored: StoredFile) -> Trigger:
        assert self._storage is not None
        obj = file_object(self._storage, stored)
        return Trigger(
            key=f"{obj.path}@{stored.etag or stored.size}",
            coordinates={
                "storage": obj.storage.value,
                "bucket": obj.bucket or "",
                "path": obj.path,
                "etag": stored.etag or "",
            },
            subject=obj.path,
            obj=obj,
            token=stored,
        )

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        files = [t.token for t in triggers]
        kv = self._kv()
        # First remember they are published, then act on them: a crash between
        # the two leaves a checkpoint, and the next scan only finishes the move.
        await asyncio.gather(*(kv.put(self._key(self._checkpoint(f)), b"") for f in files))
        self._done.update(self._checkpoint(f) for f in files)
        for f in files:
            self._seen.pop(f.path, None)
        if self.params.after != "keep":
            await self._finish(files)

    async def _finish(self, files: list[StoredFile]) -> None:
        """Move or delete published files, then drop their checkpoints.

        A failure is raised after the others are done: the runner reports it
        and reopens; the checkpoint keeps the file from firing again meanwhile.
        """
        storage = self._storage
        assert storage is not None
        gate = asyncio.Semaphore(_CONCURRENCY)
        errors: list[BaseException] = []

        async def finish(stored: StoredFile) -> None:
            async with gate:
                try:
                    if self.params.after == "move":
                        await storage.move(stored.path, self.params.processed_prefix + stored.path)
                    else:
                        await storage.delete(stored.path)
                except Exception as exc:
                    errors.append(exc)
                    log.warning("files.finish_failed", path=stored.path, error=str(exc))
                    return
                await self._forget(self._checkpoint(stored))

        await asyncio.gather(*(finish(f) for f in files))
        if errors:
            raise errors[0]

    async def _forget(self, checkpoint: str) -> None:
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._kv().delete(self._key(checkpoint))
        self._done.discard(checkpoint)

    async def _checkpoint_keys(self) -> set[str]:
        # A watch filtered by the server on this job's keys: nats-py's keys()
        # lists the whole bucket and filters by substring in the client.
        prefix = f"{self._job}."
        watcher = await self._kv().watch(prefix + ">", ignore_deletes=True, meta_only=True)
        found: set[str] = set()
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                found.add(entry.key.removeprefix(prefix))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    def _key(self, checkpoint: str) -> str:
        return f"{self._job}.{checkpoint}"

    def _checkpoint(self, stored: StoredFile) -> str:
        """``<path hash>.<etag hash>``: the key below this job's prefix."""
        return f"{_hash(stored.path)}.{_hash(stored.etag or str(stored.size))}"

    def _kv(self) -> KeyValue:
        assert self._checkpoints is not None
        return self._checkpoints

    async def release(self, triggers: Sequence[Trigger]) -> None:
        """Nothing to hand back: an unpublished file is listed again by the next scan."""

    async def close(self) -> None:
        if self._storage is not None:
            storage, self._storage = self._storage, None
            try:
                await storage.close()
            except Exception as exc:
                log.warning("files.close_failed", error=str(exc))
        self._scan = None
        self._ready = []

    def lag(self) -> int | None:
        return len(self._ready) + self._waiting


def _hash(value: str) -> str:
    # KV keys allow few characters; a path allows almost any.
    return hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:20]
