"""`jobwire search status|install <job>` against a real scheduler and search sync."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Jobwire, SearchSystem, create_job, hello_job, run_job

import caseapp
from jobwire.cli import devfile
from jobwire.cli.config import load_search_config

pytestmark = pytest.mark.integration

YEARLY = {"kind": "cron", "expression": "0 3 1 1 *", "timezone": "UTC"}


async def search_job(system: SearchSystem, name: str, job_type: str) -> dict[str, Any]:
    definition = {"name": name, "type": job_type, "schedule": YEARLY, "params": system.params}
    return await create_job(system.scheduler, definition)


async def test_install_then_status_through_a_full_load(
    jobwire_search: Jobwire, search_system: SearchSystem
) -> None:
    await caseapp.generate(search_system.source_url, cases=8)
    await search_job(search_system, "cases-full", "search-full-load")
    await search_job(search_system, "cases-sync", "search-incremental")
    alias = search_system.alias

    before = await jobwire_search.ok("search", "status", "cases-sync", role="viewer")
    assert f"{alias} → (no index yet)" in before.stdout
    assert "8 in the source, no index behind the alias" in before.stdout
    capture = (
        "not installed on caseapp.cases, caseapp.tasks: run `jobwire search install cases-sync`"
    )
    assert capture in before.stdout

    sql = await jobwire_search.ok("search", "install", "cases-sync", "--sql")
    assert "CREATE TRIGGER" in sql.stdout
    assert 'ON "caseapp"."tasks"' in sql.stdout
    shown = json.loads(
        (await jobwire_search.ok("search", "status", "cases-sync", "-o", "json")).stdout
    )
    assert shown["capture_installed"] is False  # --sql installs nothing

    viewer = await jobwire_search("search", "install", "cases-sync", role="viewer")
    assert viewer.exit_code == 1
    assert "Forbidden (403): this needs the admin role; the token is viewer" in viewer.stderr
    assert f"[POST {search_system.search_url}/api/v1/search/install]" in viewer.stderr

    installed = await jobwire_search.ok("search", "install", "cases-sync")
    lines = installed.stdout.splitlines()
    assert lines[0].startswith("change capture installed: ")
    assert int(lines[0].split(": ")[1].split()[0]) >= 2  # cases and tasks, at least
    assert lines[-1] == "next: run the full load: `jobwire jobs trigger cases-full`"

    run = await run_job(search_system.scheduler, "cases-full", timeout=60)
    assert run["status"] == "succeeded", run
    status = await jobwire_search.ok("search", "status", "cases-full", role="viewer")
    document = json.loads(
        (await jobwire_search.ok("-o", "json", "search", "status", "cases-full")).stdout
    )
    [index] = document["aliased"]
    assert f"{alias} → {index}" in status.stdout
    assert "8 in the source, 8 in the index" in status.stdout
    assert "Capture          installed" in status.stdout
    assert "Profile          current" in status.stdout
    assert f"{document['consumer']['watermark']} into {index}" in status.stdout
    assert (document["source_documents"], document["index_documents"]) == (8, 8)
    assert document["pending_changes"] == 0


async def test_only_search_jobs_are_taken_and_refusals_are_one_line(
    jobwire_search: Jobwire, search_system: SearchSystem, tmp_path: Path
) -> None:
    await create_job(search_system.scheduler, hello_job("hello"))

    other = await jobwire_search("search", "status", "hello", role="viewer")
    assert other.exit_code == 1
    assert other.stderr == (
        "jobwire: job 'hello' is of type 'start-workflow': `jobwire search` takes a "
        "search-full-load or search-incremental job\n"
    )
    assert (await jobwire_search("search", "install", "hello")).stderr == other.stderr
    missing = await jobwire_search("search", "status", "nope")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("jobwire: Not found (404): ")

    await search_job(search_system, "cases-sync", "search-incremental")
    nowhere = "http://127.0.0.1:9"
    down = await jobwire_search(
        "search", "status", "cases-sync", env={"JOBWIRE_SEARCH_URL": nowhere}
    )
    assert down.exit_code == 1
    assert down.stderr.startswith(f"jobwire: cannot reach the search API at {nowhere} (")
    assert "Set JOBWIRE_SEARCH_URL" in down.stderr
    unset = await jobwire_search(
        "search", "status", "cases-sync",
        env={"JOBWIRE_SEARCH_URL": None, "JOBWIRE_DEV_DIR": str(tmp_path / "none")},
    )  # fmt: skip
    assert unset.exit_code == 1
    assert "no URL for search: set JOBWIRE_SEARCH_URL" in unset.stderr


def test_the_search_url_and_token_come_from_a_running_jobwire_dev(tmp_path: Path) -> None:
    me = devfile.Recorded.of(os.getpid())  # this test process plays jobwire dev
    devfile.DevFile(
        tmp_path / devfile.FILE_NAME,
        {
            "pid": me.pid,
            "start": me.start,
            "api_url": "http://127.0.0.1:8080",
            "services": {
                "scheduler": "http://127.0.0.1:8080",
                "search-sync": "http://127.0.0.1:8083",
            },
            "token": "jw_dev",
        },
    ).save()
    base = {"JOBWIRE_DEV_DIR": str(tmp_path), "JOBWIRE_CONFIG": str(tmp_path / "none.toml")}
    config = load_search_config(environ=base)
    assert (config.api_url, config.token) == ("http://127.0.0.1:8083", "jw_dev")
    other = load_search_config(environ={**base, "JOBWIRE_SEARCH_URL": "http://search.example:80"})
    assert (other.api_url, other.token) == ("http://search.example:80", None)
    # Not recorded and not set: the config file's search_url, with its token.
    file = tmp_path / "config.toml"
    file.write_text('search_url = "http://10.0.0.5:8083"\ntoken = "jw_file"\n')
    file.chmod(0o600)
    alone = load_search_config(
        environ={"JOBWIRE_CONFIG": str(file), "JOBWIRE_DEV_DIR": str(tmp_path / "none")}
    )
    assert (alone.api_url, alone.token) == ("http://10.0.0.5:8083", "jw_file")
