"""`jobwire tokens …`: made in the database directly, then used against the API."""

from __future__ import annotations

import json

import asyncpg
import pytest
from cli_harness import ApiServer, Jobwire

pytestmark = pytest.mark.integration


async def test_the_first_admin_token_is_made_before_any_scheduler_ran(
    database_url: str, jobwire_no_server: Jobwire
) -> None:
    env = {"JOBWIRE_DATABASE_URL": database_url}
    made = await jobwire_no_server.process(
        "tokens", "create", "first-admin", "--role", "admin", env=env
    )
    assert made.exit_code == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("jw_")
    assert made.stdout == token + "\n"  # only the token: TOKEN=$(jobwire tokens create …)
    assert "shown this once" in made.stderr

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM scheduler.api_tokens WHERE name = $1", "first-admin"
        )
        leaked = 0
        for table in ("api_tokens", "audit_log"):
            leaked += await conn.fetchval(
                f"SELECT count(*) FROM scheduler.{table} t WHERE row_to_json(t)::text LIKE $1",
                f"%{token}%",
            )
    finally:
        await conn.close()
    assert (stored, leaked) == (1, 0)

    listed = await jobwire_no_server.process("tokens", "list", "-o", "json", env=env)
    assert listed.exit_code == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["role"], row["revoked_at"]) == ("first-admin", "admin", None)
    assert token not in listed.stdout

    twice = await jobwire_no_server.process(
        "tokens", "create", "first-admin", "--role", "viewer", env=env
    )
    assert twice.exit_code == 1
    assert twice.stderr.strip().splitlines()[-1] == (
        "jobwire: name: an active token named 'first-admin' exists already"
    )


async def test_a_created_token_works_until_it_is_revoked(
    jobwire: Jobwire, api_server: ApiServer
) -> None:
    env = {"JOBWIRE_DATABASE_URL": api_server.database_url}
    made = await jobwire.process("tokens", "create", "ci", "--role", "operator", env=env)
    assert made.exit_code == 0, made.stderr
    token = made.stdout.strip()

    used = await jobwire("jobs", "list", role=None, env={"JOBWIRE_TOKEN": token})
    assert used.exit_code == 0, used.stderr
    assert "Name" in used.stdout

    table = await jobwire.process("tokens", "list", env=env)
    assert "ci" in table.stdout
    assert "operator" in table.stdout

    revoked = await jobwire.process("tokens", "revoke", "ci", env=env)
    assert revoked.exit_code == 0, revoked.stderr
    assert revoked.stdout == "token 'ci' revoked\n"
    refused = await jobwire("jobs", "list", role=None, env={"JOBWIRE_TOKEN": token})
    assert refused.exit_code == 1
    assert refused.stderr.startswith("jobwire: Unauthorized (401): the token is unknown or revoked")

    again = await jobwire.process("tokens", "revoke", "ci", env=env)
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines()[-1] == "jobwire: no active token named 'ci'"
    shown = await jobwire.process("tokens", "list", "--all", "-o", "json", env=env)
    assert {t["name"]: t["revoked_at"] is not None for t in json.loads(shown.stdout)}["ci"]


async def test_tokens_need_a_database(jobwire_no_server: Jobwire) -> None:
    unset = await jobwire_no_server.process("tokens", "list", env={"JOBWIRE_DATABASE_URL": None})
    assert unset.exit_code == 1
    assert unset.stderr.strip().splitlines()[-1] == (
        "jobwire: JOBWIRE_DATABASE_URL is not set (and no `jobwire dev` runs here): "
        "tokens live in the scheduler's database"
    )
    down = await jobwire_no_server.process(
        "tokens",
        "create",
        "x",
        "--role",
        "admin",
        env={"JOBWIRE_DATABASE_URL": "postgresql://nobody:secret-pw@127.0.0.1:9/nothing"},
    )
    assert down.exit_code == 1
    assert down.stderr.strip().splitlines()[-1] == (
        "jobwire: cannot connect to the database at JOBWIRE_DATABASE_URL"
    )
    assert "secret-pw" not in down.stderr + down.stdout
