"""`jobwire apply` and `jobwire export` against a real API server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_harness import ApiServer, Jobwire, create_job, hello_job

from jobwire.cli.formats import load_document

pytestmark = pytest.mark.integration

JOBS_YAML = """\
jobs:
  - name: nightly-report
    type: start-workflow
    description: the nightly report
    schedule: {kind: cron, expression: "30 2 * * *", timezone: Europe/Berlin}
    params: {workflow: report, input: {format: pdf}}
  - name: sync
    type: start-workflow
    schedule: {kind: interval, every: PT15M}
    params: {workflow: sync}
    after:
      - job: nightly-report
        on: failed
"""


async def server_jobs(jobwire: Jobwire) -> dict[str, dict[str, Any]]:
    listed = await jobwire.ok("jobs", "list", "-o", "json")
    return {job["name"]: job for job in json.loads(listed.stdout)["items"]}


def write(tmp_path: Path, text: str, name: str = "jobs.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_apply_creates_then_finds_nothing_to_do_then_updates_what_changed(
    jobwire: Jobwire, tmp_path: Path
) -> None:
    path = write(tmp_path, JOBS_YAML)

    first = await jobwire.ok("apply", "-f", path)
    assert "create job nightly-report" in first.stdout
    assert "+  expression: 30 2 * * *" in first.stdout
    assert first.stdout.strip().endswith("2 created, 0 updated, 0 unchanged, 0 deleted")
    jobs = await server_jobs(jobwire)
    assert set(jobs) == {"nightly-report", "sync"}
    sync = json.loads((await jobwire.ok("jobs", "show", "sync", "-o", "json")).stdout)
    # "on: failed" is a string key, not YAML 1.1's boolean True.
    assert sync["definition"]["after"] == [{"job": "nightly-report", "on": "failed"}]

    again = await jobwire.ok("apply", "-f", path)
    assert again.stdout == "0 created, 0 updated, 2 unchanged, 0 deleted\n"

    changed = write(tmp_path, JOBS_YAML.replace("30 2 * * *", "45 2 * * MON-FRI"))
    dry = await jobwire.ok("apply", "-f", changed, "--dry-run")
    assert "update job nightly-report" in dry.stdout
    assert "-  expression: 30 2 * * *" in dry.stdout
    assert "+  expression: 45 2 * * MON-FRI" in dry.stdout
    assert "sync" not in dry.stdout  # unchanged jobs are not shown
    assert dry.stdout.strip().endswith(
        "dry run: 0 to create, 1 to update, 1 unchanged, 0 to delete"
    )
    assert (await server_jobs(jobwire))["nightly-report"]["version"] == 1

    applied = await jobwire.ok("apply", "-f", changed)
    assert applied.stdout.strip().endswith("0 created, 1 updated, 1 unchanged, 0 deleted")
    after = await server_jobs(jobwire)
    assert after["nightly-report"]["version"] == 2
    assert after["sync"]["version"] == 1
    report = json.loads((await jobwire.ok("apply", "-f", changed, "-o", "json")).stdout)
    assert {r["name"]: r["action"] for r in report} == {
        "nightly-report": "unchanged",
        "sync": "unchanged",
    }


async def test_prune_deletes_what_the_file_lacks_and_dry_run_changes_nothing(
    jobwire: Jobwire, api_server: ApiServer, tmp_path: Path
) -> None:
    await create_job(api_server, hello_job("stray"))
    path = write(tmp_path, JOBS_YAML)
    await jobwire.ok("apply", "-f", path)
    assert set(await server_jobs(jobwire)) == {"nightly-report", "sync", "stray"}

    # (PyYAML's own loader would read `on:` as True: the CLI's loader does not.)
    only_sync = {"jobs": [load_document(JOBS_YAML, "jobs.yaml")["jobs"][1]]}
    smaller = write(tmp_path, json.dumps(only_sync), "jobs.json")
    dry = await jobwire.ok("apply", "-f", smaller, "--prune", "--dry-run")
    assert "delete job nightly-report" in dry.stdout
    assert "delete job stray" in dry.stdout
    assert set(await server_jobs(jobwire)) == {"nightly-report", "sync", "stray"}

    pruned = await jobwire.ok("apply", "-f", smaller, "--prune")
    assert pruned.stdout.strip().endswith("0 created, 0 updated, 1 unchanged, 2 deleted")
    assert set(await server_jobs(jobwire)) == {"sync"}


async def test_export_then_apply_is_a_round_trip(
    jobwire: Jobwire, api_server: ApiServer, tmp_path: Path
) -> None:
    await jobwire.ok("apply", "-f", write(tmp_path, JOBS_YAML))
    await create_job(
        api_server,
        hello_job(
            "rich",
            group="batch",
            tags=["on", "yes", "12:30"],  # strings YAML 1.1 would read as something else
            priority=5,
            start_at="2026-01-01T00:00:00+01:00",
            misfire={"policy": "fire_all", "max_catch_up": 3},
            timeout_seconds=90,
        ),
    )
    await jobwire.ok("jobs", "disable", "sync")

    exported = await jobwire.ok("export")
    document = yaml.safe_load(exported.stdout)
    assert [job["name"] for job in document["jobs"]] == ["nightly-report", "rich", "sync"]
    path = write(tmp_path, exported.stdout, "exported.yaml")
    round_trip = await jobwire.ok("apply", "-f", path, "--prune", "--dry-run")
    assert round_trip.stdout == "dry run: 0 to create, 0 to update, 3 unchanged, 0 to delete\n"

    as_json = await jobwire.ok("-o", "json", "export", "--job", "rich")
    assert [job["name"] for job in json.loads(as_json.stdout)["jobs"]] == ["rich"]
    path = write(tmp_path, as_json.stdout, "rich.json")
    assert (await jobwire.ok("apply", "-f", path)).stdout.startswith("0 created, 0 updated, 1")

    # The exported file pins `enabled`; the hand-written one does not, so an
    # operator's disable survives it.
    assert "enabled: false" in exported.stdout
    assert (await jobwire.ok("apply", "-f", write(tmp_path, JOBS_YAML))).stdout.startswith(
        "0 created, 0 updated, 2 unchanged"
    )
    assert (await server_jobs(jobwire))["sync"]["status"] == "Disabled"


async def test_a_bad_definition_names_its_field_and_nothing_is_applied(
    jobwire: Jobwire, tmp_path: Path
) -> None:
    bad = JOBS_YAML.replace("30 2 * * *", "30 25 * * *").replace("workflow: sync", "workflw: sync")
    result = await jobwire("apply", "-f", write(tmp_path, bad))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(
        line.startswith("job nightly-report: schedule.") and "expression" in line and "25" in line
        for line in lines
    ), result.stderr
    assert any(line.startswith("job sync: params.") for line in lines), result.stderr
    assert lines[-1] == (
        f"jobwire: {tmp_path / 'jobs.yaml'}: 2 of 2 job definition(s) refused; nothing was applied"
    )
    assert await server_jobs(jobwire) == {}

    # One bad definition among good ones: the good ones are not applied either.
    one_bad = JOBS_YAML.replace("30 2 * * *", "30 25 * * *")
    assert (await jobwire("apply", "-f", write(tmp_path, one_bad))).exit_code == 1
    assert await server_jobs(jobwire) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty; write `jobs: []` to mean no jobs"),
        ("jobs: [{name: a, type: x}, {name: a, type: y}]", "jobs[1].name: 'a' is defined twice"),
        ("[{type: x}]", "jobs[0].name: required, a non-empty string; nothing was applied"),
        ("jobz: []", "expected a list of job definitions or a mapping with the one key `jobs`"),
        ("jobs: [\n  {name: a\n", "not valid YAML"),
    ],
)
async def test_a_malformed_file_is_refused_before_the_server_is_asked(
    jobwire: Jobwire, tmp_path: Path, text: str, message: str
) -> None:
    result = await jobwire("apply", "-f", write(tmp_path, text), "--prune")
    assert result.exit_code == 1
    assert message in result.stderr.splitlines()[-1]
    assert result.stdout == ""


async def test_apply_needs_an_admin_and_says_what_was_not_applied(
    jobwire: Jobwire, tmp_path: Path
) -> None:
    result = await jobwire("apply", "-f", write(tmp_path, JOBS_YAML), role="operator")
    assert result.exit_code == 1
    assert "not applied: create sync" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "jobwire: create job nightly-report refused: Forbidden (403)"
    )
    assert await server_jobs(jobwire) == {}


HUGE = b"jobs:\n" + b"  - {name: filler, type: start-workflow}\n" * 300_000  # > 10 MiB


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text", id="an-image"),
        pytest.param(b"%PDF-1.7\n\x01\x02\x03 stream", "not valid YAML", id="not-yaml"),
        pytest.param(b"jobs: [\n  {name: a\n", "not valid YAML", id="broken-yaml"),
        pytest.param(b"- just a string\n", "jobs[0]: must be a mapping", id="list-of-a-string"),
        pytest.param(b"- 1\n- [a, b]\n", "2 problem(s)", id="list-of-non-mappings"),
        pytest.param(b"jobs: 5\n", "jobs: must be a list of job definitions", id="jobs-a-number"),
        pytest.param(b"just words\n", "jobs: must be a list", id="a-scalar"),
        pytest.param(b"- {name: 5, type: x}\n", "jobs[0].name: required", id="name-a-number"),
        pytest.param(
            b"- {name: a, params: {blob: !!binary aGk=}}\n",
            "jobs[0].params.blob: a bytes value is not JSON",
            id="binary-value",
        ),
        pytest.param(
            b"- {name: a, params: {1: one}}\n",
            "jobs[0].params: key 1 must be a string",
            id="int-key",
        ),
        pytest.param(b"- {name: a, ratio: .nan}\n", "jobs[0].ratio: nan is not", id="nan"),
        pytest.param(b"- {name: a, n: 1" + b"0" * 5000 + b"}\n", "not valid YAML", id="huge-int"),
        pytest.param(b"[" * 50_000, "not valid YAML", id="nested-too-deeply"),
        pytest.param(b"name: caf\xe9\n", "not UTF-8 text (byte 9)", id="latin-1"),
        pytest.param(b"\xff\xfe", "not UTF-8 text (byte 0)", id="invalid-utf-8"),
        pytest.param(b"", "the file is empty", id="empty"),
        pytest.param(b"# only a comment\n", "the file is empty", id="only-a-comment"),
        pytest.param(HUGE, "larger than 10 MiB", id="huge-file"),
    ],
)
async def test_a_bad_file_is_one_line_naming_the_file_and_field_never_a_traceback(
    jobwire: Jobwire, tmp_path: Path, content: bytes, field: str
) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(content)
    result = await jobwire("apply", "-f", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"jobwire: {path}: "), result.stderr
    assert field in last, result.stderr
    if "problem(s)" not in last:
        assert len(result.stderr.splitlines()) == 1, result.stderr
    else:  # each problem on a line of its own, naming the file and the entry
        for line in result.stderr.splitlines()[:-1]:
            assert line.startswith(f"{path}: jobs["), result.stderr
    assert await server_jobs(jobwire) == {}


async def test_a_bad_file_on_stdin_is_refused_the_same(jobwire: Jobwire) -> None:
    result = await jobwire("apply", "-f", "-", input=b"name: \xff\n")
    assert result.exit_code == 1
    assert result.stderr == "jobwire: <stdin>: not UTF-8 text (byte 6)\n"


async def test_a_field_of_the_wrong_type_is_named_by_the_server_check(
    jobwire: Jobwire, tmp_path: Path
) -> None:
    wrong = JOBS_YAML.replace("description: the nightly report", "priority: [high]")
    result = await jobwire("apply", "-f", write(tmp_path, wrong))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert any(
        line.startswith("job nightly-report: priority") for line in result.stderr.splitlines()
    ), result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"jobwire: {tmp_path / 'jobs.yaml'}: 1 of 2")
    assert await server_jobs(jobwire) == {}
