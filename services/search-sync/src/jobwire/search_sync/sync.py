"""What a full load and an incremental run share: the job opened, and its documents written.

:meth:`Jobs.open` turns a job's parameters into a connection to its source, the
plan of its profile over the live catalog, and its engine; :class:`BulkWriter`
sends documents in bulk requests of bounded size with a bounded number in
flight (the engine's slowness slows the reader, memory stays flat), and sets
aside every document the engine refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel, ValidationError

from jobwire.contracts.search import SearchFullLoadParams, SearchIncrementalParams
from jobwire.runtime.broker import Broker
from jobwire.runtime.secrets import SecretNotFound, Secrets
from jobwire.runtime.validation import ParamProblem, ParamsCheck
from jobwire.search_sync.adapters import source
from jobwire.search_sync.adapters.engine import SearchEngine, Write, WriteResult, open_engine
from jobwire.search_sync.domain.plan import Plan, ProfileError, resolve, tables_named
from jobwire.search_sync.settings import SearchSyncOptions

P = TypeVar("P", bound=BaseModel)
Params = SearchFullLoadParams | SearchIncrementalParams
#: The job types this service runs, and their parameters.
PARAMS: dict[str, type[SearchFullLoadParams] | type[SearchIncrementalParams]] = {
    "search-full-load": SearchFullLoadParams,
    "search-incremental": SearchIncrementalParams,
}

# The action line of a bulk item, at most: {"index":{"_id":...,"version":...,...}}.
_ACTION_BYTES = 200


class JobRefused(Exception):
    """The job cannot run as defined (its profile, its source's state); retrying will not help
    until someone acts, and the message says what to do."""


def parse(model: type[P], params: dict[str, Any]) -> P:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise ValueError(f"params: {exc}") from None


@dataclass(slots=True)
class Opened:
    connection: asyncpg.Connection
    plan: Plan
    engine: SearchEngine


def _node_class(path: str | None) -> type | None:
    if path is None:
        return None
    module, _, name = path.partition(":")
    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, type)
    return found


class Jobs:
    def __init__(self, broker: Broker, secrets: Secrets, options: SearchSyncOptions) -> None:
        self.broker = broker
        self.secrets = secrets
        self.options = options
        self.node_class = _node_class(options.elasticsearch_node_class)

    async def connect(self, params: Params) -> asyncpg.Connection:
        dsn = self.secrets.resolve(params.source.dsn).get_secret_value()
        return await source.connect(dsn, params.source)

    async def plan(self, connection: asyncpg.Connection, params: Params) -> Plan:
        """The profile's plan over the live catalog; :class:`ProfileError` names each problem."""
        catalog = await source.read_catalog(connection, tables_named(params.profile))
        return resolve(params.profile, catalog, params.index)

    @contextlib.asynccontextmanager
    async def open(self, params: Params) -> AsyncIterator[Opened]:
        """The job's source connection, plan and engine; a profile that does not fit the
        source raises :class:`ProfileError` naming each problem."""
        connection = await self.connect(params)
        try:
            plan = await self.plan(connection, params)
            engine = open_engine(
                params.engine,
                self.secrets,
                node_class=self.node_class if params.engine.kind == "elasticsearch" else None,
                retry_seconds=self.options.engine_retry_seconds,
            )
            try:
                yield Opened(connection, plan, engine)
            finally:
                await engine.close()
        finally:
            await connection.close()

    def checker(self, model: type[Params]) -> ParamsCheck:
        """The live check of a job's params when it is saved: its profile against the
        source's catalog. An unreachable source raises (the job is saved unchecked)."""

        async def check(raw: dict[str, Any]) -> list[ParamProblem]:
            params = model.model_validate(raw)  # the admin API checked them already
            try:
                connection = await asyncio.wait_for(
                    self.connect(params), self.options.check_seconds
                )
            except SecretNotFound as exc:
                return [ParamProblem.at(("source", "dsn"), str(exc))]
            try:
                await self.plan(connection, params)
            except ProfileError as exc:
                return [ParamProblem(path, message) for path, message in exc.problems]
            finally:
                await connection.close()
            return []

        return check

    def rejecter(self, job_type: str, index: str, run_id: str) -> Reject:
        """Sets a refused document aside on ``<ns>.dlq.<job type>``, once per version."""

        async def reject(write: Write, reason: str, detail: str) -> None:
            await self.broker.set_aside(
                job_type,
                f"search/{index}/{write.id}",
                write.source or b"",
                {
                    "jobwire-document-id": write.id,
                    "jobwire-index": index,
                    "jobwire-version": str(write.version),
                    "jobwire-run-id": run_id,
                },
                reason,
                detail,
                key=f"{job_type}:{index}:{write.id}:{write.version}",
            )

        return reject


Reject = Callable[[Write, str, str], Awaitable[None]]

#: What a write's result is counted as.
_COUNTED = {("index", "written"): "indexed", ("delete", "written"): "deleted"}


class BulkWriter:
    """Writes into ``index`` in requests of ``batch_size`` writes and ``max_bytes`` at most,
    ``concurrency`` of them in flight; :meth:`add` waits for a free slot.

    ``counts``: indexed, deleted, stale, rejected. The first request that fails
    (the engine stayed away) fails the writer: the next :meth:`add` or
    :meth:`flush` raises it. With ``dry_run`` nothing is sent; every write
    counts as done.
    """

    def __init__(
        self,
        engine: SearchEngine,
        index: str,
        *,
        batch_size: int,
        max_bytes: int,
        concurrency: int,
        reject: Reject,
        dry_run: bool = False,
    ) -> None:
        self.engine = engine
        self.index = index
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.reject = reject
        self.dry_run = dry_run
        self.counts: Counter[str] = Counter()
        self._batch: list[Write] = []
        self._bytes = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    async def add(self, write: Write) -> None:
        self._raise_failure()
        size = len(write.source or b"") + _ACTION_BYTES
        if size > self.max_bytes:
            self.counts["rejected"] += 1
            await self.reject(
                write,
                "too_large",
                f"the document is {size} bytes with its action line; "
                f"max_bulk_bytes is {self.max_bytes}",
            )
            return
        if self._batch and (
            len(self._batch) >= self.batch_size or self._bytes + size > self.max_bytes
        ):
            await self._send()
        self._batch.append(write)
        self._bytes += size

    async def flush(self) -> None:
        """Send what is buffered and wait for every request in flight."""
        if self._batch:
            await self._send()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        self._raise_failure()

    async def close(self) -> None:
        """Cancel what is in flight (a run that failed or was cancelled)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> BulkWriter:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _send(self) -> None:
        batch, self._batch, self._bytes = self._batch, [], 0
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            self._raise_failure()
        task = asyncio.create_task(self._bulk(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bulk(self, batch: list[Write]) -> None:
        try:
            if self.dry_run:
                results = [WriteResult(w.id, w.op, "written", None) for w in batch]
            else:
                results = await self.engine.bulk(self.index, batch)
            for write, result in zip(batch, results, strict=True):
                self.counts[_COUNTED.get((write.op, result.outcome), result.outcome)] += 1
                if result.outcome == "rejected":
                    await self.reject(write, "rejected", result.reason or "refused by the engine")
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
        finally:
            self._slots.release()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
