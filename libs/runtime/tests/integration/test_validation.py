"""Live validation of job params over core NATS request/reply, on a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from jobwire.runtime.broker import Broker
from jobwire.runtime.settings import ServiceSettings
from jobwire.runtime.validation import (
    MAX_REQUEST_BYTES,
    ParamProblem,
    ParamsCheck,
    check_live,
    serve_validation,
)
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration

JOB_TYPE = "search-full-load"
Serve = Callable[..., Awaitable[Broker]]


async def known_tables(params: dict[str, Any]) -> list[ParamProblem]:
    """A checker like search-sync's: the profile's tables must exist."""
    tables = {"cases", "tasks"}
    problems = []
    if params["profile"]["table"] not in tables:
        problems.append(ParamProblem.at(("profile", "table"), "no such table"))
    for i, child in enumerate(params["profile"].get("children", [])):
        if child["table"] not in tables:
            problems.append(
                ParamProblem.at(("profile", "children", i, "table"), "no such table: comments2")
            )
    return problems


@pytest.fixture
async def serve(nats_url: str, namespace: str) -> AsyncIterator[Serve]:
    """Start ``serve_validation`` on its own connection (as a worker service would)."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    brokers: list[Broker] = []

    async def start(check: ParamsCheck, **options: Any) -> Broker:
        broker = Broker(
            ServiceSettings(nats={"url": nats_url}, namespace=namespace), source="/jobwire/tests"
        )
        await broker.connect()
        brokers.append(broker)
        serving = asyncio.Event()
        tasks.append(
            asyncio.create_task(
                serve_validation(broker, JOB_TYPE, check, stop, serving=serving, **options)
            )
        )
        await asyncio.wait_for(serving.wait(), 5)
        return broker

    yield start
    stop.set()
    for task in tasks:
        await asyncio.wait_for(task, 5)
    for broker in brokers:
        await broker.close()


@pytest.fixture
async def asker(nats_url: str, namespace: str) -> AsyncIterator[Broker]:
    """The scheduler's side: another connection."""
    broker = Broker(
        ServiceSettings(nats={"url": nats_url}, namespace=namespace), source="/jobwire/tests"
    )
    await broker.connect()
    yield broker
    await broker.close()


def profile(table: str, *children: str) -> dict[str, Any]:
    return {"profile": {"table": table, "children": [{"table": c} for c in children]}}


def test_a_problem_is_located_under_params() -> None:
    problem = ParamProblem.at(("profile", "children", 0, "table"), "no such table")

    assert problem.field == "params.profile.children.0.table"
    assert ParamProblem.at((), "too big").field == "params"


async def test_the_owner_names_each_problem(serve: Serve, asker: Broker) -> None:
    await serve(known_tables)

    problems = await check_live(asker, JOB_TYPE, profile("cases2", "tasks", "comments2"), 2.0)

    assert problems == [
        ParamProblem("params.profile.table", "no such table"),
        ParamProblem("params.profile.children.1.table", "no such table: comments2"),
    ]
    assert await check_live(asker, JOB_TYPE, profile("cases", "tasks"), 2.0) == []


async def test_a_checker_that_raises_means_not_checked_and_the_server_goes_on(
    serve: Serve, asker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    async def flaky(params: dict[str, Any]) -> list[ParamProblem]:
        if params.get("explode"):
            raise ConnectionRefusedError("source database unreachable")
        return await known_tables(params)

    await serve(flaky)

    with caplog.at_level(logging.INFO):
        assert await check_live(asker, JOB_TYPE, {"explode": True}, 2.0) is None
    assert "validation.check_failed" in caplog.text
    assert "could not check: ConnectionRefusedError: source database unreachable" in caplog.text
    # The same subscription still answers.
    problems = await check_live(asker, JOB_TYPE, profile("nope"), 2.0)
    assert problems == [ParamProblem("params.profile.table", "no such table")]


async def test_the_error_reply_says_what_raised(serve: Serve, asker: Broker) -> None:
    async def broken(_: dict[str, Any]) -> list[ParamProblem]:
        raise KeyError("profile")

    await serve(broken)

    reply = await asker.nc.request(asker.subjects.validate_params(JOB_TYPE), b'{"params":{}}', 2)

    assert json.loads(reply.data) == {"error": "KeyError: 'profile'"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "ValueError: request is not JSON"),
        (b'["params"]', 'ValueError: request must be a JSON object {"params": {...}}'),
        (b'{"params": 3}', 'ValueError: request must be a JSON object {"params": {...}}'),
        (b"\xff\xfe", "ValueError: request is not JSON"),
    ],
)
async def test_an_unreadable_request_gets_an_error_reply(
    serve: Serve, asker: Broker, body: bytes, error: str
) -> None:
    checked: list[dict[str, Any]] = []

    async def record(params: dict[str, Any]) -> list[ParamProblem]:
        checked.append(params)
        return []

    await serve(record)

    reply = await asker.nc.request(asker.subjects.validate_params(JOB_TYPE), body, 2)

    assert json.loads(reply.data)["error"].startswith(error)
    assert checked == []


