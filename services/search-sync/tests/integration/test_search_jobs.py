"""`search-full-load` and `search-incremental` end to end: the whole service on a caseapp
database, NATS and osmem-server, runs fired as the scheduler fires them."""

from __future__ import annotations

import asyncio
import json
import random
from typing import TYPE_CHECKING

import asyncpg
import pytest

import caseapp
from jobwire.contracts.deadletter import DeadLetter
from jobwire.contracts.envelope import decode
from jobwire.contracts.subjects import Stream
from jobwire.runtime.validation import ParamProblem, check_live
from jobwire.testing import wait_for

if TYPE_CHECKING:
    from conftest import Front, Start

pytestmark = pytest.mark.integration


async def _loaded(search_sync: Start, alias: str, cases: int, **options: object):  # type: ignore[no-untyped-def]
    service = await search_sync(**options)
    await caseapp.generate(service.source_url, cases=cases)
    await service.install()
    loaded = await service.full_load(alias)
    assert loaded["indexed"] == cases
    return service, loaded


async def test_full_load_then_incremental_follows_every_kind_of_change(
    search_sync: Start, alias: str, kind: str
) -> None:
    service = await search_sync()
    await caseapp.generate(service.source_url, cases=30)
    await service.install()

    loaded = await service.full_load(alias, kind=kind)
    assert (loaded["source"], loaded["indexed"], loaded["rejected"]) == (30, 30, 0)
    assert await service.reader.aliased(alias) == [loaded["index"]]
    first = await service.document(alias, 1)
    assert first is not None
    assert len(first["tasks"]) == 3
    assert len(first["comments"]) == 2
    assert first["customer"]["name"]

    # a child, a delete, an insert, a lookup, and the root itself
    await service.execute(
        "UPDATE caseapp.tasks SET title = 'renamed task' WHERE id = "
        "(SELECT min(id) FROM caseapp.tasks WHERE case_id = 1)"
    )
    await service.execute("DELETE FROM caseapp.cases WHERE id = 2")
    customer = await service.fetchval("SELECT customer_id FROM caseapp.cases WHERE id = 3")
    await service.execute(
        "UPDATE caseapp.customers SET name = 'Renamed Ltd' WHERE id = $1", customer
    )
    await service.execute("UPDATE caseapp.cases SET title = 'new title' WHERE id = 4")
    new_id = await service.fetchval(
        "INSERT INTO caseapp.cases (reference, title, description, status, priority, customer_id)"
        " VALUES ('NEW-1', 'brand new', 'd', 'open', 2, $1) RETURNING id",
        customer,
    )

    applied = await service.incremental(alias, kind=kind)
    assert applied["deleted"] == 1
    assert applied["rejected"] == 0
    first = await service.document(alias, 1)
    assert first is not None
    assert "renamed task" in [t["title"] for t in first["tasks"]]
    assert await service.document(alias, 2) is None
    third = await service.document(alias, 3)
    assert third is not None
    assert third["customer"]["name"] == "Renamed Ltd"
    fourth = await service.document(alias, 4)
    assert fourth is not None
    assert fourth["title"] == "new title"
    assert (await service.document(alias, new_id) or {}).get("title") == "brand new"
    assert await service.reader.count(alias) == 30

    again = await service.incremental(alias, kind=kind)
    assert (again["changes"], again["indexed"], again["deleted"]) == (0, 0, 0)
    assert again["lag_seconds"] == 0.0


async def test_a_transaction_that_commits_late_is_not_missed(
    search_sync: Start, alias: str
) -> None:
    service, _ = await _loaded(search_sync, alias, 5)
    late = await asyncpg.connect(service.source_url)
    try:
        transaction = late.transaction()
        await transaction.start()
        await late.execute("UPDATE caseapp.cases SET title = 'committed late' WHERE id = 1")
        # A later transaction commits first and is synced first.
        await service.execute("UPDATE caseapp.cases SET title = 'committed early' WHERE id = 2")
        early = await service.incremental(alias)
        assert early["indexed"] >= 1
        assert (await service.document(alias, 2) or {})["title"] == "committed early"
        assert (await service.document(alias, 1) or {})["title"] != "committed late"
        await transaction.commit()
    finally:
        await late.close()
    await service.incremental(alias)
    assert (await service.document(alias, 1) or {})["title"] == "committed late"


