"""Jobs that cannot fire, through the API: refused when saved, Faulted when the
firing loop could not handle them, Ended when their schedule ran out (issue:
hardening, defects 1, 5 and 6)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from api_helpers import fields, start_workflow_job

from jobwire.contracts.envelope import utcnow
from jobwire.testing.waiting import wait_for

pytestmark = pytest.mark.integration


def once(at: str, name: str = "once") -> dict[str, object]:
    return start_workflow_job(name, schedule={"kind": "once", "at": at})


async def test_the_largest_instant_the_api_took_is_refused_naming_its_field(api) -> None:  # type: ignore[no-untyped-def]
    """It used to be stored (201) and crash the firing loop on every restart."""
    response = await api.admin.post("/api/v1/jobs", json=once("9999-12-31T23:59:59.999999Z"))
    assert response.status_code == 422, response.text
    assert fields(response) == {"schedule.once.at"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"start_at": "2030-01-02T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
        ({"schedule": {"kind": "cron", "expression": "0 0 30 2 *"}}, "schedule.cron.expression"),
        ({"after": [{"job": "hello"}]}, "after"),
    ],
)
async def test_cross_field_refusals_name_the_field_not_the_body(api, extra, field) -> None:  # type: ignore[no-untyped-def]
    response = await api.admin.post("/api/v1/jobs", json=start_workflow_job(**extra))
    assert response.status_code == 422, response.text
    assert fields(response) == {field}


async def test_a_job_that_could_never_fire_is_refused_and_a_preview_says_why(api) -> None:  # type: ignore[no-untyped-def]
    past = (utcnow() - timedelta(hours=1)).isoformat()
    response = await api.admin.post("/api/v1/jobs", json=once(past))
    assert response.status_code == 422, response.text
    assert fields(response) == {"schedule.once.at"}
    expired = start_workflow_job("expired", expires_at=past)
    response = await api.admin.post("/api/v1/jobs", json=expired)
    assert fields(response) == {"expires_at"}

    preview = await api.viewer.post("/api/v1/preview", json={"definition": once(past)})
    assert preview.status_code == 200, preview.text
    assert preview.json()["fires"] == []
    assert "schedule.once.at is in the past" in preview.json()["reason"]


async def test_a_once_job_that_fired_is_ended_and_still_editable(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api()
    soon = (utcnow() + timedelta(seconds=1)).isoformat()
    created = await api.admin.post("/api/v1/jobs", json=once(soon))
    assert created.status_code == 201, created.text

    async def ended() -> bool:
        job = (await api.viewer.get("/api/v1/jobs/once")).json()
        return bool(job["status"] == "Ended")

    await wait_for(ended, timeout=20)
    edited = {**once(soon), "description": "fired already: still editable"}
    response = await api.admin.put("/api/v1/jobs/once", json=edited, headers={"If-Match": '"1"'})
    assert response.status_code == 200, response.text


async def test_a_faulted_job_shows_its_error_and_saving_it_again_clears_it(api) -> None:  # type: ignore[no-untyped-def]
    created = await api.admin.post("/api/v1/jobs", json=start_workflow_job())
    assert created.status_code == 201, created.text
    await api.pool.execute(
        """UPDATE scheduler.jobs SET fault = 'its run cannot be built: boom', faulted_at = now(),
               next_fire_at = NULL WHERE name = 'hello'"""
    )
    job = (await api.viewer.get("/api/v1/jobs/hello")).json()
    assert job["status"] == "Faulted"
    assert job["fault"] == "its run cannot be built: boom"
    assert job["next_run_at"] is None
    listed = await api.viewer.get("/api/v1/jobs", params={"status": "Faulted"})
    assert [j["name"] for j in listed.json()["items"]] == ["hello"]
    slot = (await api.viewer.get("/api/v1/jobs/hello/preview")).json()["fires"][0]["at"]
    explained = await api.viewer.get("/api/v1/jobs/hello/explain", params={"at": slot})
    assert explained.json()["verdict"] == "faulted"

    saved = await api.admin.put(
        "/api/v1/jobs/hello", json=start_workflow_job(), headers={"If-Match": '"1"'}
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["status"] == "Ready"
    assert saved.json()["fault"] is None
    assert saved.json()["next_run_at"] is not None


async def test_a_job_whose_stored_definition_breaks_can_be_read_replaced_and_deleted(api) -> None:  # type: ignore[no-untyped-def]
    """As after an upgrade that tightened a rule: the API must not answer 500."""
    for name in ("broken", "doomed"):
        created = await api.admin.post("/api/v1/jobs", json=start_workflow_job(name))
        assert created.status_code == 201, created.text
    await api.pool.execute(
        """UPDATE scheduler.jobs SET definition = jsonb_set(definition, '{priority}', '"high"'),
               version = version + 1 WHERE name IN ('broken', 'doomed')"""
    )
    read = await api.viewer.get("/api/v1/jobs/broken")
    assert read.status_code == 200, read.text
    saved = await api.admin.put(
        "/api/v1/jobs/broken", json=start_workflow_job("broken"), headers={"If-Match": '"2"'}
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["definition"]["priority"] == 0
    deleted = await api.admin.delete("/api/v1/jobs/doomed")
    assert deleted.status_code == 204, deleted.text
