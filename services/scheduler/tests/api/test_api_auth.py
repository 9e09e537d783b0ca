"""Tokens, roles and the audit log."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import fields, start_workflow_job

from jobwire.scheduler.api.tokens import (
    TokenError,
    TokenExists,
    TokenNotFound,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)

pytestmark = pytest.mark.integration

ADMIN_ONLY = {
    ("POST", "/api/v1/jobs"),
    ("PUT", "/api/v1/jobs/{name}"),
    ("DELETE", "/api/v1/jobs/{name}"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{name}"),
    ("GET", "/api/v1/audit"),
}
READS = {("POST", "/api/v1/preview")}  # a POST that changes nothing


def operations(app: Any) -> Iterator[tuple[str, str, str]]:
    """(method, url, role needed) for every operation in the OpenAPI document."""
    for path, ops in app.openapi()["paths"].items():
        url = path.format(name="x", run_id=uuid.uuid4(), backfill_id=uuid.uuid4())
        for method in ops:
            key = (method.upper(), path)
            if key in ADMIN_ONLY:
                role = "admin"
            elif method == "get" or key in READS:
                role = "viewer"
            else:
                role = "operator"
            yield method.upper(), url, role


async def test_every_operation_but_health_needs_a_valid_token(api) -> None:  # type: ignore[no-untyped-def]
    bogus = api.client("jw_" + "x" * 43)
    not_bearer = api.client(None)
    not_bearer.headers["Authorization"] = f"Basic {api.tokens['admin']}"
    checked = 0
    for method, url, _ in operations(api.app):
        if url == "/api/v1/health":
            assert (await api.anonymous.request(method, url)).status_code == 200
            continue
        for client in (api.anonymous, bogus, not_bearer):
            response = await client.request(method, url, json={})
            assert response.status_code == 401, (method, url, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
            checked += 1
    assert checked >= 3 * 25


async def test_each_role_may_do_what_its_rank_allows_and_no_more(api) -> None:  # type: ignore[no-untyped-def]
    below = {"operator": "viewer", "admin": "operator"}
    for method, url, role in operations(api.app):
        if url == "/api/v1/health":
            continue
        if role in below:
            denied = await api.clients[below[role]].request(method, url, json={})
            assert denied.status_code == 403, (method, url, denied.text)
            assert denied.json()["type"] == "urn:jobwire:problem:forbidden"
        allowed = await api.clients[role].request(method, url, json={})
        assert allowed.status_code not in (401, 403), (method, url, allowed.text)


async def test_viewer_cannot_trigger_and_operator_cannot_create(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    viewer_trigger = await api.viewer.post("/api/v1/jobs/hello/trigger")
    assert viewer_trigger.status_code == 403
    operator_create = await api.operator.post("/api/v1/jobs", json=start_workflow_job("other"))
    assert operator_create.status_code == 403
    assert await api.pool.fetchval("SELECT count(*) FROM scheduler.runs") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM scheduler.jobs") == 1


async def test_tokens_are_stored_hashed_and_stop_working_when_revoked(api) -> None:  # type: ignore[no-untyped-def]
    token = await create_token(api.pool, "ci", "operator")
    assert token.startswith("jw_")
    assert len(token) > 40
    stored = await api.pool.fetchrow("SELECT * FROM scheduler.api_tokens WHERE name = 'ci'")
    assert bytes(stored["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert token not in str(dict(stored))

    client = api.client(token)
    assert (await client.get("/api/v1/jobs")).status_code == 200
    [info] = [t for t in await list_tokens(api.pool) if t.name == "ci"]
    assert info.role == "operator"
    assert info.last_used_at is not None
    assert info.revoked_at is None

    with pytest.raises(TokenExists):
        await create_token(api.pool, "ci", "viewer")
    with pytest.raises(TokenError):
        await create_token(api.pool, "x", "root")
    with pytest.raises(TokenError):
        await create_token(api.pool, "", "viewer")

    revoked = await revoke_token(api.pool, "ci")
    assert revoked.revoked_at is not None
    assert (await client.get("/api/v1/jobs")).status_code == 401
    assert await authenticate(api.pool, token) is None
    with pytest.raises(TokenNotFound):
        await revoke_token(api.pool, "ci")
    # The name is free again; the revoked token stays listed.
    await create_token(api.pool, "ci", "viewer")
    same_name = [t for t in await list_tokens(api.pool) if t.name == "ci"]
    assert sorted(t.revoked_at is None for t in same_name) == [False, True]
    active = await list_tokens(api.pool, include_revoked=False)
    assert sorted(t.name for t in active) == ["admin-token", "ci", "operator-token", "viewer-token"]


async def test_tokens_through_the_api_are_shown_once(api) -> None:  # type: ignore[no-untyped-def]
    created = await api.admin.post("/api/v1/tokens", json={"name": "web", "role": "viewer"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert (await api.client(token).get("/api/v1/jobs")).status_code == 200
    listed = await api.admin.get("/api/v1/tokens")
    assert token not in listed.text
    assert "token" not in listed.json()[0]
    assert {t["name"] for t in listed.json()} >= {"web", "admin-token"}
    duplicate = await api.admin.post("/api/v1/tokens", json={"name": "web", "role": "viewer"})
    assert duplicate.status_code == 409
    bad_role = await api.admin.post("/api/v1/tokens", json={"name": "w2", "role": "root"})
    assert bad_role.status_code == 422
    assert fields(bad_role) == {"role"}
    assert (await api.admin.delete("/api/v1/tokens/web")).status_code == 204
    assert (await api.client(token).get("/api/v1/jobs")).status_code == 401
    assert (await api.admin.delete("/api/v1/tokens/web")).status_code == 404


async def test_every_change_is_in_the_audit_log_with_who_and_before_after(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job(group="g"))).status_code
    changed = start_workflow_job(group="g", description="v2")
    assert (await api.admin.put("/api/v1/jobs/hello", json={**changed, "version": 1})).is_success
    assert (await api.operator.post("/api/v1/jobs/hello/disable")).is_success
    assert (await api.operator.post("/api/v1/jobs/hello/enable")).is_success
    assert (await api.operator.post("/api/v1/jobs/hello/pause")).is_success
    assert (await api.operator.post("/api/v1/jobs/hello/resume")).is_success
    run = (await api.operator.post("/api/v1/jobs/hello/trigger")).json()
    assert (await api.operator.post("/api/v1/groups/g/disable")).is_success
    assert (await api.admin.post("/api/v1/tokens", json={"name": "t", "role": "viewer"})).is_success
    assert (await api.admin.delete("/api/v1/tokens/t")).is_success
    assert (await api.admin.delete("/api/v1/jobs/hello")).is_success
    # Refused requests change nothing, so they leave no audit row.
    assert (await api.viewer.post("/api/v1/jobs/hello/trigger")).status_code == 403

    response = await api.admin.get("/api/v1/audit", params={"limit": 500})
    assert response.status_code == 200
    page = response.json()
    entries = page["items"][::-1]  # oldest first
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("cli", "token.create", f"{role}-token") for role in ("viewer", "operator", "admin")
    ] + [
        ("admin-token", "job.create", "hello"),
        ("admin-token", "job.update", "hello"),
        ("operator-token", "job.disable", "hello"),
        ("operator-token", "job.enable", "hello"),
        ("operator-token", "job.pause", "hello"),
        ("operator-token", "job.resume", "hello"),
        ("operator-token", "job.trigger", "hello"),
        ("operator-token", "group.disable", "g"),
        ("admin-token", "token.create", "t"),
        ("admin-token", "token.revoke", "t"),
        ("admin-token", "job.delete", "hello"),
    ]
    by_action = {e["action"]: e for e in entries}
    update = by_action["job.update"]
    assert update["before"]["definition"]["description"] == "hello: starts the hello workflow"
    assert update["after"]["definition"]["description"] == "v2"
    assert (update["before"]["version"], update["after"]["version"]) == (1, 2)
    assert by_action["job.disable"]["before"]["enabled"] is True
    assert by_action["job.disable"]["after"]["enabled"] is False
    assert by_action["job.trigger"]["after"]["run_id"] == run["id"]
    assert by_action["group.disable"]["after"] == {"enabled": False}
    assert by_action["job.delete"]["after"] is None
    assert by_action["job.create"]["before"] is None

    filtered = await api.admin.get(
        "/api/v1/audit", params={"target_type": "job", "target": "hello", "action": "job.pause"}
    )
    assert [e["action"] for e in filtered.json()["items"]] == ["job.pause"]
    paged = (await api.admin.get("/api/v1/audit", params={"limit": 2, "offset": 1})).json()
    assert [e["id"] for e in paged["items"]] == [e["id"] for e in page["items"][1:3]]
    assert paged["total"] == page["total"]
    since = entries[-1]["at"]
    recent = (await api.admin.get("/api/v1/audit", params={"from": since})).json()
    assert [e["action"] for e in recent["items"]][-1] == "job.delete"
    assert (await api.admin.get("/api/v1/audit", params={"to": entries[0]["at"]})).json()[
        "total"
    ] == 0
    assert (await api.operator.get("/api/v1/audit")).status_code == 403
