"""The admin API as a FastAPI application, mounted on the service kit's HTTP server."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from jobwire.runtime.service import VERSION
from jobwire.scheduler.api import problems
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.guard import RequestGuard
from jobwire.scheduler.api.routers import actions, admin, jobs, runs, system

DESCRIPTION = """\
Manage jobwire's jobs: the Jobs Management table, definitions, operator actions
(enable, pause, trigger, cancel, backfill), run history, explain and preview.

Every operation but `GET /api/v1/health` needs `Authorization: Bearer <token>`.
Roles: **viewer** reads; **operator** also acts on jobs, runs and groups;
**admin** also changes definitions, tokens, and reads the audit log.
Errors are RFC 7807 `application/problem+json` documents whose `errors` name
each offending field.

Limits: a request body is JSON (`Content-Type: application/json`, else 415),
UTF-8, nested at most 64 levels (else 400), and at most the scheduler's
`max_request_bytes` (default 1 MiB, else 413). The token is checked before the
body is read. A definition (or trigger) whose message would exceed the NATS
server's `max_payload` is refused with 422 naming `params`.

A definition's params are validated by their type's model, then — on create, on an
update that changes `type` or `params`, and on preview — by the service that runs
the type, when one answers within the scheduler's `live_check_seconds` (e.g. a
search profile against the live source schema: an unknown table or column is
refused with 422 naming it). No answer: the definition is saved as the model
allowed it.
"""


def create_app(api: ApiContext) -> FastAPI:
    app = FastAPI(
        title="jobwire scheduler API",
        version=VERSION,
        description=DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.api = api
    app.add_middleware(RequestGuard, api=api)
    problems.install(app)
    for module in (system, jobs, actions, runs, admin):
        app.include_router(module.router)
    app.include_router(system.public)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems.problem_media_type(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
