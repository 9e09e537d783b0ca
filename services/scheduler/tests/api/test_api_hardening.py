"""Hardening of the admin API: conflicts, unpublishable definitions, body limits,
authentication before the body, and refusals that name their field.

Each test here failed on the API as it was before the fix it covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from api_helpers import fields, start_workflow_job, worker_job

from jobwire.contracts.envelope import utcnow
from jobwire.runtime.db import connect_pool
from jobwire.scheduler.api.tokens import create_token
from jobwire.testing import wait_for
from jobwire.testing.fleet import Fleet, Instance

pytestmark = pytest.mark.integration

REPLICA = Path(__file__).resolve().parents[1] / "integration" / "replica.py"
MiB = 1024 * 1024


# ------------------------------------------------------------- 2. conflicts


async def test_renaming_a_job_onto_a_taken_name_is_a_conflict_naming_name(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job("a"))).status_code == 201
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job("b"))).status_code == 201
    renamed = await api.admin.put(
        "/api/v1/jobs/a", json=start_workflow_job("b"), headers={"If-Match": '"1"'}
    )
    assert renamed.status_code == 409, renamed.text
    assert fields(renamed) == {"name"}
    assert (await api.viewer.get("/api/v1/jobs/a")).json()["version"] == 1  # nothing changed


async def _blocked_on_a_lock(pool: asyncpg.Pool) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting)


@pytest.mark.parametrize("action", ["backfill", "trigger"])
async def test_a_job_deleted_while_a_request_writes_for_it_is_a_conflict_naming_it(
    api: Any, action: str
) -> None:
    """A foreign-key violation (the job went away between reading it and writing a
    run or backfill for it) is the caller's race, not a server error."""
    job = start_workflow_job("doomed", schedule={"kind": "interval", "every": "PT1H"})
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    if action == "backfill":
        now = utcnow()
        body = {"from": (now - timedelta(hours=5)).isoformat(), "to": now.isoformat()}
        url = "/api/v1/jobs/doomed/backfill"
    else:
        body, url = {}, "/api/v1/jobs/doomed/trigger"
    async with api.pool.acquire() as conn:
        deleting = conn.transaction()
        await deleting.start()
        # Deleted but not committed: the request still reads the job, and its
        # insert waits on the row lock for the foreign-key check.
        await conn.execute("DELETE FROM scheduler.jobs WHERE name = 'doomed'")
        request = asyncio.create_task(api.operator.post(url, json=body))
        await wait_for(lambda: _blocked_on_a_lock(api.pool), timeout=10)
        await deleting.commit()
        response = await request
    assert response.status_code == 409, response.text
    assert fields(response) == {"name"}


# ---------------------------------------------------- 3. unpublishable definitions


@pytest_asyncio.fixture(loop_scope="session")
async def roomy_api(make_api) -> Any:  # type: ignore[no-untyped-def]
    """An API whose body limit lets a definition larger than NATS' max_payload through,
    so that the publish check, not the body limit, is what refuses it."""
    harness = await make_api()
    harness.context.max_request_bytes = 16 * MiB
    return harness


def _max_payload(api: Any) -> int:
    return int(api.harness.broker.nc.max_payload)


async def test_a_definition_too_large_to_publish_is_refused_on_create_and_update(
    roomy_api: Any,
) -> None:
    api = roomy_api
    limit = _max_payload(api)
    huge = {"workflow": "hello", "input": {"blob": "x" * (limit + 1000)}}
    created = await api.admin.post("/api/v1/jobs", json=start_workflow_job(params=huge))
    assert created.status_code == 422, created.text[:300]
    assert fields(created) == {"params"}
    assert str(limit) in created.json()["errors"][0]["message"]

    big_work = worker_job("w", params={"seconds": 0.0, "blob": "y" * (limit + 10)})
    assert (await api.admin.post("/api/v1/jobs", json=big_work)).status_code == 422

    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    updated = await api.admin.put(
        "/api/v1/jobs/hello", json=start_workflow_job(params=huge), headers={"If-Match": '"1"'}
    )
    assert updated.status_code == 422, updated.text[:300]
    assert fields(updated) == {"params"}


