"""A stand-in for an application team: its case database, searchable through jobwire.

`make run` starts it beside the system. It does what the team would do, with
the commands an operator types:

1. creates the database ``caseapp`` on the dev PostgreSQL server and fills it
   with 2,000 sample cases (``examples/caseapp``), once;
2. puts the database's URL in the secret ``caseapp-dsn`` (a file in
   ``.jobwire/secrets/``, where the dev search sync reads secrets);
3. saves two jobs with ``jobwire apply``: ``sample-cases-full-load`` (a
   ``search-full-load`` into the alias ``cases``, nightly) and ``sample-cases``
   (a ``search-incremental`` every 5 seconds, saved disabled);
4. ``jobwire search install sample-cases`` (the change capture), ``jobwire jobs
   trigger sample-cases-full-load``, and once that run succeeded, ``jobwire
   jobs enable sample-cases``;
5. then keeps changing a few cases a second, so the incremental job has
   something to carry over; ``jobwire search status sample-cases`` shows it.

    python examples/caseapp_sample.py      (jobwire dev sets its environment)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import caseapp

DATABASE = "caseapp"
SECRET = "caseapp-dsn"  # noqa: S105 (the name of a secret, not one)
CASES = 2000
ALIAS = "cases"
PROFILE = {
    "root": "caseapp.cases",
    "fields": ["id", "reference", "title", "description", "status", "priority", "tags"],
    "children": [
        {"table": "caseapp.tasks", "fields": ["title", "state", "assignee"]},
        {"table": "caseapp.comments", "fields": ["author", "body"]},
    ],
    "lookups": [{"table": "caseapp.customers", "field": "customer", "fields": ["name"]}],
}


def say(text: str) -> None:
    print(f"caseapp-sample: {text}", flush=True)


def jobwire(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """A CLI command, as an operator types it (``jobwire dev`` told it where the system is)."""
    done = subprocess.run(
        [sys.executable, "-m", "jobwire.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"jobwire {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def jobs(engine_url: str) -> list[dict[str, object]]:
    common = {
        "source": {"dsn": SECRET},
        "engine": {"kind": "opensearch", "urls": [engine_url]},
        "profile": PROFILE,
        "index": {"alias": ALIAS},
    }
    return [
        {
            "name": "sample-cases-full-load",
            "type": "search-full-load",
            "description": "created by examples/caseapp_sample.py: rebuild the `cases` index",
            "schedule": {"kind": "cron", "expression": "0 0 3 * * *", "timezone": "UTC"},
            "params": common,
        },
        {
            "name": "sample-cases",
            "type": "search-incremental",
            "description": "created by examples/caseapp_sample.py: carry case changes over",
            "schedule": {"kind": "cron", "expression": "*/5 * * * * *", "timezone": "UTC"},
            "params": common,
            "enabled": False,
        },
    ]


def database_url(server_url: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{DATABASE}"))


async def prepare(server_url: str) -> str:
    connection = await asyncpg.connect(server_url)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
    url = database_url(server_url)
    await caseapp.install(url)
    if (await caseapp.count_rows(url)).get("cases", 0) == 0:
        await caseapp.generate(url, cases=CASES)
        say(f"{CASES:,} sample cases written to the database {DATABASE!r}")
    return url


def wait_for_run(job: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = json.loads(jobwire("runs", "list", "--job", job, "--limit", "1", "-o", "json"))
        status = runs[0]["status"] if runs else None
        if status in ("succeeded", "failed", "cancelled"):
            return str(status)
        time.sleep(1)
    return "still running"


async def churn(url: str, stop: asyncio.Event) -> None:
    async with await caseapp.Churn.open(url, connections=1) as changes:
        while not stop.is_set():
            for kind in ("update_case", "update_task", "insert_comment"):
                await changes.step(kind)
            await asyncio.sleep(1)


def main() -> int:
    server_url = os.environ["JOBWIRE_DATABASE_URL"]
    engine_url = os.environ["JOBWIRE_DEV_SEARCH"]
    secrets = Path(os.environ["JOBWIRE_DEV_DIR"]) / "secrets"
    url = asyncio.run(prepare(server_url))
    secrets.mkdir(parents=True, exist_ok=True)
    secret = secrets / SECRET
    secret.write_text(url)
    secret.chmod(0o600)

    # The admin API and the search API are starting beside us: wait for them.
    for _ in range(120):
        if "sample-hello" in jobwire("jobs", "list", check=False):
            break
        time.sleep(1)
    jobwire("apply", "-f", "-", stdin=json.dumps({"jobs": jobs(engine_url)}))
    for attempt in range(30):
        try:
            jobwire("search", "install", "sample-cases")
            break
        except RuntimeError:
            if attempt == 29:
                raise
            time.sleep(1)
    jobwire("jobs", "trigger", "sample-cases-full-load")
    status = wait_for_run("sample-cases-full-load")
    say(f"full load of {ALIAS!r}: {status}")
    if status == "succeeded":
        jobwire("jobs", "enable", "sample-cases")
        say("incremental job `sample-cases` enabled: every 5 s; a few cases change every second")

    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await churn(url, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
