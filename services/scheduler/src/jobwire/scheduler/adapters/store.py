"""PostgreSQL: job definitions, runs and the outbox. All of the scheduler's SQL is here.

Every statement is parameterised; set-based statements (``unnest``) keep a claim
of a thousand jobs to a handful of round trips.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from jobwire.contracts.envelope import utcnow
from jobwire.runtime.logs import get_logger
from jobwire.runtime.outbox import OutboxMessage, PostgresOutbox
from jobwire.scheduler.domain.definitions import JobDefinition, describe_error
from jobwire.scheduler.domain.status import JobFacts

log = get_logger("jobwire.scheduler.store")

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


class RunNotFound(LookupError):
    def __init__(self, run_id: uuid.UUID) -> None:
        super().__init__(f"no run with id {run_id}")
        self.run_id = run_id


class RunEnded(Exception):
    def __init__(self, run_id: uuid.UUID, status: str) -> None:
        super().__init__(f"run {run_id} has ended already ({status})")
        self.status = status


@dataclass(frozen=True, slots=True)
class Audit:
    """Who makes a change and what it is, written to the audit log in the
    change's own transaction: no change without its audit row, and no audit
    row for a change that rolled back."""

    actor: str
    action: str


class Params:
    """Positional parameters ($1, $2 …) collected while a query is built from
    optional filters: ``arg(value)`` stores the value and returns its placeholder."""

    def __init__(self, values: list[object] | None = None) -> None:
        self.values: list[object] = values if values is not None else []

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


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
    fault: str | None = None  # why the firing loop set the job aside (status Faulted)


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
class OutboxRow(OutboxMessage):
    """A scheduler outbox message; ``completes`` is a run done once it is published."""

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
    faulted_at: datetime | None = None


# A fault's error text is shown on the page and in the API; a bound keeps a
# pathological message (a 5 MB repr) out of every listing.
_FAULT_CHARS = 2000

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
        next_fire_at=_instant(row["next_fire_at"]),
        state=row["state"],
        version=row["version"],
        fault=row["fault"],
    )


def _columns(definition: JobDefinition, now: datetime) -> tuple[object, ...]:
    """A definition's columns of the jobs table, in the order create and update write them:
    name, type, definition, enabled, group_name, priority, next_fire_at."""
    return (
        definition.name,
        definition.type,
        definition.model_dump(mode="json"),
        definition.enabled,
        definition.group,
        definition.priority,
        definition.first_fire(now),
    )


def _readable_record(row: asyncpg.Record) -> JobRecord:
    """A job as stored, also when its definition no longer parses (say, after an
    upgrade tightened a rule): an operator must still be able to read, replace
    or delete it. The fields that fail are shown with their defaults, and the
    record's fault says which ones and why."""
    try:
        return _record(row)
    except ValidationError as exc:
        stored = dict(row["definition"]) if isinstance(row["definition"], dict) else {}
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        salvaged = {k: v for k, v in stored.items() if k not in bad}
        try:
            definition = JobDefinition.model_validate(salvaged)
        except ValidationError:
            definition = JobDefinition.model_validate({"name": row["name"], "type": "unknown"})
        error = row["fault"] or (
            f"its stored definition is invalid ({', '.join(sorted(bad))} shown as defaults): "
            + describe_error(exc)
        )
        return JobRecord(
            id=row["id"],
            name=row["name"],
            definition=definition,
            enabled=row["enabled"],
            paused=row["paused"],
            next_fire_at=_instant(row["next_fire_at"]),
            state=row["state"],
            version=row["version"],
            fault=error[:_FAULT_CHARS],
        )


def _instant(value: datetime | None) -> datetime | None:
    """A stored time, or None for ±infinity, which asyncpg returns as naive
    ``datetime.max``/``min`` (and writes for them): never let one out as a time."""
    if value is None or value.tzinfo is None:
        return None
    return value


_JOB_COLUMNS = "id, name, definition, enabled, paused, next_fire_at, state, version, fault"


def job_view(record: JobRecord) -> dict[str, Any]:
    """A job as the audit log keeps it, before and after a change."""
    return {
        "definition": record.definition.model_dump(mode="json"),
        "enabled": record.enabled,
        "paused": record.paused,
        "version": record.version,
    }


class PostgresJobStore:
    """Job definitions and their runs in the ``scheduler`` schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "scheduler") -> None:
        self.pool = pool
        self.schema = schema
        self.outbox = PostgresOutbox(schema, extra_columns=("completes",))

    # -- definitions -----------------------------------------------------------

    async def create(
        self, definition: JobDefinition, now: datetime, audit: Audit | None = None
    ) -> JobRecord:
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
                    *_columns(definition, now),
                )
            except asyncpg.UniqueViolationError:
                raise JobExists(definition.name) from None
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
            assert row is not None
            record = _record(row)
            if audit is not None:
                await self.write_audit(
                    conn, audit, "job", record.name, None, job_view(record), at=now
                )
        return record

    async def update(
        self,
        name: str,
        definition: JobDefinition,
        expected_version: int,
        now: datetime,
        audit: Audit | None = None,
    ) -> JobRecord:
        """Replace a definition; its schedule restarts from ``now``."""
        async with self.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs WHERE name = $1 FOR UPDATE", name
            )
            if current is None:
                raise JobNotFound(name)
            if current["version"] != expected_version:
                raise VersionConflict(name, expected_version, current["version"])
            await self._ensure_group(conn, definition.group)
            try:
                row = await conn.fetchrow(
                    f"""UPDATE {self.schema}.jobs SET
                            name = $2, type = $3, definition = $4, enabled = $5,
                            group_name = $6, priority = $7, next_fire_at = $8,
                            version = version + 1, fault = NULL, faulted_at = NULL,
                            updated_at = now()
                        WHERE name = $1 RETURNING {_JOB_COLUMNS}""",
                    name,
                    *_columns(definition, now),
                )
            except asyncpg.UniqueViolationError:  # renamed onto another job's name
                raise JobExists(definition.name) from None
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
            assert row is not None
            record = _record(row)
            if audit is not None:
                # Under the name it has now: a rename starts the new name's history.
                before = job_view(_readable_record(current))
                await self.write_audit(
                    conn, audit, "job", record.name, before, job_view(record), at=now
                )
        return record

    async def set_enabled(
        self, name: str, enabled: bool, now: datetime, audit: Audit | None = None
    ) -> JobRecord:
        """Enable or disable a job. Re-enabling schedules from ``now``: slots that
        passed while it was disabled were not missed, so nothing catches up."""
        return await self._set_flag(name, "enabled", enabled, now, audit)

    async def set_paused(
        self, name: str, paused: bool, now: datetime, audit: Audit | None = None
    ) -> JobRecord:
        return await self._set_flag(name, "paused", paused, now, audit)

    async def _set_flag(
        self, name: str, column: str, value: bool, now: datetime, audit: Audit | None
    ) -> JobRecord:
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
            was_runnable = record.enabled and not record.paused
            # Only a job that starts running again is scheduled from now; one
            # already running keeps its pending slot (nothing silently dropped).
            restarts = runnable and not was_runnable
            next_fire = record.definition.first_fire(now) if restarts else record.next_fire_at
            # A restart is the operator's retry of a faulted job.
            row = await conn.fetchrow(
                f"""UPDATE {self.schema}.jobs SET {column} = $2, next_fire_at = $3,
                        fault = CASE WHEN $4 THEN NULL ELSE fault END,
                        faulted_at = CASE WHEN $4 THEN NULL ELSE faulted_at END,
                        updated_at = now()
                    WHERE name = $1 RETURNING {_JOB_COLUMNS}""",
                name,
                value,
                next_fire,
                restarts,
            )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
            assert row is not None
            after = _record(row)
            if audit is not None:
                await self.write_audit(
                    conn, audit, "job", name, job_view(record), job_view(after), at=now
                )
        return after

    async def set_group_enabled(
        self, group: str, enabled: bool, now: datetime, audit: Audit | None = None
    ) -> None:
        """Disabling a group stops all its jobs; enabling schedules them from ``now``."""
        async with self.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchval(
                f"SELECT enabled FROM {self.schema}.job_groups WHERE name = $1 FOR UPDATE", group
            )
            await conn.execute(
                f"""INSERT INTO {self.schema}.job_groups (name, enabled) VALUES ($1, $2)
                    ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled""",
                group,
                enabled,
            )
            if enabled and before is False:  # re-enabled, not merely confirmed
                rows = await conn.fetch(
                    f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs "
                    "WHERE group_name = $1 FOR UPDATE",
                    group,
                )
                await self.set_next_fire(
                    conn,
                    [(r.id, r.definition.first_fire(now)) for r in map(_record, rows)],
                    clear_faults=True,
                )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
            if audit is not None:
                await self.write_audit(
                    conn,
                    audit,
                    "group",
                    group,
                    None if before is None else {"enabled": before},
                    {"enabled": enabled},
                    at=now,
                )

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
        return _readable_record(row)

    async def job_of_run(self, conn: asyncpg.Connection, run_id: uuid.UUID) -> uuid.UUID | None:
        job_id: uuid.UUID | None = await conn.fetchval(
            f"SELECT job_id FROM {self.schema}.runs WHERE id = $1", run_id
        )
        return job_id

    async def get_for_update(self, conn: asyncpg.Connection, job_id: uuid.UUID) -> JobRecord:
        row = await conn.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs WHERE id = $1 FOR UPDATE", job_id
        )
        assert row is not None, f"job {job_id} vanished inside a transaction"
        return _record(row)

    async def delete(
        self, name: str, audit: Audit | None = None, expected_version: int | None = None
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"DELETE FROM {self.schema}.jobs WHERE name = $1 RETURNING {_JOB_COLUMNS}", name
            )
            if row is None:
                raise JobNotFound(name)
            if expected_version is not None and row["version"] != expected_version:
                raise VersionConflict(name, expected_version, row["version"])
            if audit is not None:
                before = job_view(_readable_record(row))
                await self.write_audit(conn, audit, "job", name, before, None)
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)

    async def listener_jobs(self, types: Sequence[str]) -> list[tuple[JobRecord, bool]]:
        """Every job of the listener ``types``, and whether its group is enabled.

        A job whose stored definition no longer parses is faulted and left out:
        it must not keep the other listeners from being mirrored."""
        rows = await self.pool.fetch(
            f"""SELECT {", ".join(f"j.{c}" for c in _JOB_COLUMNS.split(", "))},
                       coalesce(g.enabled, true) AS group_enabled
                FROM {self.schema}.jobs j
                LEFT JOIN {self.schema}.job_groups g ON g.name = j.group_name
                WHERE j.type = ANY($1::text[])""",
            list(types),
        )
        jobs, broken = [], []
        for row in rows:
            try:
                jobs.append((_record(row), row["group_enabled"]))
            except Exception as exc:
                if row["fault"] is None:
                    error = f"its stored definition is invalid: {describe_error(exc)}"
                    broken.append((row["id"], row["name"], error))
        if broken:
            async with self.pool.acquire() as conn:
                await self.fault_jobs(conn, broken, utcnow())
        return jobs

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
                       j.next_fire_at, j.version, j.fault, j.faulted_at,
                       jsonb_typeof(j.definition -> 'schedule') = 'object' AS scheduled,
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
        return [_overview(r) for r in rows]

    async def next_due(self) -> datetime | None:
        """The earliest slot any runnable job waits for: the firing loop sleeps until then."""
        value: datetime | None = await self.pool.fetchval(
            f"""SELECT min(next_fire_at) FROM {self.schema}.jobs j
                WHERE next_fire_at IS NOT NULL AND enabled AND NOT paused
                  AND {self._group_enabled}"""
        )
        return value

    @property
    def _group_enabled(self) -> str:
        """SQL condition: the job ``j`` is in no group, or in an enabled one."""
        return f"""(j.group_name IS NULL OR NOT EXISTS (
                        SELECT 1 FROM {self.schema}.job_groups g
                        WHERE g.name = j.group_name AND NOT g.enabled))"""

    # -- claiming (inside the caller's transaction) -----------------------------

    async def claim_due(
        self, conn: asyncpg.Connection, now: datetime, limit: int
    ) -> list[JobRecord]:
        """Lock up to ``limit`` due jobs no other replica holds, highest priority first."""
        rows = await conn.fetch(
            f"""SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs j
                WHERE j.next_fire_at <= $1 AND j.enabled AND NOT j.paused
                  AND {self._group_enabled}
                ORDER BY j.priority DESC, j.next_fire_at
                LIMIT $2
                FOR UPDATE OF j SKIP LOCKED""",
            now,
            limit,
        )
        records, broken = [], []
        for row in rows:
            try:
                records.append(_record(row))
            except Exception as exc:
                # A stored definition the current code refuses (say, after an
                # upgrade tightened a rule): set that job aside, fire the rest.
                broken.append(
                    (
                        row["id"],
                        row["name"],
                        f"its stored definition is invalid: {describe_error(exc)}",
                    )
                )
        await self.fault_jobs(conn, broken, now)
        return records

    async def fault_jobs(
        self, conn: asyncpg.Connection, faults: Sequence[tuple[uuid.UUID, str, str]], now: datetime
    ) -> None:
        """Set jobs aside (id, name, error): status Faulted, nothing fires until
        the definition is changed or the job is enabled or resumed again."""
        if not faults:
            return
        for _, name, error in faults:
            log.error("scheduler.job_faulted", job=name, error=error)
        await conn.execute(
            f"""UPDATE {self.schema}.jobs SET next_fire_at = NULL, fault = u.error,
                       faulted_at = $3
                FROM unnest($1::uuid[], $2::text[]) AS u(id, error)
                WHERE jobs.id = u.id""",
            [f[0] for f in faults],
            [f[2][:_FAULT_CHARS] for f in faults],
            now,
        )

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
        await self.outbox.insert(conn, rows, completes=[r.completes for r in rows])

    async def set_next_fire(
        self,
        conn: asyncpg.Connection,
        updates: Sequence[tuple[uuid.UUID, datetime | None]],
        clear_faults: bool = False,
    ) -> None:
        if not updates:
            return
        faults = ", fault = NULL, faulted_at = NULL" if clear_faults else ""
        await conn.execute(
            f"""UPDATE {self.schema}.jobs SET next_fire_at = u.next{faults}
                FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, next)
                WHERE jobs.id = u.id""",
            [u[0] for u in updates],
            [u[1] for u in updates],
        )

    # -- what the outbox relay settled ------------------------------------------------

    async def complete_published_runs(
        self, conn: asyncpg.Connection, run_ids: Sequence[uuid.UUID], now: datetime
    ) -> None:
        """A start-workflow run is done once its StartWorkflow is in the stream."""
        await conn.execute(
            f"""UPDATE {self.schema}.runs
                SET status = 'succeeded', started_at = fired_at, finished_at = $2, attempt = 1
                WHERE id = ANY($1::uuid[]) AND status = 'dispatched'""",
            list(run_ids),
            now,
        )

    async def fail_runs(
        self, conn: asyncpg.Connection, failures: Sequence[tuple[uuid.UUID, str]], now: datetime
    ) -> None:
        """Record runs that could not even be dispatched, with why."""
        await conn.execute(
            f"""UPDATE {self.schema}.runs r
                SET status = 'failed', finished_at = $3,
                    error = jsonb_build_object('type', 'unpublishable', 'message', f.message)
                FROM unnest($1::uuid[], $2::text[]) AS f(id, message)
                WHERE r.id = f.id AND r.status IN ('queued', 'dispatched', 'running')""",
            [f[0] for f in failures],
            [f[1] for f in failures],
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

    async def chained_jobs(
        self, conn: asyncpg.Connection, upstream: str, now: datetime
    ) -> list[JobRecord]:
        """Runnable jobs chained after ``upstream`` (enabled, unpaused, group enabled,
        inside their start/expiry window), locked for the chain fire."""
        rows = await conn.fetch(
            f"""SELECT {_JOB_COLUMNS} FROM {self.schema}.jobs j
                WHERE enabled AND NOT paused AND {self._group_enabled}
                  AND definition -> 'after'
                      @> jsonb_build_array(jsonb_build_object('job', $1::text))
                FOR UPDATE""",
            upstream,
        )
        return [
            record
            for record in map(_record, rows)
            if (record.definition.start_at is None or record.definition.start_at <= now)
            and (record.definition.expires_at is None or now < record.definition.expires_at)
        ]

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

    # -- the admin API -------------------------------------------------------------

    async def write_audit(
        self,
        conn: asyncpg.Connection,
        audit: Audit,
        target_type: str,
        target: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        at: datetime | None = None,
    ) -> None:
        await conn.execute(
            f"""INSERT INTO {self.schema}.audit_log
                    (at, actor, action, target_type, target, before, after)
                VALUES (coalesce($1, clock_timestamp()), $2, $3, $4, $5, $6, $7)""",
            at,
            audit.actor,
            audit.action,
            target_type,
            target,
            before,
            after,
        )

    async def job_page(
        self, where: JobFilter, sort: str = "name", limit: int | None = 100, offset: int = 0
    ) -> tuple[list[JobSummary], int]:
        """One page of the Jobs Management table and how many jobs match in all.

        Only the page's jobs get their runs looked up, so the first page of
        10,000 jobs costs about what a table of 100 does. ``limit=None``
        returns every match (for filters applied afterwards, such as status).
        """
        conditions, args = where.sql(self.schema)
        arg = Params(args)  # continues the numbering of the filter's parameters

        key = sort.removeprefix("-")
        column = _SORT_COLUMNS[key]
        direction = "DESC" if sort.startswith("-") else "ASC"
        order = f"sort_value {direction} NULLS LAST, name"
        filtered = " AND ".join(conditions) or "true"
        count_args = list(args)
        page = "" if limit is None else f"LIMIT {arg(limit)} OFFSET {arg(offset)}"
        s = self.schema
        rows = await self.pool.fetch(
            f"""WITH page AS (
                    SELECT j.id, j.name, j.type, j.definition ->> 'description' AS description,
                           j.definition -> 'tags' AS tags, j.group_name, j.priority,
                           j.enabled, j.paused, coalesce(g.enabled, true) AS group_enabled,
                           j.next_fire_at, j.version, j.fault, j.faulted_at,
                           jsonb_typeof(j.definition -> 'schedule') = 'object' AS scheduled,
                           {column} AS sort_value
                    FROM {s}.jobs j
                    LEFT JOIN {s}.job_groups g ON g.name = j.group_name
                    {_LAST_RUN.format(schema=s) if key == "last_run_at" else ""}
                    WHERE {filtered}
                    ORDER BY {order}
                    {page})
                SELECT page.*, last.status AS last_status, last.scheduled_for AS last_run_at,
                       act.dispatched, act.queued, act.running_hosts, act.oldest_version,
                       (SELECT count(*) FROM {s}.jobs j
                        LEFT JOIN {s}.job_groups g ON g.name = j.group_name
                        WHERE {filtered}) AS total
                FROM page
                {_LAST_RUN.format(schema=s).replace("j.id", "page.id")}
                {_ACTIVE_RUNS.format(schema=s)}
                ORDER BY {order}""",
            *args,
        )
        # An empty page (an offset past the end) still reports the total.
        total = rows[0]["total"] if rows else await self._count_jobs(filtered, count_args)
        return [_summary(r) for r in rows], total

    async def _count_jobs(self, filtered: str, args: list[object]) -> int:
        count: int = await self.pool.fetchval(
            f"""SELECT count(*) FROM {self.schema}.jobs j
                LEFT JOIN {self.schema}.job_groups g ON g.name = j.group_name
                WHERE {filtered}""",
            *args,
        )
        return count

    async def job_created_at(self, name: str) -> datetime | None:
        value: datetime | None = await self.pool.fetchval(
            f"SELECT created_at FROM {self.schema}.jobs WHERE name = $1", name
        )
        return value

    async def groups(self) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            f"""SELECT g.name, g.enabled, count(j.id) AS jobs
                FROM {self.schema}.job_groups g
                LEFT JOIN {self.schema}.jobs j ON j.group_name = g.name
                GROUP BY g.name, g.enabled ORDER BY g.name"""
        )
        return rows

    async def group_enabled(self, name: str) -> bool | None:
        """Whether a group is enabled; None if there is no such group."""
        value: bool | None = await self.pool.fetchval(
            f"SELECT enabled FROM {self.schema}.job_groups WHERE name = $1", name
        )
        return value

    # Runs as the API shows them.

    async def run(self, run_id: uuid.UUID) -> asyncpg.Record:
        row: asyncpg.Record | None = await self.pool.fetchrow(
            f"""SELECT {_RUN_COLUMNS} FROM {self.schema}.runs r
                JOIN {self.schema}.jobs j ON j.id = r.job_id WHERE r.id = $1""",
            run_id,
        )
        if row is None:
            raise RunNotFound(run_id)
        return row

    async def run_at(self, job_id: uuid.UUID, scheduled_for: datetime) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.pool.fetchrow(
            f"""SELECT {_RUN_COLUMNS} FROM {self.schema}.runs r
                JOIN {self.schema}.jobs j ON j.id = r.job_id
                WHERE r.job_id = $1 AND r.scheduled_for = $2""",
            job_id,
            scheduled_for,
        )
        return row

    async def list_runs(
        self,
        *,
        job_id: uuid.UUID | None = None,
        statuses: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        count_up_to: int = 10_000,
    ) -> tuple[list[asyncpg.Record], int, bool]:
        """Runs newest first (by slot), the number matching, and whether that number is
        exact: counting stops at ``count_up_to``, as counting millions of runs would
        cost more than the page itself."""
        conditions: list[str] = []
        arg = Params()
        args = arg.values

        if job_id is not None:
            conditions.append(f"r.job_id = {arg(job_id)}")
        if statuses:
            conditions.append(f"r.status = ANY({arg(list(statuses))}::text[])")
        if since is not None:
            conditions.append(f"r.scheduled_for >= {arg(since)}")
        if until is not None:
            conditions.append(f"r.scheduled_for < {arg(until)}")
        filtered = " AND ".join(conditions) or "true"
        count_args = list(args)
        async with self.pool.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                f"""SELECT {_RUN_COLUMNS} FROM {self.schema}.runs r
                    JOIN {self.schema}.jobs j ON j.id = r.job_id
                    WHERE {filtered}
                    ORDER BY r.scheduled_for DESC, r.id
                    LIMIT {arg(limit)} OFFSET {arg(offset)}""",
                *args,
            )
            count_args.append(count_up_to + 1)
            total: int = await conn.fetchval(
                f"""SELECT count(*) FROM (SELECT 1 FROM {self.schema}.runs r WHERE {filtered}
                    LIMIT ${len(count_args)}) matching""",
                *count_args,
            )
        if total > count_up_to:
            return rows, count_up_to, False
        return rows, total, True

    async def insert_manual_run(
        self,
        job_name: str,
        run: NewRun,
        message: OutboxRow | None,
        params: dict[str, Any] | None,
        audit: Audit,
        conn: asyncpg.Connection | None = None,
    ) -> bool:
        """Insert a triggered run, its message and its audit row in one statement (one
        round trip, atomic without a transaction). False if the run id or its slot
        exists already; nothing is written then."""
        db = conn if conn is not None else self.pool
        inserted: int = await db.fetchval(
            f"""WITH run AS (
                    INSERT INTO {self.schema}.runs
                        (id, job_id, scheduled_for, trigger, status, reason, fired_at,
                         job_version, params, requested_by)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                    ON CONFLICT DO NOTHING RETURNING id),
                message AS (
                    INSERT INTO {self.schema}.outbox (subject, payload, headers, completes)
                    SELECT $11::text, $12::bytea, $13::jsonb, $14::uuid FROM run
                    WHERE $11::text IS NOT NULL),
                audit AS (
                    INSERT INTO {self.schema}.audit_log
                        (at, actor, action, target_type, target, before, after)
                    SELECT $7, $10, $15::text, 'job', $16::text, NULL, $17::jsonb FROM run)
                SELECT count(*) FROM run""",
            run.id,
            run.job_id,
            run.scheduled_for,
            run.trigger,
            run.status,
            run.reason,
            run.fired_at,
            run.job_version,
            params,
            audit.actor,
            message.subject if message else None,
            message.payload if message else None,
            message.headers if message else None,
            message.completes if message else None,
            audit.action,
            job_name,
            {"run_id": str(run.id), "status": run.status, "params": params},
        )
        return inserted == 1

    async def request_cancel(
        self,
        run_id: uuid.UUID,
        now: datetime,
        message: Callable[[asyncpg.Record], OutboxRow],
        audit: Audit,
    ) -> asyncpg.Record:
        """Ask a run to stop. A queued run, which no worker holds yet, is cancelled
        at once; an active one is asked through ``message`` (RunCancelRequested)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""SELECT r.id, r.job_id, r.status, j.name AS job_name
                    FROM {self.schema}.runs r JOIN {self.schema}.jobs j ON j.id = r.job_id
                    WHERE r.id = $1 FOR UPDATE OF r""",
                run_id,
            )
            if row is None:
                raise RunNotFound(run_id)
            if row["status"] in TERMINAL:
                raise RunEnded(run_id, row["status"])
            await conn.execute(
                f"""UPDATE {self.schema}.runs SET
                        cancel_requested_at = coalesce(cancel_requested_at, $2),
                        status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                        reason = CASE WHEN status = 'queued' THEN 'cancelled' ELSE reason END,
                        finished_at = CASE WHEN status = 'queued' THEN $2 ELSE finished_at END
                    WHERE id = $1""",
                run_id,
                now,
            )
            await self.insert_outbox(conn, [message(row)])
            after = await conn.fetchrow(
                f"""SELECT {_RUN_COLUMNS} FROM {self.schema}.runs r
                    JOIN {self.schema}.jobs j ON j.id = r.job_id WHERE r.id = $1""",
                run_id,
            )
            assert after is not None
            await self.write_audit(
                conn,
                audit,
                "run",
                str(run_id),
                {"job": row["job_name"], "status": row["status"]},
                {
                    "job": row["job_name"],
                    "status": after["status"],
                    "cancel_requested_at": now.isoformat(),
                },
                at=now,
            )
        return after

    # Backfills.

    async def existing_slots(self, job_id: uuid.UUID, slots: Sequence[datetime]) -> set[datetime]:
        rows = await self.pool.fetch(
            f"""SELECT scheduled_for FROM {self.schema}.runs
                WHERE job_id = $1 AND scheduled_for = ANY($2::timestamptz[])""",
            job_id,
            list(slots),
        )
        return {r["scheduled_for"] for r in rows}

    async def create_backfill(
        self,
        backfill_id: uuid.UUID,
        job: JobRecord,
        range_from: datetime,
        range_to: datetime,
        rate_per_second: float,
        slots: Sequence[datetime],
        audit: Audit,
        now: datetime,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"""INSERT INTO {self.schema}.backfills
                        (id, job_id, range_from, range_to, rate_per_second, slots,
                         requested_by, created_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                backfill_id,
                job.id,
                range_from,
                range_to,
                rate_per_second,
                list(slots),
                audit.actor,
                now,
            )
            await self.write_audit(
                conn,
                audit,
                "job",
                job.name,
                None,
                {
                    "backfill_id": str(backfill_id),
                    "from": range_from.isoformat(),
                    "to": range_to.isoformat(),
                    "planned": len(slots),
                    "rate_per_second": rate_per_second,
                },
                at=now,
            )

    async def backfill_step(
        self,
        backfill_id: uuid.UUID,
        runs: Sequence[NewRun],
        messages: dict[uuid.UUID, OutboxRow],
        done: int,
    ) -> int:
        """Create some of a backfill's runs (a slot run meanwhile is left alone) and
        record how far it got, in one transaction; returns how many were new."""
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await self.insert_runs(conn, runs)
            await self.insert_outbox(
                conn, [row for run_id, row in messages.items() if run_id in inserted]
            )
            await conn.execute(
                f"UPDATE {self.schema}.backfills SET created = $2 WHERE id = $1",
                backfill_id,
                done,
            )
        return len(inserted)

    async def finish_backfill(
        self, backfill_id: uuid.UUID, status: str, now: datetime, error: str | None = None
    ) -> None:
        await self.pool.execute(
            f"""UPDATE {self.schema}.backfills SET status = $2, finished_at = $3, error = $4
                WHERE id = $1 AND status = 'running'""",
            backfill_id,
            status,
            now,
            error,
        )

    async def backfill(self, backfill_id: uuid.UUID) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.pool.fetchrow(
            f"""SELECT b.id, j.name AS job, b.range_from, b.range_to, b.rate_per_second,
                       cardinality(b.slots) AS planned, b.created, b.status, b.error,
                       b.requested_by, b.created_at, b.finished_at
                FROM {self.schema}.backfills b JOIN {self.schema}.jobs j ON j.id = b.job_id
                WHERE b.id = $1""",
            backfill_id,
        )
        return row

    # The audit log.

    async def audit_entries(
        self,
        *,
        target_type: str | None = None,
        target: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[asyncpg.Record], int]:
        """Audit rows newest first, and how many match."""
        conditions: list[str] = []
        arg = Params()
        args = arg.values

        for column, value in (
            ("target_type", target_type),
            ("target", target),
            ("action", action),
            ("actor", actor),
        ):
            if value is not None:
                conditions.append(f"{column} = {arg(value)}")
        if since is not None:
            conditions.append(f"at >= {arg(since)}")
        if until is not None:
            conditions.append(f"at < {arg(until)}")
        filtered = " AND ".join(conditions) or "true"
        count_args = list(args)
        async with self.pool.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(
                f"""SELECT id, at, actor, action, target_type, target, before, after
                    FROM {self.schema}.audit_log WHERE {filtered}
                    ORDER BY at DESC, id DESC LIMIT {arg(limit)} OFFSET {arg(offset)}""",
                *args,
            )
            total: int = await conn.fetchval(
                f"SELECT count(*) FROM {self.schema}.audit_log WHERE {filtered}", *count_args
            )
        return rows, total

    async def last_audit(
        self, target_type: str, target: str, actions: Sequence[str], at_or_before: datetime
    ) -> asyncpg.Record | None:
        """The latest audit row of ``actions`` on a target at or before a time."""
        row: asyncpg.Record | None = await self.pool.fetchrow(
            f"""SELECT id, at, actor, action, target_type, target, before, after
                FROM {self.schema}.audit_log
                WHERE target_type = $1 AND target = $2 AND action = ANY($3::text[])
                  AND at <= $4
                ORDER BY at DESC, id DESC LIMIT 1""",
            target_type,
            target,
            list(actions),
            at_or_before,
        )
        return row


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What the Jobs Management list is narrowed to. Values only ever become query
    parameters; the SQL around them is fixed text."""

    type: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    text: str | None = None  # a substring of the name or description, any case
    # Coarse status pre-filters, so that SQL narrows what a status filter reads:
    # runnable: enabled jobs in enabled groups (True) or the others (False);
    # busy: jobs with queued or active runs (True) or without (False).
    runnable: bool | None = None
    busy: bool | None = None
    names: tuple[str, ...] | None = None

    def sql(self, schema: str = "scheduler") -> tuple[list[str], list[object]]:
        conditions: list[str] = []
        arg = Params()
        args = arg.values

        if self.type is not None:
            conditions.append(f"j.type = {arg(self.type)}")
        if self.group is not None:
            conditions.append(f"j.group_name = {arg(self.group)}")
        for tag in self.tags:
            conditions.append(f"j.definition -> 'tags' @> jsonb_build_array({arg(tag)}::text)")
        if self.text:
            # strpos, not LIKE: the user's % and _ are plain characters.
            conditions.append(
                "strpos(lower(j.name || ' ' || coalesce(j.definition ->> 'description', '')), "
                f"lower({arg(self.text)}::text)) > 0"
            )
        if self.runnable is not None:
            runnable = "(j.enabled AND coalesce(g.enabled, true))"
            conditions.append(runnable if self.runnable else f"NOT {runnable}")
        if self.busy is not None:
            busy = (
                f"EXISTS (SELECT 1 FROM {schema}.runs r WHERE r.job_id = j.id "
                "AND r.status IN ('queued', 'dispatched', 'running'))"
            )
            conditions.append(busy if self.busy else f"NOT {busy}")
        if self.names is not None:
            conditions.append(f"j.name = ANY({arg(list(self.names))}::text[])")
        return conditions, args


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One row of the Jobs Management table: the overview plus what it is filtered by."""

    overview: JobOverview
    group: str | None
    tags: tuple[str, ...]
    priority: int


JOB_SORTS = ("name", "next_run_at", "last_run_at", "priority")
_SORT_COLUMNS = {
    "name": "j.name",
    "priority": "j.priority",
    "next_run_at": "CASE WHEN j.enabled AND NOT j.paused AND coalesce(g.enabled, true) "
    "THEN j.next_fire_at END",
    "last_run_at": "last.scheduled_for",
}
_LAST_RUN = """LEFT JOIN LATERAL (
        SELECT status, scheduled_for FROM {schema}.runs
        WHERE job_id = j.id AND status NOT IN ('queued', 'dispatched', 'running')
        ORDER BY scheduled_for DESC LIMIT 1) last ON true"""
_ACTIVE_RUNS = """LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE status = 'dispatched') AS dispatched,
               count(*) FILTER (WHERE status = 'queued') AS queued,
               coalesce(array_agg(host) FILTER (WHERE status = 'running'), '{{}}')
                   AS running_hosts,
               min(job_version) FILTER (WHERE status IN ('dispatched', 'running'))
                   AS oldest_version
        FROM {schema}.runs
        WHERE job_id = page.id AND status IN ('queued', 'dispatched', 'running')) act ON true"""
_RUN_COLUMNS = """r.id, r.job_id, j.name AS job_name, j.type AS job_type, r.scheduled_for,
    r.trigger, r.status, r.reason, r.fired_at, r.started_at, r.finished_at, r.attempt,
    r.job_version, r.host, r.result, r.error, r.progress, r.heartbeat_at, r.params,
    r.requested_by, r.cancel_requested_at, r.created_at"""


def _overview(r: asyncpg.Record) -> JobOverview:
    """A Jobs Management row from a query that selected the overview columns."""
    runnable = r["enabled"] and not r["paused"] and r["group_enabled"]
    return JobOverview(
        name=r["name"],
        type=r["type"],
        description=r["description"] or "",
        last_result=r["last_status"],
        last_run_at=r["last_run_at"],
        next_run_at=_instant(r["next_fire_at"]) if runnable else None,
        faulted_at=r["faulted_at"],
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
            fault=r["fault"],
            ended=bool(r["scheduled"]) and r["next_fire_at"] is None and r["fault"] is None,
        ),
    )


def _summary(r: asyncpg.Record) -> JobSummary:
    return JobSummary(
        overview=_overview(r),
        group=r["group_name"],
        tags=tuple(r["tags"] or ()),
        priority=r["priority"],
    )
