"""A realistic mix of changes written to an installed, generated caseapp database.

For tests and benchmarks of what follows the database (search sync, archiver):
each :meth:`Churn.step` is one change in one transaction — one SQL statement,
committed on its own — and returns which cases it touched and when it committed.
``committed_at`` is read from the client's clock right after the commit returned
(the statement's result arrives only after its implicit transaction committed),
so the change was visible to other sessions by then: a latency measured from it
("committed → searchable") is never longer than the real one by more than the
client's own scheduling delay, and never shorter.

Rows to change are drawn at random by id: a random id between the table's
smallest and largest known id, then the first row at or after it (wrapping
around), skipping rows another step holds locked — so concurrent steps neither
wait for each other nor change the same row at once, and a table of 500,000
cases costs one index probe per pick.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import asyncpg

from caseapp.model import SCHEMA, CaseStatus, ChangeKind, TaskState, sql_literal
from caseapp.text import text_pools

# What a churn run writes unless told otherwise: mostly updates, as an
# application does, with some inserts and a few deletes.
DEFAULT_MIX: Mapping[ChangeKind, float] = {
    ChangeKind.UPDATE_CASE: 0.25,
    ChangeKind.UPDATE_TASK: 0.25,
    ChangeKind.INSERT_COMMENT: 0.2,
    ChangeKind.INSERT_CASE: 0.1,
    ChangeKind.CLOSE_CASE: 0.08,
    ChangeKind.DELETE_COMMENT: 0.07,
    ChangeKind.DELETE_CASE: 0.05,
}

# A pick can lose its row to a concurrent step (deleted, or locked by it); then
# another random row is drawn. Only an empty (or wholly locked) table runs out.
PICK_ATTEMPTS = 8


class ChurnError(RuntimeError):
    """A change could not be made, e.g. there is no row of the kind it changes."""


@dataclass(frozen=True)
class Change:
    """One committed change: what, to which cases, and when (client clock, after commit)."""

    kind: ChangeKind
    case_ids: tuple[int, ...]
    committed_at: datetime


def _pick(table: str, parameter: str, lock: str = "", where: str = "") -> str:
    """SQL for the id of the first row of ``table`` at or after ``parameter``, wrapping."""
    condition = f"AND {where}" if where else ""
    return f"""coalesce(
        (SELECT id FROM {SCHEMA}.{table} WHERE id >= {parameter} {condition}
         ORDER BY id LIMIT 1 {lock}),
        (SELECT id FROM {SCHEMA}.{table} WHERE id < {parameter} {condition}
         ORDER BY id DESC LIMIT 1 {lock}))"""


_UPDATE_LOCK = "FOR NO KEY UPDATE SKIP LOCKED"
_DELETE_LOCK = "FOR UPDATE SKIP LOCKED"
_CLOSED = sql_literal(CaseStatus.CLOSED)
_DONE = sql_literal(TaskState.DONE)

# $1 customer pick, $2 title, $3 description, $4 priority, $5 task title, $6 assignee
INSERT_CASE_SQL = f"""
WITH new AS (
    SELECT nextval(pg_get_serial_sequence('{SCHEMA}.cases', 'id')) AS id,
           clock_timestamp() AS at, {_pick("customers", "$1")} AS customer_id
), inserted AS (
    INSERT INTO {SCHEMA}.cases (id, reference, title, description, status, priority,
                                customer_id, opened_at, updated_at)
    SELECT id, format('CASE-%s-%s', extract(year FROM at AT TIME ZONE 'UTC'),
                      lpad(id::text, 7, '0')),
           $2, $3, {sql_literal(CaseStatus.OPEN)}, $4, customer_id, at, at
    FROM new WHERE customer_id IS NOT NULL
    RETURNING id, opened_at
), task AS (
    INSERT INTO {SCHEMA}.tasks (case_id, title, state, assignee, due_at, updated_at)
    SELECT id, $5, {sql_literal(TaskState.TODO)}, $6, opened_at + interval '7 days', opened_at
    FROM inserted
    RETURNING id
)
SELECT inserted.id AS case_id, (SELECT id FROM task) AS task_id FROM inserted
"""

# $1 case pick, $2 title, $3 priority, $4 open or pending
UPDATE_CASE_SQL = f"""
UPDATE {SCHEMA}.cases
SET title = $2, priority = $3, updated_at = clock_timestamp(),
    status = CASE WHEN status = {_CLOSED} THEN status ELSE $4 END