async def test_a_trigger_whose_overrides_make_it_unpublishable_is_refused(roomy_api) -> None:  # type: ignore[no-untyped-def]
    api = roomy_api
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    overrides = {"params": {"input": {"blob": "z" * 2_000_000}}}
    response = await api.operator.post("/api/v1/jobs/hello/trigger", json=overrides)
    assert response.status_code == 422, response.text[:300]
    assert fields(response) == {"params"}
    assert str(_max_payload(api)) in response.text
    assert await api.store.runs("hello") == []  # no run that could only fail


# ------------------------------------------- 4. body limit, auth before the body (in process)


async def test_a_body_over_the_limit_is_refused_with_413_naming_the_limit(api) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(start_workflow_job(description="d" * (2 * MiB))).encode()
    response = await api.admin.post(
        "/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text[:300]
    assert fields(response) == {"body"}
    assert str(MiB) in response.text

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    chunked = await api.admin.post(
        "/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413, chunked.text[:300]
    assert (await api.viewer.get("/api/v1/jobs")).json()["total"] == 0


async def test_an_unauthenticated_request_is_refused_before_its_body_is_read(api) -> None:  # type: ignore[no-untyped-def]
    read = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(100):
            read += 1
            yield b"{" * 1024

    response = await api.anonymous.post(
        "/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert read <= 1


# ------------------------------------------------------- 4. a real scheduler process


@pytest.fixture
def fleet(tmp_path: Path, database_url: str, namespace: str) -> Iterator[Fleet]:
    fleet = Fleet(
        tmp_path,
        [sys.executable, str(REPLICA)],
        namespace=namespace,
        env={"JOBWIRE_DATABASE_URL": database_url, "JOBWIRE_DATABASE_POOL_MAX": "4"},
    )
    try:
        yield fleet
    finally:
        fleet.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw_request(
    port: int, head: str, first: bytes, rest: int = 0, chunk: bytes = b"", timeout: float = 10
) -> bytes:
    """Send ``head`` and ``first``, then up to ``rest`` more bytes of ``chunk`` only while
    the server has not answered; returns what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + first)
        sock.setblocking(False)
        answer = b""
        sent = 0
        while sent < rest and not answer:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                pass
            except OSError:  # the server closed: it answered and stopped reading
                break
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        return answer


async def test_a_real_scheduler_refuses_huge_bodies_unread_without_growing(
    fleet: Fleet, nats_url: str, database_url: str
) -> None:
    instance: Instance = fleet.start(nats_url)
    await fleet.ready(instance, timeout=60)
    pool = await connect_pool(database_url, max_size=1)
    try:
        token = await create_token(pool, "hardening", "admin")
    finally:
        await pool.close()
    port = instance.http_port
    head = (
        "POST /api/v1/jobs HTTP/1.1\r\nHost: jobwire\r\nContent-Type: application/json\r\n"
        "{auth}Content-Length: {length}\r\n\r\n"
    )
    before = _rss_kib(instance.pid)
    for _ in range(3):
        # 50 MB announced, 64 KB sent: the 401 must come without the rest.
        answer = await asyncio.to_thread(
            _raw_request, port, head.format(auth="", length=50 * MiB), b"{" * 65536
        )
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        # Authenticated, 2 MB announced: 413 naming the limit, before the body.
        auth = f"Authorization: Bearer {token}\r\n"
        answer = await asyncio.to_thread(
            _raw_request, port, head.format(auth=auth, length=2 * MiB), b"{" * 1024
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert str(MiB).encode() in answer
        # Chunked: cut at the limit while it streams in, up to 50 MB offered.
        chunked = head.replace("Content-Length: {length}", "Transfer-Encoding: chunked")
        piece = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        answer = await asyncio.to_thread(
            _raw_request, port, chunked.format(auth=auth), piece, 50 * MiB, piece * 16
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    grown = _rss_kib(instance.pid) - before
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB"
    assert instance.running


# ------------------------------------------------- 5. refusals that name the field


async def test_a_body_that_is_not_a_json_document_is_refused_naming_body(api) -> None:  # type: ignore[no-untyped-def]
    json_type = {"Content-Type": "application/json"}
    not_utf8 = await api.admin.post(
        "/api/v1/jobs", content=b'{"name": "caf\xe9"}', headers=json_type
    )
    assert not_utf8.status_code in (400, 422), not_utf8.text
    [error] = not_utf8.json()["errors"]
    assert error == {"field": "body", "message": "not valid UTF-8 at byte 13"}

    deep = await api.admin.post(
        "/api/v1/jobs", content=b"[" * 5000 + b"]" * 5000, headers=json_type
    )
    assert deep.status_code in (400, 422), deep.text
    [error] = deep.json()["errors"]
    assert error["field"] == "body"
    assert "nested deeper than 64 levels" in error["message"]
    # Deep inside a definition that is otherwise fine, too.
    nested: Any = 1
    for _ in range(100):
        nested = {"n": nested}
    deep_params = start_workflow_job(params={"workflow": "hello", "input": nested})
    refused = await api.admin.post("/api/v1/jobs", json=deep_params)
    assert refused.status_code in (400, 422)
    assert fields(refused) == {"body"}
    # Brackets inside strings are not nesting.
    shallow = start_workflow_job(description="[" * 500 + "{" * 500)
    assert (await api.admin.post("/api/v1/jobs", json=shallow)).status_code == 201

    broken = await api.admin.post("/api/v1/jobs", content=b'{"name": ', headers=json_type)
    assert broken.status_code in (400, 422)
    assert fields(broken) == {"body"}
    # An integer past Python's 4300-digit limit: json.loads refuses it (found by the fuzz test).
    huge = await api.admin.post(
        "/api/v1/jobs", content=b'{"a": ' + b"1" * 5000 + b"}", headers=json_type
    )
    assert huge.status_code in (400, 422), huge.text
    assert fields(huge) == {"body"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_that_is_not_json_by_its_content_type_is_415_naming_the_header(
    api: Any, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(start_workflow_job()).encode()
    client = api.admin
    if content_type is None:
        # httpx adds no Content-Type for raw content.
        response = await client.post("/api/v1/jobs", content=body)
    else:
        response = await client.post("/api/v1/jobs", content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert fields(response) == {"Content-Type"}
    assert (
        await client.post(
            "/api/v1/jobs",
            content=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
    ).status_code == 201


async def test_preview_names_a_definition_wide_problem_once(api) -> None:  # type: ignore[no-untyped-def]
    draft = start_workflow_job(
        "draft", start_at="2030-01-03T00:00:00Z", expires_at="2030-01-01T00:00:00Z"
    )
    response = await api.viewer.post("/api/v1/preview", json={"definition": draft})
    assert response.status_code == 422, response.text
    assert all(not f.startswith("definition.definition") for f in fields(response)), response.text
    assert all(f == "definition" or f.startswith("definition.") for f in fields(response))


async def test_a_backfill_range_that_ends_before_it_starts_names_from_and_to(api) -> None:  # type: ignore[no-untyped-def]
    job = start_workflow_job(schedule={"kind": "interval", "every": "PT1H"})
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    now = utcnow()
    response = await api.operator.post(
        "/api/v1/jobs/hello/backfill",
        json={"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()},
    )
    assert response.status_code == 422, response.text
    assert fields(response) == {"from", "to"}


async def test_requests_past_the_concurrency_limit_wait_their_turn(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api()
    api.context.max_concurrent_requests = 1
    job = start_workflow_job("held", schedule={"kind": "interval", "every": "PT1H"})
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    async with api.pool.acquire() as conn:
        holding = conn.transaction()
        await holding.start()
        await conn.execute("SELECT 1 FROM scheduler.jobs WHERE name = 'held' FOR UPDATE")
        # A rename waits on the row lock, holding the one slot...
        blocked = asyncio.create_task(
            api.admin.put(
                "/api/v1/jobs/held",
                json=start_workflow_job("held2"),
                headers={"If-Match": '"1"'},
            )
        )
        await wait_for(lambda: _blocked_on_a_lock(api.pool), timeout=10)
        # ...so a read waits for the slot, not on the database.
        waiting = asyncio.create_task(api.viewer.get("/api/v1/jobs"))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done
        await holding.rollback()
        assert (await blocked).status_code == 200
    assert (await waiting).json()["items"][0]["name"] == "held2"
