"""Exactly once, without a leader, under fire: replicas killed at any instant and a
NATS outage lose no run and publish none twice (DESIGN.md, "Exactly once, without a
leader").

The first two tests run real scheduler processes (``replica.py``: the production
service entry point) against real PostgreSQL and NATS, and kill or starve them by PID.
The third drives two in-process replicas through each crash point of the
claim → outbox → relay pipeline deterministically, because a SIGKILL lands in a given
window only by chance.

The last three hold the replica to backing off instead of crashing: a database
connection dying mid-claim, an outage backlog larger than the NATS client's buffer,
and a stop during a NATS outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from jobwire.contracts.envelope import decode, utcnow
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.subjects import Stream, Subjects
from jobwire.contracts.workflows import StartWorkflow
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.scheduler.adapters.store import PostgresJobStore
from jobwire.scheduler.dispatch import run_id_for
from jobwire.scheduler.domain.definitions import JobDefinition, parse_definition
from jobwire.scheduler.main import spec
from jobwire.testing import wait_for
from jobwire.testing.fleet import Fleet

pytestmark = pytest.mark.integration

REPLICA = Path(__file__).with_name("replica.py")
WORK = "test-work"  # registered by conftest.py here and by replica.py in the replicas


# ------------------------------------------------------------------ replicas


@pytest.fixture
def fleet(tmp_path: Path, database_url: str, namespace: str) -> Iterator[Fleet]:
    fleet = Fleet(
        tmp_path,
        [sys.executable, str(REPLICA)],
        namespace=namespace,
        env={
            "JOBWIRE_DATABASE_URL": database_url,
            "JOBWIRE_DATABASE_POOL_MAX": "6",
            "JOBWIRE_SCHEDULER__RELAY_POLL_SECONDS": "0.2",
        },
    )
    try:
        yield fleet
    finally:
        fleet.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The test's own view of the scheduler's database (migrated, so jobs can be created)."""
    pool = await connect_pool(database_url, max_size=8)
    assert spec.migrations is not None
    await migrate(pool, "scheduler", load_migrations(spec.migrations))
    try:
        yield pool
    finally:
        await pool.close()


# ------------------------------------------------------------------- helpers


def once(name: str, at: datetime, job_type: str = WORK, **extra: Any) -> JobDefinition:
    schedule = {"kind": "once", "at": at.isoformat()}
    return parse_definition({"name": name, "type": job_type, "schedule": schedule, **extra})


async def create_all(
    store: PostgresJobStore, definitions: list[JobDefinition], now: datetime
) -> None:
    """``store.create`` for each, eight at a time. Every job is created "at" ``now``:
    a one-shot whose instant passed while the batch was still being written keeps
    that instant as its slot (fired late), instead of getting no slot at all."""
    gate = asyncio.Semaphore(8)

    async def create(definition: JobDefinition) -> None:
        async with gate:
            record = await store.create(definition, now)
        assert record.next_fire_at is not None, definition.name

    await asyncio.gather(*(create(d) for d in definitions))


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """Every message the stream holds on ``subject``, read by an ephemeral consumer."""
    info = await js.stream_info(stream, subjects_filter=subject)
    expected = (info.state.subjects or {}).get(subject, 0)
    psub = await js.pull_subscribe(
        subject, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    messages: list[Msg] = []
    try:
        while len(messages) < expected:
            messages += await psub.fetch(min(1000, expected - len(messages)), timeout=5)
    finally:
        await psub.unsubscribe()
    return messages


def msg_ids(messages: list[Msg]) -> list[str]:
    return [(m.headers or {})["Nats-Msg-Id"] for m in messages]


async def counts(pool: asyncpg.Pool) -> asyncpg.Record:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM scheduler.runs) AS runs,
                  (SELECT count(*) FROM scheduler.outbox) AS outbox,
                  (SELECT count(*) FROM scheduler.jobs WHERE next_fire_at IS NOT NULL) AS due"""
    )
    assert row is not None
    return row


def postgres_ports(pid: int) -> set[int]:
    """Local TCP ports of ``pid``'s sockets (its PostgreSQL connections among them)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def open_transactions(pool: asyncpg.Pool, pid: int) -> list[str]:
    """What ``pid`` is in the middle of in PostgreSQL, for the report: one entry per
    open transaction, "claim" or "relay" (with "waiting" when the backend is idle in
    it: a relay awaiting JetStream's acks, a claim between statements)."""
    rows = await pool.fetch(
        """SELECT state, query FROM pg_stat_activity
           WHERE datname = current_database() AND client_port = ANY($1::int[])
             AND xact_start IS NOT NULL
             AND (state = 'idle in transaction' OR xact_start < query_start)""",
        list(postgres_ports(pid)),
    )
    kinds = []
    for row in rows:
        query = " ".join(row["query"].split())
        if ("scheduler.outbox" in query and "INSERT" not in query) or "'succeeded'" in query:
            kind = "relay"
        elif "scheduler.jobs" in query or "scheduler.runs" in query or "outbox" in query:
            kind = "claim"
        elif query.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            kind = query.rstrip(";").lower()
        else:
            kind = query[:40]
        waiting = " waiting" if row["state"] == "idle in transaction" else ""
        kinds.append(kind + waiting)
    return kinds