async def test_writers_committing_out_of_order_while_runs_go_on_miss_nothing(
    search_sync: Start, alias: str
) -> None:
    service, _ = await _loaded(search_sync, alias, 40)
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.6) for _ in range(40)]

    async def write(case_id: int, delay: float) -> None:
        connection = await asyncpg.connect(service.source_url)
        try:
            async with connection.transaction():
                await connection.execute(
                    "UPDATE caseapp.cases SET title = $2 WHERE id = $1", case_id, f"w{case_id}"
                )
                await asyncio.sleep(delay)  # commits after writers that started later
        finally:
            await connection.close()

    writers = asyncio.gather(*(write(i + 1, d) for i, d in enumerate(delays)))
    while not writers.done():
        await service.incremental(alias)
    await writers
    await service.incremental(alias)
    titles = {i: (await service.document(alias, i) or {}).get("title") for i in range(1, 41)}
    assert titles == {i: f"w{i}" for i in range(1, 41)}


async def test_rows_deleted_during_a_full_load_are_deleted_from_the_index(
    search_sync: Start, alias: str
) -> None:
    service = await search_sync()
    await caseapp.generate(service.source_url, cases=400)
    await service.install()
    params = service.params(alias, batch_size=20, fetch_size=20, concurrency=1)
    load = asyncio.create_task(service.run("search-full-load", params))
    await wait_for(lambda: service.reader.indices(f"{alias}-"), 20, description="the new index")
    await service.execute("DELETE FROM caseapp.cases WHERE id <= 50")
    finished = await load
    assert finished.status == "succeeded", finished.error
    await service.incremental(alias)
    assert await service.reader.count(alias) == 350
    assert await service.document(alias, 1) is None
    assert await service.document(alias, 51) is not None


async def test_overlapping_incremental_runs_never_write_an_older_version(
    search_sync: Start, alias: str
) -> None:
    service, _ = await _loaded(search_sync, alias, 10, incremental_concurrency=4)
    for round_ in range(5):
        await service.execute(f"UPDATE caseapp.cases SET title = 'v{round_}' WHERE id = 1")
        runs = [service.run("search-incremental", service.params(alias)) for _ in range(3)]
        results = await asyncio.gather(*runs)
        assert [r.status for r in results] == ["succeeded"] * 3
        assert (await service.document(alias, 1) or {})["title"] == f"v{round_}"


async def test_an_engine_that_goes_away_fails_the_run_and_the_next_run_resumes(
    search_sync: Start, alias: str, front: Front
) -> None:
    proxy = await front()
    service = await search_sync(engine_url=proxy.url)
    await caseapp.generate(service.source_url, cases=10)
    await service.install()
    await service.full_load(alias)
    await service.execute("UPDATE caseapp.cases SET title = 'while away' WHERE id = 3")
    await service.execute("DELETE FROM caseapp.cases WHERE id = 4")

    proxy.down = True
    failed = await service.run("search-incremental", service.params(alias))
    assert failed.status == "failed"
    assert failed.error is not None
    assert "EngineUnavailable" in failed.error.type

    proxy.down = False
    resumed = await service.incremental(alias)
    assert resumed["deleted"] == 1
    assert (await service.document(alias, 3) or {})["title"] == "while away"
    assert await service.document(alias, 4) is None


