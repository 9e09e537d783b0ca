"""Fill an installed caseapp schema with realistic volumes, built by PostgreSQL itself.

Rows are made server side (``INSERT … SELECT`` over ``generate_series``): one
statement per batch of cases writes the cases and all their children, so nothing
crosses the wire but the batch's parameters. Every value is a function of
``(seed, row ordinal, column)`` through ``hashint8extended`` — not of
``random()``, whose sequence depends on the order rows are produced in — so a
seed gives the same rows whatever the batch size or the number of connections.
Ids come from the identities' sequences: on one connection, into an empty
schema, they are the same too; several connections interleave their batches'
ids. Dates spread over the three years before ``end``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from caseapp.model import SCHEMA, TABLES, CaseStatus, EmailDirection, TaskState, sql_literal
from caseapp.text import FILE_TYPES, SUPPORT_ADDRESS, TextPools, text_pools

# A row's children are numbered 1..MAX_CHILDREN within it: the ordinal key of a
# child is ``case ordinal * MAX_CHILDREN + k``.
MAX_CHILDREN = 63
_SALTS = 128  # salt values per key; see _u

YEARS_SPAN_DAYS = 3 * 365


def _u(key: str, salt: int) -> str:
    """SQL for a uniform float in [0, 1) drawn from ``key`` (a bigint SQL expression)."""
    assert 0 <= salt < _SALTS
    return (
        f"((hashint8extended(({key}) * {_SALTS} + {salt}, $1) & 1073741823)::float8 / 1073741824)"
    )


def _pick(array: str, key: str, salt: int) -> str:
    """SQL for one element of the text[] ``array``, drawn from ``key``."""
    return f"({array})[1 + floor({_u(key, salt)} * cardinality({array}))::int]"


def _between(start: str, end: str, key: str, salt: int) -> str:
    return f"({start} + ({end} - {start}) * {_u(key, salt)})"


# Parameters of the cases statement.
_SEED, _FIRST, _COUNT, _END, _CLOSED = "$1", "$2::bigint", "$3::int", "$4::timestamptz", "$5"
_CUSTOMERS, _TITLES, _SENTENCES, _PEOPLE = "$6::bigint[]", "$7::text[]", "$8::text[]", "$9::text[]"
_TAGS, _ASSIGNEES, _STEMS, _TASK_TITLES = "$10::text[]", "$11::text[]", "$12::text[]", "$13::text[]"
_TASKS, _COMMENTS, _ATTACHMENTS, _EMAILS = "$14::int", "$15::int", "$16::int", "$17::int"
_EXTENSIONS, _CONTENT_TYPES, _SIZES = "$18::text[]", "$19::text[]", "$20::bigint[]"


_OPEN_S, _PENDING_S, _CLOSED_S = map(
    sql_literal, (CaseStatus.OPEN, CaseStatus.PENDING, CaseStatus.CLOSED)
)
_TODO, _DOING, _DONE = map(sql_literal, (TaskState.TODO, TaskState.DOING, TaskState.DONE))
_SENT, _RECEIVED = map(sql_literal, (EmailDirection.SENT, EmailDirection.RECEIVED))


def _address(name: str) -> str:
    return f"(lower(replace({name}, ' ', '.')) || '@example.com')"


def _sentences(key: str, first_salt: int, count: int) -> str:
    return " || ' ' || ".join(_pick(_SENTENCES, key, first_salt + i) for i in range(count))


CASES_SQL = f"""
WITH base AS (
    SELECT nextval(pg_get_serial_sequence('{SCHEMA}.cases', 'id')) AS id, o AS ord,
           {_END} - interval '{YEARS_SPAN_DAYS} days' * {_u("o", 1)} AS opened_at,
           {_u("o", 2)} AS u_status
    FROM generate_series({_FIRST}, {_FIRST} + {_COUNT} - 1) AS o
), c AS (
    SELECT id, ord, opened_at,
           CASE WHEN u_status < {_CLOSED} THEN {_CLOSED_S}
                WHEN {_u("ord", 3)} < 0.25 THEN {_PENDING_S}
                ELSE {_OPEN_S} END AS status,
           CASE WHEN u_status < {_CLOSED}
                THEN least(opened_at + interval '1 day' * (1 + 120 * {_u("ord", 4)}), {_END})
           END AS closed_at,
           format('CASE-%s-%s', extract(year FROM opened_at AT TIME ZONE 'UTC'),
                  lpad(id::text, 7, '0')) AS reference,
           {_pick(_TITLES, "ord", 5)} AS title
    FROM base
), case_rows AS (
    INSERT INTO {SCHEMA}.cases (id, reference, title, description, status, priority,
                                customer_id, tags, amount, opened_at, updated_at, closed_at)
    SELECT id, reference, title, {_sentences("ord", 6, 2)}, status,
           1 + floor(4 * {_u("ord", 8)} ^ 2)::smallint,
           {_pick(_CUSTOMERS, "ord", 9)},
           (ARRAY[{_pick(_TAGS, "ord", 10)}, {_pick(_TAGS, "ord", 11)}])
               [1:floor(3 * {_u("ord", 12)})::int],
           CASE WHEN {_u("ord", 13)} < 0.6 THEN round((5000 * {_u("ord", 14)})::numeric, 2) END,
           opened_at,
           coalesce(closed_at, {_between("opened_at", _END, "ord", 15)}),
           closed_at
    FROM c
    ORDER BY ord
    RETURNING 1
), child AS (
    -- where a case's children fall in time: from its opening to its closing (or now)
    SELECT id, ord, reference, title, status, opened_at, coalesce(closed_at, {_END}) AS last_at
    FROM c
), task_rows AS (
    INSERT INTO {SCHEMA}.tasks (case_id, title, state, assignee, due_at, updated_at)
    SELECT id, {_pick(_TASK_TITLES, "key", 20)},
           CASE WHEN status = {_CLOSED_S} OR {_u("key", 21)} < 0.4 THEN {_DONE}
                WHEN {_u("key", 21)} < 0.7 THEN {_DOING}
                ELSE {_TODO} END,
           CASE WHEN {_u("key", 22)} < 0.9 THEN {_pick(_ASSIGNEES, "key", 23)} END,
           opened_at + interval '1 day' * (1 + 30 * {_u("key", 24)}),
           {_between("opened_at", "last_at", "key", 25)}
    FROM child, LATERAL (SELECT k, ord * {MAX_CHILDREN + 1} + k AS key
                         FROM generate_series(1, {_TASKS}) AS k) AS n
    ORDER BY ord, k
    RETURNING 1
), comment_rows AS (
    INSERT INTO {SCHEMA}.comments (case_id, author, body, created_at)
    SELECT id, {_pick(_PEOPLE, "key", 30)},
           {_pick(_SENTENCES, "key", 31)}
               || CASE WHEN {_u("key", 32)} < 0.5 THEN ' ' || {_pick(_SENTENCES, "key", 33)}
                       ELSE '' END,
           {_between("opened_at", "last_at", "key", 34)}
    FROM child, LATERAL (SELECT k, ord * {MAX_CHILDREN + 1} + k AS key
                         FROM generate_series(1, {_COMMENTS}) AS k) AS n
    ORDER BY ord, k
    RETURNING 1
), attachment_rows AS (
    INSERT INTO {SCHEMA}.attachments (case_id, file_name, content_type, size_bytes,
                                      storage_key, created_at)
    SELECT id, file_name, ({_CONTENT_TYPES})[t],
           round(({_SIZES})[t] * (0.2 + 1.6 * {_u("key", 42)}))::bigint,
           format('cases/%s/%s/%s', reference, k, file_name),
           {_between("opened_at", "last_at", "key", 43)}
    FROM child,
         LATERAL (SELECT k, ord * {MAX_CHILDREN + 1} + k AS key
                  FROM generate_series(1, {_ATTACHMENTS}) AS k) AS n,
         LATERAL (SELECT 1 + floor({_u("key", 40)} * cardinality({_EXTENSIONS}))::int AS t) AS f,
         LATERAL (SELECT {_pick(_STEMS, "key", 41)} || '.' || ({_EXTENSIONS})[t] AS file_name) AS m
    ORDER BY ord, k
    RETURNING 1
), email_rows AS (
    INSERT INTO {SCHEMA}.emails (case_id, direction, from_address, to_addresses, subject,
                                 body, message_id, sent_at)
    SELECT id, direction,
           CASE WHEN direction = {_SENT} THEN {sql_literal(SUPPORT_ADDRESS)}
                ELSE {_address("person")} END,
           CASE WHEN direction = {_SENT} THEN ARRAY[{_address("person")}]
                ELSE ARRAY[{sql_literal(SUPPORT_ADDRESS)}] END,
           CASE WHEN k = 1 THEN '' ELSE 'Re: ' END || title || ' [' || reference || ']',
           {_sentences("key", 53, 3)},
           format('<%s.%s.%s@caseapp.example>', reference, k, {_SEED}),
           {_between("opened_at", "last_at", "key", 56)}
    FROM child,
         LATERAL (SELECT k, ord * {MAX_CHILDREN + 1} + k AS key
                  FROM generate_series(1, {_EMAILS}) AS k) AS n,
         LATERAL (SELECT CASE WHEN {_u("key", 50)} < 0.5 THEN {_SENT} ELSE {_RECEIVED} END
                             AS direction,
                         {_pick(_PEOPLE, "key", 51)} AS person) AS e
    ORDER BY ord, k
    RETURNING 1
)
SELECT (SELECT count(*) FROM case_rows) AS cases,
       (SELECT count(*) FROM task_rows) AS tasks,
       (SELECT count(*) FROM comment_rows) AS comments,
       (SELECT count(*) FROM attachment_rows) AS attachments,
       (SELECT count(*) FROM email_rows) AS emails
