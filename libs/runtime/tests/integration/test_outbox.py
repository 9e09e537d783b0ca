"""The kit's outbox and its relay on a real PostgreSQL and a real NATS with JetStream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from jobwire.contracts.jobs import JobDue
from jobwire.contracts.subjects import Stream
from jobwire.runtime.broker import MSG_ID_HEADER, Broker
from jobwire.runtime.db import connect_pool
from jobwire.runtime.outbox import MAX_ROW_ATTEMPTS, OutboxMessage, OutboxRelay, PostgresOutbox
from jobwire.runtime.settings import ServiceSettings
from jobwire.testing import wait_for
from jobwire.testing.plugin import NatsServerFactory

pytestmark = pytest.mark.integration

SCHEMA = "svc"


class Settled:
    """An ``on_settled`` that keeps what it was given, per relay batch."""

    def __init__(self) -> None:
        self.published: list[asyncpg.Record] = []
        self.given_up: list[tuple[asyncpg.Record, str]] = []

    async def __call__(
        self,
        conn: asyncpg.Connection,
        published: Sequence[asyncpg.Record],
        given_up: Sequence[tuple[asyncpg.Record, str]],
    ) -> None:
        # Runs inside the relay's transaction, after the delete: its rows are gone.
        ids = [r["id"] for r in published] + [r["id"] for r, _ in given_up]
        left = await conn.fetchval(
            f"SELECT count(*) FROM {SCHEMA}.outbox WHERE id = ANY($1::bigint[])", ids
        )
        assert left == 0
        self.published += published
        self.given_up += given_up


async def make_broker(url: str, namespace: str) -> Broker:
    settings = ServiceSettings(nats={"url": url, "reconnect_wait_seconds": 1}, namespace=namespace)
    broker = Broker(settings, source="/jobwire/tests")
    await broker.connect()
    await broker.ensure_streams()
    return broker


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, max_size=4)
    outbox = PostgresOutbox(SCHEMA, extra_columns=("tag",))
    await pool.execute(f"CREATE SCHEMA {SCHEMA}")
    await pool.execute(outbox.ddl())
    # An extra column of the owning service's (like the scheduler's `completes`).
    await pool.execute(f"ALTER TABLE {SCHEMA}.outbox ADD COLUMN tag text")
    yield pool
    await pool.close()


@pytest.fixture
async def broker(nats_url: str, namespace: str) -> AsyncIterator[Broker]:
    broker = await make_broker(nats_url, namespace)
    yield broker
    await broker.close()


def message(broker: Broker, subject: str | None = None, **data: Any) -> OutboxMessage:
    now = datetime.now(UTC)
    run_id = str(uuid.uuid4())
    due = JobDue(
        run_id=run_id,
        job_id="job-1",
        job_name="nightly",
        job_type="test-work",
        scheduled_for=now,
        fired_at=now,
        attempt=1,
        params=data,
    )
    payload, headers = broker.encode(due, msg_id=run_id)
    return OutboxMessage(subject or broker.subjects.job_due("test-work"), payload, headers)


async def write(pool: asyncpg.Pool, outbox: PostgresOutbox, *messages: OutboxMessage) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.insert(conn, messages, tag=[f"tag-{i}" for i in range(len(messages))])


async def outbox_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT id, subject, headers, attempts, tag FROM {SCHEMA}.outbox ORDER BY id"
    )
    return rows


async def stored_ids(broker: Broker) -> list[str]:
    """The Nats-Msg-Id of every message in the JOBS stream, in stream order."""
    stream = broker.subjects.stream_name(Stream.JOBS)
    info = await broker.js.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await broker.js.get_msg(stream, seq)
        assert stored.headers is not None
        ids.append(stored.headers[MSG_ID_HEADER])
    return ids


def relay_for(pool: asyncpg.Pool, broker: Broker, settled: Settled | None = None) -> OutboxRelay:
    return OutboxRelay(
        pool,
        PostgresOutbox(SCHEMA, extra_columns=("tag",)),
        broker,
        batch=50,
        poll_seconds=0.1,
        on_settled=settled,
        name="test_relay",
    )


async def test_rows_are_published_once_with_their_msg_id_and_deleted_after_the_ack(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    settled = Settled()
    relay = relay_for(pool, broker, settled)
    messages = [message(broker, n=i) for i in range(3)]
    await write(pool, relay.outbox, *messages)
    assert [r["tag"] for r in await outbox_rows(pool)] == ["tag-0", "tag-1", "tag-2"]

    assert await relay.relay_once() == (3, 3)
    assert await outbox_rows(pool) == []
    msg_ids = [m.headers[MSG_ID_HEADER] for m in messages]
    assert await stored_ids(broker) == msg_ids
    # The owner sees each published row, extra columns included; nothing given up.
    assert [r["headers"][MSG_ID_HEADER] for r in settled.published] == msg_ids
    assert [r["tag"] for r in settled.published] == ["tag-0", "tag-1", "tag-2"]
    assert settled.given_up == []
    assert await relay.relay_once() == (0, 0)
    assert await stored_ids(broker) == msg_ids


async def test_the_relay_loop_wakes_publishes_and_returns_on_stop(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    relay = relay_for(pool, broker)
    relay.poll_seconds = 60  # only the wake-up can make it look in time
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    await wait_for(lambda: relay.caught_up.is_set(), timeout=5)
    messages = [message(broker, n=i) for i in range(5)]
    await write(pool, relay.outbox, *messages)
    relay.wake.set()
    await wait_for(lambda: _empty(pool), timeout=10, description="the outbox relayed")
    assert await stored_ids(broker) == [m.headers[MSG_ID_HEADER] for m in messages]
    stop.set()
    await asyncio.wait_for(running, timeout=5)


async def _empty(pool: asyncpg.Pool) -> bool:
    return not await outbox_rows(pool)


async def test_a_row_the_broker_refuses_for_good_is_given_up_while_the_others_go_out(
    pool: asyncpg.Pool, broker: Broker
) -> None:
    settled = Settled()
    relay = relay_for(pool, broker, settled)
    # Over the server's max_payload: refused by the client at once, every time.
    huge = message(broker, blob="x" * (broker.nc.max_payload + 1))
    # A subject no stream captures: JetStream never answers it.
    stray = message(broker, subject=f"nowhere.{uuid.uuid4().hex}")
    good = message(broker)
    await write(pool, relay.outbox, huge, stray, good)

    assert await relay.relay_once() == (3, 2)
    [(given_up, reason)] = settled.given_up
    assert given_up["headers"][MSG_ID_HEADER] == huge.headers[MSG_ID_HEADER]
    assert reason.startswith("MaxPayloadError")
    [left] = await outbox_rows(pool)
    assert left["headers"][MSG_ID_HEADER] == stray.headers[MSG_ID_HEADER]
    assert left["attempts"] == 1  # refused while the broker took another row

    # Retried while the broker keeps taking new rows, up to the limit.
    for attempt in range(2, MAX_ROW_ATTEMPTS + 1):
        await write(pool, relay.outbox, message(broker))
        assert await relay.relay_once() == (2, 1 if attempt < MAX_ROW_ATTEMPTS else 2)
    assert await outbox_rows(pool) == []
    [_, (given_up, reason)] = settled.given_up
    assert given_up["headers"][MSG_ID_HEADER] == stray.headers[MSG_ID_HEADER]
    assert given_up["tag"] == "tag-1"
    assert "no response from stream" in reason
    assert len(settled.published) == MAX_ROW_ATTEMPTS
    assert len(await stored_ids(broker)) == MAX_ROW_ATTEMPTS


async def test_broker_down_keeps_the_rows_and_a_restart_publishes_them_once(
    pool: asyncpg.Pool, nats_server_factory: NatsServerFactory, namespace: str
) -> None:
    server = nats_server_factory()
    broker = await make_broker(server.url, namespace)
    try:
        settled = Settled()
        relay = relay_for(pool, broker, settled)
        messages = [message(broker, n=i) for i in range(4)]
        await write(pool, relay.outbox, *messages)
        msg_ids = [m.headers[MSG_ID_HEADER] for m in messages]

        await asyncio.to_thread(server.stop)
        await wait_for(lambda: not broker.nc.is_connected, timeout=10)
        assert await relay.relay_once() == (4, 0)
        rows = await outbox_rows(pool)
        assert [r["headers"][MSG_ID_HEADER] for r in rows] == msg_ids
        # An outage is not the rows' fault: no attempt counted against them.
        assert [r["attempts"] for r in rows] == [0, 0, 0, 0]
        assert settled.published == []
        assert settled.given_up == []

        await asyncio.to_thread(server.start)
        await wait_for(lambda: broker.nc.is_connected, timeout=20)

        # A replica publishes, then dies before its delete commits: the rows stay.
        async def die(*_: object) -> None:
            raise ConnectionResetError("killed between publish and delete")

        dying = relay_for(pool, broker)
        dying.outbox.delete = die  # type: ignore[method-assign]
        with pytest.raises(ConnectionResetError):
            await dying.relay_once()
        assert len(await outbox_rows(pool)) == 4
        assert await stored_ids(broker) == msg_ids

        # The next relay publishes them again: the stream drops each as a duplicate.
        assert await relay.relay_once() == (4, 4)
        assert await outbox_rows(pool) == []
        assert await stored_ids(broker) == msg_ids
        assert [r["headers"][MSG_ID_HEADER] for r in settled.published] == msg_ids
    finally:
        await broker.close()


async def test_insert_rejects_what_the_table_does_not_declare(pool: asyncpg.Pool) -> None:
    outbox = PostgresOutbox(SCHEMA, extra_columns=("tag",))
    undeclared = PostgresOutbox(SCHEMA, extra_columns=("missing",))
    row = OutboxMessage("s", b"{}", {MSG_ID_HEADER: "1"})
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="not extra columns"):
            await outbox.insert(conn, [row], other=["x"])
        with pytest.raises(ValueError, match="1 tag values for 2 messages"):
            await outbox.insert(conn, [row, row], tag=["x"])
        with pytest.raises(ValueError, match="no column"):
            await undeclared.insert(conn, [row], missing=["x"])
        await outbox.insert(conn, [row])  # extra columns may be left to their default
    assert [r["tag"] for r in await outbox_rows(pool)] == [None]
    with pytest.raises(ValueError, match="identifier"):
        PostgresOutbox("svc; DROP TABLE x")
