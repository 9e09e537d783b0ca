"""What the CLI tests share: the API server they run against and a way to run
``jobwire`` on it (see conftest.py for the fixtures)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from typer.testing import CliRunner

from jobwire.cli.main import app

ROLES = ("viewer", "operator", "admin")


@dataclass
class ApiServer:
    url: str
    database_url: str
    pool: asyncpg.Pool | None
    tokens: dict[str, str] = field(repr=False)


@dataclass
class MailSystem:
    """The scheduler and the mailer, run as whole services (``mail_system``)."""

    scheduler: ApiServer  # the admin API, its tokens and database
    mailer_url: str
    smtp: Any  # the test SMTP server the account `default` sends to


@dataclass
class SearchSystem:
    """The scheduler and the search sync, run as whole services (``search_system``)."""

    scheduler: ApiServer  # the admin API and its tokens
    search_url: str
    source_url: str  # the caseapp database the search jobs read
    alias: str  # an alias of the test's own; its indices are deleted afterwards
    params: dict[str, Any]  # parameters of a search job from the source into the alias


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Jobwire:
    """Runs ``jobwire …`` against one API server, as a given role."""

    def __init__(
        self, server: ApiServer, config_dir: Path, environment: Mapping[str, str] | None = None
    ) -> None:
        self.server = server
        self.environment = dict(environment or {})
        # A config path that does not exist: a developer's own config must
        # not leak into the tests.
        self.config = config_dir / "config.toml"

    def env(self, token: str | None, extra: Mapping[str, str | None]) -> dict[str, str | None]:
        return {
            "JOBWIRE_API_URL": self.server.url,
            "JOBWIRE_TOKEN": token,
            "JOBWIRE_CONFIG": str(self.config),
            "COLUMNS": "200",
            **self.environment,
            **extra,
        }

    async def __call__(
        self,
        *args: str,
        role: str | None = "admin",
        env: Mapping[str, str | None] | None = None,
        input: bytes | None = None,
    ) -> Result:
        token = self.server.tokens[role] if role else None
        runner = CliRunner()
        result = await asyncio.to_thread(
            runner.invoke,
            app,
            list(args),
            input=input,
            env=self.env(token, env or {}),
            catch_exceptions=False,
        )
        return Result(result.exit_code, result.stdout, result.stderr)

    async def ok(self, *args: str, **options: Any) -> Result:
        result = await self(*args, **options)
        assert result.exit_code == 0, f"jobwire {' '.join(args)}: {result.stderr}"
        return result

    async def process(
        self, *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 60
    ) -> Result:
        """``python -m jobwire.cli …`` in a process of its own."""
        merged = {**os.environ}
        for key, value in self.env(None, env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobwire.cli",
            *args,
            env=merged,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())


def hello_job(name: str = "hello", **extra: Any) -> dict[str, Any]:
    """A start-workflow job, once a day at 03:00 Berlin time."""
    return {
        "name": name,
        "type": "start-workflow",
        "description": f"{name}: starts the hello workflow",
        "schedule": {"kind": "cron", "expression": "0 3 * * *", "timezone": "Europe/Berlin"},
        "params": {"workflow": "hello", "input": {"n": 1}},
        **extra,
    }


async def create_job(server: ApiServer, definition: Mapping[str, Any]) -> dict[str, Any]:
    """Create a job through the API itself, not the CLI under test."""
    headers = {"Authorization": f"Bearer {server.tokens['admin']}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        response = await client.post("/api/v1/jobs", json=dict(definition))
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def run_job(server: ApiServer, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """Trigger job ``name`` through the API and wait for its run to end; the run."""
    from jobwire.testing import wait_for

    headers = {"Authorization": f"Bearer {server.tokens['admin']}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        response = await client.post(f"/api/v1/jobs/{name}/trigger")
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]

        async def ended() -> dict[str, Any] | None:
            run: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        return await wait_for(ended, timeout=timeout, description=f"run {run_id} of {name}")
