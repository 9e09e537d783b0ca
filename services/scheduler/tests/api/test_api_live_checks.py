"""Params checked live by the service that owns the job type, over real NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from api_helpers import fields

from jobwire.contracts.job_types import JobParams, job_params, job_types
from jobwire.runtime.broker import Broker
from jobwire.runtime.settings import ServiceSettings
from jobwire.runtime.validation import ParamProblem, serve_validation
from jobwire.scheduler.api.live_checks import needs_live_check
from jobwire.scheduler.domain.definitions import parse_definition

pytestmark = pytest.mark.integration

JOB_TYPE = "test-live-check"

# A job type whose worker knows something the scheduler cannot: which tables and
# columns its source database has (as search-sync's profile check does).
if JOB_TYPE not in job_types():

    @job_params(JOB_TYPE)
    class LiveCheckParams(JobParams):
        table: str
        columns: list[str] = []


TABLES = {"cases": {"id", "title"}}


def live_job(name: str = "sync", **params: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": JOB_TYPE,
        "schedule": {"kind": "interval", "every": "PT1H"},
        "params": {"table": "cases", "columns": ["id"], **params},
    }


class Owner:
    """The worker side: answers checks for JOB_TYPE, recording each request."""

    def __init__(self) -> None:
        self.checked: list[dict[str, Any]] = []

    async def check(self, params: dict[str, Any]) -> list[ParamProblem]:
        self.checked.append(params)
        columns = TABLES.get(params["table"])
        if columns is None:
            return [ParamProblem.at(("table",), f"no table {params['table']!r} in the source")]
        return [
            ParamProblem.at(("columns", i), f"no column {column!r} in table {params['table']!r}")
            for i, column in enumerate(params["columns"])
            if column not in columns
        ]


@pytest.fixture
async def owner(nats_url: str, namespace: str) -> AsyncIterator[Callable[[], Awaitable[Owner]]]:
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    brokers: list[Broker] = []

    async def start() -> Owner:
        broker = Broker(
            ServiceSettings(nats={"url": nats_url}, namespace=namespace), source="/jobwire/tests"
        )
        await broker.connect()
        brokers.append(broker)
        served = Owner()
        serving = asyncio.Event()
        tasks.append(
            asyncio.create_task(
                serve_validation(broker, JOB_TYPE, served.check, stop, serving=serving)
            )
        )
        await asyncio.wait_for(serving.wait(), 5)
        return served

    yield start
    stop.set()
    for task in tasks:
        await asyncio.wait_for(task, 5)
    for broker in brokers:
        await broker.close()


async def test_create_is_refused_naming_each_field_the_owner_finds(api, owner) -> None:  # type: ignore[no-untyped-def]
    served = await owner()

    refused = await api.admin.post("/api/v1/jobs", json=live_job(columns=["id", "titel", "body"]))

    assert refused.status_code == 422, refused.text
    assert fields(refused) == {"params.columns.1", "params.columns.2"}
    body = refused.json()
    assert body["type"] == "urn:jobwire:problem:validation"
    assert "no column 'titel' in table 'cases'" in body["detail"]
    assert served.checked == [{"table": "cases", "columns": ["id", "titel", "body"]}]
    assert (await api.viewer.get("/api/v1/jobs/sync")).status_code == 404

    unknown = await api.admin.post("/api/v1/jobs", json=live_job(table="case"))
    assert unknown.status_code == 422
    assert unknown.json()["errors"] == [
        {"field": "params.table", "message": "no table 'case' in the source"}
    ]

    created = await api.admin.post("/api/v1/jobs", json=live_job(columns=["id", "title"]))
    assert created.status_code == 201, created.text


async def test_a_static_error_is_refused_before_anyone_is_asked(api, owner) -> None:  # type: ignore[no-untyped-def]
    served = await owner()

    refused = await api.admin.post("/api/v1/jobs", json=live_job(table=7))

    assert refused.status_code == 422
    assert fields(refused) == {"params.table"}
    assert served.checked == []


async def test_with_nobody_serving_the_type_the_job_is_saved_at_once(api) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    created = await api.admin.post("/api/v1/jobs", json=live_job(table="not-checked"))

    assert created.status_code == 201, created.text
    assert time.monotonic() - started < 2.0  # no responders: the 3 s timeout is not waited


async def test_a_live_check_of_zero_seconds_asks_nobody(api, owner) -> None:  # type: ignore[no-untyped-def]
    served = await owner()
    api.context.live_check_seconds = 0

    created = await api.admin.post("/api/v1/jobs", json=live_job(table="unknown"))

    assert created.status_code == 201, created.text
    assert served.checked == []


async def test_an_update_is_checked_only_when_it_changes_type_or_params(api, owner) -> None:  # type: ignore[no-untyped-def]
    served = await owner()
    created = await api.admin.post("/api/v1/jobs", json=live_job())
    assert created.status_code == 201, created.text
    assert len(served.checked) == 1

    rescheduled = {**live_job(), "schedule": {"kind": "interval", "every": "PT2H"}, "version": 1}
    moved = await api.admin.put("/api/v1/jobs/sync", json=rescheduled)
    assert moved.status_code == 200, moved.text
    assert len(served.checked) == 1  # the schedule alone: no round trip

    changed = await api.admin.put(
        "/api/v1/jobs/sync", json={**live_job(columns=["id", "nope"]), "version": 2}
    )
    assert changed.status_code == 422, changed.text
    assert fields(changed) == {"params.columns.1"}
    assert len(served.checked) == 2
    kept = await api.viewer.get("/api/v1/jobs/sync")
    assert kept.json()["version"] == 2
    assert kept.json()["definition"]["params"] == {"table": "cases", "columns": ["id"]}


async def test_preview_of_an_unsaved_definition_is_checked_too(api, owner) -> None:  # type: ignore[no-untyped-def]
    await owner()

    refused = await api.viewer.post(
        "/api/v1/preview", json={"definition": live_job(table="gone"), "count": 2}
    )

    assert refused.status_code == 422, refused.text
    assert fields(refused) == {"definition.params.table"}
    fine = await api.viewer.post("/api/v1/preview", json={"definition": live_job(), "count": 2})
    assert fine.status_code == 200, fine.text
    assert len(fine.json()["fires"]) == 2


async def test_a_field_the_owner_names_outside_params_is_read_as_inside(
    api, namespace: str, nats_url: str
) -> None:  # type: ignore[no-untyped-def]
    broker = Broker(
        ServiceSettings(nats={"url": nats_url}, namespace=namespace), source="/jobwire/tests"
    )
    await broker.connect()
    stop = asyncio.Event()
    serving = asyncio.Event()

    async def careless(_: dict[str, Any]) -> list[ParamProblem]:
        return [ParamProblem("name", "not yours to judge")]

    task = asyncio.create_task(serve_validation(broker, JOB_TYPE, careless, stop, serving=serving))
    try:
        await asyncio.wait_for(serving.wait(), 5)
        refused = await api.admin.post("/api/v1/jobs", json=live_job())
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await broker.close()

    assert refused.status_code == 422
    assert fields(refused) == {"params.name"}


def test_which_saves_need_a_live_check() -> None:
    base = parse_definition(live_job())
    other_schedule = parse_definition(
        {**live_job(), "schedule": {"kind": "interval", "every": "PT5M"}}
    )
    other_params = parse_definition(live_job(columns=["title"]))
    other_type = parse_definition({**live_job(), "type": "test-work", "params": {"seconds": 1.0}})

    assert needs_live_check(base, None)
    assert not needs_live_check(other_schedule, base)
    assert needs_live_check(other_params, base)
    assert needs_live_check(other_type, base)
