"""Chaos: emails sent by two `jobwire mailer` processes that are SIGKILLed mid-flow.

Real replica processes (the production entry point, ``jobwire mailer``, settings
by ``JOBWIRE_*``) share one PostgreSQL queue and one NATS namespace; the test
publishes SendEmail commands and a steady stream of `email-send` runs, and
SIGKILLs the oldest replica now and then, starting a new one each time. The
SMTP server (a process of its own) stores each message and only then answers
DATA, 50 ms late: a kill lands inside a transaction, after the server took the
message and before the mailer recorded it, more often than not.

What must hold (sending.py's crash semantics):
    * no email is lost: every email ends sent, and the server has its Message-ID;
    * a copy beyond the first comes only from the one documented window: at each
      kill the victim is frozen (SIGSTOP) and the emails it holds claimed are
      noted; every email received n > 1 times was held by a killed replica at
      n - 1 kills or more, and that replica's attempt of it has no outcome and
      began before the kill. No attempt of a replica that was not killed is
      left without an outcome (no lease was lost). The emails noted as held are
      a superset of those in the window: a record whose COMMIT was on its way
      when the replica froze still lands;
    * every copy is the same bytes, with the same Message-ID;
    * every email has exactly one `queued` and one `sent` event on the MAIL stream.

Profiles (``JOBWIRE_CHAOS_PROFILE``): ``ci`` (default) 300 emails, 2 kills;
``full`` (``make chaos-mailer``) 2,000 emails, 6 kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from nats.js.api import AckPolicy, ConsumerConfig

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.mail import SendEmail, email_id
from jobwire.contracts.subjects import Stream
from jobwire.mailer.settings import MailerSettings
from jobwire.runtime.broker import Broker, Outgoing
from jobwire.runtime.db import connect_pool
from jobwire.runtime.mail_sink import MailDrop
from jobwire.testing import job_due, wait_for
from jobwire.testing.fleet import Fleet, Instance

pytestmark = pytest.mark.integration

PROFILES = {"ci": (300, 2), "full": (2000, 6)}
PROFILE = os.environ.get("JOBWIRE_CHAOS_PROFILE", "ci")
EMAILS, KILLS = PROFILES[PROFILE]

JOBWIRE = Path(sys.executable).with_name("jobwire")
# The longest send is 4 x 1 + 2 = 6 s (settings refuse a lease not above it): an
# email a killed replica held is taken again 6.5 s after its claim.
ACCOUNT = {
    "host": "127.0.0.1",
    "security": "none",
    "from_address": "chaos@mailer.test",
    "max_connections": 4,
    "timeout_seconds": 1.0,
    "data_timeout_seconds": 2.0,
}
LEASE_SECONDS = 6.5
DATA_DELAY = 0.05
RUN_EVERY = 0.25  # seconds between `email-send` runs, as a busy scheduler would fire them


@pytest.fixture
def fleet(tmp_path: Path, database_url: str, namespace: str) -> Iterator[Fleet]:
    fleet = Fleet(
        tmp_path,
        [str(JOBWIRE), "mailer"],
        namespace=namespace,
        env={
            "JOBWIRE_DATABASE_URL": database_url,
            "JOBWIRE_DATABASE_POOL_MAX": "6",
            "JOBWIRE_MAILER__SECRETS_DIR": str(tmp_path / "secrets"),
            "JOBWIRE_MAILER__LEASE_SECONDS": str(LEASE_SECONDS),
            "JOBWIRE_MAILER__RETRY_BASE_SECONDS": "0.2",
            "JOBWIRE_MAILER__RELAY_POLL_SECONDS": "0.1",
        },
    )
    try:
        yield fleet
    finally:
        fleet.close()


@pytest_asyncio.fixture(loop_scope="session")
async def client(nats_url: str, namespace: str) -> AsyncIterator[Broker]:
    """The apps' and the scheduler's side: publishes commands and runs."""
    settings = MailerSettings(nats={"url": nats_url}, namespace=namespace)
    broker = Broker(settings, source="/tests/mailer-chaos")
    await broker.connect()
    await broker.ensure_streams()
    try:
        yield broker
    finally:
        await broker.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def chaos_command(n: int) -> SendEmail:
    key = f"chaos-{n:05d}"
    values: dict[str, Any] = {
        "idempotency_key": key,
        "to": [{"address": f"{key}@example.com"}],
        "subject": f"Chaos {n}",
        "text": f"Email {n} of the chaos test.\n",
    }
    if n % 2:  # multipart too: a resend must repeat its boundaries
        values["html"] = f"<p>Email {n} of the chaos test.</p>"
    return SendEmail.model_validate(values)


async def fire_runs(client: Broker, stop: asyncio.Event) -> int:
    """Publish an `email-send` JobDue every RUN_EVERY seconds until ``stop``; how many."""
    fired = 0
    while not stop.is_set():
        due = job_due("email-send", {"max_seconds": 10})
        await client.publish(client.subjects.job_due("email-send"), due, msg_id=due.run_id)
        fired += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RUN_EVERY)
    return fired


async def sent_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM mailer.emails WHERE status = 'sent'"))


async def event_msg_ids(client: Broker) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every email event the MAIL stream holds."""
    js = client.js
    stream = client.subjects.stream_name(Stream.MAIL)
    subject = client.subjects.all_mail_events()
    info = await js.stream_info(stream, subjects_filter=subject)
    expected = sum((info.state.subjects or {}).values())
    psub = await js.pull_subscribe(
        subject, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    found: list[tuple[str, str]] = []
    try:
        while len(found) < expected:
            batch = await psub.fetch(min(1000, expected - len(found)), timeout=5)
            found += [(m.subject, (m.headers or {})["Nats-Msg-Id"]) for m in batch]
    finally:
        await psub.unsubscribe()
    return found


def log_events(instance: Instance) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in instance.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line).get("event", "")
            if event.startswith("mailer."):
                counts[event] += 1
    return counts


