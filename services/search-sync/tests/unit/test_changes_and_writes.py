"""Changes to documents, the watermark rule, derived mappings, index names, and the bulk
writer's batching, backpressure and failures (on an in-memory engine of our own port)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from jobwire.contracts.search import DocumentProfile
from jobwire.search_sync.adapters.engine import EngineUnavailable, Write, WriteResult
from jobwire.search_sync.domain.catalog import Catalog, Column, ForeignKey, Table
from jobwire.search_sync.domain.changes import next_watermark, touched
from jobwire.search_sync.domain.mapping import field_type, mappings
from jobwire.search_sync.domain.plan import resolve
from jobwire.search_sync.full_load import index_name, physical_indices, to_drop
from jobwire.search_sync.sync import BulkWriter


def _col(name: str, base: str = "int8", category: str = "N", **kw: Any) -> Column:
    return Column(name, base, base, category, **kw)


def _plan():  # type: ignore[no-untyped-def]
    cases = Table(
        "app",
        "cases",
        "r",
        {"id": _col("id"), "title": _col("title", "text", "S"), "customer_id": _col("customer_id")},
        ("id",),
        (ForeignKey(("customer_id",), "app", "customers", ("id",)),),
    )
    tasks = Table(
        "app",
        "tasks",
        "r",
        {"id": _col("id"), "case_id": _col("case_id"), "due": _col("due", "timestamptz", "D")},
        ("id",),
        (ForeignKey(("case_id",), "app", "cases", ("id",)),),
    )
    customers = Table(
        "app", "customers", "r", {"id": _col("id"), "name": _col("name", "text", "S")}, ("id",)
    )
    catalog = Catalog({(t.schema, t.name): t for t in (cases, tasks, customers)})
    profile = DocumentProfile(
        root="app.cases",
        children=[{"table": "app.tasks"}],
        lookups=[{"table": "app.customers", "field": "customer"}],
    )
    return resolve(profile, catalog)


@dataclass(frozen=True)
class _Change:
    xid: int
    relation: str
    keys: str | None


def test_changes_lead_to_root_keys_and_lookup_keys() -> None:
    wanted = touched(
        _plan(),
        [
            _Change(10, "app.cases(id)", "[1]"),
            _Change(11, "app.tasks(case_id)", "[2]"),
            _Change(11, "app.tasks(case_id)", "[1]"),  # seen already
            _Change(12, "app.customers(id)", "[7]"),
            _Change(13, "app.tasks(case_id)", "[null]"),  # a task with no case
            _Change(14, "app.other(id)", "[9]"),  # a relation this plan does not follow
        ],
    )
    assert list(wanted.roots) == ["[1]", "[2]"]
    assert {i: list(keys) for i, keys in wanted.lookups.items()} == {0: ["[7]"]}
    assert wanted.orphans == 1
    assert wanted.truncated == []


def test_a_truncate_is_reported_not_mapped() -> None:
    wanted = touched(_plan(), [_Change(5, "app.tasks(case_id)", None)] * 2)
    assert wanted.truncated == ["app.tasks(case_id)"]
    assert not wanted.roots


@pytest.mark.parametrize(
    ("xids", "limit", "expected"),
    [
        ([], 10, 100),  # nothing new: everything below the fence is done
        ([50, 60, 120], 10, 100),  # all taken; those at or above the fence are read again
        ([50, 60, 70], 3, 70),  # cut at the limit: 70's changes may be cut, so 70 is next
        ([50, 60, 170], 3, 100),  # ... but never beyond the fence
        ([60, 60, 60], 3, 61),  # one transaction filled the batch: taken whole (the source's rule)
    ],
)
def test_the_watermark_never_passes_a_transaction_that_can_still_commit(
    xids: list[int], limit: int, expected: int
) -> None:
    assert next_watermark(40, 100, xids, limit) == expected


def test_the_watermark_never_goes_back() -> None:
    assert next_watermark(100, 90, [], 10) == 100


KEYWORD = {"type": "keyword", "ignore_above": 256}


def test_mappings_follow_the_columns_and_nest_children() -> None:
    derived = mappings(_plan())["properties"]
    assert derived["id"] == {"type": "long"}
    assert derived["title"]["type"] == "text"
    assert derived["title"]["fields"]["keyword"]["type"] == "keyword"
    assert derived["tasks"]["type"] == "nested"
    assert derived["tasks"]["properties"]["due"] == {"type": "date"}
    assert derived["customer"] == {
        "type": "object",
        "properties": {
            "id": {"type": "long"},
            "name": {
                "type": "text",
                "fields": {"keyword": {"type": "keyword", "ignore_above": 256}},
            },
        },
    }
    assert field_type(_col("status", "case_status", "E", is_enum=True)) == "keyword"
    assert field_type(_col("span", "interval", "T")) == "keyword"


def test_index_names_sort_by_age_and_retention_keeps_the_newest() -> None:
    at = datetime(2026, 12, 4, 18, 0, 1, tzinfo=UTC)
    assert index_name("cases", at, "run-AB12cd34ef") == "cases-20261204180001-runab12c"
    names = [
        "cases-20261201000000-aaaa",
        "cases-20261203000000-cccc",
        "cases-20261202000000-bbbb",
        "cases-archive-20261201000000-dddd",  # another alias's
        "cases-20261204000000-eeee",
    ]
    assert physical_indices("cases", names)[0] == "cases-20261201000000-aaaa"
    assert "cases-archive-20261201000000-dddd" not in physical_indices("cases", names)
    assert to_drop("cases", names, "cases-20261204000000-eeee", keep=2) == [
        "cases-20261201000000-aaaa"
    ]
    assert to_drop("cases", names, "cases-20261204000000-eeee", keep=0) == [
        "cases-20261201000000-aaaa",
        "cases-20261202000000-bbbb",
        "cases-20261203000000-cccc",
    ]


class _Engine:
    """The engine port in memory: answers each bulk after ``delay``; ids in ``refuse`` rejected."""

    def __init__(self, delay: float = 0.0, refuse: frozenset[str] = frozenset()) -> None:
        self.delay = delay
        self.refuse = refuse
        self.requests: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail = False

    async def bulk(self, index: str, writes: Sequence[Write]) -> list[WriteResult]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise EngineUnavailable("bulk: gone")
            self.requests.append([w.id for w in writes])
            return [
                WriteResult(w.id, w.op, "rejected" if w.id in self.refuse else "written", "no")
                for w in writes
            ]
        finally:
            self.in_flight -= 1


def _writer(engine: _Engine, rejected: list[tuple[str, str]], **kw: Any) -> BulkWriter:
    async def reject(write: Write, reason: str, detail: str) -> None:
        rejected.append((write.id, reason))

    options: dict[str, Any] = {"batch_size": 3, "max_bytes": 10_000, "concurrency": 2} | kw
    return BulkWriter(engine, "i", reject=reject, **options)  # type: ignore[arg-type]


def _doc(i: int, size: int = 10) -> Write:
    return Write("index", str(i), 1, b"x" * size)


async def test_writes_go_in_bounded_batches_with_bounded_requests_in_flight() -> None:
    engine, rejected = _Engine(delay=0.01, refuse=frozenset({"4"})), []
    async with _writer(engine, rejected) as writer:
        for i in range(10):
            await writer.add(_doc(i))
        await writer.add(Write("delete", "gone", 1, None))
        await writer.flush()
    assert [len(r) for r in engine.requests] == [3, 3, 3, 2]
    assert engine.most_in_flight == 2
    assert dict(writer.counts) == {"indexed": 9, "rejected": 1, "deleted": 1}
    assert rejected == [("4", "rejected")]


async def test_a_batch_closes_before_it_passes_max_bytes_and_a_huge_document_is_set_aside() -> None:
    engine, rejected = _Engine(), []
    async with _writer(engine, rejected, batch_size=100, max_bytes=1000) as writer:
        for i in range(4):
            await writer.add(_doc(i, size=300))  # 300 + the action line's 200: two per request
        await writer.add(_doc(99, size=5000))
        await writer.flush()
    assert engine.requests == [["0", "1"], ["2", "3"]]
    assert rejected == [("99", "too_large")]


async def test_a_failed_request_fails_the_writer() -> None:
    engine, rejected = _Engine(), []
    engine.fail = True
    async with _writer(engine, rejected) as writer:
        for i in range(3):
            await writer.add(_doc(i))
        with pytest.raises(EngineUnavailable):
            await writer.flush()
        with pytest.raises(EngineUnavailable):
            await writer.add(_doc(9))


async def test_a_dry_run_sends_nothing() -> None:
    engine, rejected = _Engine(), []
    async with _writer(engine, rejected, dry_run=True) as writer:
        for i in range(5):
            await writer.add(_doc(i))
        await writer.flush()
    assert engine.requests == []
    assert writer.counts["indexed"] == 5
