"""Churn on a real PostgreSQL: each kind of change does what it says, and run keeps its rate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio

from caseapp import Change, ChangeKind, Churn, generate, install
from caseapp.churn import ChurnError

pytestmark = pytest.mark.integration

CHILDREN = ("tasks", "comments", "attachments", "emails")


@pytest_asyncio.fixture(loop_scope="session")
async def sample(database_url: str) -> str:
    await install(database_url)
    await generate(database_url, cases=30, seed=3)
    return database_url


@pytest_asyncio.fixture(loop_scope="session")
async def churn(sample: str) -> AsyncIterator[Churn]:
    async with await Churn.open(sample, connections=4, seed=11) as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="session")
async def db(sample: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(sample)
    try:
        yield connection
    finally:
        await connection.close()


def _one_case(change: Change, kind: ChangeKind) -> int:
    assert change.kind is kind
    [case_id] = change.case_ids
    return case_id


async def _case(db: asyncpg.Connection, case_id: int) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM caseapp.cases WHERE id = $1", case_id)


async def test_insert_case_adds_an_open_case_with_a_task(
    churn: Churn, db: asyncpg.Connection
) -> None:
    before = datetime.now(UTC)
    change = await churn.step("insert_case")
    case_id = _one_case(change, ChangeKind.INSERT_CASE)
    case = await _case(db, case_id)
    assert case is not None
    assert case["status"] == "open"
    assert case["closed_at"] is None
    assert case["reference"].endswith(f"{case_id:07d}")
    assert before <= case["opened_at"] <= change.committed_at
    tasks = await db.fetchval("SELECT count(*) FROM caseapp.tasks WHERE case_id = $1", case_id)
    assert tasks == 1
    # the new case is among those later changes are drawn from
    assert await db.fetchval("SELECT max(id) FROM caseapp.cases") == case_id


async def test_update_case_bumps_updated_at(churn: Churn, db: asyncpg.Connection) -> None:
    before = await db.fetch("SELECT id, updated_at, title FROM caseapp.cases")
    change = await churn.step(ChangeKind.UPDATE_CASE)
    case_id = _one_case(change, ChangeKind.UPDATE_CASE)
    updated = await _case(db, case_id)
    assert updated is not None
    previous = {row["id"]: row["updated_at"] for row in before}
    assert updated["updated_at"] > previous[case_id]
    assert updated["updated_at"] <= change.committed_at
    unchanged = await db.fetchval(
        "SELECT count(*) FROM caseapp.cases c JOIN unnest($1::bigint[], $2::timestamptz[])"
        " AS b(id, updated_at) ON b.id = c.id WHERE c.updated_at = b.updated_at",
        list(previous),
        list(previous.values()),
    )
    assert unchanged == len(previous) - 1


async def test_delete_case_removes_the_case_and_its_children(
    churn: Churn, db: asyncpg.Connection
) -> None:
    change = await churn.step("delete_case")
    case_id = _one_case(change, ChangeKind.DELETE_CASE)
    assert await _case(db, case_id) is None
    for table in CHILDREN:
        left = await db.fetchval(
            f"SELECT count(*) FROM caseapp.{table} WHERE case_id = $1", case_id
        )
        assert left == 0, table
    assert await db.fetchval("SELECT count(*) FROM caseapp.cases") == 29


async def test_update_task_bumps_the_task_and_names_its_case(
    churn: Churn, db: asyncpg.Connection
) -> None:
    before = await db.fetch("SELECT id, case_id, updated_at FROM caseapp.tasks")
    change = await churn.step("update_task")
    case_id = _one_case(change, ChangeKind.UPDATE_TASK)
    after = await db.fetch("SELECT id, case_id, updated_at FROM caseapp.tasks")
    old = {row["id"]: row for row in before}
    bumped = [row for row in after if row["updated_at"] != old[row["id"]]["updated_at"]]
    assert len(bumped) == 1
    assert bumped[0]["case_id"] == case_id
    assert old[bumped[0]["id"]]["updated_at"] < bumped[0]["updated_at"] <= change.committed_at


async def test_insert_and_delete_comment_name_the_comments_case(
    churn: Churn, db: asyncpg.Connection
) -> None:
    inserted = await churn.step("insert_comment")
    case_id = _one_case(inserted, ChangeKind.INSERT_COMMENT)
    newest = await db.fetchrow("SELECT case_id, created_at FROM caseapp.comments ORDER BY id DESC")
    assert newest is not None
    assert newest["case_id"] == case_id
    assert newest["created_at"] <= inserted.committed_at

    before = {
        row["id"]: row["case_id"]
        for row in await db.fetch("SELECT id, case_id FROM caseapp.comments")
    }
    deleted = await churn.step("delete_comment")
    after = {row["id"] for row in await db.fetch("SELECT id FROM caseapp.comments")}
    [gone] = set(before) - after
    assert deleted.case_ids == (before[gone],)
    assert len(after) == len(before) - 1


async def test_close_case_closes_an_open_case_and_its_tasks(
    churn: Churn, db: asyncpg.Connection
) -> None:
    open_before = await db.fetchval("SELECT count(*) FROM caseapp.cases WHERE status <> 'closed'")
    change = await churn.step("close_case")
    case_id = _one_case(change, ChangeKind.CLOSE_CASE)
    case = await _case(db, case_id)
    assert case is not None
    assert case["status"] == "closed"
    assert case["closed_at"] is not None
    assert case["closed_at"] <= change.committed_at
    not_done = await db.fetchval(
        "SELECT count(*) FROM caseapp.tasks WHERE case_id = $1 AND state <> 'done'", case_id
    )
    assert not_done == 0
    open_after = await db.fetchval("SELECT count(*) FROM caseapp.cases WHERE status <> 'closed'")
    assert open_after == open_before - 1


async def test_close_case_with_no_open_case_left_says_so(
    churn: Churn, db: asyncpg.Connection
) -> None:
    await db.execute(
        "UPDATE caseapp.cases SET status = 'closed', closed_at = now() WHERE status <> 'closed'"
    )
    with pytest.raises(ChurnError, match="close_case: no cases row could be changed"):
        await churn.step("close_case")


async def test_an_unknown_kind_is_refused_by_name(churn: Churn) -> None:
    with pytest.raises(ValueError, match="kind: unknown change kind 'rename_case'"):
        await churn.step("rename_case")
    with pytest.raises(ValueError, match=r"mix: unknown change kind 'explode'"):
        await churn.run(10, 0.1, {"explode": 1.0})
    with pytest.raises(ValueError, match=r"mix\['update_case'\]: a weight must be >= 0"):
        await churn.run(10, 0.1, {"update_case": -1.0})
    with pytest.raises(ValueError, match="rate must be above 0"):
        await churn.run(0, 1)


async def test_run_reaches_roughly_the_rate_asked_with_the_mix_given(
    churn: Churn, db: asyncpg.Connection
) -> None:
    changes = await churn.run(50, 1.0, {"update_case": 1.0, "update_task": 1.0})
    # Not a timed test: a loose bound, that catches a run that ignores its rate.
    assert 25 <= len(changes) <= 75
    assert {change.kind for change in changes} == {ChangeKind.UPDATE_CASE, ChangeKind.UPDATE_TASK}
    times = [change.committed_at for change in changes]
    assert times == sorted(times)
    assert (times[-1] - times[0]).total_seconds() >= 0.5


async def test_run_with_the_default_mix_makes_every_kind(sample: str, churn: Churn) -> None:
    # enough open cases that closes and deletes cannot run out
    await generate(sample, cases=300, closed_fraction=0.0)
    changes = await churn.run(400, 1.0)
    assert 200 <= len(changes) <= 600
    assert {change.kind for change in changes} == set(ChangeKind)
