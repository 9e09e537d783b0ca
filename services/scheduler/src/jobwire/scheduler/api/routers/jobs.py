"""Jobs: the Jobs Management table, definitions, a job's history, explain, preview."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Query, Response

from jobwire.scheduler.adapters.store import Audit, JobFilter
from jobwire.scheduler.api.auth import Admin, Viewer
from jobwire.scheduler.api.context import ApiContext, api_of
from jobwire.scheduler.api.explain import explain
from jobwire.scheduler.api.inputs import check_json, clean_request, parse_etag
from jobwire.scheduler.api.listing import job_detail, job_page
from jobwire.scheduler.api.live_checks import check_params_live
from jobwire.scheduler.api.payloads import check_definition
from jobwire.scheduler.api.previews import preview_definition
from jobwire.scheduler.api.problems import RESPONSES, ProblemError, documented
from jobwire.scheduler.api.routers.runs import RunFilters, run_page
from jobwire.scheduler.api.schemas import (
    Explanation,
    JobDetail,
    JobPage,
    JobUpdate,
    Preview,
    RunPage,
    UtcDatetime,
)
from jobwire.scheduler.domain.definitions import JobDefinition, parse_definition
from jobwire.scheduler.domain.status import JobStatus

router = APIRouter(
    prefix="/api/v1/jobs", tags=["jobs"], responses=RESPONSES, dependencies=[Depends(clean_request)]
)

Api = Annotated[ApiContext, Depends(api_of)]
JobName = Annotated[str, Path(min_length=1, max_length=200, description="The job's name.")]
Sort = Literal[
    "name",
    "-name",
    "next_run_at",
    "-next_run_at",
    "last_run_at",
    "-last_run_at",
    "priority",
    "-priority",
]


@router.get("", summary="List jobs (the Jobs Management table)")
async def list_jobs(
    api: Api,
    _: Viewer,
    type: Annotated[str | None, Query(max_length=200, description="Job type.")] = None,
    group: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[
        list[JobStatus] | None, Query(description="Derived status; repeat for several.")
    ] = None,
    tag: Annotated[
        list[str] | None, Query(description="Jobs carrying every tag given (repeatable).")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in the name or description.")
    ] = None,
    sort: Annotated[Sort, Query(description="Order; '-' for descending.")] = "name",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobPage:
    where = JobFilter(type=type, group=group, tags=tuple(tag or ()), text=q or None)
    items, total = await job_page(api, where, set(status or ()), sort, limit, offset)
    return JobPage(items=items, total=total, limit=limit, offset=offset)


@router.post("", status_code=201, summary="Create a job")
async def create_job(
    api: Api, principal: Admin, definition: JobDefinition, response: Response
) -> JobDetail:
    check_json(definition.model_dump(exclude_unset=True), "")  # before NaN turns into null
    body = definition.model_dump(mode="json", exclude_unset=True)
    now = api.clock()
    parsed = parse_definition(body, now=now)
    check_definition(api, parsed, now)
    await check_params_live(api, parsed)
    record = await api.store.create(parsed, now, Audit(principal.name, "job.create"))
    response.headers["Location"] = f"/api/v1/jobs/{quote(record.name, safe='')}"
    response.headers["ETag"] = f'"{record.version}"'
    return await job_detail(api, record)


@router.get("/{name}", summary="A job and its definition")
async def get_job(api: Api, _: Viewer, name: JobName, response: Response) -> JobDetail:
    record = await api.store.get(name)
    response.headers["ETag"] = f'"{record.version}"'
    return await job_detail(api, record)


@router.put(
    "/{name}",
    summary="Replace a job's definition",
    description='Optimistic concurrency: send the version read, as `If-Match: "<version>"` '
    "or `version` in the body; a stale version → 409, none → 428.",
    responses=documented(428, "No version sent"),
)
async def update_job(
    api: Api,
    principal: Admin,
    name: JobName,
    definition: JobUpdate,
    response: Response,
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=64)] = None,
) -> JobDetail:
    expected = parse_etag(if_match) if if_match is not None else definition.version
    if expected is None:
        raise ProblemError(
            428,
            "Version required",
            "send the version being replaced as If-Match or in the body",
            errors=[("version", "required: the version of the job being replaced")],
        )
    check_json(definition.model_dump(exclude_unset=True, exclude={"version"}), "")
    body = definition.model_dump(mode="json", exclude_unset=True, exclude={"version"})
    now = api.clock()
    current = await api.store.get(name)
    # A schedule with no fire left is refused only when the update changes the timing.
    parsed = parse_definition(body, now=now, previous=current.definition)
    check_definition(api, parsed, now, current)
    await check_params_live(api, parsed, current.definition)
    record = await api.store.update(
        name, parsed, expected, now, Audit(principal.name, "job.update")
    )
    response.headers["ETag"] = f'"{record.version}"'
    return await job_detail(api, record)


@router.delete("/{name}", status_code=204, summary="Delete a job and its run history")
async def delete_job(
    api: Api,
    principal: Admin,
    name: JobName,
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=64)] = None,
) -> Response:
    expected = parse_etag(if_match) if if_match is not None else None
    await api.store.delete(name, Audit(principal.name, "job.delete"), expected_version=expected)
    return Response(status_code=204)


@router.get("/{name}/runs", summary="A job's run history, newest first")
async def job_runs(
    api: Api, _: Viewer, name: JobName, filters: Annotated[RunFilters, Depends()]
) -> RunPage:
    record = await api.store.get(name)
    return await run_page(api, filters, job_id=record.id)


@router.get("/{name}/explain", summary="Why a run did or did not happen at a time")
async def explain_job(
    api: Api,
    _: Viewer,
    name: JobName,
    at: Annotated[UtcDatetime, Query(description="The time asked about (ISO 8601, with offset).")],
) -> Explanation:
    return await explain(api, await api.store.get(name), at)


@router.get("/{name}/preview", summary="The job's next fire times")
async def preview_job(
    api: Api,
    _: Viewer,
    name: JobName,
    count: Annotated[int, Query(ge=1, le=1000)] = 10,
    after: Annotated[UtcDatetime | None, Query(description="Default: now.")] = None,
) -> Preview:
    record = await api.store.get(name)
    return preview_definition(record.definition, after or api.clock(), count)
