"""Errors as RFC 7807 problem details (``application/problem+json``), for every service's API.

Every refusal names what to fix: ``errors`` lists ``{field, message}`` with the
field as a dotted path into the body (``schedule.cron.expression``,
``to.0.address``) or the name of the query parameter or header. The
offending value itself is never echoed: it may be a token or a secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobwire.contracts.errors import ContractError
from jobwire.runtime.logs import get_logger

log = get_logger("jobwire.api")

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


def install(app: FastAPI, service: str) -> None:
    """Answer every error of ``app`` with a problem document; a service adds its own."""

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

    @app.exception_handler(ContractError)
    async def _contract(_: Request, exc: ContractError) -> JSONResponse:
        return problem_response(422, "Invalid input", str(exc), errors=[(exc.field, exc.message)])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}.get(
            exc.status_code, "Error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers) if exc.headers else None
        # FastAPI's own 400 is a body json.loads refused (e.g. an integer past
        # Python's 4300-digit limit): still a refusal that names what to fix.
        errors = [("body", detail or "cannot be read")] if exc.status_code == 400 else []
        return problem_response(exc.status_code, title, detail, errors=errors, headers=headers)

    @app.exception_handler(OverflowError)
    async def _overflow(_: Request, exc: OverflowError) -> JSONResponse:
        return problem_response(422, "Invalid input", "a date or number is out of range")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The method and path only: headers carry tokens, bodies may carry secrets.
        log.error(
            "api.internal_error",
            service=service,
            method=request.method,
            path=request.url.path,
            error_type=type(exc).__name__,
            exc_info=exc,
        )
        return problem_response(500, "Internal error", f"see the {service}'s log")
