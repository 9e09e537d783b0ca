"""The Jobs Management table: a page of jobs, each with its derived status."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from jobwire.scheduler.adapters.store import JobFilter, JobRecord, JobSummary
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.schemas import JobDetail, JobItem
from jobwire.scheduler.domain.status import JobStatus, job_status


async def job_page(
    api: ApiContext,
    where: JobFilter,
    statuses: Collection[JobStatus],
    sort: str,
    limit: int,
    offset: int,
) -> tuple[list[JobItem], int]:
    """A page of jobs and how many match in all.

    Status is derived, not stored, so a status filter reads every job the
    other filters leave (narrowed first by what SQL can tell: disabled or not)
    and pages in memory; without one, only the page's jobs are read.
    """
    if not statuses:
        rows, total = await api.store.job_page(where, sort, limit, offset)
        return await _items(api, rows), total
    runnable = busy = None
    if JobStatus.DISABLED not in statuses:
        runnable = True
    elif set(statuses) == {JobStatus.DISABLED}:
        runnable = False
    if set(statuses) <= _BUSY:
        busy = True
    elif set(statuses) == {JobStatus.READY}:
        busy = False
    narrowed = replace(where, runnable=runnable, busy=busy)
    rows, _ = await api.store.job_page(narrowed, sort, limit=None)
    items = [item for item in await _items(api, rows) if item.status in statuses]
    return items[offset : offset + limit], len(items)


# Statuses only a job with queued or active runs can have (see job_status).
_BUSY = {JobStatus.RUNNING, JobStatus.RECYCLE_PENDING, JobStatus.UNKNOWN, JobStatus.QUEUED}


async def job_detail(api: ApiContext, record: JobRecord) -> JobDetail:
    rows, _ = await api.store.job_page(JobFilter(names=(record.name,)), limit=1)
    [item] = await _items(api, rows)
    definition = record.definition
    if definition.enabled != record.enabled:  # enable/disable change the flag, not the text
        definition = definition.model_copy(update={"enabled": record.enabled})
    return JobDetail(**item.model_dump(), definition=definition)


async def _items(api: ApiContext, rows: Sequence[JobSummary]) -> list[JobItem]:
    # The host registry is only asked when some job has a running run to vouch for.
    live: frozenset[str] = frozenset()
    if any(r.overview.facts.running_hosts for r in rows):
        live = await api.live_host_names()
    items = []
    for row in rows:
        o, facts = row.overview, row.overview.facts
        items.append(
            JobItem(
                name=o.name,
                description=o.description,
                type=o.type,
                status=job_status(facts, live),
                last_result=o.last_result,
                last_run_at=o.last_run_at,
                next_run_at=o.next_run_at,
                active_hosts=list(o.active_hosts),
                enabled=facts.enabled,
                paused=facts.paused,
                group=row.group,
                tags=list(row.tags),
                priority=row.priority,
                version=facts.version,
            )
        )
    return items
