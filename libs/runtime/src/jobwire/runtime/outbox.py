"""The transactional outbox: a service writes messages in its own transaction,
and the relay publishes them to JetStream, then forgets them.

Who owns what:
- the owning service writes :class:`OutboxMessage` rows with
  :meth:`PostgresOutbox.insert` inside the transaction that decided them, already
  encoded (``Broker.encode``) and carrying their ``Nats-Msg-Id``;
- :class:`OutboxRelay` locks rows (``SKIP LOCKED``, so replicas share the work),
  publishes them pipelined, and deletes them in the same transaction only once
  their ack arrived; ``on_settled`` lets the service record, in that transaction,
  what a published or given-up row means to it (a run completed, a run failed).

A crash after the publish and before the commit re-publishes the rows later
under the same ``Nats-Msg-Id``: the stream drops them as duplicates. A broker
outage leaves the rows in place; they go out when NATS is back. A row no retry
can deliver is given up (deleted, handed to ``on_settled`` with the reason)
rather than kept at the head of the outbox, where it would slow every batch.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats.errors

from jobwire.runtime.broker import MSG_ID_HEADER, Broker, Encoded
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import Stopped, backoff_wait, retry_delay, wait_any

log = get_logger("jobwire.outbox")

# Errors no retry can cure (the message itself is wrong, e.g. over max_payload).
NEVER_PUBLISHABLE: tuple[type[BaseException], ...] = (
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
)
# A row refused this often while the broker took the rows around it is given
# up: whatever is wrong is the row's (say, a subject no stream captures), and
# retrying it at the head of the outbox would only slow every batch behind it.
MAX_ROW_ATTEMPTS = 20

# Schema, table and column names are written into the SQL (identifiers cannot be
# parameters), so only plain lower-case identifiers are accepted.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_BASE_COLUMNS = ("id", "subject", "payload", "headers", "attempts")


def _identifier(kind: str, name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"outbox {kind} {name!r} is not a plain lower-case SQL identifier")
    return name


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One row to write, inside the caller's transaction."""

    subject: str
    payload: bytes  # the encoded CloudEvent (``Broker.encode(...)[0]``)
    headers: dict[str, str]  # NATS headers incl. Nats-Msg-Id (``Broker.encode(...)[1]``)