async def test_a_request_over_the_bound_is_not_parsed(serve: Serve, asker: Broker) -> None:
    checked: list[dict[str, Any]] = []

    async def record(params: dict[str, Any]) -> list[ParamProblem]:
        checked.append(params)
        return []

    await serve(record, max_request_bytes=1000)
    subject = asker.subjects.validate_params(JOB_TYPE)
    body = json.dumps({"params": {"pad": "x" * 1000}}).encode()

    reply = await asker.nc.request(subject, body, 2)

    assert json.loads(reply.data) == {
        "error": f"ValueError: request is {len(body)} bytes; at most 1000 are read"
    }
    assert checked == []
    # The default bound is NATS' default max_payload, 1 MiB.
    assert MAX_REQUEST_BYTES == 1024 * 1024


async def test_no_responders_is_not_checked_at_once(
    asker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        result = await check_live(asker, JOB_TYPE, profile("cases"), 5.0)

    assert result is None
    assert time.monotonic() - started < 1.0  # NATS said "no responders"; no waiting out 5 s
    # Most job types have no live check: that is not worth a line at info.
    assert "validation.not_served" in caplog.text
    assert "validation.not_checked" not in caplog.text


async def test_a_slow_owner_is_not_waited_for(serve: Serve, asker: Broker) -> None:
    release = asyncio.Event()

    async def slow(_: dict[str, Any]) -> list[ParamProblem]:
        await release.wait()
        return [ParamProblem.at(("profile",), "too late to matter")]

    await serve(slow)

    started = time.monotonic()
    result = await check_live(asker, JOB_TYPE, profile("cases"), 0.3)
    elapsed = time.monotonic() - started
    release.set()

    assert result is None
    assert 0.25 < elapsed < 2.0


async def test_a_check_past_its_own_limit_is_answered_with_an_error(
    serve: Serve, asker: Broker
) -> None:
    async def hangs(_: dict[str, Any]) -> list[ParamProblem]:
        await asyncio.Event().wait()
        return []

    await serve(hangs, max_check_seconds=0.2)

    reply = await asker.nc.request(asker.subjects.validate_params(JOB_TYPE), b'{"params":{}}', 3)

    assert json.loads(reply.data) == {"error": "TimeoutError"}


async def test_two_servers_in_the_queue_group_answer_once(serve: Serve, asker: Broker) -> None:
    calls: list[tuple[str, int]] = []

    def counting(name: str) -> ParamsCheck:
        async def check(params: dict[str, Any]) -> list[ParamProblem]:
            calls.append((name, params["n"]))
            return [ParamProblem.at(("n",), str(params["n"]))]

        return check

    await serve(counting("a"))
    await serve(counting("b"))
    # Every reply that reaches the inbox, not just the first one a request returns.
    replies: list[str] = []

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data)["problems"][0]["message"])

    inbox = asker.nc.new_inbox()
    sub = await asker.nc.subscribe(inbox, cb=collect)
    try:
        for n in range(20):
            body = json.dumps({"params": {"n": n}}).encode()
            await asker.nc.publish(asker.subjects.validate_params(JOB_TYPE), body, reply=inbox)
        await wait_for(lambda: {str(n) for n in range(20)} <= set(replies), 5)
    finally:
        await sub.unsubscribe()

    assert sorted(replies, key=int) == [str(n) for n in range(20)]
    assert sorted(n for _, n in calls) == list(range(20))


async def test_an_error_reply_or_garbage_means_not_checked(asker: Broker) -> None:
    subject = asker.subjects.validate_params(JOB_TYPE)
    answers = iter([b'{"error": "KeyError: x"}', b"garbage", b'{"problems": [{"field": 1}]}'])

    async def reply(msg: Any) -> None:
        await msg.respond(next(answers))

    sub = await asker.nc.subscribe(subject, cb=reply)
    try:
        for _ in range(3):
            assert await check_live(asker, JOB_TYPE, {}, 2.0) is None
    finally:
        await sub.unsubscribe()
