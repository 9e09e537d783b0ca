"""``python -m caseapp`` as a real process on a fresh database."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import pytest

from caseapp import count_rows
from caseapp.cli import DEFAULT_DSN, default_dsn

pytestmark = pytest.mark.integration


async def _caseapp(*arguments: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "caseapp",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_install_then_generate_prints_the_counts(database_url: str) -> None:
    code, out, err = await _caseapp("install", "--dsn", database_url)
    assert code == 0, err
    assert "cases: 0" in out.splitlines()

    code, out, err = await _caseapp("generate", "--cases", "12", "--dsn", database_url)
    assert code == 0, err
    assert out.splitlines() == [
        "customers: 1",
        "cases: 12",
        "tasks: 36",
        "comments: 24",
        "attachments: 12",
        "emails: 12",
    ]
    assert (await count_rows(database_url))["tasks"] == 36


async def test_churn_and_drop_take_the_dsn_from_the_environment(database_url: str) -> None:
    env = {"CASEAPP_DSN": database_url}
    assert (await _caseapp("install", env=env))[0] == 0
    assert (await _caseapp("generate", "--cases", "50", env=env))[0] == 0
    code, out, err = await _caseapp("churn", "--rate", "40", "--seconds", "0.5", env=env)
    assert code == 0, err
    made = sum(int(line.rpartition(": ")[2]) for line in out.splitlines())
    assert 10 <= made <= 30
    code, out, err = await _caseapp("drop", env=env)
    assert code == 0, err
    assert "dropped schema caseapp" in out
    with pytest.raises(asyncpg.UndefinedTableError, match="caseapp"):
        await count_rows(database_url)


async def test_bad_arguments_are_refused_naming_the_field(database_url: str) -> None:
    code, _, err = await _caseapp("generate", "--cases", "-3", "--dsn", database_url)
    assert code == 2
    assert "cases must be at least 0" in err


def test_the_dsn_defaults_to_the_environment_then_the_local_server() -> None:
    assert default_dsn({"CASEAPP_DSN": "postgresql://elsewhere/db"}) == "postgresql://elsewhere/db"
    assert default_dsn({}) == DEFAULT_DSN == "postgresql://postgres@127.0.0.1:5432/postgres"