async def test_the_alias_is_never_empty_or_partial_during_a_full_load_under_writes(
    search_sync: Start, alias: str
) -> None:
    service, first = await _loaded(search_sync, alias, 300)
    stop = asyncio.Event()
    seen: list[int] = []

    async def write() -> None:
        async with await caseapp.Churn.open(service.source_url, connections=2) as churn:
            while not stop.is_set():
                await churn.step("insert_case")
                await churn.step("update_case")
                await asyncio.sleep(0.01)

    async def search() -> None:
        while not stop.is_set():
            seen.append(await service.reader.count(alias))
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(write()), asyncio.create_task(search())]
    try:
        second = await service.full_load(alias, batch_size=25, fetch_size=25, concurrency=1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert seen
    assert min(seen) >= 300
    await service.incremental(alias)
    source_count = await service.fetchval("SELECT count(*) FROM caseapp.cases")
    assert await service.reader.count(alias) == source_count
    assert await service.reader.aliased(alias) == [second["index"]]
    assert second["previous"] == [first["index"]]
    # keep=2: both loads' indices are still there
    assert await service.reader.indices(f"{alias}-") == sorted([first["index"], second["index"]])


async def test_a_truncated_table_asks_for_a_full_load(search_sync: Start, alias: str) -> None:
    service, _ = await _loaded(search_sync, alias, 3)
    await service.execute("TRUNCATE caseapp.comments")
    failed = await service.run("search-incremental", service.params(alias))
    assert failed.status == "failed"
    assert failed.error is not None
    assert "caseapp.comments(case_id) was truncated" in failed.error.message
    assert "full load" in failed.error.message


async def test_incremental_before_any_full_load_says_what_to_do(
    search_sync: Start, alias: str
) -> None:
    service = await search_sync()
    failed = await service.run("search-incremental", service.params(alias))
    assert failed.status == "failed"
    assert failed.error is not None
    assert "search-full-load" in failed.error.message


async def test_refused_documents_are_dead_lettered_and_the_load_goes_on(
    search_sync: Start, alias: str, namespace: str
) -> None:
    service = await search_sync()
    await caseapp.generate(service.source_url, cases=3)
    await service.execute("UPDATE caseapp.cases SET title = (id * 10)::text WHERE id <> 2")
    await service.execute("UPDATE caseapp.cases SET title = 'not a number' WHERE id = 2")
    mappings = {"properties": {"title": {"type": "long"}}}
    loaded = await service.full_load(alias, index={"alias": alias, "mappings": mappings})
    assert (loaded["source"], loaded["indexed"], loaded["rejected"]) == (3, 2, 1)
    assert await service.reader.count(alias) == 2

    stream = service.broker.subjects.stream_name(Stream.DLQ)
    stored = await service.broker.js.get_last_msg(
        stream, service.broker.subjects.dlq("search-full-load")
    )
    letter = decode(stored.data or b"", DeadLetter).data
    assert letter.reason == "rejected"
    assert letter.headers["jobwire-document-id"] == "2"
    assert "title" in letter.detail
    assert json.loads(letter.payload)["title"] == "not a number"


async def test_a_profile_is_checked_against_the_live_source_when_saved(
    search_sync: Start, alias: str
) -> None:
    service = await search_sync()
    profile = dict(service.params(alias)["profile"], fields=["id", "titel"])
    profile["children"] = [{"table": "caseapp.taks"}]
    params = service.params(alias, profile=profile)

    async def checked() -> list[ParamProblem] | None:
        return await check_live(service.broker, "search-full-load", params, timeout=5)

    problems = await wait_for(checked, 20, description="a live check answered")
    assert [p.field for p in problems] == [
        "params.profile.fields.1.column",
        "params.profile.children.0.table",
    ]
    assert "titel" in problems[0].message
    good = service.params(alias)
    assert await check_live(service.broker, "search-incremental", good, timeout=5) == []


async def test_a_view_the_user_owns_is_indexed_and_followed_through_its_tables(
    search_sync: Start, alias: str
) -> None:
    service = await search_sync()
    await caseapp.generate(service.source_url, cases=5)
    await service.execute(
        """CREATE VIEW caseapp.case_search AS
           SELECT c.id, c.title, (SELECT count(*) FROM caseapp.tasks t
                                  WHERE t.case_id = c.id AND t.state <> 'done') AS open_tasks
           FROM caseapp.cases c"""
    )
    profile = {
        "view": "caseapp.case_search",
        "key": ["id"],
        "view_sources": [
            {"table": "caseapp.cases", "key": ["id"]},
            {"table": "caseapp.tasks", "key": ["case_id"]},
        ],
    }
    await service.install(profile)
    loaded = await service.full_load(alias, profile=profile)
    assert loaded["indexed"] == 5
    await service.execute("UPDATE caseapp.tasks SET state = 'todo' WHERE case_id = 2")
    await service.execute("UPDATE caseapp.cases SET title = 'seen through the view' WHERE id = 3")
    await service.execute("DELETE FROM caseapp.cases WHERE id = 4")
    applied = await service.incremental(alias, profile=profile)
    assert applied["deleted"] == 1
    assert (await service.document(alias, 2) or {}).get("open_tasks") == 3
    assert (await service.document(alias, 3) or {}).get("title") == "seen through the view"
    assert await service.document(alias, 4) is None