WHERE id = {_pick("cases", "$1", _UPDATE_LOCK)}
RETURNING id AS case_id
"""

# $1 case pick
DELETE_CASE_SQL = f"""
DELETE FROM {SCHEMA}.cases WHERE id = {_pick("cases", "$1", _DELETE_LOCK)}
RETURNING id AS case_id
"""

# $1 case pick. A closed case's tasks are done: the application closes both at once.
CLOSE_CASE_SQL = f"""
WITH closed AS (
    UPDATE {SCHEMA}.cases
    SET status = {_CLOSED}, closed_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE id = {_pick("cases", "$1", _UPDATE_LOCK, f"status <> {_CLOSED}")}
    RETURNING id
), done AS (
    UPDATE {SCHEMA}.tasks SET state = {_DONE}, updated_at = clock_timestamp()
    WHERE case_id IN (SELECT id FROM closed) AND state <> {_DONE}
)
SELECT id AS case_id FROM closed
"""

# $1 task pick, $2 state, $3 assignee
UPDATE_TASK_SQL = f"""
UPDATE {SCHEMA}.tasks SET state = $2, assignee = $3, updated_at = clock_timestamp()
WHERE id = {_pick("tasks", "$1", _UPDATE_LOCK)}
RETURNING case_id
"""

# $1 case pick, $2 author, $3 body. No lock on the case: the foreign key check
# takes its own, and a case deleted meanwhile fails it (then another is drawn).
INSERT_COMMENT_SQL = f"""
INSERT INTO {SCHEMA}.comments (case_id, author, body, created_at)
SELECT case_id, $2, $3, clock_timestamp()
FROM (SELECT {_pick("cases", "$1")} AS case_id) AS picked
WHERE case_id IS NOT NULL
RETURNING case_id, id AS comment_id
"""

# $1 comment pick
DELETE_COMMENT_SQL = f"""
DELETE FROM {SCHEMA}.comments WHERE id = {_pick("comments", "$1", _DELETE_LOCK)}
RETURNING case_id
"""

# The table each kind draws its row from (insert_case draws a customer).
_DRAWN_FROM = {
    ChangeKind.INSERT_CASE: "customers",
    ChangeKind.UPDATE_CASE: "cases",
    ChangeKind.DELETE_CASE: "cases",
    ChangeKind.CLOSE_CASE: "cases",
    ChangeKind.UPDATE_TASK: "tasks",
    ChangeKind.INSERT_COMMENT: "cases",
    ChangeKind.DELETE_COMMENT: "comments",
}
_RETRYABLE = (
    asyncpg.ForeignKeyViolationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


def _kind(value: ChangeKind | str, field: str = "kind") -> ChangeKind:
    try:
        return ChangeKind(value)
    except ValueError:
        known = ", ".join(kind.value for kind in ChangeKind)
        raise ValueError(f"{field}: unknown change kind {value!r} (known: {known})") from None


def parse_mix(mix: Mapping[str, float] | None) -> dict[ChangeKind, float]:
    """Weights per kind (not necessarily summing to 1); None means :data:`DEFAULT_MIX`."""
    if mix is None:
        return dict(DEFAULT_MIX)
    weights: dict[ChangeKind, float] = {}
    for name, weight in mix.items():
        kind = _kind(name, "mix")
        if not weight >= 0:
            raise ValueError(f"mix[{name!r}]: a weight must be >= 0, got {weight}")
        weights[kind] = float(weight)
    if sum(weights.values()) <= 0:
        raise ValueError("mix: at least one kind needs a weight above 0")
    return weights


class Churn:
    """Writes changes to caseapp through ``pool``; ``Churn.open(dsn)`` makes its own pool.

    Use as ``async with await Churn.open(dsn) as churn:``, or hand it a pool you
    own (it is then left open). The data it writes is drawn from ``seed``.
    """

    def __init__(self, pool: asyncpg.Pool, *, seed: int = 0, owns_pool: bool = False) -> None:
        self._pool = pool
        self._owns_pool = owns_pool
        self._random = random.Random(seed)
        self._text = text_pools(seed)
        # Smallest and largest id seen per table: the range random picks come from.
        self._bounds: dict[str, tuple[int, int]] = {}
        self.connections = pool.get_max_size()

    @classmethod
    async def open(cls, dsn: str, *, connections: int = 8, seed: int = 0) -> Churn:
        """A churn on a pool of ``connections`` connections (enough for ~500 changes/s)."""
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
        return cls(pool, seed=seed, owns_pool=True)

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def step(self, kind: ChangeKind | str) -> Change:
        """Make one change of ``kind`` in its own transaction; which cases, and when it committed.

        Raises :class:`ChurnError` when there is no row to change (e.g. no open
        case left to close).
        """
        change_kind = _kind(kind)
        table = _DRAWN_FROM[change_kind]
        for attempt in range(PICK_ATTEMPTS):
            if attempt == PICK_ATTEMPTS // 2:
                # Perhaps rows were added beyond what we knew (by others): look again.
                self._bounds.pop(table, None)
            bounds = await self._table_bounds(table)
            if bounds is None:
                break
            sql, arguments = self._statement(change_kind, self._random.randint(*bounds))
            try:
                row = await self._pool.fetchrow(sql, *arguments)
            except _RETRYABLE:
                continue
            committed_at = datetime.now(UTC)
            if row is not None:
                self._saw(change_kind, row)
                return Change(change_kind, (int(row["case_id"]),), committed_at)
        raise ChurnError(
            f"{change_kind.value}: no {table} row could be changed in {PICK_ATTEMPTS} draws"
            " (none left, or all locked by concurrent changes)"
        )

    async def run(
        self, rate: float, seconds: float, mix: Mapping[str, float] | None = None
    ) -> list[Change]:
        """Make changes at ``rate`` per second for ``seconds``; the changes, in commit order.

        Change ``i`` is due at ``start + i / rate`` — an absolute schedule, so time
        spent on changes does not make the run drift. At most one change per pool
        connection is in flight; when the database falls behind, due changes start
        as soon as a connection frees up, and the rate reached is lower.
        """
        if not rate > 0:
            raise ValueError(f"rate must be above 0, got {rate}")
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        weights = parse_mix(mix)
        kinds, shares = list(weights), list(weights.values())
        loop = asyncio.get_running_loop()
        in_flight = asyncio.Semaphore(self.connections)
        changes: list[Change] = []

        async def make(kind: ChangeKind) -> None:
            try:
                changes.append(await self.step(kind))
            finally:
                in_flight.release()

        start = loop.time()
        async with asyncio.TaskGroup() as group:
            index = 0
            while index / rate < seconds:
                delay = start + index / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await in_flight.acquire()
                group.create_task(make(self._random.choices(kinds, shares)[0]))
                index += 1
        changes.sort(key=lambda change: change.committed_at)
        return changes

    async def _table_bounds(self, table: str) -> tuple[int, int] | None:
        if table not in self._bounds:
            # The table name comes from _DRAWN_FROM, never from input.
            row = await self._pool.fetchrow(f"SELECT min(id), max(id) FROM {SCHEMA}.{table}")
            if row is None or row[0] is None:
                return None
            self._bounds[table] = (int(row[0]), int(row[1]))
        return self._bounds[table]

    def _saw(self, kind: ChangeKind, row: asyncpg.Record) -> None:
        """Widen the pick ranges to rows this churn inserted."""
        if kind is ChangeKind.INSERT_CASE:
            self._raise_bound("cases", int(row["case_id"]))
            self._raise_bound("tasks", int(row["task_id"]))
        elif kind is ChangeKind.INSERT_COMMENT:
            self._raise_bound("comments", int(row["comment_id"]))

    def _raise_bound(self, table: str, new_id: int) -> None:
        # A table not read yet gets its bounds, this row included, when first drawn from.
        if table in self._bounds:
            low, high = self._bounds[table]
            self._bounds[table] = (low, max(high, new_id))

    def _statement(self, kind: ChangeKind, drawn: int) -> tuple[str, tuple[object, ...]]:
        text, pick = self._text, self._random.choice
        if kind is ChangeKind.INSERT_CASE:
            description = f"{pick(text.sentences)} {pick(text.sentences)}"
            return INSERT_CASE_SQL, (
                drawn,
                pick(text.titles),
                description,
                self._random.randint(1, 4),
                pick(text.task_titles),
                pick(text.assignees),
            )
        if kind is ChangeKind.UPDATE_CASE:
            status = pick((CaseStatus.OPEN, CaseStatus.PENDING)).value
            return UPDATE_CASE_SQL, (drawn, pick(text.titles), self._random.randint(1, 4), status)
        if kind is ChangeKind.DELETE_CASE:
            return DELETE_CASE_SQL, (drawn,)
        if kind is ChangeKind.CLOSE_CASE:
            return CLOSE_CASE_SQL, (drawn,)
        if kind is ChangeKind.UPDATE_TASK:
            state = pick((TaskState.TODO, TaskState.DOING, TaskState.DONE)).value
            return UPDATE_TASK_SQL, (drawn, state, pick(text.assignees))
        if kind is ChangeKind.INSERT_COMMENT:
            return INSERT_COMMENT_SQL, (drawn, pick(text.people), pick(text.sentences))
        return DELETE_COMMENT_SQL, (drawn,)
