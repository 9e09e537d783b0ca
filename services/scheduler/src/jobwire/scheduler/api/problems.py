"""The scheduler's API errors: the kit's problem documents (``jobwire.runtime.problems``)
plus what only the scheduler refuses (jobs, runs, versions, constraints of its tables)."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jobwire.runtime import problems as kit
from jobwire.runtime.logs import get_logger
from jobwire.runtime.problems import (
    MEDIA_TYPE,
    FieldProblem,
    Problem,
    ProblemError,
    definition_problems,
    documented,
    invalid,
    problem_media_type,
    problem_response,
    validation_problems,
)
from jobwire.scheduler.adapters.store import (
    JobExists,
    JobNotFound,
    RunEnded,
    RunNotFound,
    VersionConflict,
)
from jobwire.scheduler.domain.definitions import DefinitionError

log = get_logger("jobwire.scheduler.api")

__all__ = [
    "MEDIA_TYPE",
    "RESPONSES",
    "FieldProblem",
    "Problem",
    "ProblemError",
    "constraint_problem",
    "definition_problems",
    "documented",
    "install",
    "invalid",
    "problem_media_type",
    "problem_response",
    "validation_problems",
]


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


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""
    kit.install(app, "scheduler")

    @app.exception_handler(DefinitionError)
    async def _definition(_: Request, exc: DefinitionError) -> JSONResponse:
        return problem_response(422, "Invalid job definition", str(exc), errors=exc.problems)

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
