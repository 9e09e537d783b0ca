"""Operator actions: enable/disable, pause/resume, trigger, cancel, backfill, groups."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Response
from fastapi.responses import JSONResponse

from jobwire.scheduler.adapters.store import Audit
from jobwire.scheduler.api import backfills, triggers
from jobwire.scheduler.api.auth import Operator, Viewer
from jobwire.scheduler.api.context import ApiContext, api_of
from jobwire.scheduler.api.inputs import check_json, clean_request
from jobwire.scheduler.api.listing import job_detail
from jobwire.scheduler.api.payloads import check_publishable
from jobwire.scheduler.api.problems import RESPONSES, ProblemError, documented
from jobwire.scheduler.api.schemas import (
    BackfillPlan,
    BackfillProgress,
    BackfillRequest,
    BackfillStarted,
    GroupItem,
    JobDetail,
    RunDetail,
    TriggerRequest,
)

router = APIRouter(
    prefix="/api/v1", tags=["actions"], responses=RESPONSES, dependencies=[Depends(clean_request)]
)

Api = Annotated[ApiContext, Depends(api_of)]
JobName = Annotated[str, Path(min_length=1, max_length=200, description="The job's name.")]
GroupName = Annotated[str, Path(min_length=1, max_length=200, description="The group's name.")]


async def _flag(
    api: ApiContext, actor: str, name: str, flag: str, value: bool, action: str
) -> JobDetail:
    audit = Audit(actor, action)
    if flag == "enabled":
        record = await api.store.set_enabled(name, value, api.clock(), audit)
    else:
        record = await api.store.set_paused(name, value, api.clock(), audit)
    return await job_detail(api, record)


@router.post("/jobs/{name}/enable", summary="Enable a job (its schedule restarts from now)")
async def enable_job(api: Api, principal: Operator, name: JobName) -> JobDetail:
    return await _flag(api, principal.name, name, "enabled", True, "job.enable")


@router.post("/jobs/{name}/disable", summary="Disable a job: it stops firing")
async def disable_job(api: Api, principal: Operator, name: JobName) -> JobDetail:
    return await _flag(api, principal.name, name, "enabled", False, "job.disable")


@router.post("/jobs/{name}/pause", summary="Pause a job's firing, keeping its definition")
async def pause_job(api: Api, principal: Operator, name: JobName) -> JobDetail:
    return await _flag(api, principal.name, name, "paused", True, "job.pause")


@router.post("/jobs/{name}/resume", summary="Resume a paused job (from now)")
async def resume_job(api: Api, principal: Operator, name: JobName) -> JobDetail:
    return await _flag(api, principal.name, name, "paused", False, "job.resume")


@router.post(
    "/jobs/{name}/trigger",
    status_code=201,
    summary="Run a job now",
    description="Optional parameter overrides, merged into the job's params and validated by "
    "its type's model. With an `Idempotency-Key`, a repeated request returns the run the "
    "first one made (200) instead of making another.",
    responses={200: {"model": RunDetail, "description": "The run an earlier request made"}},
)
async def trigger_job(
    api: Api,
    principal: Operator,
    name: JobName,
    response: Response,
    request: Annotated[TriggerRequest | None, Body()] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
    ] = None,
) -> RunDetail:
    overrides = request.params if request is not None else {}
    check_json(overrides, "params")
    run, created = await triggers.trigger(api, name, overrides, idempotency_key, principal.name)
    if created:
        response.headers["Location"] = f"/api/v1/runs/{run.id}"
    else:
        response.status_code = 200
    return run


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    summary="Ask a run to stop",
    description="Publishes RunCancelRequested on the run's subject; the worker stops at its "
    "next checkpoint. A queued run is cancelled at once. 409 if the run has ended.",
)
async def cancel_run(api: Api, principal: Operator, run_id: uuid.UUID) -> RunDetail:
    return await triggers.cancel(api, run_id, principal.name)


@router.post(
    "/jobs/{name}/backfill",
    status_code=202,
    summary="Create runs for the past slots of a time range that have none",
    description="`dry_run` lists the slots it would create runs for (200). Otherwise the runs "
    "are created in the background at `rate_per_second` (202); follow "
    "`GET /api/v1/backfills/{id}`.",
    response_model=BackfillStarted,
    responses={
        200: {"model": BackfillPlan, "description": "The dry run's plan"},
        **documented(429, "This replica runs as many backfills as it may"),
    },
)
async def backfill_job(
    api: Api, principal: Operator, name: JobName, request: BackfillRequest, response: Response
) -> BackfillStarted | JSONResponse:
    if request.to <= request.from_:
        raise ProblemError(
            422,
            "Invalid input",
            "from must be earlier than to",
            errors=[("from", "must be earlier than to"), ("to", "must be later than from")],
        )
    job = await api.store.get(name)
    # A job stored before its message outgrew max_payload (or the server's limit
    # shrank since) would otherwise get runs that can only fail.
    check_publishable(api, job, api.clock())
    slots, existing = await backfills.plan(api, job, request.from_, request.to, request.max_runs)
    if request.dry_run:
        plan = BackfillPlan(
            job=job.name,
            from_=request.from_,
            to=request.to,
            planned=len(slots),
            existing=existing,
            slots=slots,
        )
        return JSONResponse(plan.model_dump(mode="json", by_alias=True))
    backfill_id = await api.backfills.start(
        job, request.from_, request.to, request.rate_per_second, slots, principal.name
    )
    response.headers["Location"] = f"/api/v1/backfills/{backfill_id}"
    return BackfillStarted(backfill_id=backfill_id, planned=len(slots))


@router.get("/backfills/{backfill_id}", summary="A backfill's progress")
async def get_backfill(api: Api, _: Viewer, backfill_id: uuid.UUID) -> BackfillProgress:
    row = await api.store.backfill(backfill_id)
    if row is None:
        raise ProblemError(404, "Not found", f"no backfill with id {backfill_id}")
    values = dict(row)
    values["from_"], values["to"] = values.pop("range_from"), values.pop("range_to")
    return BackfillProgress.model_validate(values)


async def _group(api: ApiContext, actor: str, name: str, enabled: bool) -> GroupItem:
    if await api.store.group_enabled(name) is None:
        raise ProblemError(404, "Not found", f"no group named {name!r}")
    action = "group.enable" if enabled else "group.disable"
    await api.store.set_group_enabled(name, enabled, api.clock(), Audit(actor, action))
    [group] = [g for g in await api.store.groups() if g["name"] == name]
    return GroupItem(name=group["name"], enabled=group["enabled"], jobs=group["jobs"])


@router.post("/groups/{name}/enable", summary="Enable a group (its jobs restart from now)")
async def enable_group(api: Api, principal: Operator, name: GroupName) -> GroupItem:
    return await _group(api, principal.name, name, True)


@router.post("/groups/{name}/disable", summary="Disable a group: all its jobs stop firing")
async def disable_group(api: Api, principal: Operator, name: GroupName) -> GroupItem:
    return await _group(api, principal.name, name, False)
