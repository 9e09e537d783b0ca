"""The generator on a real PostgreSQL: exact counts, deterministic rows, a believable timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from caseapp import count_rows, generate, install
from jobwire.testing.databases import scratch_database

pytestmark = pytest.mark.integration

END = datetime(2025, 6, 1, tzinfo=UTC)


async def _fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


async def test_small_counts_are_exact_across_batches(database_url: str) -> None:
    await install(database_url)
    counts = await generate(
        database_url,
        cases=23,
        tasks_per_case=4,
        comments_per_case=0,
        attachments_per_case=2,
        emails_per_case=3,
        batch=5,
        customers=4,
    )
    expected = {
        "customers": 4,
        "cases": 23,
        "tasks": 92,
        "comments": 0,
        "attachments": 46,
        "emails": 69,
    }
    assert counts == expected
    assert await count_rows(database_url) == expected
    per_case = await _fetch(
        database_url,
        "SELECT c.id, (SELECT count(*) FROM caseapp.tasks t WHERE t.case_id = c.id) AS tasks"
        " FROM caseapp.cases c",
    )
    assert {row["tasks"] for row in per_case} == {4}


async def test_a_second_generate_adds_to_what_is_there(database_url: str) -> None:
    await install(database_url)
    await generate(database_url, cases=5)
    second = await generate(database_url, cases=7)
    assert second["cases"] == 7
    assert (await count_rows(database_url))["cases"] == 12
    references = await _fetch(database_url, "SELECT reference FROM caseapp.cases")
    assert len({row["reference"] for row in references}) == 12


async def test_the_same_seed_gives_the_same_data_whatever_the_batching(
    database_url: str, postgres_dsn: str
) -> None:
    columns = (
        "title, description, status, priority, customer_id, tags, amount,"
        " opened_at, updated_at, closed_at"
    )
    query = f"SELECT id, reference, {columns} FROM caseapp.cases ORDER BY id"
    content = f"SELECT {columns} FROM caseapp.cases ORDER BY opened_at, title"
    tasks = "SELECT case_id, title, state, assignee, due_at FROM caseapp.tasks ORDER BY id"
    await install(database_url)
    await generate(database_url, cases=40, seed=5, batch=40, end=END, connections=1)
    async with scratch_database(postgres_dsn) as other:
        await install(other)
        await generate(other, cases=40, seed=5, batch=7, end=END, connections=1)
        assert await _fetch(other, query) == await _fetch(database_url, query)
        assert await _fetch(other, tasks) == await _fetch(database_url, tasks)
    async with scratch_database(postgres_dsn) as other:
        # Batches on several connections take their ids in whatever order they
        # run: the same rows, under other ids.
        await install(other)
        await generate(other, cases=40, seed=5, batch=7, end=END, connections=3)
        assert await _fetch(other, content) == await _fetch(database_url, content)
    async with scratch_database(postgres_dsn) as other:
        await install(other)
        await generate(other, cases=40, seed=6, end=END)
        titles = [row["title"] for row in await _fetch(other, query)]
        assert titles != [row["title"] for row in await _fetch(database_url, query)]


async def test_dates_spread_over_three_years_and_closed_cases_have_closed_at(
    database_url: str,
) -> None:
    await install(database_url)
    await generate(database_url, cases=2000, closed_fraction=0.3, end=END)
    [cases] = await _fetch(
        database_url,
        """
        SELECT min(opened_at) AS first, max(opened_at) AS last,
               count(*) FILTER (WHERE status = 'closed') AS closed,
               count(*) FILTER (WHERE status = 'closed' AND closed_at >= opened_at
                                AND closed_at <= updated_at) AS closed_in_order,
               count(*) FILTER (WHERE status <> 'closed' AND closed_at IS NULL) AS still_open,
               count(*) FILTER (WHERE updated_at < opened_at) AS updated_before_opened
        FROM caseapp.cases
        """,
    )
    assert END - timedelta(days=3 * 365) <= cases["first"] < END - timedelta(days=3 * 360)
    assert END - timedelta(days=10) < cases["last"] <= END
    assert 500 <= cases["closed"] <= 700
    assert cases["closed_in_order"] == cases["closed"]
    assert cases["still_open"] == 2000 - cases["closed"]
    assert cases["updated_before_opened"] == 0
    [children] = await _fetch(
        database_url,
        """
        SELECT count(*) FILTER (WHERE c.status = 'closed' AND t.state <> 'done') AS open_tasks,
               count(*) FILTER (WHERE t.updated_at < c.opened_at
                                OR t.updated_at > coalesce(c.closed_at, $END)) AS outside
        FROM caseapp.tasks t JOIN caseapp.cases c ON c.id = t.case_id
        """.replace("$END", f"'{END.isoformat()}'::timestamptz"),
    )
    assert children["open_tasks"] == 0
    assert children["outside"] == 0


async def test_bad_arguments_name_the_field(database_url: str) -> None:
    with pytest.raises(ValueError, match="cases must be at least 0"):
        await generate(database_url, cases=-1)
    with pytest.raises(ValueError, match="tasks_per_case must be between 0 and 63"):
        await generate(database_url, cases=1, tasks_per_case=64)
    with pytest.raises(ValueError, match="closed_fraction"):
        await generate(database_url, cases=1, closed_fraction=1.5)
    with pytest.raises(ValueError, match="end must be timezone-aware"):
        await generate(database_url, cases=1, end=datetime(2025, 1, 1))
