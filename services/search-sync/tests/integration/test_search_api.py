"""The search REST API (``/api/v1/search``) over real HTTP, its tokens checked by a real
scheduler, on a caseapp source and osmem-server.

The scheduler runs as a whole service in this process (the harness's
``scheduler`` fixture, :mod:`jobwire.testing.admin_api`), so its ``GET
/api/v1/whoami`` answers for a token per role; the search sync is started with
``scheduler_url`` pointing at it, as ``jobwire dev`` and a deployment do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio

import caseapp
from jobwire.runtime.embedded import free_port
from jobwire.search_sync.api import MAX_REQUEST_BYTES
from jobwire.testing import wait_for
from jobwire.testing.admin_api import RoleClients, TokenScheduler

if TYPE_CHECKING:
    from conftest import SearchSync, Start

pytestmark = pytest.mark.integration

STATUS = "/api/v1/search/status"
INSTALL = "/api/v1/search/install"
Api = Callable[[], Awaitable[tuple["SearchSync", RoleClients]]]


@pytest_asyncio.fixture(loop_scope="session")
async def search_api(search_sync: Start, scheduler: TokenScheduler) -> AsyncIterator[Api]:
    """``await search_api()``: the search sync checking tokens with the scheduler, and a
    client per role on its API, once it serves (503 until its main has run)."""
    made: list[RoleClients] = []

    async def start() -> tuple[SearchSync, RoleClients]:
        service = await search_sync(scheduler_url=scheduler.url, token_cache_seconds=0)
        clients = RoleClients(f"http://127.0.0.1:{service.settings.http_port}", scheduler.tokens)
        made.append(clients)

        async def serving() -> bool:
            try:
                response = await clients.viewer.post(STATUS, json={})
            except httpx.TransportError:
                return False
            return response.status_code == 422  # past the token and the 503 of starting

        await wait_for(serving, timeout=20, description="the search API serving")
        return service, clients

    yield start
    for clients in made:
        await clients.close()


def job(service: SearchSync, alias: str, **params: Any) -> dict[str, Any]:
    return {"type": "search-incremental", "params": service.params(alias, **params)}


def problem_fields(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return [e["field"] for e in response.json()["errors"]]


async def test_only_a_token_of_the_right_role_is_served(search_api: Api, alias: str) -> None:
    service, api = await search_api()
    body = job(service, alias)

    for path in (STATUS, INSTALL):
        for client in (api.anonymous, api.with_token("jw_" + "x" * 43)):
            response = await client.post(path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")

    assert (await api.viewer.post(STATUS, json=body)).status_code == 200
    refused = await api.viewer.post(INSTALL, json={**body, "apply": False})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this needs the admin role; the token is viewer"
    operator = await api.operator.post(INSTALL, json={**body, "apply": False})
    assert operator.status_code == 403
    assert (await api.admin.post(INSTALL, json={**body, "apply": False})).status_code == 200
    assert (await api.anonymous.get("/api/v1/health")).status_code == 200


async def test_install_then_status_follows_the_load_and_the_changes(
    search_api: Api, alias: str
) -> None:
    service, api = await search_api()
    await caseapp.generate(service.source_url, cases=12)
    body = job(service, alias)

    before = (await api.viewer.post(STATUS, json=body)).json()
    assert (before["capture_installed"], before["consumer"]) == (False, None)
    assert (before["aliased"], before["index_documents"]) == ([], None)
    assert before["source_documents"] == 12

    shown = await api.admin.post(INSTALL, json={**body, "apply": False})
    assert shown.status_code == 200, shown.text
    sql = shown.json()
    assert (sql["applied"], sql["triggers"]) == (False, [])
    assert any("CREATE TRIGGER" in statement for statement in sql["statements"])
    assert any('ON "caseapp"."tasks"' in statement for statement in sql["statements"])
    still = (await api.viewer.post(STATUS, json=body)).json()
    assert still["capture_installed"] is False  # only shown, not run

    installed = await api.admin.post(INSTALL, json=body)
    assert installed.status_code == 200, installed.text
    answer = installed.json()
    assert answer["applied"] is True
    assert answer["triggers"]
    assert answer["statements"] == sql["statements"]
    now = (await api.viewer.post(STATUS, json=body)).json()
    assert (now["capture_installed"], now["capture_missing"]) == (True, [])
    assert now["consumer"] is None  # installed, not loaded

    loaded = await service.full_load(alias)
    status = (await api.viewer.post(STATUS, json=body)).json()
    assert status["aliased"] == [loaded["index"]]
    assert status["indices"] == [loaded["index"]]
    assert status["source_documents"] == status["index_documents"] == 12
    consumer = status["consumer"]
    assert consumer["index"] == loaded["index"]
    assert consumer["watermark"] > 0
    assert consumer["profile_current"] is True
    assert (status["pending_changes"], status["lag_seconds"]) == (0, 0.0)

    await service.execute("UPDATE caseapp.cases SET title = 'changed' WHERE id = 3")
    changed = (await api.viewer.post(STATUS, json=body)).json()
    assert changed["pending_changes"] >= 1
    assert changed["lag_seconds"] >= 0
    assert changed["consumer"]["watermark"] == consumer["watermark"]

    await service.incremental(alias)
    synced = (await api.viewer.post(STATUS, json=body)).json()
    assert synced["pending_changes"] == 0
    assert synced["consumer"]["watermark"] > consumer["watermark"]

    # Another profile than the one the index was built with: the full load is due again.
    other = dict(service.params(alias)["profile"], fields=["id", "reference", "title"])
    stale = (await api.viewer.post(STATUS, json=job(service, alias, profile=other))).json()
    assert stale["consumer"]["profile_current"] is False


async def test_bad_requests_are_refused_naming_what_is_wrong(search_api: Api, alias: str) -> None:
    service, api = await search_api()
    body = job(service, alias)

    bad_alias = await api.viewer.post(STATUS, json=job(service, alias, index={"alias": "Bad!"}))
    assert bad_alias.status_code == 422
    assert problem_fields(bad_alias) == ["params.index.alias"]
    bad_type = await api.viewer.post(STATUS, json={**body, "type": "email-send"})
    assert (bad_type.status_code, problem_fields(bad_type)) == (422, ["type"])

    profile = dict(service.params(alias)["profile"], root="caseapp.nope")
    unknown = await api.admin.post(INSTALL, json=job(service, alias, profile=profile))
    assert unknown.status_code == 422
    assert problem_fields(unknown) == ["params.profile.root"]
    assert "caseapp.nope" in unknown.json()["errors"][0]["message"]
    unknown_status = await api.viewer.post(STATUS, json=job(service, alias, profile=profile))
    assert problem_fields(unknown_status) == ["params.profile.root"]

    huge = {**body, "padding": "x" * (MAX_REQUEST_BYTES + 1)}
    too_big = await api.viewer.post(STATUS, json=huge)
    assert too_big.status_code == 413
    assert (await api.admin.post(INSTALL, json=huge)).status_code == 413
    not_json = await api.viewer.post(
        STATUS, content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422


async def test_an_unreachable_source_is_a_bad_gateway(
    search_api: Api, alias: str, tmp_path: Path
) -> None:
    service, api = await search_api()
    # The search_sync fixture's secrets folder: a DSN naming a port nobody listens on.
    (tmp_path / "secrets" / "closed-dsn").write_text(
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    )
    body = job(service, alias, source={"dsn": "closed-dsn"})

    for client, path in ((api.viewer, STATUS), (api.admin, INSTALL)):
        response = await client.post(path, json=body)
        assert response.status_code == 502, (path, response.text)
        assert response.json()["title"] == "Unreachable"
    missing = await api.viewer.post(STATUS, json=job(service, alias, source={"dsn": "no-such"}))
    assert missing.status_code == 502
    assert "no-such" in missing.json()["detail"]