@pytest.mark.timeout(900 if PROFILE == "full" else 240)
async def test_emails_survive_sigkilled_replicas_and_only_the_data_window_sends_twice(
    fleet: Fleet,
    client: Broker,
    pool: asyncpg.Pool,
    nats_url: str,
    smtp_server_factory: Any,
) -> None:
    server = smtp_server_factory(faults=[{"stage": "data", "delay_seconds": DATA_DELAY}])
    accounts = json.dumps({"default": {**ACCOUNT, "port": server.port}})

    def start_replica() -> Instance:
        # attempts.host names the replica that made each attempt.
        name = f"{fleet.prefix}-{len(fleet.replicas)}"
        return fleet.start(nats_url, JOBWIRE_MAILER__ACCOUNTS=accounts, JOBWIRE_HOST=name)

    with fleet.explained():
        for replica in [start_replica(), start_replica()]:
            await fleet.ready(replica)
        commands = [chaos_command(n) for n in range(EMAILS)]
        subject = client.subjects.mail_send("default")
        items = [Outgoing(subject, c, f"send:{c.idempotency_key}") for c in commands]
        for start in range(0, EMAILS, 500):
            results = await client.publish_batch(items[start : start + 500])
            assert not [r for r in results if isinstance(r, BaseException)]
        began = utcnow()
        stop_runs = asyncio.Event()
        runs = asyncio.create_task(fire_runs(client, stop_runs))

        kills: list[dict[str, Any]] = []
        try:
            for k in range(1, KILLS + 1):
                threshold = EMAILS * k // (KILLS + 1)

                async def reached(threshold: int = threshold) -> bool:
                    return await sent_count(pool) >= threshold

                await wait_for(
                    reached, timeout=120, interval=0.02, description=f"{threshold} emails sent"
                )
                victim = min(fleet.running(), key=lambda r: r.started)
                victim.popen.send_signal(signal.SIGSTOP)  # frozen where it stands
                held = await pool.fetch(
                    "SELECT id FROM mailer.emails WHERE status = 'sending' AND claimed_by = $1",
                    f"{fleet.namespace}-{victim.name}",
                )
                fleet.kill(victim)
                kills.append(
                    {
                        "victim": victim.name,
                        "at": utcnow(),
                        "held": {str(r["id"]) for r in held},
                        "sent": await sent_count(pool),
                    }
                )
                start_replica()

            async def all_sent() -> bool:
                return await sent_count(pool) == EMAILS and not await pool.fetchval(
                    "SELECT count(*) FROM mailer.outbox"
                )

            await wait_for(all_sent, timeout=180, interval=0.2, description="every email sent")
            finished = utcnow()
        finally:
            stop_runs.set()
            fired = await runs
        survivors = fleet.running()
        exits = [await fleet.stop(r) for r in survivors]
        assert exits == [0] * len(survivors), "graceful stops exit 0"

    # PostgreSQL: every email sent.
    ids = {email_id(c.idempotency_key): c for c in commands}
    rows = await pool.fetch("SELECT id, status, message_id FROM mailer.emails")
    assert {str(r["id"]): r["status"] for r in rows} == dict.fromkeys(ids, "sent")
    message_ids = {str(r["id"]): r["message_id"] for r in rows}

    # The SMTP server: every Message-ID at least once; every copy the same bytes.
    stored = MailDrop(server.mail_dir).messages()
    copies: dict[str, list[bytes]] = defaultdict(list)
    for message in stored:
        assert message.message_id is not None
        copies[message.message_id].append((server.mail_dir / message.file).read_bytes())
    assert set(copies) == set(message_ids.values()), "none lost, none foreign"
    for message_id, raws in copies.items():
        assert len(set(raws)) == 1, f"copies of {message_id} differ"
    by_message_id = {m: e for e, m in message_ids.items()}
    duplicated = {by_message_id[m]: len(r) - 1 for m, r in copies.items() if len(r) > 1}
    duplicates = sum(duplicated.values())

    # Every extra copy inside the documented window: held by a killed replica at a
    # kill, whose attempt began before the kill and never got an outcome recorded.
    unrecorded = await pool.fetch(
        "SELECT email_id, host, started_at FROM mailer.attempts WHERE outcome IS NULL"
    )
    killed_at = {kill["victim"]: kill["at"] for kill in kills}
    open_attempts: dict[str, list[str]] = defaultdict(list)
    for row in unrecorded:
        assert row["host"] in killed_at, f"an attempt of a live replica never ended: {dict(row)}"
        assert row["started_at"] < killed_at[row["host"]]
        open_attempts[str(row["email_id"])].append(row["host"])
    held_at_kills = Counter(e for kill in kills for e in kill["held"])
    for email, extra in duplicated.items():
        assert held_at_kills[email] >= extra, f"{email}: {extra} extra copies, held at fewer kills"
        assert len(open_attempts[email]) >= extra, f"{email}: an extra copy without a crash"
    in_flight = sum(len(kill["held"]) for kill in kills)
    assert duplicates <= in_flight

    # The MAIL stream: one queued and one sent event per email, each once.
    events = await event_msg_ids(client)
    kinds = Counter(subject.rsplit(".", 1)[1] for subject, _ in events)
    per_email = Counter(
        (subject.split(".")[-2], subject.rsplit(".", 1)[1]) for subject, _ in events
    )
    assert len({msg_id for _, msg_id in events}) == len(events), "an event stored twice"
    for email in ids:
        assert per_email[(email, "queued")] == 1, email
        assert per_email[(email, "sent")] == 1, email
    assert kinds["failed"] == 0

    logs: Counter[str] = Counter()
    for replica in fleet.replicas:
        logs += log_events(replica)
    assert logs["mailer.lease_lost"] == 0
    assert len(kills) == KILLS
    assert all(r.popen.returncode == -signal.SIGKILL for r in fleet.replicas[:KILLS])
    print(
        f"\nmail chaos ({PROFILE}): {EMAILS} emails, {len(kills)} SIGKILLs, "
        f"{len(fleet.replicas)} replica processes, {fired} email-send runs fired; "
        f"all sent {(finished - began).total_seconds():.1f} s after the first command; "
        f"{len(stored)} messages at the SMTP server, {duplicates} duplicate(s) of "
        f"{len(duplicated)} email(s), all inside the window ({in_flight} emails held "
        f"claimed at the kills, {len(unrecorded)} attempts left without an outcome); "
        f"events: {kinds['queued']} queued, {kinds['sent']} sent, "
        f"{kinds['deferred']} deferred, 0 failed; lease_short {logs['mailer.lease_short']}, "
        f"lease_lost 0"
    )
    for kill in kills:
        print(
            f"  kill of {kill['victim']} at {kill['sent']} sent: held "
            f"{len(kill['held'])} claimed, of which "
            f"{sum(1 for e in kill['held'] if e in duplicated)} arrived twice"
        )
