"""The API as deployed: the scheduler service run by the kit, over real HTTP (uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from api_helpers import start_workflow_job

from jobwire.runtime.db import connect_pool
from jobwire.runtime.embedded import free_port
from jobwire.runtime.logs import setup_logging
from jobwire.runtime.service import run_service
from jobwire.scheduler.api.tokens import create_token, ensure_schema, revoke_token
from jobwire.scheduler.main import spec
from jobwire.scheduler.settings import SchedulerSettings
from jobwire.testing.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def service(
    database_url: str, nats_url: str, namespace: str
) -> AsyncIterator[dict[str, Any]]:
    """The scheduler service with its HTTP server on a free port."""
    setup_logging("INFO", "json")  # the kit's pipeline (a no-op if already set up)
    port = free_port()
    settings = SchedulerSettings(
        nats={"url": nats_url},
        namespace=namespace,
        database_url=database_url,
        http_port=port,
        heartbeat_seconds=1,
        # The relay's own poll is slow here, so a quick run proves the API woke it.
        scheduler={"relay_poll_seconds": 30},
    )
    pool = await connect_pool(database_url, max_size=2)
    await ensure_schema(pool)  # as `jobwire tokens create` does before any scheduler ran
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(spec, settings, stop))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:

        async def ready() -> bool:
            response = await client.get("/api/v1/health")
            return response.status_code == 200 and response.json()["ready"]

        await wait_for(ready, timeout=20, ignore=(httpx.TransportError,))
        try:
            yield {"client": client, "pool": pool, "base": base}
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=30)
            await pool.close()


async def test_the_service_serves_the_api_and_a_trigger_wakes_its_relay(service) -> None:  # type: ignore[no-untyped-def]
    client: httpx.AsyncClient = service["client"]
    assert (await client.get("/api/v1/jobs")).status_code == 401
    assert (await client.get("/healthz")).status_code == 200  # the kit's probes still answer
    token = await create_token(service["pool"], "bootstrap", "admin")
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/api/v1/jobs", json=start_workflow_job(), headers=auth)).is_success
    run = (await client.post("/api/v1/jobs/hello/trigger", headers=auth)).json()

    async def succeeded() -> bool:
        detail = await client.get(f"/api/v1/runs/{run['id']}", headers=auth)
        return bool(detail.json()["status"] == "succeeded")

    await wait_for(succeeded, timeout=5, description="the manual run published")
    hosts = (await client.get("/api/v1/hosts", headers=auth)).json()
    assert "scheduler" in {h["service"] for h in hosts}
    openapi = await client.get("/api/v1/openapi.json")
    assert "/api/v1/jobs/{name}/explain" in openapi.json()["paths"]


@contextlib.contextmanager
def rendered_logs() -> Iterator[io.StringIO]:
    """Every log record, at every level, rendered by the kit's own formatter."""
    root = logging.getLogger()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(root.handlers[0].formatter)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    for name in quiet:  # the test's own client logs the URLs it calls
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, previous in quiet.items():
            logging.getLogger(name).setLevel(previous)


async def test_tokens_never_appear_in_logs(service) -> None:  # type: ignore[no-untyped-def]
    client: httpx.AsyncClient = service["client"]
    with rendered_logs() as logs:
        secrets = await _use_tokens(service, client)
    logged = logs.getvalue()
    assert "api.token_created" in logged  # the capture works, and saw the token made
    for token in secrets:
        assert token not in logged
        assert token[3:20] not in logged
    dumped = await service["pool"].fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM scheduler.audit_log) t"
    )
    tokens_table = await service["pool"].fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM scheduler.api_tokens) t"
    )
    for token in secrets:
        assert token not in dumped
        assert token not in tokens_table


async def _use_tokens(service: dict[str, Any], client: httpx.AsyncClient) -> list[str]:
    """Make, revoke, use and misuse tokens in every way a request can carry one."""
    admin = await create_token(service["pool"], "admin", "admin")
    revoked = await create_token(service["pool"], "gone", "viewer")
    await revoke_token(service["pool"], "gone")
    made = await client.post(
        "/api/v1/tokens",
        json={"name": "made", "role": "operator"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    minted = made.json()["token"]
    unknown = "jw_" + "u" * 43
    secrets = [admin, revoked, minted, unknown]
    for token in secrets:
        for path in ("/api/v1/jobs", "/api/v1/audit", "/api/v1/jobs/nope", "/nowhere"):
            await client.get(path, headers={"Authorization": f"Bearer {token}"})
            await client.get(path, params={"token": token})  # misplaced, still not logged
        await client.post(
            "/api/v1/jobs",
            json={**start_workflow_job(), "description": "x" * 5, "params": {"oops": token}},
            headers={"Authorization": f"Bearer {token}"},
        )
        await client.get("/api/v1/jobs", headers={"Authorization": f"Basic {token}"})
    return secrets
