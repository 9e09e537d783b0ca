"""The Jobs Management table: a page of jobs, each with its derived status."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from pydantic import ValidationError

from jobwire.contracts.hosts import HostInfo
from jobwire.contracts.listeners import ListenerSlotStatus
from jobwire.scheduler.adapters.store import JobFilter, JobRecord, JobSummary
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.schemas import JobDetail, JobItem
from jobwire.scheduler.domain.definitions import is_listener
from jobwire.scheduler.domain.status import JobStatus, SlotFacts, job_status, listener_status


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
    narrowed = replace(where, runnable=runnable, busy=busy)
    rows, _ = await api.store.job_page(narrowed, sort, limit=None)
    items = [item for item in await _items(api, rows) if item.status in statuses]
    return items[offset : offset + limit], len(items)


# Statuses only a job with queued or active runs can have (see job_status);
# listener jobs have no runs, yet can be Running or RecyclePending and Ready.
_BUSY = {JobStatus.UNKNOWN, JobStatus.QUEUED}


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
    slots: dict[str, list[SlotFacts]] = {}
    if any(is_listener(r.overview.type) for r in rows):
        slots = listener_slots(await api.hosts())
    items = []
    for row in rows:
        o, facts = row.overview, row.overview.facts
        if is_listener(o.type):
            found = slots.get(o.name, [])
            status = listener_status(facts, found)
            hosts = sorted({s.host for s in found if s.state == "Running"})
        else:
            status, hosts = job_status(facts, live), list(o.active_hosts)
        items.append(
            JobItem(
                name=o.name,
                description=o.description,
                type=o.type,
                status=status,
                last_result=o.last_result,
                last_run_at=o.last_run_at,
                next_run_at=o.next_run_at,
                active_hosts=hosts,
                enabled=facts.enabled,
                paused=facts.paused,
                group=row.group,
                tags=list(row.tags),
                priority=row.priority,
                version=facts.version,
                fault=facts.fault,
                faulted_at=o.faulted_at,
            )
        )
    return items


def listener_slots(hosts: Sequence[HostInfo]) -> dict[str, list[SlotFacts]]:
    """Job name → the slots live listener instances report for it."""
    found: dict[str, list[SlotFacts]] = {}
    for host in hosts:
        for raw in host.status.get("listeners", []):
            try:
                slot = ListenerSlotStatus.model_validate(raw)
            except ValidationError:  # a newer instance's report; skip, don't fail the page
                continue
            found.setdefault(slot.job_name, []).append(
                SlotFacts(host.host, slot.state, slot.job_version)
            )
    return found
