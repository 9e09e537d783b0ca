"""Admin only: API tokens and the audit log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response

from jobwire.runtime.logs import get_logger
from jobwire.scheduler.api import tokens
from jobwire.scheduler.api.auth import Admin
from jobwire.scheduler.api.context import ApiContext, api_of
from jobwire.scheduler.api.inputs import check_json, clean_request
from jobwire.scheduler.api.problems import RESPONSES, ProblemError
from jobwire.scheduler.api.schemas import (
    AuditEntry,
    AuditPage,
    TokenCreate,
    TokenCreated,
    TokenItem,
    UtcDatetime,
)

router = APIRouter(
    prefix="/api/v1", tags=["admin"], responses=RESPONSES, dependencies=[Depends(clean_request)]
)

Api = Annotated[ApiContext, Depends(api_of)]
log = get_logger("jobwire.scheduler.api")


def _item(info: tokens.TokenInfo) -> TokenItem:
    return TokenItem(
        id=info.id,
        name=info.name,
        role=info.role.value,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
        revoked_at=info.revoked_at,
    )


@router.get("/tokens", summary="API tokens (never the secrets)")
async def list_tokens(
    api: Api,
    _: Admin,
    include_revoked: Annotated[bool, Query()] = True,
) -> list[TokenItem]:
    found = await tokens.list_tokens(api.store.pool, include_revoked=include_revoked)
    return [_item(t) for t in found]


@router.post("/tokens", status_code=201, summary="Create a token; the response shows it once")
async def create_token(api: Api, principal: Admin, request: TokenCreate) -> TokenCreated:
    check_json(request.name, "name")
    pool = api.store.pool
    try:
        secret = await tokens.create_token(pool, request.name, request.role, actor=principal.name)
    except tokens.TokenError as exc:
        status = 409 if isinstance(exc, tokens.TokenExists) else 422
        raise ProblemError(
            status, "Token refused", str(exc), errors=[(exc.field, exc.message)]
        ) from None
    log.info("api.token_created", name=request.name, role=request.role, by=principal.name)
    [info] = [
        t for t in await tokens.list_tokens(pool, include_revoked=False) if t.name == request.name
    ]
    return TokenCreated(**_item(info).model_dump(), token=secret)


@router.delete("/tokens/{name}", status_code=204, summary="Revoke a token: it stops working")
async def revoke_token(
    api: Api, principal: Admin, name: Annotated[str, Path(min_length=1, max_length=200)]
) -> Response:
    try:
        await tokens.revoke_token(api.store.pool, name, actor=principal.name)
    except tokens.TokenNotFound as exc:
        raise ProblemError(404, "Not found", str(exc)) from None
    log.info("api.token_revoked", name=name, by=principal.name)
    return Response(status_code=204)


@router.get("/audit", summary="The audit log, newest first")
async def audit(
    api: Api,
    _: Admin,
    target_type: Annotated[Literal["job", "run", "group", "token"] | None, Query()] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100, description="e.g. job.disable")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    from_: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    to: Annotated[UtcDatetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> AuditPage:
    rows, total = await api.store.audit_entries(
        target_type=target_type,
        target=target,
        action=action,
        actor=actor,
        since=from_,
        until=to,
        limit=limit,
        offset=offset,
    )
    return AuditPage(
        items=[AuditEntry.model_validate(dict(r)) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )
