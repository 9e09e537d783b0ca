"""PostgreSQL: job definitions, runs and the outbox. All of the scheduler's SQL is here.

Every statement is parameterised; set-based statements (``unnest``) keep a claim
of a thousand jobs to a handful of round trips.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobwire.scheduler.domain.definitions import JobDefinition
from jobwire.scheduler.domain.status import JobFacts

NOTIFY_CHANNEL = "jobwire_scheduler_jobs"
ACTIVE = ("queued", "dispatched", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "skipped", "missed")


class JobNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no job named {name!r}")
        self.name = name


class VersionConflict(Exception):
    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(
            f"job {name!r} is at version {actual}, not {expected}: reload it and try again"
        )
        self.expected, self.actual = expected, actual


class JobExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a job named {name!r} exists already")


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: uuid.UUID
    name: str
    definition: JobDefinition
    enabled: bool
    paused: bool
    next_fire_at: datetime | None
    state: dict[str, Any] | None
    version: int


@dataclass(frozen=True, slots=True)
class NewRun:
    id: uuid.UUID
    job_id: uuid.UUID
    scheduled_for: datetime
    trigger: str
    status: str
    reason: str | None
    fired_at: datetime
    job_version: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    subject: str
    payload: bytes
    headers: dict[str, str]
    completes: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class JobOverview:
    """One row of the Jobs Management table, before the status is derived."""

    name: str
    type: str
    description: str
    last_result: str | None
    last_run_at: datetime | None
    next_run_at: datetime | None
    active_hosts: tuple[str, ...]
    facts: JobFacts


# A definition never changes without its version changing, so each (id, version)
# is parsed once per process instead of on every claim.
_definitions: dict[tuple[uuid.UUID, int], JobDefinition] = {}
_DEFINITIONS_CACHED = 200_000


def _definition(row: asyncpg.Record) -> JobDefinition:
    key = (row["id"], row["version"])
    definition = _definitions.get(key)
    if definition is None:
        if len(_definitions) >= _DEFINITIONS_CACHED:
            _definitions.clear()
        definition = _definitions[key] = JobDefinition.model_validate(row["definition"])
    return definition


def _record(row: asyncpg.Record) -> JobRecord:
    return JobRecord(
        id=row["id"],
        name=row["name"],
        definition=_definition(row),
        enabled=row["enabled"],
        paused=row["paused"],
        next_fire_at=row["next_fire_at"],
        state=row["state"],
        version=row["version"],
    )


_JOB_COLUMNS = "id, name, definition, enabled, paused, next_fire_at, state, version"


class PostgresJobStore:
    """Job definitions and their runs in the ``scheduler`` schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "scheduler") -> None:
        self.pool = pool
        self.schema = schema

    # -- definitions -----------------------------------------------------------

    async def create(self, definition: JobDefinition, now: datetime) -> JobRecord:
        job_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await self._ensure_group(conn, definition.group)
            try:
                row = await conn.fetchrow(
                    f"""INSERT INTO {self.schema}.jobs
                        (id, name, type, definition, enabled, group_name, priority, next_fire_at)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                        RETURNING {_JOB_COLUMNS}""",
                    job_id,
                    definition.name,
                    definition.type,
                    definition.model_dump(mode="json"),
                    definition.enabled,
                    definition.group,
                    definition.priority,
                    definition.first_fire(now),
                )
            except asyncpg.UniqueViolationError:
                raise JobExists(definition.name) from None
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        assert row is not None
        return _record(row)

    async def update(
        self, name: str, definition: JobDefinition, expected_version: int, now: datetime
    ) -> JobRecord:
        """Replace a definition; its schedule restarts from ``now``."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                f"SELECT version FROM {self.schema}.jobs WHERE name = $1 FOR UPDATE", name
            )
            if current is None:
                raise JobNotFound(name)
            if current["version"] != expected_version:
                raise VersionConflict(name, expected_version, current["version"])
            await self._ensure_group(conn, definition.group)
            row = await conn.fetchrow(
                f"""UPDATE {self.schema}.jobs SET
                        name = $2, type = $3, definition = $4, enabled = $5, group_name = $6,
                        priority = $7, next_fire_at = $8, version = version + 1,
                        updated_at = now()
                    WHERE name = $1 RETURNING {_JOB_COLUMNS}""",
                name,
                definition.name,
                definition.type,
                definition.model_dump(mode="json"),
                definition.enabled,
                definition.group,
                definition.priority,
                definition.first_fire(now),
            )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        assert row is not None
        return _record(row)

    async def set_enabled(self, name: str, enabled: bool, now: datetime) -> JobRecord:
        """Enable or disable a job. Re-enabling schedules from ``now``: slots that
        passed while it was disabled were not missed, so nothing catches up."""
        return await self._set_flag(name, "enabled", enabled, now)

    async def set_paused(self, name: str, paused: bool, now: datetime) -> JobRecord:
        return await self._set_flag(name, "paused", paused, now)

    async def _set_flag(self, name: str, column: str, value: bool, now: datetime) -> JobRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs WHERE name = $1 FOR UPDATE", name
            )
            if row is None:
                raise JobNotFound(name)
            record = _record(row)
            runnable = (value if column == "enabled" else record.enabled) and not (
                value if column == "paused" else record.paused
            )
            next_fire = record.definition.first_fire(now) if runnable else record.next_fire_at
            row = await conn.fetchrow(
                f"""UPDATE {self.schema}.jobs SET {column} = $2, next_fire_at = $3,
                        updated_at = now()
                    WHERE name = $1 RETURNING {_JOB_COLUMNS}""",
                name,
                value,
                next_fire,
            )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        assert row is not None
        return _record(row)

    async def set_group_enabled(self, group: str, enabled: bool, now: datetime) -> None:
        """Disabling a group stops all its jobs; enabling schedules them from ``now``."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"""INSERT INTO {self.schema}.job_groups (name, enabled) VALUES ($1, $2)
                    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled""",
                group,
                enabled,
            )
            if enabled:
                rows = await conn.fetch(
                    f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs "
                    "WHERE group_name = $1 FOR UPDATE",
                    group,
                )
                await self.set_next_fire(
                    conn, [(r.id, r.definition.first_fire(now)) for r in map(_record, rows)]
                )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)

    async def _ensure_group(self, conn: asyncpg.Connection, group: str | None) -> None:
        if group is not None:
            await conn.execute(
                f"INSERT INTO {self.schema}.job_groups (name) VALUES ($1) ON CONFLICT DO NOTHING",
                group,
            )

    async def get(self, name: str) -> JobRecord:
        row = await self.pool.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs WHERE name = $1", name
        )
        if row is None:
            raise JobNotFound(name)
        return _record(row)

    async def get_for_update(self, conn: asyncpg.Connection, job_id: uuid.UUID) -> JobRecord:
        row = await conn.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs WHERE id = $1 FOR UPDATE", job_id
        )
        assert row is not None, f"job {job_id} vanished inside a transaction"
        return _record(row)

    async def delete(self, name: str) -> None:
        result = await self.pool.execute(f"DELETE FROM {self.schema}.jobs WHERE name = $1", name)
        if result == "DELETE 0":
            raise JobNotFound(name)

    async def runs(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"""SELECT r.* FROM {self.schema}.runs r JOIN {self.schema}.jobs j ON j.id = r.job_id
                WHERE j.name = $1 ORDER BY r.scheduled_for DESC LIMIT $2""",
            name,
            limit,
        )
        return [dict(r) for r in rows]

    async def overview(self, names: Sequence[str] | None = None) -> list[JobOverview]:
        """Each job with what its status is derived from, its last result and next fire."""
        rows = await self.pool.fetch(
            f"""SELECT j.name, j.type, j.definition ->> 'description' AS description,
                       j.enabled, j.paused, coalesce(g.enabled, true) AS group_enabled,
                       j.next_fire_at, j.version,
                       last.status AS last_status, last.scheduled_for AS last_run_at,
                       act.dispatched, act.queued, act.running_hosts, act.oldest_version
                FROM {self.schema}.jobs j
                LEFT JOIN {self.schema}.job_groups g ON g.name = j.group_name
                LEFT JOIN LATERAL (
                    SELECT status, scheduled_for FROM {self.schema}.runs
                    WHERE job_id = j.id AND status NOT IN ('queued', 'dispatched', 'running')
                    ORDER BY scheduled_for DESC LIMIT 1) last ON true
                LEFT JOIN LATERAL (
                    SELECT count(*) FILTER (WHERE status = 'dispatched') AS dispatched,
                           count(*) FILTER (WHERE status = 'queued') AS queued,
                           coalesce(array_agg(host) FILTER (WHERE status = 'running'), '{{}}')
                               AS running_hosts,
                           min(job_version) FILTER (WHERE status IN ('dispatched', 'running'))
                               AS oldest_version
                    FROM {self.schema}.runs
                    WHERE job_id = j.id AND status IN ('queued', 'dispatched', 'running')) act
                    ON true
                WHERE $1::text[] IS NULL OR j.name = ANY($1::text[])
                ORDER BY j.name""",
            list(names) if names is not None else None,
        )
        return [
            JobOverview(
                name=r["name"],
                type=r["type"],
                description=r["description"] or "",
                last_result=r["last_status"],
                last_run_at=r["last_run_at"],
                next_run_at=r["next_fire_at"] if r["enabled"] and not r["paused"] else None,
                active_hosts=tuple(h for h in r["running_hosts"] if h),
                facts=JobFacts(
                    enabled=r["enabled"],
                    group_enabled=r["group_enabled"],
                    paused=r["paused"],
                    dispatched=r["dispatched"],
                    running_hosts=tuple(r["running_hosts"]),
                    queued=r["queued"],
                    version=r["version"],
                    oldest_active_version=r["oldest_version"],
                ),
            )
            for r in rows
        ]

    async def next_due(self) -> datetime | None:
        """The earliest slot any runnable job waits for: the firing loop sleeps until then."""
        value: datetime | None = await self.pool.fetchval(
            f"""SELECT min(next_fire_at) FROM {self.schema}.jobs
                WHERE next_fire_at IS NOT NULL AND enabled AND NOT paused"""
        )
        return value

    # -- claiming (inside the caller's transaction) -----------------------------

    async def claim_due(
        self, conn: asyncpg.Connection, now: datetime, limit: int
    ) -> list[JobRecord]:
        """Lock up to ``limit`` due jobs no other replica holds, highest priority first."""
        rows = await conn.fetch(
            f"""SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs j
                WHERE j.next_fire_at <= $1 AND j.enabled AND NOT j.paused
                  AND (j.group_name IS NULL OR NOT EXISTS (
                        SELECT 1 FROM {self.schema}.job_groups g
                        WHERE g.name = j.group_name AND NOT g.enabled))
                ORDER BY j.priority DESC, j.next_fire_at
                LIMIT $2
                FOR UPDATE OF j SKIP LOCKED""",
            now,
            limit,
        )
        return [_record(r) for r in rows]

    async def active_counts(
        self, conn: asyncpg.Connection, job_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[int, int]]:
        """(active, queued) runs per job."""
        if not job_ids:
            return {}
        rows = await conn.fetch(
            f"""SELECT job_id,
                       count(*) FILTER (WHERE status IN ('dispatched', 'running')) AS active,
                       count(*) FILTER (WHERE status = 'queued') AS queued
                FROM {self.schema}.runs
                WHERE job_id = ANY($1::uuid[]) AND status IN ('queued', 'dispatched', 'running')
                GROUP BY job_id""",
            list(job_ids),
        )
        return {r["job_id"]: (r["active"], r["queued"]) for r in rows}

    async def insert_runs(self, conn: asyncpg.Connection, runs: Sequence[NewRun]) -> set[uuid.UUID]:
        """Insert runs; returns the ids actually inserted (a slot already run is not)."""
        if not runs:
            return set()
        rows = await conn.fetch(
            f"""INSERT INTO {self.schema}.runs
                    (id, job_id, scheduled_for, trigger, status, reason, fired_at, job_version)
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[],
                                     $5::text[], $6::text[], $7::timestamptz[], $8::int[])
                ON CONFLICT (job_id, scheduled_for) DO NOTHING
                RETURNING id""",
            [r.id for r in runs],
            [r.job_id for r in runs],
            [r.scheduled_for for r in runs],
            [r.trigger for r in runs],
            [r.status for r in runs],
            [r.reason for r in runs],
            [r.fired_at for r in runs],
            [r.job_version for r in runs],
        )
        return {r["id"] for r in rows}

    async def insert_outbox(self, conn: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        await conn.execute(
            f"""INSERT INTO {self.schema}.outbox (subject, payload, headers, completes)
                SELECT * FROM unnest($1::text[], $2::bytea[], $3::jsonb[], $4::uuid[])""",
            [r.subject for r in rows],
            [r.payload for r in rows],
            [r.headers for r in rows],
            [r.completes for r in rows],
        )

    async def set_next_fire(
        self, conn: asyncpg.Connection, updates: Sequence[tuple[uuid.UUID, datetime | None]]
    ) -> None:
        if not updates:
            return
        await conn.execute(
            f"""UPDATE {self.schema}.jobs SET next_fire_at = u.next
                FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, next)
                WHERE jobs.id = u.id""",
            [u[0] for u in updates],
            [u[1] for u in updates],
        )

    # -- outbox relay ------------------------------------------------------------

    async def lock_outbox(self, conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            f"""SELECT id, subject, payload, headers, completes FROM {self.schema}.outbox
                ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
            limit,
        )
        return rows

    async def settle_outbox(
        self,
        conn: asyncpg.Connection,
        published: Sequence[int],
        completed_runs: Sequence[uuid.UUID],
        now: datetime,
    ) -> None:
        await conn.execute(
            f"DELETE FROM {self.schema}.outbox WHERE id = ANY($1::bigint[])", list(published)
        )
        if completed_runs:
            # A start-workflow run is done once its StartWorkflow is in the stream.
            await conn.execute(
                f"""UPDATE {self.schema}.runs
                    SET status = 'succeeded', started_at = fired_at, finished_at = $2, attempt = 1
                    WHERE id = ANY($1::uuid[]) AND status = 'dispatched'""",
                list(completed_runs),
                now,
            )

    # -- run events ----------------------------------------------------------------

    async def run_started(
        self, run_id: uuid.UUID, attempt: int, host: str, started_at: datetime
    ) -> None:
        await self.pool.execute(
            f"""UPDATE {self.schema}.runs
                SET status = 'running', attempt = greatest(attempt, $2), host = $3,
                    started_at = coalesce(started_at, $4), error = NULL
                WHERE id = $1 AND status IN ('queued', 'dispatched', 'running')""",
            run_id,
            attempt,
            host,
            started_at,
        )

    async def run_finished(
        self,
        conn: asyncpg.Connection,
        run_id: uuid.UUID,
        status: str,
        attempt: int,
        finished_at: datetime,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        state: dict[str, Any] | None,
    ) -> asyncpg.Record | None:
        """Record a run's outcome once; returns the run's job, or None if already recorded."""
        row = await conn.fetchrow(
            f"""UPDATE {self.schema}.runs r
                SET status = $2, attempt = greatest(r.attempt, $3), finished_at = $4,
                    result = $5, error = $6
                FROM {self.schema}.jobs j
                WHERE r.id = $1 AND j.id = r.job_id
                  AND r.status IN ('queued', 'dispatched', 'running')
                RETURNING j.id AS job_id, j.name, j.definition""",
            run_id,
            status,
            attempt,
            finished_at,
            result,
            error,
        )
        if row is not None and state is not None:
            await conn.execute(
                f"UPDATE {self.schema}.jobs SET state = $2 WHERE id = $1", row["job_id"], state
            )
        return row

    async def next_queued(
        self, conn: asyncpg.Connection, job_id: uuid.UUID
    ) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"""SELECT id, scheduled_for FROM {self.schema}.runs
                WHERE job_id = $1 AND status = 'queued'
                ORDER BY scheduled_for LIMIT 1 FOR UPDATE SKIP LOCKED""",
            job_id,
        )

    async def mark_dispatched(
        self, conn: asyncpg.Connection, run_id: uuid.UUID, fired_at: datetime
    ) -> None:
        await conn.execute(
            f"UPDATE {self.schema}.runs SET status = 'dispatched', fired_at = $2 WHERE id = $1",
            run_id,
            fired_at,
        )

    async def chained_jobs(self, conn: asyncpg.Connection, upstream: str) -> list[JobRecord]:
        """Enabled jobs chained after ``upstream``, locked for the chain fire."""
        rows = await conn.fetch(
            f"""SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs
                WHERE enabled AND NOT paused
                  AND definition -> 'after'
                      @> jsonb_build_array(jsonb_build_object('job', $1::text))
                FOR UPDATE""",
            upstream,
        )
        return [_record(r) for r in rows]

    async def delete_history(self, before: datetime, limit: int = 10_000) -> int:
        result = await self.pool.execute(
            f"""DELETE FROM {self.schema}.runs WHERE id IN (
                    SELECT id FROM {self.schema}.runs
                    WHERE created_at < $1 AND status IN
                        ('succeeded', 'failed', 'cancelled', 'skipped', 'missed')
                    LIMIT $2)""",
            before,
            limit,
        )
        return int(result.split()[-1])