"""

# $1 seed, $2 first ordinal, $3 count, $4 end, $5 people, $6 countries
CUSTOMERS_SQL = f"""
INSERT INTO {SCHEMA}.customers (name, email, country, created_at)
SELECT name, lower(replace(name, ' ', '.')) || '.' || o || '@example.com',
       {_pick("$6::text[]", "o", 61)},
       $4::timestamptz - interval '{YEARS_SPAN_DAYS + 365} days'
           + interval '365 days' * {_u("o", 62)}
FROM generate_series($2::bigint, $2::bigint + $3::int - 1) AS o,
     LATERAL (SELECT {_pick("$5::text[]", "o", 60)} AS name) AS p
RETURNING id
"""


def _check(name: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


async def generate(
    dsn: str,
    *,
    cases: int,
    tasks_per_case: int = 3,
    comments_per_case: int = 2,
    attachments_per_case: int = 1,
    emails_per_case: int = 1,
    closed_fraction: float = 0.3,
    seed: int = 0,
    batch: int = 5000,
    customers: int | None = None,
    end: datetime | None = None,
    connections: int = 2,
) -> dict[str, int]:
    """Add ``cases`` cases with their children to an installed schema; rows added per table.

    ``customers`` defaults to one per ten cases (at least one); ``end`` (the last
    moment of the three years of history) to the start of today, UTC. Each batch
    of ``batch`` cases is one statement and one transaction; ``connections``
    batches run at once.
    """
    _check("cases", cases, 0)
    for name, value in (
        ("tasks_per_case", tasks_per_case),
        ("comments_per_case", comments_per_case),
        ("attachments_per_case", attachments_per_case),
        ("emails_per_case", emails_per_case),
    ):
        _check(name, value, 0, MAX_CHILDREN)
    if not 0.0 <= closed_fraction <= 1.0:
        raise ValueError(f"closed_fraction must be between 0 and 1, got {closed_fraction}")
    _check("batch", batch, 1)
    _check("connections", connections, 1)
    customer_count = max(1, cases // 10) if customers is None else customers
    _check("customers", customer_count, 1 if cases else 0)
    if end is None:
        end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    elif end.tzinfo is None:
        raise ValueError("end must be timezone-aware")

    pools = text_pools(seed)
    counts = dict.fromkeys(TABLES, 0)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=connections)
    try:
        customer_ids = await _add_customers(pool, pools, seed, customer_count, end, batch)
        counts["customers"] = len(customer_ids)
        per_case = (tasks_per_case, comments_per_case, attachments_per_case, emails_per_case)
        starts = range(0, cases, batch)

        async def fill(worker: int) -> None:
            for start in starts[worker::connections]:
                row = await pool.fetchrow(
                    CASES_SQL,
                    seed,
                    start,
                    min(batch, cases - start),
                    end,
                    closed_fraction,
                    customer_ids,
                    *_pool_arguments(pools),
                    *per_case,
                    *_file_type_arguments(),
                )
                assert row is not None
                for table in ("cases", "tasks", "comments", "attachments", "emails"):
                    counts[table] += row[table]

        await asyncio.gather(*(fill(worker) for worker in range(connections)))
        if cases:
            # Fresh statistics, so that the first queries on the new data plan well.
            await pool.execute(f"ANALYZE {', '.join(f'{SCHEMA}.{t}' for t in TABLES)}")
    finally:
        await pool.close()
    return counts


async def _add_customers(
    pool: asyncpg.Pool, pools: TextPools, seed: int, count: int, end: datetime, batch: int
) -> list[int]:
    ids: list[int] = []
    for start in range(0, count, batch):
        rows = await pool.fetch(
            CUSTOMERS_SQL,
            seed,
            start,
            min(batch, count - start),
            end,
            list(pools.people),
            list(pools.countries),
        )
        ids.extend(row["id"] for row in rows)
    return ids


def _pool_arguments(pools: TextPools) -> tuple[list[str], ...]:
    return (
        list(pools.titles),
        list(pools.sentences),
        list(pools.people),
        list(pools.tags),
        list(pools.assignees),
        list(pools.file_stems),
        list(pools.task_titles),
    )


def _file_type_arguments() -> tuple[list[str], list[str], list[int]]:
    return (
        [extension for extension, _, _ in FILE_TYPES],
        [content_type for _, content_type, _ in FILE_TYPES],
        [size for _, _, size in FILE_TYPES],
    )