# ------------------------------------------------------------------- the tests

RUNS = 5000
BURSTS = 10  # of 500 runs, due 0.7 s apart (each spread over 50 ms): ~7 s of firing
KILLS = 6


async def test_three_replicas_fire_5000_runs_exactly_once_while_one_is_killed_every_second(
    fleet: Fleet, pool: asyncpg.Pool, nats_client: nats.NATS, nats_url: str, namespace: str
) -> None:
    """5,000 one-shot runs come due over 7 s on three replicas. While they fire, about
    once a second the oldest replica is frozen (SIGSTOP), what it holds open in
    PostgreSQL is noted, and it is SIGKILLed and replaced; the next kill waits until
    that replacement is serving. Each kill lands wherever that replica happened to
    be: inside a claim, between a claim's commit and its relay, inside a relay
    between publish and delete, or idle. Afterwards there are 5,000 runs and 5,000
    JobDue messages with the same 5,000 ids."""
    subjects = Subjects(namespace)
    store = PostgresJobStore(pool)
    per_burst = RUNS // BURSTS
    now = utcnow()
    # Created before any replica runs (5,000 NOTIFYs to idle replicas would only slow
    # this down); due once the replicas had time to start.
    due_from = now + timedelta(seconds=6)
    slots = {
        f"work-{i:05d}": due_from
        + timedelta(seconds=0.7 * (i // per_burst) + 0.05 * (i % per_burst) / per_burst)
        for i in range(RUNS)
    }
    await create_all(store, [once(name, at) for name, at in slots.items()], now)
    created = utcnow()
    # Small claims and relay batches: more transactions in flight for the kills to hit.
    settings = {"JOBWIRE_SCHEDULER__CLAIM_BATCH": "100", "JOBWIRE_SCHEDULER__RELAY_BATCH": "250"}
    with fleet.explained():
        first = [fleet.start(nats_url, **settings) for _ in range(3)]
        for replica in first:
            await fleet.ready(replica)
        ready = utcnow()

        kills: list[dict[str, Any]] = []
        for burst in range(1, KILLS + 1):
            # Paced by the firing itself: one kill per burst, once the burst is being
            # decided (its first 100 runs are), i.e. every 0.7 s while runs come due.
            threshold = burst * per_burst + 100

            async def decided(threshold: int = threshold) -> bool:
                return (await counts(pool))["runs"] >= threshold

            # The last replacement has to be serving before the next kill, because a
            # replica starts in seconds on a busy machine while bursts are 0.7 s apart.
            # Without this wait, kills would land on processes that are still
            # importing, which proves nothing, and would leave no replica firing.
            # With it, every SIGKILL hits a working replica and two keep working.
            for replica in fleet.running():
                await fleet.ready(replica)
            await wait_for(
                decided, timeout=30, interval=0.005, description=f"{threshold} runs decided"
            )
            victim = min(fleet.running(), key=lambda r: r.started)
            victim.popen.send_signal(signal.SIGSTOP)  # frozen where it stands
            holding = await open_transactions(pool, victim.pid)
            state = await counts(pool)
            fleet.kill(victim)
            kills.append(
                {
                    "at": (utcnow() - due_from).total_seconds(),
                    "victim": victim.name,
                    "holding": holding,
                    "runs": state["runs"],
                    "outbox": state["outbox"],
                }
            )
            fleet.start(nats_url, **settings)

        async def settled() -> bool:
            state = await counts(pool)
            return state["runs"] == RUNS and state["outbox"] == 0 and state["due"] == 0

        await wait_for(settled, timeout=45, description="every run decided and relayed")
        settled_at = utcnow()
        survivors = fleet.running()
        # Only a serving replica can be stopped gracefully. A SIGTERM during its
        # imports, before serve() installs the handlers, ends it with -15.
        for replica in survivors:
            await fleet.ready(replica)
        exits = [await fleet.stop(r) for r in survivors]
        assert exits == [0] * len(survivors), "graceful stops exit 0"

    # PostgreSQL: one run per job, at its slot, dispatched.
    rows = await pool.fetch(
        """SELECT j.name, j.id AS job_id, r.id, r.scheduled_for, r.status
           FROM scheduler.jobs j LEFT JOIN scheduler.runs r ON r.job_id = j.id"""
    )
    assert len(rows) == RUNS, "no job has two runs"
    assert all(r["id"] is not None for r in rows), "no job lacks its run"
    assert {r["name"]: r["scheduled_for"] for r in rows} == slots
    assert {r["status"] for r in rows} == {"dispatched"}
    runs = {str(r["id"]): r for r in rows}
    assert len(runs) == RUNS

    # JetStream: exactly one JobDue per run, nothing else, no gap in the sequence.
    stream = subjects.stream_name(Stream.JOBS)
    info = await nats_client.jetstream().stream_info(stream)
    assert info.state.messages == RUNS
    assert (info.state.first_seq, info.state.last_seq) == (1, RUNS)
    messages = await stream_messages(nats_client.jetstream(), stream, subjects.job_due(WORK))
    ids = msg_ids(messages)
    assert len(ids) == RUNS
    assert len(set(ids)) == RUNS, "a run id was published twice"
    assert set(ids) == set(runs)
    for message in messages[:: RUNS // 100]:  # the envelope agrees with the row
        due = decode(message.data, JobDue).data
        row = runs[due.run_id]
        assert due.job_id == str(row["job_id"])
        assert due.scheduled_for == row["scheduled_for"]
        assert due.run_id == str(run_id_for(row["job_id"], row["scheduled_for"]))

    assert len(kills) == KILLS
    assert all(r.popen.returncode == -signal.SIGKILL for r in fleet.replicas[:KILLS])
    print(
        f"\n{RUNS} runs on {len(fleet.replicas)} replica processes, {len(kills)} SIGKILLs; "
        f"jobs created in {(created - now).total_seconds():.2f} s, replicas ready "
        f"{(due_from - ready).total_seconds():.2f} s before the first run was due, all "
        f"relayed {(settled_at - due_from).total_seconds():.2f} s after it"
    )
    for kill in kills:
        holding = ", ".join(kill["holding"]) or "nothing open"
        print(
            f"  kill at +{kill['at']:.2f} s: {kill['victim']}: {holding}"
            f" (runs decided {kill['runs']}, outbox {kill['outbox']})"
        )


OUTAGE = timedelta(seconds=10)
ONE_SHOTS = 200


async def test_a_10_second_nats_outage_delays_runs_and_loses_or_duplicates_none(
    nats_server_factory: Any, fleet: Fleet, pool: asyncpg.Pool, namespace: str
) -> None:
    """NATS is stopped for 10 s while a start-workflow job fires every second and 200
    one-shot jobs come due. The scheduler keeps deciding runs into the outbox and
    reports NATS down; once NATS is back (same port, same data) every run decided in
    the outage is delivered, each once."""
    subjects = Subjects(namespace)
    store = PostgresJobStore(pool)
    server = nats_server_factory()
    replica = fleet.start(
        server.url,
        JOBWIRE_NATS__RECONNECT_WAIT_SECONDS="1",
        JOBWIRE_NATS__CONNECT_TIMEOUT_SECONDS="1",
    )

    async def runs_of(prefix: str) -> list[asyncpg.Record]:
        return await pool.fetch(
            """SELECT r.id, r.scheduled_for, r.status, r.trigger, r.fired_at, j.name
               FROM scheduler.runs r JOIN scheduler.jobs j ON j.id = r.job_id
               WHERE j.name LIKE $1 || '%' ORDER BY r.scheduled_for""",
            prefix,
        )

    with fleet.explained():
        await fleet.ready(replica)
        await store.create(
            parse_definition(
                {
                    "name": "heartbeat",
                    "type": "start-workflow",
                    "schedule": {"kind": "cron", "expression": "* * * * * *"},
                    "params": {"workflow": "heartbeat"},
                }
            ),
            utcnow(),
        )

        async def flowing() -> bool:
            return [r["status"] for r in await runs_of("heartbeat")].count("succeeded") >= 2

        await wait_for(flowing, timeout=10, description="heartbeat runs relayed before the outage")

        server.stop()
        stopped_at = utcnow()
        # Created while NATS is down (the API needs only PostgreSQL), due over the next
        # 1-7 s: every one of them is decided during the outage.
        now = utcnow()
        slots = {
            f"outage-{i:03d}": now + timedelta(seconds=1 + 6 * i / ONE_SHOTS)
            for i in range(ONE_SHOTS)
        }
        await create_all(store, [once(name, at) for name, at in slots.items()], now)
        assert max(slots.values()) < stopped_at + OUTAGE - timedelta(seconds=1)

        async def nats_down() -> dict[str, Any] | None:
            report = await replica.readyz()
            return report if report and not report["checks"]["nats"]["ok"] else None

        down = await wait_for(nats_down, timeout=10, description="/readyz reporting NATS down")
        assert down["ready"] is False
        assert down["checks"]["database"]["ok"] is True

        async def one_shots_decided() -> bool:
            return len(await runs_of("outage-")) == ONE_SHOTS

        await wait_for(one_shots_decided, timeout=15, description="one-shots decided in the outage")
        # The scenario itself: NATS stays down for OUTAGE. This is the test's one
        # deliberate wait; every other wait above and below is on a condition.
        await asyncio.sleep(max((stopped_at + OUTAGE - utcnow()).total_seconds(), 0.0))

        in_outage = [r for r in await runs_of("") if r["fired_at"] > stopped_at]
        assert [r["status"] for r in in_outage].count("succeeded") == 0, "nothing was relayed"
        assert len([r for r in in_outage if r["name"] == "heartbeat"]) >= 9
        assert (await counts(pool))["outbox"] >= len(in_outage), "the outbox holds them all"
        still_down = await replica.readyz()
        assert still_down is not None
        assert still_down["checks"]["nats"]["ok"] is False

        server.start()
        restarted_at = utcnow()

        async def recovered() -> bool:
            report = await replica.readyz()
            return bool(report and report["ready"])

        await wait_for(recovered, timeout=15, description="/readyz ready again")

        async def delivered() -> bool:
            heartbeats = {r["id"]: r["status"] for r in await runs_of("heartbeat")}
            return (await counts(pool))["outbox"] == 0 and all(
                heartbeats[r["id"]] == "succeeded" for r in in_outage if r["name"] == "heartbeat"
            )

        await wait_for(delivered, timeout=30, description="the outage's runs relayed")
        delivered_at = utcnow()
        # Stop the heartbeat and let the relay settle its last run, then stop the replica.
        await store.set_enabled("heartbeat", False, utcnow())

        async def outbox_empty() -> bool:
            return (await counts(pool))["outbox"] == 0

        await wait_for(outbox_empty, timeout=10, description="outbox empty")
        assert await fleet.stop(replica) == 0

    heartbeats = await runs_of("heartbeat")
    one_shots = await runs_of("outage-")
    # Every slot got a run, on time although NATS was down, and each was completed.
    seconds = [r["scheduled_for"] for r in heartbeats]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(seconds))
    assert {r["status"] for r in heartbeats} == {"succeeded"}
    assert {r["trigger"] for r in heartbeats} == {"schedule"}
    assert {r["name"]: r["scheduled_for"] for r in one_shots} == slots
    assert {r["status"] for r in one_shots} == {"dispatched"}

    client = await nats.connect(server.url, connect_timeout=5)
    try:
        js = client.jetstream()
        commands = await stream_messages(
            js, subjects.stream_name(Stream.WORKFLOWS), subjects.workflow_start("heartbeat")
        )
        jobs = await stream_messages(js, subjects.stream_name(Stream.JOBS), subjects.job_due(WORK))
        workflows_info = await js.stream_info(subjects.stream_name(Stream.WORKFLOWS))
        jobs_info = await js.stream_info(subjects.stream_name(Stream.JOBS))
    finally:
        await client.close()
    command_ids = msg_ids(commands)
    assert len(command_ids) == len(set(command_ids)), "a StartWorkflow was stored twice"
    assert set(command_ids) == {str(r["id"]) for r in heartbeats}
    assert {decode(m.data, StartWorkflow).data.idempotency_key for m in commands} == set(
        command_ids
    )
    job_ids = msg_ids(jobs)
    assert len(job_ids) == len(set(job_ids)) == ONE_SHOTS, "a JobDue was stored twice"
    assert set(job_ids) == {str(r["id"]) for r in one_shots}
    assert workflows_info.state.messages == len(heartbeats)
    assert jobs_info.state.messages == ONE_SHOTS
    print(
        f"\nNATS down {(restarted_at - stopped_at).total_seconds():.1f} s; "
        f"{len(in_outage)} runs decided meanwhile ({ONE_SHOTS} one-shots, "
        f"{len(in_outage) - ONE_SHOTS} heartbeats), all delivered "
        f"{(delivered_at - restarted_at).total_seconds():.1f} s after NATS was back; "
        f"{len(heartbeats)} heartbeat runs in all"
    )


async def test_a_replica_dying_at_each_step_between_claim_and_relay_loses_and_doubles_nothing(
    make_scheduler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash windows the SIGKILL test hits only by chance, each hit on purpose.

    Two replicas, ``a`` and ``b``; "dying" is real: the replica's PostgreSQL backend is
    terminated at that point, so its open transaction is rolled back by the server,
    exactly as when the process is killed. 1. ``a`` dies inside its claim. 2. ``b``
    claims and commits, then dies before its relay runs. 3. ``a``'s relay publishes,
    then dies before deleting the rows. 4. ``b``'s relay publishes them again and
    JetStream drops every one as a duplicate."""
    a = await make_scheduler()
    b = await make_scheduler()
    slot = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    for definition in (
        once("work", slot),
        once("flow", slot, "start-workflow", params={"workflow": "flow"}),
    ):
        await a.store.create(definition, now=slot - timedelta(seconds=1))
    fire_at = slot + timedelta(milliseconds=5)
    subjects = a.broker.subjects
    pool = a.store.pool

    async def die(conn: asyncpg.Connection, *_: object) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    async def stored() -> tuple[int, int]:
        js = b.broker.js
        jobs = await js.stream_info(subjects.stream_name(Stream.JOBS))
        flows = await js.stream_info(subjects.stream_name(Stream.WORKFLOWS))
        return jobs.state.messages, flows.state.messages

    async def statuses() -> dict[str, str]:
        rows = await pool.fetch(
            "SELECT j.name, r.status FROM scheduler.runs r JOIN scheduler.jobs j ON j.id = r.job_id"
        )
        return {r["name"]: r["status"] for r in rows}

    # 1. a dies in the middle of its claim (after inserting runs and outbox rows).
    with monkeypatch.context() as patch:
        patch.setattr(a.store, "set_next_fire", die)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await a.scheduler.firer.fire_due(fire_at)
    assert await statuses() == {}
    assert (await counts(pool))["outbox"] == 0
    assert (await counts(pool))["due"] == 2, "both jobs are still due"

    # 2. b claims and commits, then dies before its relay publishes (it never relays).
    assert await b.scheduler.firer.fire_due(fire_at) == 2
    assert await statuses() == {"work": "dispatched", "flow": "dispatched"}
    assert (await counts(pool))["outbox"] == 2
    assert await a.scheduler.firer.fire_due(fire_at + timedelta(seconds=1)) == 0

    # 3. a's relay publishes both rows, then dies before deleting them.
    with monkeypatch.context() as patch:
        patch.setattr(a.store.outbox, "delete", die)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            await a.scheduler.relay.relay_once()
    assert await stored() == (1, 1)
    assert (await counts(pool))["outbox"] == 2
    assert await statuses() == {"work": "dispatched", "flow": "dispatched"}

    # 4. b's relay publishes them again: JetStream drops both, and the rows settle.
    acks: list[Any] = []
    publish = b.broker.publish_encoded

    async def recording(*args: Any, **kwargs: Any) -> list[Any]:
        results = await publish(*args, **kwargs)
        acks.extend(results)
        return results

    monkeypatch.setattr(b.broker, "publish_encoded", recording)
    assert await b.scheduler.relay.relay_once() == (2, 2)
    assert [getattr(ack, "duplicate", ack) for ack in acks] == [True, True]
    assert await stored() == (1, 1)
    assert (await counts(pool))["outbox"] == 0
    assert await statuses() == {"work": "dispatched", "flow": "succeeded"}
    run_ids = {
        r["name"]: str(r["id"])
        for r in await pool.fetch(
            "SELECT j.name, r.id FROM scheduler.runs r JOIN scheduler.jobs j ON j.id = r.job_id"
        )
    }
    for name, stream, subject in [
        ("work", Stream.JOBS, subjects.job_due(WORK)),
        ("flow", Stream.WORKFLOWS, subjects.workflow_start("flow")),
    ]:
        message = await b.broker.js.get_last_msg(subjects.stream_name(stream), subject)
        assert (message.headers or {})["Nats-Msg-Id"] == run_ids[name]


# ------------------------------------------- availability: back off, never crash


async def test_a_replica_survives_its_database_connection_dying_mid_claim(
    make_scheduler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart, failover or ``pg_terminate_backend`` during a claim should
    cost one back-off, not the process."""
    h = await make_scheduler()
    set_next_fire = h.store.set_next_fire
    died: list[bool] = []

    async def dies_once(conn: asyncpg.Connection, updates: Any) -> None:
        if not died:
            died.append(True)
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        await set_next_fire(conn, updates)

    monkeypatch.setattr(h.store, "set_next_fire", dies_once)
    running = asyncio.create_task(h.scheduler.run())
    try:
        await h.store.create(once("soon", utcnow() + timedelta(milliseconds=200)), utcnow())

        async def fired() -> list[dict[str, Any]]:
            if running.done():
                raise AssertionError(f"the scheduler stopped: {running.exception()!r}")
            return await h.store.runs("soon")

        await wait_for(fired, timeout=10, description="the claim retried after the failure")
        assert died
    finally:
        h.scheduler.stopping.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, timeout=10)


async def test_an_outage_backlog_larger_than_the_nats_client_buffer_is_delivered_once(
    nats_server_factory: Any, fleet: Fleet, pool: asyncpg.Pool, namespace: str
) -> None:
    """700 StartWorkflows of ~4 KiB (about 3 MB) decided while NATS is down: the replica
    should keep them in the outbox and deliver each once when NATS is back."""
    subjects = Subjects(namespace)
    store = PostgresJobStore(pool)
    server = nats_server_factory()
    replica = fleet.start(server.url, JOBWIRE_NATS__RECONNECT_WAIT_SECONDS="1")
    backlog = 700

    def alive() -> None:
        if not replica.running:
            raise AssertionError(
                f"the replica exited with {replica.popen.returncode}: {replica.crash()}"
            )

    await fleet.ready(replica)
    server.stop()

    async def nats_down() -> bool:
        report = await replica.readyz()
        return bool(report and not report["checks"]["nats"]["ok"])

    await wait_for(nats_down, timeout=10, description="/readyz reporting NATS down")
    # Created once NATS is down (the store needs only PostgreSQL), all due at one
    # instant shortly after: the relay's first batch once NATS is back holds all
    # 700, however slow the machine was in getting here.
    now = utcnow()
    due = now + timedelta(seconds=2)
    params = {"workflow": "big", "input": {"blob": "x" * 4096}}
    definitions = [
        once(f"big-{i:03d}", due, "start-workflow", params=params) for i in range(backlog)
    ]
    await create_all(store, definitions, now)

    async def decided_and_waiting() -> bool:
        # All 700 decided and kept in the outbox: the relay fails fast while
        # NATS is away (it neither buffers them in the client nor crashes).
        alive()
        now_counts = await counts(pool)
        return now_counts["runs"] == backlog and now_counts["outbox"] == backlog

    await wait_for(
        decided_and_waiting, timeout=60, description="the backlog decided, in the outbox"
    )
    server.start()

    async def delivered() -> bool:
        alive()
        return (await counts(pool))["outbox"] == 0

    await wait_for(delivered, timeout=60, description="the backlog relayed")
    assert await fleet.stop(replica) == 0
    client = await nats.connect(server.url, connect_timeout=5)
    try:
        js = client.jetstream()
        stream = subjects.stream_name(Stream.WORKFLOWS)
        ids = msg_ids(await stream_messages(js, stream, subjects.workflow_start("big")))
    finally:
        await client.close()
    runs = await pool.fetch("SELECT id, status FROM scheduler.runs")
    assert len(ids) == len(set(ids)) == backlog
    assert set(ids) == {str(r["id"]) for r in runs}
    assert {r["status"] for r in runs} == {"succeeded"}


async def test_a_replica_stopped_during_a_nats_outage_exits_cleanly(
    nats_server_factory: Any, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    server = nats_server_factory()
    replica = fleet.start(server.url, JOBWIRE_NATS__RECONNECT_WAIT_SECONDS="1")
    await fleet.ready(replica)
    server.stop()

    async def nats_down() -> bool:
        report = await replica.readyz()
        return bool(report and not report["checks"]["nats"]["ok"])

    await wait_for(nats_down, timeout=10, description="/readyz reporting NATS down")
    code = await fleet.stop(replica)
    assert code == 0, f"exit code {code}: {replica.crash()}\n{replica.log_tail(lines=80)}"
