"""Run history across jobs, and one run's detail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from jobwire.scheduler.adapters.store import JobNotFound
from jobwire.scheduler.api.auth import Viewer
from jobwire.scheduler.api.context import ApiContext, api_of
from jobwire.scheduler.api.inputs import clean_request
from jobwire.scheduler.api.problems import RESPONSES
from jobwire.scheduler.api.schemas import RunDetail, RunItem, RunPage, RunStatusName, UtcDatetime
from jobwire.scheduler.api.triggers import run_view

router = APIRouter(
    prefix="/api/v1/runs", tags=["runs"], responses=RESPONSES, dependencies=[Depends(clean_request)]
)

Api = Annotated[ApiContext, Depends(api_of)]


@dataclass
class RunFilters:
    status: Annotated[
        list[RunStatusName] | None, Query(description="Run status; repeat for several.")
    ] = None
    from_: Annotated[
        UtcDatetime | None, Query(alias="from", description="Slots at or after this time.")
    ] = None
    to: Annotated[UtcDatetime | None, Query(description="Slots before this time.")] = None
    limit: Annotated[int, Query(ge=1, le=500)] = 100
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0


async def run_page(
    api: ApiContext, filters: RunFilters, job_id: uuid.UUID | None = None
) -> RunPage:
    rows, total, exact = await api.store.list_runs(
        job_id=job_id,
        statuses=filters.status,
        since=filters.from_,
        until=filters.to,
        limit=filters.limit,
        offset=filters.offset,
    )
    return RunPage(
        items=[RunItem.model_validate(run_view(r)) for r in rows],
        total=total,
        total_exact=exact,
        limit=filters.limit,
        offset=filters.offset,
    )


@router.get("", summary="Runs of all jobs (or of `job`), newest first")
async def list_runs(
    api: Api,
    _: Viewer,
    filters: Annotated[RunFilters, Depends()],
    job: Annotated[str | None, Query(max_length=200, description="A job's name.")] = None,
) -> RunPage:
    job_id = None
    if job is not None:
        try:
            job_id = (await api.store.get(job)).id
        except JobNotFound:
            return RunPage(
                items=[], total=0, total_exact=True, limit=filters.limit, offset=filters.offset
            )
    return await run_page(api, filters, job_id)


@router.get("/{run_id}", summary="One run: status, result, error, progress")
async def get_run(api: Api, _: Viewer, run_id: uuid.UUID) -> RunDetail:
    return RunDetail.model_validate(run_view(await api.store.run(run_id)))