class PostgresOutbox:
    """An outbox table ``<schema>.<table>`` (id bigserial, subject text, payload bytea,
    headers jsonb, attempts int default 0, plus any extra columns the owning service
    declares). The table is the service's, created by its own migration
    (:meth:`ddl` is text to copy); this class only reads and writes it."""

    def __init__(
        self, schema: str, table: str = "outbox", extra_columns: Sequence[str] = ()
    ) -> None:
        self.table = f"{_identifier('schema', schema)}.{_identifier('table', table)}"
        self.extra_columns = tuple(_identifier("column", c) for c in extra_columns)
        clash = set(self.extra_columns) & set(_BASE_COLUMNS)
        if clash:
            raise ValueError(f"outbox extra columns {sorted(clash)} are the outbox's own")
        columns = ", ".join((*_BASE_COLUMNS, *self.extra_columns))
        self._lock_sql = (
            f"SELECT {columns} FROM {self.table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        # INSERT statements by the extra columns given, built on first use: an
        # extra column's array type comes from the catalog, once per process.
        self._insert_sql: dict[tuple[str, ...], str] = {}

    def ddl(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` text for the base columns, for a migration
        to copy; the extra columns are the owning service's to add there."""
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} (\n"
            "    id       bigserial PRIMARY KEY,\n"
            "    subject  text NOT NULL,\n"
            "    payload  bytea NOT NULL,\n"
            "    headers  jsonb NOT NULL,\n"
            "    attempts integer NOT NULL DEFAULT 0\n"
            ");\n"
        )

    async def insert(
        self, conn: asyncpg.Connection, messages: Sequence[OutboxMessage], **extra: Sequence[Any]
    ) -> None:
        """Write ``messages`` (one statement); ``extra`` holds per-column value lists
        aligned with them, for declared extra columns (omitted ones get their default)."""
        if not messages:
            return
        unknown = set(extra) - set(self.extra_columns)
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not extra columns of {self.table}")
        for name, values in extra.items():
            if len(values) != len(messages):
                raise ValueError(f"{len(values)} {name} values for {len(messages)} messages")
        names = tuple(c for c in self.extra_columns if c in extra)
        sql = self._insert_sql.get(names) or await self._build_insert(conn, names)
        await conn.execute(
            sql,
            [m.subject for m in messages],
            [m.payload for m in messages],
            [m.headers for m in messages],
            *(list(extra[name]) for name in names),
        )

    async def _build_insert(self, conn: asyncpg.Connection, names: tuple[str, ...]) -> str:
        types = ["text", "bytea", "jsonb"]
        if names:
            rows = await conn.fetch(
                """SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute
                   WHERE attrelid = $1::regclass AND attname = ANY($2::text[])
                     AND attnum > 0 AND NOT attisdropped""",
                self.table,
                list(names),
            )
            found = {r["attname"]: r["type"] for r in rows}
            missing = [n for n in names if n not in found]
            if missing:
                raise ValueError(f"{self.table} has no column(s) {missing}")
            types += [found[n] for n in names]
        columns = ", ".join(("subject", "payload", "headers", *names))
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
        sql = f"INSERT INTO {self.table} ({columns}) SELECT * FROM unnest({arrays})"
        self._insert_sql[names] = sql
        return sql

    async def lock(self, conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
        """The oldest ``limit`` rows no other transaction holds, locked until commit:
        id, subject, payload, headers, attempts and the extra columns."""
        rows: list[asyncpg.Record] = await conn.fetch(self._lock_sql, limit)
        return rows

    async def count_attempts(self, conn: asyncpg.Connection, ids: Sequence[int]) -> None:
        if ids:
            await conn.execute(
                f"UPDATE {self.table} SET attempts = attempts + 1 WHERE id = ANY($1::bigint[])",
                list(ids),
            )

    async def delete(self, conn: asyncpg.Connection, ids: Sequence[int]) -> None:
        if ids:
            await conn.execute(f"DELETE FROM {self.table} WHERE id = ANY($1::bigint[])", list(ids))


OnSettled = Callable[
    [asyncpg.Connection, Sequence[asyncpg.Record], Sequence[tuple[asyncpg.Record, str]]],
    Awaitable[None],
]
"""``(conn, published rows, given-up rows with the reason)``, run in the relay's
transaction after those rows were deleted and before the commit."""


class OutboxRelay:
    """Publishes one :class:`PostgresOutbox` to JetStream; ``run`` until stopped.

    ``wake`` makes the relay look at once (set it after writing rows);
    ``caught_up`` is set while the outbox holds less than a batch (or the broker
    is away), so producers can hold back under overload rather than grow it.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        outbox: PostgresOutbox,
        broker: Broker,
        *,
        batch: int,
        poll_seconds: float,
        on_settled: OnSettled | None = None,
        name: str = "relay",
    ) -> None:
        self.pool = pool
        self.outbox = outbox
        self.broker = broker
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.on_settled = on_settled
        self.name = name
        self.wake = asyncio.Event()
        # Set while the outbox holds less than a batch: a producer waits on it,
        # so that under overload work waits where it is cheap and bounded (the
        # scheduler's due jobs in their table) rather than as an ever-growing
        # outbox starving this relay.
        self.caught_up = asyncio.Event()
        self.caught_up.set()

    async def relay_once(self) -> tuple[int, int]:
        """Publish one batch; returns (rows seen, rows settled: published or given up)."""
        errors: list[BaseException] = []
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await self.outbox.lock(conn, self.batch)
            if not rows:
                return 0, 0
            results = await self.broker.publish_encoded(
                [Encoded(r["subject"], r["payload"], r["headers"]) for r in rows]
            )
            published: list[asyncpg.Record] = []
            given_up: list[tuple[asyncpg.Record, str]] = []
            retried: list[int] = []
            broker_up = any(not isinstance(r, BaseException) for r in results)
            for row, result in zip(rows, results, strict=True):
                if not isinstance(result, BaseException):
                    published.append(row)
                elif isinstance(result, NEVER_PUBLISHABLE) or (
                    broker_up and row["attempts"] + 1 >= MAX_ROW_ATTEMPTS
                ):
                    # Retrying cannot help and would block the rows behind it:
                    # drop the message, and let its owner know why.
                    given_up.append((row, f"{type(result).__name__}: {result}"))
                else:
                    errors.append(result)
                    if broker_up:
                        retried.append(row["id"])
            await self.outbox.count_attempts(conn, retried)
            await self.outbox.delete(conn, [r["id"] for r in published + [g for g, _ in given_up]])
            if self.on_settled is not None and (published or given_up):
                await self.on_settled(conn, published, given_up)
            if given_up:
                log.error(
                    f"{self.name}.unpublishable",
                    msg_ids=[row["headers"].get(MSG_ID_HEADER) for row, _ in given_up],
                    reason=given_up[0][1],
                )
        settled = len(published) + len(given_up)
        if errors:
            log.warning(
                f"{self.name}.publish_failed",
                failed=len(errors),
                published=settled,
                error=str(errors[0]) or type(errors[0]).__name__,
            )
        return len(rows), settled

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while True:
            self.wake.clear()
            try:
                seen, settled = await self.relay_once()
            except Exception as exc:  # the relay must outlive any one batch
                seen, settled = 0, 0
                failures += 1
                log.warning(f"{self.name}.failed", error=repr(exc), failures=failures)
            else:
                # A batch the broker took in part is progress, not an outage to
                # back off from: the rows it refused count their own attempts.
                failures = 0 if settled or not seen else failures + 1
            if seen < self.batch or failures:
                self.caught_up.set()  # a broker outage must not stop producers
            else:
                self.caught_up.clear()
            if stop.is_set() and (seen == 0 or failures):
                return  # flushed what could be flushed; the rest waits for any replica
            if failures:
                try:
                    await backoff_wait(retry_delay(0.4, failures, 5.0), stop)
                except Stopped:
                    continue  # one last flush attempt before returning
                continue
            if seen >= self.batch:
                continue
            await wait_any(self.poll_seconds, self.wake, stop)
