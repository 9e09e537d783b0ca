"""The search REST API (``/api/v1/search``): install the change capture, and report status.

Both take a search job as the admin API holds it — ``{"type": ..., "params":
...}`` — since a job's parameters say which source, engine and alias it is
about, and only this service can resolve the secrets they name. The CLI's
``jobwire search install|status <job>`` fetches the job and posts it here.

``status`` (viewer): the alias and the index behind it, documents in the source
and in the index, the consumer's watermark and how far behind it is, and
whether the capture is installed. ``install`` (admin: it changes the source's
schema): the ``jobwire_search`` schema and one trigger pair per captured table,
or with ``"apply": false`` only the SQL, for a DBA to read or run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field, ValidationError

from jobwire.runtime import problems
from jobwire.runtime.problems import ProblemError, validation_problems
from jobwire.runtime.rest import Admin, TokenChecker, Viewer, json_body, service_app
from jobwire.runtime.secrets import SecretNotFound
from jobwire.search_sync.adapters import source
from jobwire.search_sync.adapters.engine import EngineError, EngineUnavailable
from jobwire.search_sync.adapters.source import SourceUnavailable
from jobwire.search_sync.domain.plan import ProfileError, profile_hash
from jobwire.search_sync.domain.sql import install_sql
from jobwire.search_sync.sync import PARAMS, Jobs, Params

MAX_REQUEST_BYTES = 256 * 1024


class SearchApi:
    """What the routes need; main fills ``jobs`` in once the service runs (503 until then)."""

    def __init__(self, tokens: TokenChecker) -> None:
        self.tokens = tokens
        self.jobs: Jobs | None = None


def _jobs(request: Request) -> Jobs:
    api: SearchApi = request.app.state.api
    if api.jobs is None:
        raise ProblemError(503, "Starting", "the search sync is starting; try again shortly")
    return api.jobs


JobsDep = Annotated[Jobs, Depends(_jobs)]


class SearchJob(BaseModel):
    type: Literal["search-full-load", "search-incremental"]
    params: dict[str, Any]


class InstallRequest(SearchJob):
    apply: bool = Field(True, description="false: return the SQL without running it")


class Consumer(BaseModel):
    index: str = Field(description="The physical index incremental runs write into.")
    watermark: int = Field(description="Transactions below this id are in the index.")
    profile_current: bool = Field(
        description="false: the profile changed since the full load; run it again."
    )
    loaded_at: datetime
    updated_at: datetime


class Status(BaseModel):
    alias: str
    aliased: list[str] = Field(description="What the alias points to now.")
    indices: list[str] = Field(description="Every physical index of the alias, oldest first.")
    consumer: Consumer | None = Field(description="Null: no full load has built the index yet.")
    source_documents: int
    index_documents: int | None = Field(description="Documents searches see through the alias.")
    pending_changes: int | None = Field(description="Changes not yet behind the watermark.")
    lag_seconds: float | None = Field(description="Age of the oldest of those changes.")
    capture_installed: bool
    capture_missing: list[str] = Field(description="Captured tables without their trigger.")


class Installed(BaseModel):
    applied: bool
    triggers: list[str]
    statements: list[str]


router = APIRouter(prefix="/api/v1")


async def _job(request: Request) -> tuple[SearchJob | InstallRequest, Params]:
    body = await json_body(request, MAX_REQUEST_BYTES)
    model = InstallRequest if request.url.path.endswith("/install") else SearchJob
    try:
        job = model.model_validate_json(body)
    except ValidationError as exc:
        raise problems.definition_problems(validation_problems(exc)) from None
    try:
        params = PARAMS[job.type].model_validate(job.params)
    except ValidationError as exc:
        found = [(f"params.{field}", message) for field, message in validation_problems(exc)]
        raise problems.definition_problems(found) from None
    return job, params


def _unreachable(exc: Exception) -> ProblemError:
    return ProblemError(502, "Unreachable", str(exc))


@router.post("/search/status", tags=["search"], summary="Alias, counts, watermark and lag")
async def status(request: Request, jobs: JobsDep, _: Viewer) -> Status:
    _job_asked, params = await _job(request)
    alias = params.index.alias
    try:
        async with jobs.open(params) as job:
            consumer = await source.consumer(job.connection, alias)
            relations = [c.relation for c in job.plan.captures]
            installed = await source.installed_schema(job.connection)
            missing = await source.missing_triggers(job.connection, job.plan)
            counted = await source.count(job.connection, job.plan)
            pending = lag = None
            if consumer is not None:
                pending = await source.pending(job.connection, relations, consumer.watermark)
                lag = await source.lag(job.connection, relations, consumer.watermark)
            aliased = await job.engine.aliased(alias)
            indices = await job.engine.indices(f"{alias}-")
            in_index = await job.engine.count(alias) if aliased else None
    except (SourceUnavailable, EngineUnavailable, EngineError, SecretNotFound) as exc:
        raise _unreachable(exc) from None
    except (ProfileError, asyncpg.PostgresError) as exc:
        raise _refused(exc) from None
    return Status(
        alias=alias,
        aliased=aliased,
        indices=indices,
        consumer=None
        if consumer is None
        else Consumer(
            index=consumer.index_name,
            watermark=consumer.watermark,
            profile_current=consumer.profile_hash == profile_hash(params.profile),
            loaded_at=consumer.loaded_at,
            updated_at=consumer.updated_at,
        ),
        source_documents=counted,
        index_documents=in_index,
        pending_changes=pending,
        lag_seconds=lag,
        capture_installed=installed and not missing,
        capture_missing=missing,
    )


@router.post(
    "/search/install",
    tags=["search"],
    summary="Install the change capture a job's profile needs (or show its SQL)",
)
async def install(request: Request, jobs: JobsDep, _: Admin) -> Installed:
    job, params = await _job(request)
    assert isinstance(job, InstallRequest)
    try:
        connection = await jobs.connect(params)
        try:
            plan = await jobs.plan(connection, params)
            if job.apply:
                triggers = await source.install(connection, plan)
            else:
                triggers = []
        finally:
            await connection.close()
    except (SourceUnavailable, SecretNotFound) as exc:
        raise _unreachable(exc) from None
    except (ProfileError, asyncpg.PostgresError) as exc:
        raise _refused(exc) from None
    return Installed(applied=job.apply, triggers=triggers, statements=install_sql(plan))


def _refused(exc: ProfileError | asyncpg.PostgresError) -> ProblemError:
    if isinstance(exc, ProfileError):
        return problems.definition_problems(exc.problems)
    return ProblemError(422, "Refused by the source", f"{type(exc).__name__}: {exc}")


@router.get("/health", tags=["system"], summary="Liveness (no token needed)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def create_app(api: SearchApi) -> FastAPI:
    return service_app("jobwire search API", __doc__, "search-sync", router, api)
