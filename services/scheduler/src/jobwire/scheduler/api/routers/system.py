"""Health, hosts, groups, and preview of an unsaved definition."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from jobwire.scheduler.api.auth import Viewer
from jobwire.scheduler.api.context import ApiContext, api_of
from jobwire.scheduler.api.inputs import check_json, clean_request
from jobwire.scheduler.api.live_checks import check_params_live
from jobwire.scheduler.api.previews import preview_definition, preview_schedule
from jobwire.scheduler.api.problems import RESPONSES, ProblemError, definition_problems
from jobwire.scheduler.api.schemas import (
    GroupItem,
    Health,
    HostItem,
    Identity,
    Preview,
    PreviewRequest,
)
from jobwire.scheduler.domain.definitions import DefinitionError, parse_definition

router = APIRouter(prefix="/api/v1", responses=RESPONSES, dependencies=[Depends(clean_request)])
# Health answers without a token: probes and load balancers have none.
public = APIRouter(prefix="/api/v1", tags=["system"])

Api = Annotated[ApiContext, Depends(api_of)]


@public.get("/health", summary="Liveness and readiness (no token needed)")
async def health(api: Api) -> Health:
    ready = api.ready()
    return Health(
        status="ok" if ready else "starting", ready=ready, version=api.version, checks=api.checks()
    )


@router.get("/whoami", tags=["system"], summary="The name and role of the token sent")
async def whoami(principal: Viewer) -> Identity:
    return Identity(name=principal.name, role=principal.role.value)


@router.get("/hosts", tags=["system"], summary="Live service instances and their heartbeats")
async def hosts(api: Api, _: Viewer) -> list[HostItem]:
    if not api.ready():
        raise ProblemError(503, "Starting", "the scheduler is starting; try again shortly")
    return await api.hosts()


@router.get("/groups", tags=["groups"], summary="Job groups")
async def groups(api: Api, _: Viewer) -> list[GroupItem]:
    return [
        GroupItem(name=g["name"], enabled=g["enabled"], jobs=g["jobs"])
        for g in await api.store.groups()
    ]


@router.post(
    "/preview",
    tags=["jobs"],
    summary="Next fire times of an unsaved definition or a schedule",
)
async def preview(api: Api, _: Viewer, request: PreviewRequest) -> Preview:
    after = request.after or api.clock()
    if request.definition is None:
        return preview_schedule(request.schedule, after, request.count)
    check_json(request.definition, "definition")
    try:
        definition = parse_definition(request.definition)
        await check_params_live(api, definition)
    except DefinitionError as exc:
        # A problem of the definition as a whole is named "definition", not
        # "definition.definition".
        problems = [
            ("definition" if f == "definition" else f"definition.{f}", m) for f, m in exc.problems
        ]
        raise definition_problems(problems) from None
    return preview_definition(definition, after, request.count)
