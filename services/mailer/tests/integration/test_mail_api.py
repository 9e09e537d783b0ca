"""The mail REST API over real HTTP, its tokens checked by a real scheduler.

The scheduler runs as a whole service in this process on the test's database
(the harness's ``scheduler`` fixture, :mod:`jobwire.testing.admin_api`), so its
``GET /api/v1/whoami`` answers for a token per role; the mailer is started with
``scheduler_url`` pointing at it, as ``jobwire dev`` and a deployment do.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from jobwire.contracts.mail import email_id
from jobwire.mailer.api import MAX_REQUEST_BYTES
from jobwire.testing import wait_for
from jobwire.testing.admin_api import RoleClients, TokenScheduler

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def clients() -> AsyncIterator[Any]:
    made: list[RoleClients] = []

    async def make(service: Any, scheduler: TokenScheduler) -> RoleClients:
        found = RoleClients(service.url, scheduler.tokens)
        made.append(found)

        async def serving() -> bool:
            # The API answers 503 until the mailer's main has built its queue.
            return (await found.viewer.get("/api/v1/mail/stats")).status_code == 200

        await wait_for(serving, timeout=20, description="the mail API serving")
        return found

    yield make
    for found in made:
        await found.close()


def body(key: str | None = None, **fields: Any) -> dict[str, Any]:
    key = key or f"api-{uuid.uuid4().hex[:12]}"
    return {
        "idempotency_key": key,
        "to": [{"address": f"{key}@example.com", "name": "Api Recipient"}],
        "subject": f"Hello {key}",
        "text": "Hello over REST.\n",
        **fields,
    }


def problem_fields(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return [e["field"] for e in response.json()["errors"]]


async def test_tokens_and_roles_are_the_admin_apis(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)

    for method, path in [
        ("GET", "/api/v1/mail"),
        ("GET", "/api/v1/mail/stats"),
        ("GET", f"/api/v1/mail/{uuid.uuid4()}"),
        ("GET", "/api/v1/contacts"),
        ("GET", "/api/v1/conversations/case-1"),
        ("POST", "/api/v1/mail"),
    ]:
        for client in (api.anonymous, api.with_token("jw_" + "x" * 43)):
            response = await client.request(method, path, json=body())
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
    unknown = await api.with_token("jw_" + "y" * 43).get("/api/v1/mail")
    assert unknown.json()["detail"] == "the token is unknown or revoked"

    assert (await api.viewer.get("/api/v1/mail")).status_code == 200
    assert (await api.viewer.get("/api/v1/contacts")).status_code == 200
    refused = await api.viewer.post("/api/v1/mail", json=body())
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this needs the operator role; the token is viewer"
    assert (await api.admin.post("/api/v1/mail", json=body())).status_code == 202
    # The health route needs none.
    assert (await api.anonymous.get("/api/v1/health")).status_code == 200


async def test_send_queues_once_per_idempotency_key(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)
    command = body(conversation_id="case-4711")

    first = await api.operator.post("/api/v1/mail", json=command)
    assert first.status_code == 202, first.text
    answer = first.json()
    assert answer == {
        "id": email_id(command["idempotency_key"]),
        "status": "queued",
        "message_id": answer["message_id"],
        "created": True,
    }
    assert answer["message_id"].startswith("<")
    assert answer["message_id"].endswith("@mailer.test>")
    assert await service.status(answer["id"]) == "queued"

    changed = {**command, "subject": "something else"}
    again = await api.operator.post("/api/v1/mail", json=changed)
    assert again.status_code == 202
    assert again.json() == {**answer, "created": False}
    detail = (await api.viewer.get(f"/api/v1/mail/{answer['id']}")).json()
    assert detail["subject"] == command["subject"]  # the first command's, not the second's


async def test_the_same_key_again_gets_the_first_commands_answer_valid_or_not(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)
    queued = body()
    first = await api.operator.post("/api/v1/mail", json=queued)
    assert first.status_code == 202, first.text

    # Refused on its own (an account the mailer does not have), but the key is queued.
    invalid_again = await api.operator.post("/api/v1/mail", json={**queued, "account": "nope"})
    assert invalid_again.status_code == 202, invalid_again.text
    assert invalid_again.json() == {**first.json(), "created": False}

    refused = body(account="nope")
    refused_first = await api.operator.post("/api/v1/mail", json=refused)
    assert problem_fields(refused_first) == ["account"]
    # Valid now, but the first command of this key was refused: refused again, for its reason.
    valid_again = await api.operator.post("/api/v1/mail", json={**refused, "account": "default"})
    assert valid_again.status_code == 422
    assert problem_fields(valid_again) == ["command"]
    assert "unknown account 'nope'" in valid_again.json()["errors"][0]["message"]
    assert await service.status(email_id(refused["idempotency_key"])) == "failed"


async def test_a_bad_request_is_refused_naming_what_is_wrong(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)

    invalid = await api.operator.post(
        "/api/v1/mail", json=body(to=[{"address": ""}], subject="x" * 999)
    )
    assert invalid.status_code == 422
    assert sorted(problem_fields(invalid)) == ["subject", "to.0.address"]
    missing = await api.operator.post("/api/v1/mail", json={"to": [{"address": "a@b.c"}]})
    assert problem_fields(missing) == ["idempotency_key"]
    not_json = await api.operator.post(
        "/api/v1/mail", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert (not_json.status_code, problem_fields(not_json)) == (422, ["body"])
    # Valid JSON, refused by the mailer's own checks (an account it does not have).
    unknown_account = await api.operator.post("/api/v1/mail", json=body(account="nope"))
    assert unknown_account.status_code == 422
    assert problem_fields(unknown_account) == ["account"]
    assert "unknown account 'nope'" in unknown_account.json()["detail"]

    form = await api.operator.post("/api/v1/mail", data={"to": "a@b.c"})
    assert form.status_code == 415
    assert problem_fields(form) == ["Content-Type"]
    text = await api.operator.post(
        "/api/v1/mail", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 415

    huge = body(text="x" * (MAX_REQUEST_BYTES + 1))
    declared = await api.operator.post("/api/v1/mail", json=huge)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is counted as read
        yield b'{"idempotency_key": "k", "text": "'
        for _ in range(MAX_REQUEST_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    streamed = await api.operator.post(
        "/api/v1/mail", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert "content-length" not in streamed.request.headers
    # Nothing of it was queued.
    assert (await api.viewer.get("/api/v1/mail/stats")).json().get("queued", 0) == 0


async def test_list_pages_with_a_cursor_and_filters(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)
    ids = []
    for n in range(5):
        extra = {"conversation_id": "case-7"} if n % 2 else {}
        response = await api.operator.post("/api/v1/mail", json=body(f"list-{n}", **extra))
        ids.append(response.json()["id"])

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.viewer.get("/api/v1/mail", params=params)).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids[::-1]  # newest first, each once
    by_conversation = await api.viewer.get("/api/v1/mail", params={"conversation_id": "case-7"})
    assert [i["id"] for i in by_conversation.json()["items"]] == [ids[3], ids[1]]

    await service.run()
    sent = await api.viewer.get("/api/v1/mail", params={"status": "sent"})
    assert sorted(i["id"] for i in sent.json()["items"]) == sorted(ids)
    assert (await api.viewer.get("/api/v1/mail", params={"status": "queued"})).json() == {
        "items": [],
        "next_cursor": None,
    }
    bad_status = await api.viewer.get("/api/v1/mail", params={"status": "lost"})
    assert (bad_status.status_code, problem_fields(bad_status)) == (422, ["status"])
    bad_cursor = await api.viewer.get("/api/v1/mail", params={"cursor": "nonsense"})
    assert (bad_cursor.status_code, problem_fields(bad_cursor)) == (422, ["cursor"])


async def test_show_has_every_attempt_and_server_reply(
    mailer, scheduler, clients, smtp_server_factory, account
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(
        faults=[{"stage": "rcpt", "reply": "451 4.7.1 Greylisted, try later", "count": 1}]
    )
    service = await mailer(accounts={"default": account(server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)
    command = body(tags=["t1"])
    queued = (await api.operator.post("/api/v1/mail", json=command)).json()

    first = await service.run()
    assert first.result == {"sent": 0, "deferred": 1, "failed": 0}
    deferred = (await api.viewer.get(f"/api/v1/mail/{queued['id']}")).json()
    assert deferred["status"] == "deferred"
    assert (deferred["last_code"], deferred["attempts"]) == (451, 1)
    assert "Greylisted" in deferred["last_reply"]
    assert deferred["next_attempt_at"] is not None

    async def sent_now() -> bool:
        run = await service.run()
        return bool(run.result and run.result["sent"] == 1)

    await wait_for(sent_now, timeout=10, interval=0.3, description="the retry sent it")
    response = await api.viewer.get(f"/api/v1/mail/{queued['id']}")
    assert response.status_code == 200
    detail = response.json()
    assert detail["status"] == "sent"
    assert detail["message_id"] == queued["message_id"]
    assert detail["accepted"] == [command["to"][0]["address"]]
    assert (detail["pending"], detail["next_attempt_at"]) == ([], None)
    assert detail["finished_at"] is not None
    assert detail["command"]["subject"] == command["subject"]
    assert detail["tags"] == ["t1"]
    history = detail["attempt_history"]
    assert [(a["attempt"], a["outcome"], a["code"]) for a in history] == [
        (1, "deferred", 451),
        (2, "sent", 250),
    ]
    assert "Greylisted, try later" in history[0]["reply"]
    assert history[0]["recipients"][0]["address"] == command["to"][0]["address"]
    assert history[0]["recipients"][0]["code"] == 451
    assert history[1]["reply"]  # the server's answer to the data, as it gave it
    assert all(a["host"] == "mailer-test" and a["ended_at"] for a in history)

    for missing in (str(uuid.uuid4()), "not-an-id"):
        absent = await api.viewer.get(f"/api/v1/mail/{missing}")
        assert absent.status_code == 404
        assert absent.json()["type"] == "urn:jobwire:problem:not-found"


async def test_contacts_come_from_the_address_book(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)}, scheduler_url=scheduler.url)
    api = await clients(service, scheduler)
    for key, name in [("carla-1", "Carla Case"), ("carl-2", "Carl Other"), ("dora-3", None)]:
        to = {"address": f"{key}@example.com"} | ({"name": name} if name else {})
        command = body(key, to=[to], conversation_id=f"case-{key}")
        assert (await api.operator.post("/api/v1/mail", json=command)).status_code == 202
    await service.run()
    assert (await api.viewer.get("/api/v1/contacts")).json() == []  # not populated yet

    populated = await service.run("address-book-populate")
    assert populated.status == "succeeded", populated.error

    carl = (await api.viewer.get("/api/v1/contacts", params={"prefix": "CARL"})).json()
    assert sorted(c["address"] for c in carl) == ["carl-2@example.com", "carla-1@example.com"]
    carla = next(c for c in carl if c["address"] == "carla-1@example.com")
    assert (carla["name"], carla["sent_count"], carla["received_count"]) == ("Carla Case", 1, 0)
    assert carla["last_conversation_id"] == "case-carla-1"
    by_name = (await api.viewer.get("/api/v1/contacts", params={"prefix": "carl o"})).json()
    assert [c["address"] for c in by_name] == ["carl-2@example.com"]
    everyone = (await api.viewer.get("/api/v1/contacts", params={"limit": 2})).json()
    assert len(everyone) == 2
    # LIKE's wildcards are plain characters in a prefix.
    assert (await api.viewer.get("/api/v1/contacts", params={"prefix": "%"})).json() == []


async def test_no_scheduler_no_token_check(
    mailer, scheduler, clients, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(
        accounts={"default": account(smtp_server)},
        scheduler_url=scheduler.url,
        token_cache_seconds=0,
    )
    api = await clients(service, scheduler)
    await scheduler.service.stop()

    response = await api.viewer.get("/api/v1/mail")
    assert response.status_code == 503
    assert response.json()["detail"] == "the scheduler cannot check tokens now: ConnectError"
    assert (await api.operator.post("/api/v1/mail", json=body())).status_code == 503


async def test_without_a_scheduler_url_every_request_is_refused(
    mailer, scheduler, smtp_server, account
) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(accounts={"default": account(smtp_server)})
    async with httpx.AsyncClient(base_url=service.url) as client:
        headers = {"Authorization": f"Bearer {scheduler.tokens['admin']}"}
        # Its HTTP server was up before its migrations ran, which the fixture waited for.
        response = await client.get("/api/v1/mail", headers=headers)
    assert response.status_code == 503
    assert "JOBWIRE_MAILER__SCHEDULER_URL is not set" in response.json()["detail"]
