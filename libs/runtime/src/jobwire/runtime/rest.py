"""What every service's REST API shares: the admin API's tokens and roles, bounded bodies.

A service other than the scheduler cannot read the token table; it asks the
admin API who a token belongs to (``GET /api/v1/whoami``) and trusts the
answer for ``cache_seconds``. Routes declare the role they need::

    @router.get("/things")
    async def things(_: Viewer) -> ...

with ``app.state.tokens`` set to the service's :class:`TokenChecker`. Tokens
are checked before a body is read; a route that takes a body reads it with
:func:`json_body`, which refuses it as soon as it passes the limit.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from jobwire.runtime import problems
from jobwire.runtime.problems import ProblemError
from jobwire.runtime.service import VERSION

Role = Literal["viewer", "operator", "admin"]
_ROLES: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobwire"'}
_CACHE_ENTRIES = 10_000


class Identity(BaseModel):
    name: str
    role: Role


class TokenChecker:
    """Who a token belongs to, as the scheduler's admin API says; cached briefly.

    ``setting`` names the variable that sets ``scheduler_url``, for the answer
    to a request made while it is not set.
    """

    def __init__(self, scheduler_url: str | None, cache_seconds: float, setting: str) -> None:
        self._url = scheduler_url.rstrip("/") + "/api/v1/whoami" if scheduler_url else None
        self._cache_seconds = cache_seconds
        self._setting = setting
        self._cache: dict[bytes, tuple[float, Identity | None]] = {}
        self._client: httpx.AsyncClient | None = None

    async def identify(self, token: str) -> Identity | None:
        if self._url is None:
            raise ProblemError(
                503, "Not configured", f"{self._setting} is not set: no token can be checked"
            )
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0)
        try:
            response = await self._client.get(
                self._url, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise ProblemError(
                503, "Unavailable", f"the scheduler cannot check tokens now: {type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            identity = None
        elif response.status_code == 200:
            identity = Identity.model_validate(response.json())
        else:
            raise ProblemError(
                503,
                "Unavailable",
                f"the scheduler answered {response.status_code} to a token check",
            )
        if len(self._cache) > _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (now + self._cache_seconds, identity)
        return identity

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


_bearer = HTTPBearer(auto_error=False, bearerFormat="jw_…")


def requires(role: Role) -> Any:
    """A dependency: the caller's identity, if its token has ``role`` or a higher one."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Identity:
        if credentials is None:
            raise ProblemError(
                401, "Unauthorized", "send `Authorization: Bearer <token>`", headers=_CHALLENGE
            )
        tokens: TokenChecker = request.app.state.tokens
        identity = await tokens.identify(credentials.credentials)
        if identity is None:
            raise ProblemError(
                401, "Unauthorized", "the token is unknown or revoked", headers=_CHALLENGE
            )
        if _ROLES[identity.role] < _ROLES[role]:
            raise ProblemError(
                403, "Forbidden", f"this needs the {role} role; the token is {identity.role}"
            )
        return identity

    return Depends(check)


Viewer = Annotated[Identity, requires("viewer")]
Operator = Annotated[Identity, requires("operator")]
Admin = Annotated[Identity, requires("admin")]


def service_app(
    title: str, description: str | None, service: str, router: APIRouter, api: Any
) -> FastAPI:
    """A service's REST API under ``/api/v1``: its routes, problem documents, its
    ``api`` object at ``app.state.api`` and that object's ``tokens`` checking tokens."""
    app = FastAPI(
        title=title,
        version=VERSION,
        description=description or "",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.api = api
    app.state.tokens = api.tokens
    problems.install(app, service)
    app.include_router(router)
    return app


async def json_body(request: Request, limit: int) -> bytes:
    """The request's JSON body, refused (413) as soon as it passes ``limit`` bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ProblemError(
            415,
            "Unsupported media type",
            "send `Content-Type: application/json`",
            errors=[("Content-Type", "must be application/json")],
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, "Too large", f"the body may have at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProblemError(413, "Too large", f"the body may have at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
