"""Jobs through the API: create, read, list with filters, update, delete."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import fields, start_workflow_job, worker_job

from jobwire.contracts.envelope import utcnow
from jobwire.runtime.hosts import HostRegistry

pytestmark = pytest.mark.integration


async def test_a_job_is_created_read_and_listed_as_a_jobs_management_row(api) -> None:  # type: ignore[no-untyped-def]
    created = await api.admin.post("/api/v1/jobs", json=start_workflow_job(tags=["nightly"]))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/jobs/hello"
    assert created.headers["etag"] == '"1"'
    body = created.json()
    assert body["definition"]["params"] == {"workflow": "hello", "input": {"n": 1}}
    assert body["definition"]["schedule"]["timezone"] == "Europe/Berlin"

    read = await api.viewer.get("/api/v1/jobs/hello")
    assert read.status_code == 200
    assert read.json() == body

    listed = await api.viewer.get("/api/v1/jobs")
    assert listed.status_code == 200
    page = listed.json()
    assert page["total"] == 1
    assert page["limit"] == 100
    assert page["offset"] == 0
    [row] = page["items"]
    assert {k: row[k] for k in ("name", "type", "status", "enabled", "paused", "version")} == {
        "name": "hello",
        "type": "start-workflow",
        "status": "Ready",
        "enabled": True,
        "paused": False,
        "version": 1,
    }
    assert row["description"] == "hello: starts the hello workflow"
    assert row["tags"] == ["nightly"]
    assert row["last_result"] is None
    assert row["last_run_at"] is None
    assert row["next_run_at"] is not None
    assert row["active_hosts"] == []
    assert "definition" not in row


async def test_a_name_taken_is_a_conflict_and_an_unknown_job_is_not_found(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    again = await api.admin.post("/api/v1/jobs", json=start_workflow_job())
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["type"] == "urn:jobwire:problem:exists"
    missing = await api.viewer.get("/api/v1/jobs/nope")
    assert missing.status_code == 404
    assert missing.json()["status"] == 404


async def test_the_list_filters_sorts_and_pages(api) -> None:  # type: ignore[no-untyped-def]
    for i in range(7):
        job = start_workflow_job(
            f"job-{i}",
            group="even" if i % 2 == 0 else "odd",
            tags=["t"] if i < 3 else [],
            priority=i,
            description=f"number {i}" + (" special" if i == 5 else ""),
        )
        assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    assert (await api.admin.post("/api/v1/jobs", json=worker_job("worker"))).status_code == 201
    assert (await api.operator.post("/api/v1/jobs/job-1/disable")).status_code == 200

    async def names(query: str) -> tuple[list[str], int]:
        response = await api.viewer.get(f"/api/v1/jobs?{query}")
        assert response.status_code == 200, response.text
        page = response.json()
        return [item["name"] for item in page["items"]], page["total"]

    assert await names("type=test-work") == (["worker"], 1)
    assert await names("group=odd") == (["job-1", "job-3", "job-5"], 3)
    assert await names("tag=t") == (["job-0", "job-1", "job-2"], 3)
    assert await names("q=SPECIAL") == (["job-5"], 1)
    assert await names("status=Disabled") == (["job-1"], 1)
    assert (await names("status=Ready&group=odd"))[0] == ["job-3", "job-5"]
    assert (await names("status=Ready&status=Disabled"))[1] == 8
    assert (await names("sort=-priority&limit=3"))[0] == ["job-6", "job-5", "job-4"]
    assert await names("sort=name&limit=2&offset=2") == (["job-2", "job-3"], 8)
    assert await names("sort=name&limit=2&offset=100") == ([], 8)
    # A disabled job has no next run: sorted last either way.
    assert (await names("sort=next_run_at"))[0][-1] == "job-1"
    assert (await names("sort=-next_run_at"))[0][-1] == "job-1"
    assert (await names("sort=last_run_at&limit=1"))[1] == 8

    bad = await api.viewer.get("/api/v1/jobs?limit=501&sort=sideways&status=Sleeping")
    assert bad.status_code == 422
    assert {"limit", "sort", "status.0"} <= fields(bad)


SQL = [
    "'; DROP TABLE scheduler.jobs; --",
    "x' OR '1'='1",
    "%' OR 1=1 --",
    '"; DELETE FROM scheduler.runs; --',
    "_%",
    "\\",
]


@pytest.mark.parametrize("text", SQL)
async def test_sql_in_filter_strings_changes_nothing(api, text: str) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    for param in ("type", "group", "tag", "q"):
        response = await api.viewer.get("/api/v1/jobs", params={param: text})
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []
    for path in ("/api/v1/runs", "/api/v1/audit"):
        for param in ("job", "target", "action", "actor"):
            response = await api.admin.get(path, params={param: text})
            assert response.status_code in (200, 422), response.text
    assert (await api.viewer.get(f"/api/v1/jobs/{text}")).status_code in (404, 405)
    listed = (await api.viewer.get("/api/v1/jobs")).json()
    assert [item["name"] for item in listed["items"]] == ["hello"]
    assert await api.pool.fetchval("SELECT count(*) FROM scheduler.jobs") == 1


async def test_malformed_bodies_are_refused_naming_each_field(api) -> None:  # type: ignore[no-untyped-def]
    bad = start_workflow_job(
        schedule={"kind": "cron", "expression": "0 25 * * *"},
        priority="high",
        misfire={"policy": "sometimes"},
        colour="red",
    )
    response = await api.admin.post("/api/v1/jobs", json=bad)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:jobwire:problem:validation"
    assert problem["status"] == 422
    assert {"schedule.cron.expression", "priority", "misfire.policy", "colour"} <= fields(response)
    assert "25" in problem["detail"]

    params = await api.admin.post(
        "/api/v1/jobs", json=start_workflow_job(params={"input": {}, "extra": 1})
    )
    assert params.status_code == 422
    assert fields(params) == {"params.workflow", "params.extra"}

    unknown_type = await api.admin.post("/api/v1/jobs", json=start_workflow_job(type="nope"))
    assert unknown_type.status_code == 422
    assert fields(unknown_type) == {"type"}

    missing = await api.admin.post("/api/v1/jobs", json={"type": "start-workflow"})
    assert missing.status_code == 422
    assert "name" in fields(missing)

    not_json = await api.admin.post(
        "/api/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert fields(not_json) == {"body"}

    nul = await api.admin.post("/api/v1/jobs", json=start_workflow_job(description="a\x00b"))
    assert nul.status_code == 422
    assert fields(nul) == {"description"}
    nul_param = await api.admin.post(
        "/api/v1/jobs", json=start_workflow_job(params={"workflow": "w", "input": {"k": "\x00"}})
    )
    assert nul_param.status_code == 422
    assert fields(nul_param) == {"params.input.k"}
    nul_query = await api.viewer.get("/api/v1/jobs", params={"q": "a\x00"})
    assert nul_query.status_code == 422
    assert fields(nul_query) == {"q"}
    assert await api.pool.fetchval("SELECT count(*) FROM scheduler.jobs") == 0


async def test_updates_need_the_current_version(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201
    changed = start_workflow_job(description="changed")

    no_version = await api.admin.put("/api/v1/jobs/hello", json=changed)
    assert no_version.status_code == 428
    assert fields(no_version) == {"version"}

    first = await api.admin.put("/api/v1/jobs/hello", json=changed, headers={"If-Match": '"1"'})
    assert first.status_code == 200, first.text
    assert first.json()["version"] == 2
    assert first.headers["etag"] == '"2"'
    assert first.json()["description"] == "changed"

    stale = await api.admin.put("/api/v1/jobs/hello", json={**changed, "version": 1})
    assert stale.status_code == 409
    assert stale.json()["type"] == "urn:jobwire:problem:version-conflict"
    assert stale.headers["etag"] == '"2"'

    stale_header = await api.admin.put(
        "/api/v1/jobs/hello", json=changed, headers={"If-Match": 'W/"1"'}
    )
    assert stale_header.status_code == 409

    by_body = await api.admin.put("/api/v1/jobs/hello", json={**changed, "version": 2})
    assert by_body.status_code == 200
    assert by_body.json()["version"] == 3

    garbage = await api.admin.put("/api/v1/jobs/hello", json=changed, headers={"If-Match": "*x"})
    assert garbage.status_code == 422
    assert fields(garbage) == {"If-Match"}

    stale_delete = await api.admin.delete("/api/v1/jobs/hello", headers={"If-Match": '"1"'})
    assert stale_delete.status_code == 409
    deleted = await api.admin.delete("/api/v1/jobs/hello", headers={"If-Match": '"3"'})
    assert deleted.status_code == 204
    assert (await api.viewer.get("/api/v1/jobs/hello")).status_code == 404
    assert (await api.admin.delete("/api/v1/jobs/hello")).status_code == 404


async def test_enable_disable_pause_resume_show_in_status(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.admin.post("/api/v1/jobs", json=start_workflow_job())).status_code == 201

    async def status() -> tuple[str, object]:
        job = (await api.viewer.get("/api/v1/jobs/hello")).json()
        return job["status"], job["next_run_at"]

    disabled = await api.operator.post("/api/v1/jobs/hello/disable")
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    assert disabled.json()["definition"]["enabled"] is False
    assert await status() == ("Disabled", None)
    assert (await api.operator.post("/api/v1/jobs/hello/enable")).status_code == 200
    assert (await status())[0] == "Ready"
    assert (await api.operator.post("/api/v1/jobs/hello/pause")).json()["paused"] is True
    assert await status() == ("Paused", None)
    assert (await api.operator.post("/api/v1/jobs/hello/resume")).status_code == 200
    assert (await status())[0] == "Ready"
    assert (await api.operator.post("/api/v1/jobs/nope/pause")).status_code == 404


async def test_groups_are_listed_and_disabling_one_disables_its_jobs(api) -> None:  # type: ignore[no-untyped-def]
    for name in ("a", "b"):
        job = start_workflow_job(name, group="nightly")
        assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    groups = await api.viewer.get("/api/v1/groups")
    assert groups.json() == [{"name": "nightly", "enabled": True, "jobs": 2}]

    disabled = await api.operator.post("/api/v1/groups/nightly/disable")
    assert disabled.json() == {"name": "nightly", "enabled": False, "jobs": 2}
    statuses = {j["status"] for j in (await api.viewer.get("/api/v1/jobs")).json()["items"]}
    assert statuses == {"Disabled"}
    assert (await api.viewer.get("/api/v1/jobs?status=Disabled")).json()["total"] == 2
    assert (await api.operator.post("/api/v1/groups/nightly/enable")).json()["enabled"] is True
    assert (await api.operator.post("/api/v1/groups/nope/enable")).status_code == 404


async def test_preview_of_a_job_and_of_an_unsaved_definition_is_dst_aware(api) -> None:  # type: ignore[no-untyped-def]
    job = start_workflow_job(
        schedule={"kind": "cron", "expression": "30 2 * * *", "timezone": "Europe/Berlin"}
    )
    assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    response = await api.viewer.get(
        "/api/v1/jobs/hello/preview", params={"count": 3, "after": "2026-03-28T00:00:00Z"}
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["timezone"] == "Europe/Berlin"
    # 02:30 does not exist on 2026-03-29 in Berlin: it fires at 03:00 local.
    assert [f["at"] for f in preview["fires"]] == [
        "2026-03-28T01:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-30T00:30:00Z",
    ]
    assert [f["local"] for f in preview["fires"]] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]

    unsaved = await api.viewer.post(
        "/api/v1/preview",
        json={
            "definition": start_workflow_job(
                "draft", start_at="2030-01-01T00:00:00Z", expires_at="2030-01-03T00:00:00Z"
            ),
            "count": 5,
            "after": "2026-01-01T00:00:00Z",
        },
    )
    assert unsaved.status_code == 200, unsaved.text
    assert len(unsaved.json()["fires"]) == 2  # inside the start/expiry window only

    schedule = await api.viewer.post(
        "/api/v1/preview",
        json={
            "schedule": {"kind": "interval", "every": "PT90M"},
            "count": 2,
            "after": "2026-01-01T00:00:00Z",
        },
    )
    assert [f["at"] for f in schedule.json()["fires"]] == [
        "2026-01-01T01:30:00Z",
        "2026-01-01T03:00:00Z",
    ]
    invalid = await api.viewer.post(
        "/api/v1/preview",
        json={
            "definition": start_workflow_job(schedule={"kind": "cron", "expression": "61 * * * *"})
        },
    )
    assert invalid.status_code == 422
    assert fields(invalid) == {"definition.schedule.cron.expression"}
    neither = await api.viewer.post("/api/v1/preview", json={"count": 2})
    assert neither.status_code == 422


async def test_health_needs_no_token_and_hosts_lists_live_instances(api) -> None:  # type: ignore[no-untyped-def]
    health = await api.anonymous.get("/api/v1/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    hosts = await api.viewer.get("/api/v1/hosts")
    assert hosts.status_code == 200
    assert isinstance(hosts.json(), list)


async def test_status_comes_from_active_runs_and_the_host_registry(api) -> None:  # type: ignore[no-untyped-def]
    for name in ("live", "ghost", "idle"):
        assert (await api.admin.post("/api/v1/jobs", json=worker_job(name))).status_code == 201
    registry = HostRegistry(
        api.harness.broker.js,
        namespace=api.harness.settings.namespace,
        service="worker",
        instance_id="worker-1-1",
        host="worker-1",
        version="test",
        heartbeat_seconds=5,
    )
    await registry.start()
    try:
        for name, host in (("live", "worker-1"), ("ghost", "gone-host")):
            run = (await api.operator.post(f"/api/v1/jobs/{name}/trigger")).json()
            await api.store.run_started(uuid.UUID(run["id"]), 1, host, utcnow())

        async def names(query: str) -> list[str]:
            page = (await api.viewer.get(f"/api/v1/jobs?{query}")).json()
            return [item["name"] for item in page["items"]]

        rows = {j["name"]: j for j in (await api.viewer.get("/api/v1/jobs")).json()["items"]}
        assert rows["live"]["status"] == "Running"
        assert rows["live"]["active_hosts"] == ["worker-1"]
        assert rows["ghost"]["status"] == "Unknown"
        assert rows["idle"]["status"] == "Ready"
        assert await names("status=Running") == ["live"]
        assert await names("status=Unknown&status=Running") == ["ghost", "live"]
        assert await names("status=Ready") == ["idle"]
        hosts = (await api.viewer.get("/api/v1/hosts")).json()
        assert [(h["service"], h["host"]) for h in hosts] == [("worker", "worker-1")]
    finally:
        await registry.stop()


async def test_a_quartz_expression_needs_the_quartz_dialect(api) -> None:  # type: ignore[no-untyped-def]
    # Quartz's "last Friday" under the default dialect would fire on the last Saturday:
    # refused on the expression field, naming the dialect.
    copied = {"kind": "cron", "expression": "0 15 10 ? * 6L", "timezone": "Europe/Berlin"}
    refused = await api.admin.post("/api/v1/jobs", json=start_workflow_job(schedule=copied))
    assert refused.status_code == 422
    assert fields(refused) == {"schedule.cron.expression"}
    assert "dialect: quartz" in refused.json()["detail"]

    quartz = start_workflow_job(schedule={**copied, "dialect": "quartz"})
    assert (await api.admin.post("/api/v1/jobs", json=quartz)).status_code == 201
    read = (await api.viewer.get("/api/v1/jobs/hello")).json()
    assert read["definition"]["schedule"]["dialect"] == "quartz"
    response = await api.viewer.get(
        "/api/v1/jobs/hello/preview", params={"count": 2, "after": "2026-01-01T00:00:00Z"}
    )
    # Last Fridays: 30 January and 27 February 2026, 10:15 CET.
    assert [f["at"] for f in response.json()["fires"]] == [
        "2026-01-30T09:15:00Z",
        "2026-02-27T09:15:00Z",
    ]
