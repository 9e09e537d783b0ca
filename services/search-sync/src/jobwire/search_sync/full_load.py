"""A `search-full-load` run: a new index behind the alias, from one snapshot of the source.

1. Create a new physical index ``<alias>-<UTC time>-<run>``.
2. In one REPEATABLE READ, READ ONLY transaction: take the snapshot's fence
   and version, count the documents, and stream them from a server-side cursor
   into bulk requests (bounded in number and size, so memory stays flat).
3. Check the index holds every document of the source but those refused
   (and set aside); a mismatch fails the run and leaves the alias alone.
4. Record the new index and the snapshot's fence as the alias's consumer —
   from now on incremental runs write into the new index, from that fence on —
   then point the alias at the new index in one request. Searches saw the old
   index, complete, until then, and see the new one, complete, after. (Without
   the change capture installed the load stands alone: no consumer to record.)
5. Delete the previous indices beyond ``keep``.

Recording before swapping is the safe order: a crash between the two leaves
the alias on the old index until the retry, which loads afresh; the other
order could leave the alias on an index no run keeps up to date.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.search import SearchFullLoadParams
from jobwire.runtime.logs import get_logger
from jobwire.runtime.worker import RunContext
from jobwire.search_sync.adapters import source
from jobwire.search_sync.adapters.engine import SearchEngine, Write
from jobwire.search_sync.domain.mapping import mappings
from jobwire.search_sync.domain.plan import profile_hash
from jobwire.search_sync.sync import BulkWriter, Jobs, Opened, parse

JOB_TYPE = "search-full-load"
DEFAULT_SETTINGS: dict[str, Any] = {"number_of_shards": 1}
_PROGRESS_SECONDS = 1.0

log = get_logger("jobwire.search_sync.full_load")


def index_name(alias: str, at: datetime, run_id: str) -> str:
    """``<alias>-<YYYYmmddHHMMSS>-<first 8 of the run>``: sortable by age, unique per run."""
    run = re.sub(r"[^a-z0-9]", "", run_id.lower())[:8] or "run"
    return f"{alias}-{at.strftime('%Y%m%d%H%M%S')}-{run}"


def physical_indices(alias: str, names: Iterable[str]) -> list[str]:
    """The indices full loads of ``alias`` built, oldest first (not another alias's, say
    ``cases-archive-…`` next to ``cases``)."""
    pattern = re.compile(re.escape(alias) + r"-\d{14}-[a-z0-9]+")
    return sorted(n for n in names if pattern.fullmatch(n))


def to_drop(alias: str, names: Iterable[str], current: str, keep: int) -> list[str]:
    """The previous indices of ``alias`` beyond the ``keep`` newest."""
    previous = [n for n in physical_indices(alias, names) if n != current]
    return previous[: max(0, len(previous) - keep)]


class FullLoad:
    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def run(self, run: RunContext) -> dict[str, Any]:
        params = parse(SearchFullLoadParams, run.due.params)
        alias = params.index.alias
        async with self.jobs.open(params) as job:
            engine, plan, connection = job.engine, job.plan, job.connection
            name = index_name(alias, utcnow(), run.run_id)
            if not params.dry_run:
                await run.progress(f"creating index {name}")
                await engine.create_index(
                    name,
                    params.index.settings or DEFAULT_SETTINGS,
                    params.index.mappings or mappings(plan),
                )
            writer = BulkWriter(
                engine,
                name,
                batch_size=params.batch_size,
                max_bytes=params.max_bulk_bytes,
                concurrency=params.concurrency,
                reject=self.jobs.rejecter(JOB_TYPE, name, run.run_id),
                dry_run=params.dry_run,
            )
            started = time.monotonic()
            try:
                async with writer:
                    async with source.snapshot(connection) as snap:
                        total = await source.count(connection, plan)
                        read = await self._load(run, job, writer, snap, total, params.fetch_size)
                        if run.cancelled.is_set():
                            await self._discard(engine, name, params.dry_run)
                            return {"cancelled_after": read, "source": total}
                    await writer.flush()
                if params.dry_run:
                    return self._result(name, total, read, writer.counts, snap, started, [], [])
                await engine.refresh(name)
                indexed = await engine.count(name)
                expected = total - writer.counts["rejected"]
                if indexed != expected:
                    raise RuntimeError(
                        f"index {name} holds {indexed} documents, the source {total} of which "
                        f"{writer.counts['rejected']} were refused: expected {expected}; "
                        f"the alias {alias!r} was left as it was"
                    )
            except BaseException:
                await self._discard(engine, name, params.dry_run)
                raise
            await run.progress(f"moving alias {alias} to {name}", percent=100.0)
            # Without the change capture installed there is nothing for incremental runs to
            # continue from: the load stands alone (a later install needs a new load).
            followed = await source.installed_schema(connection)
            if followed:
                await source.loaded(
                    connection, alias, name, profile_hash(params.profile), snap.fence
                )
            previous = await engine.swap_alias(alias, name)
            dropped = to_drop(alias, await engine.indices(f"{alias}-"), name, params.index.keep)
            for old in dropped:
                await engine.delete_index(old)
            log.info("search.full_load.done", alias=alias, index=name, documents=indexed)
            result = self._result(
                name, total, read, writer.counts, snap, started, previous, dropped
            )
            return result | {"incremental_from": snap.fence if followed else None}

    async def _load(
        self,
        run: RunContext,
        job: Opened,
        writer: BulkWriter,
        snap: source.Snapshot,
        total: int,
        fetch_size: int,
    ) -> int:
        read = 0
        started = last = time.monotonic()
        async for rows in source.documents(job.connection, job.plan, fetch_size):
            for row in rows:
                assert row.document is not None
                await writer.add(Write("index", row.id, snap.version, row.document.encode()))
            read += len(rows)
            now = time.monotonic()
            if now - last >= _PROGRESS_SECONDS:
                last = now
                rate = read / (now - started)
                await run.progress(
                    f"loading: {read:,} of {total:,} documents ({rate:,.0f}/s)",
                    percent=min(99.0, 100.0 * read / max(total, 1)),
                    counters={"documents": read, **writer.counts},
                )
            if run.cancelled.is_set():
                break
        return read

    @staticmethod
    async def _discard(engine: SearchEngine, name: str, dry_run: bool) -> None:
        """Delete the index of a load that did not finish; best effort (the engine may be
        what failed), retention deletes it later otherwise."""
        if dry_run:
            return
        try:
            await engine.delete_index(name)
        except Exception as exc:
            log.warning("search.full_load.discard_failed", index=name, error=str(exc))

    @staticmethod
    def _result(
        name: str,
        total: int,
        read: int,
        counts: Counter[str],
        snap: source.Snapshot,
        started: float,
        previous: list[str],
        dropped: list[str],
    ) -> dict[str, Any]:
        seconds = time.monotonic() - started
        return {
            "index": name,
            "source": total,
            "read": read,
            "indexed": counts["indexed"],
            "rejected": counts["rejected"],
            "stale": counts["stale"],
            "previous": previous,
            "dropped": dropped,
            "version": snap.version,
            "watermark": snap.fence,
            "seconds": round(seconds, 3),
            "documents_per_second": round(read / seconds, 1) if seconds > 0 else None,
        }
