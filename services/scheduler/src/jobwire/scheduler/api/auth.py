"""Bearer-token authentication and role checks, as FastAPI dependencies.

``Depends(viewer)`` / ``Depends(operator)`` / ``Depends(admin)`` on an
operation: no token, an unknown or revoked one → 401; a role below the one
needed → 403. The principal's name is what the audit log records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobwire.scheduler.api.context import api_of
from jobwire.scheduler.api.guard import STATE_KEY
from jobwire.scheduler.api.problems import ProblemError
from jobwire.scheduler.api.tokens import Role, TokenInfo, authenticate

_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="jw_…",
    description="An API token (`jobwire tokens create NAME --role viewer|operator|admin`).",
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobwire"'}


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # The request guard (guard.py) authenticated before the body was read.
    checked: TokenInfo | None = getattr(request.state, STATE_KEY, None)
    if checked is not None:
        return Principal(checked.name, checked.role)
    if credentials is None:
        raise ProblemError(
            401, "Unauthorized", "send `Authorization: Bearer <token>`", headers=_CHALLENGE
        )
    api = await api_of(request)
    info = await authenticate(api.store.pool, credentials.credentials)
    if info is None:
        raise ProblemError(
            401, "Unauthorized", "the token is unknown or revoked", headers=_CHALLENGE
        )
    return Principal(info.name, info.role)


def _requires(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not principal.role.allows(role):
            raise ProblemError(
                403, "Forbidden", f"this needs the {role.value} role; the token is {principal.role}"
            )
        return principal

    check.__name__ = f"requires_{role.value}"
    return check


viewer = _requires(Role.VIEWER)
operator = _requires(Role.OPERATOR)
admin = _requires(Role.ADMIN)

Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]
Admin = Annotated[Principal, Depends(admin)]
