"""Errors as RFC 7807 problem details (``application/problem+json``).

Every refusal names what to fix: ``errors`` lists ``{field, message}`` with the
field as a dotted path into the body (``schedule.cron.expression``,
``params.workflow``) or the name of the query parameter or header. The
offending value itself is never echoed: it may be a token or a secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobwire.contracts.errors import ContractError
from jobwire.runtime.logs import get_logger
from jobwire.scheduler.adapters.store import (
    JobExists,
    JobNotFound,
    RunEnded,
    RunNotFound,
    VersionConflict,
)
from jobwire.scheduler.domain.definitions import DefinitionError

log = get_logger("jobwire.scheduler.api")

MEDIA_TYPE = "application/problem+json"


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the offending input, e.g. `params.workflow`.")
    message: str


class Problem(BaseModel):
    """An RFC 7807 problem document."""

    type: str = Field(
        description="URI naming the kind of problem, e.g. `urn:jobwire:problem:validation`."
    )
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


class ProblemError(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
        errors: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind or _KINDS.get(status, "error")
        self.errors = list(errors)
        self.headers = headers


def invalid(field: str, message: str) -> ProblemError:
    return ProblemError(422, "Invalid input", f"{field}: {message}", errors=[(field, message)])


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    errors: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(
        type=f"urn:jobwire:problem:{kind or _KINDS.get(status, 'error')}",
        title=title,
        status=status,
        detail=detail,
        errors=[FieldProblem(field=f, message=m) for f, m in errors],
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


def validation_problems(exc: ValidationError | RequestValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (field, message), the field without FastAPI's location prefix."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            loc = ["body"]  # its location is a character offset, not a field
        elif len(loc) > 1 and loc[0] in {"body", "query", "path", "header", "cookie"}:
            loc = loc[1:]
        field = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append((field, message))
    return problems


def definition_problems(problems: Sequence[tuple[str, str]]) -> ProblemError:
    detail = "; ".join(f"{field}: {message}" for field, message in problems)
    return ProblemError(422, "Invalid input", detail, errors=problems)


def documented(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI ``responses`` entry for a problem answer."""
    return {status: {"model": Problem, "description": description}}


def problem_media_type(document: dict[str, Any]) -> dict[str, Any]:
    """Document problem answers as ``application/problem+json`` (FastAPI files every
    response model under the route's media type, ``application/json``)."""
    ref = {"$ref": "#/components/schemas/Problem"}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if content.get("application/json", {}).get("schema") == ref:
                    content[MEDIA_TYPE] = content.pop("application/json")
    return document


# Documented on every operation that can answer with them.
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: documented(status, title)[status]
    for status, title in (
        (400, "The body is not UTF-8, or nested too deep"),
        (401, "No valid bearer token"),
        (403, "The token's role may not do this"),
        (404, "Not found"),
        (409, "Conflict with the current state"),
        (413, "The body is larger than the scheduler's max_request_bytes"),
        (415, "The body is not `application/json`"),
        (422, "Invalid input; `errors` names each field"),
    )
}

_KINDS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    412: "precondition-failed",
    413: "too-large",
    415: "unsupported-media-type",
    422: "validation",
    428: "precondition-required",
    429: "too-many-requests",
    500: "internal",
    503: "unavailable",
}


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.title, exc.detail, kind=exc.kind, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_problems(exc)
        detail = "; ".join(f"{f}: {m}" for f, m in errors)
        return problem_response(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(DefinitionError)
    async def _definition(_: Request, exc: DefinitionError) -> JSONResponse:
        return problem_response(422, "Invalid job definition", str(exc), errors=exc.problems)

    @app.exception_handler(ContractError)
    async def _contract(_: Request, exc: ContractError) -> JSONResponse:
        return problem_response(422, "Invalid input", str(exc), errors=[(exc.field, exc.message)])

    @app.exception_handler(JobNotFound)
    @app.exception_handler(RunNotFound)
    async def _not_found(_: Request, exc: LookupError) -> JSONResponse:
        return problem_response(404, "Not found", str(exc))

    @app.exception_handler(JobExists)
    async def _exists(_: Request, exc: JobExists) -> JSONResponse:
        return problem_response(
            409, "Job exists", str(exc), kind="exists", errors=[("name", "is taken by another job")]
        )

    @app.exception_handler(VersionConflict)
    async def _stale(_: Request, exc: VersionConflict) -> JSONResponse:
        return problem_response(
            409,
            "Stale version",
            str(exc),
            kind="version-conflict",
            errors=[("version", f"the job is at version {exc.actual}")],
            headers={"ETag": f'"{exc.actual}"'},
        )

    @app.exception_handler(RunEnded)
    async def _ended(_: Request, exc: RunEnded) -> JSONResponse:
        return problem_response(409, "Run has ended", str(exc), kind="run-ended")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, title, detail, headers=headers)

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    @app.exception_handler(asyncpg.DatetimeFieldOverflowError)
    @app.exception_handler(asyncpg.NumericValueOutOfRangeError)
    async def _unstorable(_: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot hold (e.g. a NUL character or a date out of
        # its range) that slipped past validation: the caller's input, not a fault.
        log.warning("api.unstorable_input", error_type=type(exc).__name__)
        return problem_response(
            422, "Invalid input", "a value cannot be stored: " + _first_line(exc)
        )

    @app.exception_handler(asyncpg.IntegrityConstraintViolationError)
    async def _constraint(
        _: Request, exc: asyncpg.IntegrityConstraintViolationError
    ) -> JSONResponse:
        # A constraint the checks before the write did not catch, mostly a race:
        # another request took the name, or deleted the job, in between.
        return constraint_problem(exc)

    @app.exception_handler(OverflowError)
    async def _overflow(_: Request, exc: OverflowError) -> JSONResponse:
        return problem_response(422, "Invalid input", "a date or number is out of range")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The method and path only: headers carry tokens, bodies may carry secrets.
        log.error(
            "api.internal_error",
            method=request.method,
            path=request.url.path,
            error_type=type(exc).__name__,
            exc_info=exc,
        )
        return problem_response(500, "Internal error", "see the scheduler's log")


# Constraint → the request field it is about. A constraint missing here still
# gets a 409/422, naming the column PostgreSQL reports.
_CONSTRAINT_FIELDS = {
    "jobs_name_key": ("name", "is taken by another job"),
    "api_tokens_active_name": ("name", "an active token has this name"),
    "api_tokens_role_check": ("role", "must be viewer, operator or admin"),
    "runs_job_id_fkey": ("name", "the job was deleted meanwhile"),
    "backfills_job_id_fkey": ("name", "the job was deleted meanwhile"),
    "runs_job_id_scheduled_for_key": ("scheduled_for", "the job has a run at this time"),
    "job_groups_pkey": ("group", "was created meanwhile; try again"),
}


def constraint_problem(exc: asyncpg.IntegrityConstraintViolationError) -> JSONResponse:
    """A violated constraint as 409 (state: unique, foreign key, exclusion) or 422
    (the value: check, not null), naming the field."""
    constraint = getattr(exc, "constraint_name", None) or ""
    column = getattr(exc, "column_name", None)
    field, message = _CONSTRAINT_FIELDS.get(constraint, (column or "body", "conflicts"))
    log.warning("api.constraint_violated", constraint=constraint, error_type=type(exc).__name__)
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.NotNullViolationError):
        return problem_response(
            422, "Invalid input", f"{field}: {message}", errors=[(field, message)]
        )
    return problem_response(409, "Conflict", f"{field}: {message}", errors=[(field, message)])


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
