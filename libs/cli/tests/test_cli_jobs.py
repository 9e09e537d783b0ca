"""`jobwire jobs …` and `jobwire runs …` against a real API server."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from cli_harness import ApiServer, Jobwire, create_job, hello_job

from jobwire.cli.output import JOB_COLUMNS
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration


async def test_jobs_list_is_the_jobs_management_table(
    jobwire: Jobwire, api_server: ApiServer
) -> None:
    await create_job(api_server, hello_job("hello", tags=["nightly"]))
    await create_job(api_server, hello_job("other", group="batch"))

    table = await jobwire.ok("jobs", "list", role="viewer")
    header = table.stdout.splitlines()[1]
    for column in JOB_COLUMNS:
        assert column in header, table.stdout
    assert [c for c in JOB_COLUMNS if c in header] == list(JOB_COLUMNS)  # in this order
    row = next(line for line in table.stdout.splitlines() if "hello:" in line)
    assert "start-workflow" in row
    assert "Ready" in row

    filtered = await jobwire.ok("jobs", "list", "--group", "batch", "-o", "json", role="viewer")
    assert [job["name"] for job in json.loads(filtered.stdout)["items"]] == ["other"]
    tagged = await jobwire.ok("-o", "yaml", "jobs", "list", "--tag", "nightly", role="viewer")
    assert [job["name"] for job in yaml.safe_load(tagged.stdout)["items"]] == ["hello"]
    by_status = await jobwire.ok("jobs", "list", "--status", "Disabled", "-o", "json")
    assert json.loads(by_status.stdout)["items"] == []
    found = await jobwire.ok("jobs", "list", "--search", "other:", "-o", "json")
    assert [job["name"] for job in json.loads(found.stdout)["items"]] == ["other"]
    newest_first = await jobwire.ok("jobs", "list", "--sort", "-name", "--limit", "1", "-o", "json")
    # The API's page document unchanged, as the README promises.
    headers = {"Authorization": f"Bearer {api_server.tokens['viewer']}"}
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers) as client:
        page = (await client.get("/api/v1/jobs", params={"sort": "-name", "limit": 1})).json()
    assert json.loads(newest_first.stdout) == page
    assert page["total"] == 2
    one = await jobwire.ok("jobs", "list", "--limit", "1")
    assert "1 of 2 jobs" in one.stdout


async def test_jobs_show_and_the_flag_actions(jobwire: Jobwire, api_server: ApiServer) -> None:
    await create_job(api_server, hello_job())

    shown = await jobwire.ok("jobs", "show", "hello", role="viewer")
    assert "Definition:" in shown.stdout
    assert "expression: 0 3 * * *" in shown.stdout
    detail = json.loads((await jobwire.ok("jobs", "show", "hello", "-o", "json")).stdout)
    assert detail["definition"]["params"] == {"workflow": "hello", "input": {"n": 1}}

    for action, status in [
        ("disable", "Disabled"),
        ("enable", "Ready"),
        ("pause", "Paused"),
        ("resume", "Ready"),
    ]:
        done = await jobwire.ok("jobs", action, "hello", role="operator")
        assert done.stdout.strip().endswith(f"status {status}"), done.stdout
        now = json.loads((await jobwire.ok("jobs", "show", "hello", "-o", "json")).stdout)
        assert now["status"] == status

    refused = await jobwire("jobs", "disable", "hello", role="viewer")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("jobwire: Forbidden (403): this needs the operator role")


async def test_trigger_with_params_makes_a_run_that_carries_them(
    jobwire: Jobwire, api_server: ApiServer
) -> None:
    await create_job(api_server, hello_job())

    trigger = (
        "jobs",
        "trigger",
        "hello",
        "--param",
        'input={"n": 2, "who": "cli"}',
        "--param",
        "correlation_id=order 42",
        "--idempotency-key",
        "k-1",
    )
    triggered = await jobwire.ok(*trigger, "-o", "json", role="operator")
    run = json.loads(triggered.stdout)
    assert run["job"] == "hello"
    assert run["trigger"] == "manual"
    assert run["params"] == {"input": {"n": 2, "who": "cli"}, "correlation_id": "order 42"}

    again = await jobwire.ok(*trigger, role="operator")
    assert again.stdout.startswith(f"run {run['id']} of job hello:")
    assert "made earlier with this idempotency key" in again.stdout

    async def succeeded() -> bool:
        shown = await jobwire.ok("runs", "show", run["id"], "-o", "json", role="viewer")
        return json.loads(shown.stdout)["status"] == "succeeded"

    await wait_for(succeeded, timeout=10, description="the triggered run succeeds")
    shown = await jobwire.ok("runs", "show", run["id"], role="viewer")
    assert "Params:" in shown.stdout
    assert "order 42" in shown.stdout

    listed = await jobwire.ok("runs", "list", "--job", "hello", "--since", "1h", "-o", "json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [run["id"]]
    table = await jobwire.ok("runs", "list", "--status", "succeeded")
    assert run["id"] in table.stdout
    assert (
        json.loads((await jobwire.ok("runs", "list", "--status", "failed", "-o", "json")).stdout)
        == []
    )

    ended = await jobwire("runs", "cancel", run["id"], role="operator")
    assert ended.exit_code == 1
    assert ended.stderr.startswith("jobwire: Run has ended (409)")

    bad = await jobwire("jobs", "trigger", "hello", "--param", "colour=red", role="operator")
    assert bad.exit_code == 1
    assert "params.colour" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


async def test_explain_preview_and_delete(jobwire: Jobwire, api_server: ApiServer) -> None:
    await create_job(api_server, hello_job())

    preview = json.loads(
        (await jobwire.ok("jobs", "preview", "hello", "-n", "3", "-o", "json")).stdout
    )
    assert preview["timezone"] == "Europe/Berlin"
    assert len(preview["fires"]) == 3
    assert all(
        fire["local"].startswith(fire["local"][:10]) and "T03:00:00" in fire["local"]
        for fire in preview["fires"]
    )
    table = await jobwire.ok("jobs", "preview", "hello", "-n", "2", role="viewer")
    assert "Local (Europe/Berlin)" in table.stdout

    explained = await jobwire.ok(
        "jobs", "explain", "hello", "--at", "2020-01-01T03:00:00+01:00", "-o", "json"
    )
    answer = json.loads(explained.stdout)
    assert answer["job"] == "hello"
    assert answer["verdict"] in {"before_start", "unknown", "missed", "not_yet_due"}
    shown = await jobwire.ok("jobs", "explain", "hello", "--at", "5m")
    assert "Verdict" in shown.stdout
    bad_time = await jobwire("jobs", "explain", "hello", "--at", "yesterday-ish")
    assert bad_time.exit_code == 1
    assert bad_time.stderr.startswith("jobwire: --at: 'yesterday-ish' is not a time")

    deleted = await jobwire.ok("jobs", "delete", "hello")
    assert deleted.stdout.strip() == "job hello deleted"
    gone = await jobwire("jobs", "show", "hello")
    assert gone.exit_code == 1
    assert gone.stderr.startswith("jobwire: Not found (404)")


async def test_a_missing_or_invalid_token_is_a_clear_error(
    jobwire: Jobwire, api_server: ApiServer
) -> None:
    missing = await jobwire("jobs", "list", role=None)
    assert missing.exit_code == 1
    assert missing.stderr.startswith("jobwire: no API token: set JOBWIRE_TOKEN")
    assert missing.stdout == ""

    invalid = await jobwire("jobs", "list", role=None, env={"JOBWIRE_TOKEN": "jw_not-a-real-one"})
    assert invalid.exit_code == 1
    assert invalid.stderr == (
        "jobwire: Unauthorized (401): the token is unknown or revoked"
        f" — the token is from JOBWIRE_TOKEN [GET {api_server.url}/api/v1/jobs]\n"
    )
    assert "jw_not-a-real-one" not in invalid.stderr

    unreachable = await jobwire("jobs", "list", env={"JOBWIRE_API_URL": "http://127.0.0.1:9"})
    assert unreachable.exit_code == 1
    assert unreachable.stderr.startswith(
        "jobwire: cannot reach the jobwire API at http://127.0.0.1:9 (connection refused)"
    )


async def test_the_token_can_come_from_the_config_file(
    jobwire: Jobwire, api_server: ApiServer
) -> None:
    token = api_server.tokens["viewer"]
    jobwire.config.write_text(f'api_url = "{api_server.url}"\ntoken = "{token}"\n')
    jobwire.config.chmod(0o600)
    quiet = await jobwire.ok("jobs", "list", role=None, env={"JOBWIRE_API_URL": None})
    assert quiet.stderr == ""

    jobwire.config.chmod(0o644)
    loud = await jobwire.ok("jobs", "list", role=None, env={"JOBWIRE_API_URL": None})
    assert "is open to other users (mode 0644); run: chmod 600" in loud.stderr
    for output in (quiet, loud):
        assert token not in output.stdout + output.stderr
