"""A `search-incremental` run: apply what changed since the last run, into the alias's index.

Why triggers and a transaction-id watermark (and not ``updated_at``, nor
logical decoding): see the service README. In short, each captured change
carries the id of the transaction that wrote it; a run takes the changes from
the watermark on inside a snapshot and moves the watermark only up to that
snapshot's fence, below which no transaction can still commit. A transaction
that commits late — after later ones were synced — has an id below the fence
of no run that has not seen it, so it is never skipped.

1. Read the alias's consumer: the index the last full load built, the
   watermark. None, or a profile that changed since → the run fails and says
   to run a full load; a missing trigger → says to run ``jobwire search install``.
2. In a snapshot: the changes from the watermark on (``max_changes`` at most),
   mapped to the documents they touch (lookups through the source).
3. For each chunk of documents, in a short snapshot of its own: build them, and
   write them at that snapshot's version; a document whose row is gone is
   deleted at that version. An older write arriving later is ``stale``.
4. Move the watermark forward — only if the alias's consumer still names the
   index written to (a full load may have swapped meanwhile) — and delete the
   changes every consumer has passed. Repeat while batches come back full.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from jobwire.contracts.search import SearchIncrementalParams
from jobwire.runtime.logs import get_logger
from jobwire.runtime.worker import RunContext
from jobwire.search_sync.adapters import source
from jobwire.search_sync.adapters.engine import Write
from jobwire.search_sync.domain.changes import chunks, next_watermark, touched
from jobwire.search_sync.domain.plan import profile_hash
from jobwire.search_sync.sync import BulkWriter, JobRefused, Jobs, Opened, parse

JOB_TYPE = "search-incremental"
# Batches one run applies at most; a backlog beyond is the next run's.
_MAX_ROUNDS = 20

log = get_logger("jobwire.search_sync.incremental")


class Incremental:
    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def run(self, run: RunContext) -> dict[str, Any]:
        params = parse(SearchIncrementalParams, run.due.params)
        alias = params.index.alias
        async with self.jobs.open(params) as job:
            consumer = await ready(job, params)
            relations = [c.relation for c in job.plan.captures]
            counts: Counter[str] = Counter()
            watermark = consumer.watermark
            started = time.monotonic()
            writer = BulkWriter(
                job.engine,
                consumer.index_name,
                batch_size=params.batch_size,
                max_bytes=params.max_bulk_bytes,
                concurrency=params.concurrency,
                reject=self.jobs.rejecter(JOB_TYPE, consumer.index_name, run.run_id),
                dry_run=params.dry_run,
            )
            moved = False
            async with writer:
                for _ in range(_MAX_ROUNDS):
                    found, watermark, full = await self._round(job, params, writer, watermark)
                    counts.update(found)
                    await writer.flush()
                    if not params.dry_run and not await source.advance(
                        job.connection, alias, consumer.index_name, watermark
                    ):
                        moved = True  # a full load swapped the alias: it has the last word
                        break
                    if not full or run.cancelled.is_set():
                        break
                    # A backlog: say how far this run has come before the next batch.
                    await run.progress("catching up", counters={**counts, **writer.counts})
            pruned = 0 if params.dry_run else await source.prune(job.connection)
            lag = await source.lag(job.connection, relations, watermark)
        return {
            "index": consumer.index_name,
            "changes": counts["changes"],
            "documents": counts["documents"],
            "indexed": writer.counts["indexed"],
            "deleted": writer.counts["deleted"],
            "stale": writer.counts["stale"],
            "rejected": writer.counts["rejected"],
            "orphans": counts["orphans"],
            "watermark": watermark,
            "pruned": pruned,
            "lag_seconds": lag,
            "alias_moved": moved,
            "seconds": round(time.monotonic() - started, 3),
        }

    async def _round(
        self, job: Opened, params: SearchIncrementalParams, writer: BulkWriter, since: int
    ) -> tuple[Counter[str], int, bool]:
        """One batch of changes into ``writer``: (counts, the next watermark, batch was full)."""
        connection, plan = job.connection, job.plan
        relations = [c.relation for c in plan.captures]
        async with source.snapshot(connection) as snap:
            found = await source.changes(connection, relations, since, params.max_changes)
            wanted = touched(plan, found)
            if wanted.truncated:
                raise JobRefused(
                    f"{', '.join(wanted.truncated)} was truncated: run the full load of "
                    f"{params.index.alias!r} to rebuild the index"
                )
            roots = dict(wanted.roots)
            for i, keys in wanted.lookups.items():
                lookup = plan.lookups[i]
                for chunk in chunks(list(keys), params.batch_size):
                    roots.update(
                        dict.fromkeys(await source.roots_of_lookup(connection, plan, lookup, chunk))
                    )
        for chunk in chunks(list(roots), params.batch_size):
            # Each chunk is read in a snapshot of its own, and written at its version.
            async with source.snapshot(connection) as now:
                rows = await source.documents_of(connection, plan, chunk)
            for row in rows:
                if row.document is None:
                    await writer.add(Write("delete", row.id, now.version, None))
                else:
                    await writer.add(Write("index", row.id, now.version, row.document.encode()))
        counts = Counter(changes=len(found), orphans=wanted.orphans, documents=len(roots))
        watermark = next_watermark(since, snap.fence, [c.xid for c in found], params.max_changes)
        return counts, watermark, len(found) >= params.max_changes


async def ready(job: Opened, params: SearchIncrementalParams) -> source.Consumer:
    """The alias's consumer, if incremental runs can go on from it; else why not, and what to do."""
    alias = params.index.alias
    consumer = await source.consumer(job.connection, alias)
    if consumer is None:
        raise JobRefused(
            f"no full load has built the index of {alias!r} yet: install the change capture "
            "(`jobwire search install <job>`) and run its `search-full-load` job first"
        )
    if consumer.profile_hash != profile_hash(params.profile):
        raise JobRefused(
            f"the profile changed since the full load that built {consumer.index_name}: "
            f"run the full load of {alias!r} again"
        )
    missing = await source.missing_triggers(job.connection, job.plan)
    if missing:
        raise JobRefused(
            f"change capture is not installed on {', '.join(missing)}: "
            "run `jobwire search install <job>`"
        )
    return consumer
