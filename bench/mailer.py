"""Mailer benchmark: an `email-send` run of 10,000 queued emails vs. a bare aiosmtplib loop.

Everything runs on this machine, on private servers this script starts and
stops by PID: PostgreSQL, a nats-server (``private_servers`` of bench/api.py)
and an SMTP sink (bench/_smtp_sink.py: a minimal ESMTP server in its own
process that counts and discards; aiosmtpd would cost as much CPU as the client
it receives from). The mailer runs as deployed — ``python -m jobwire.cli
mailer``, its own process, one account of ``--connections`` connections to the
sink, attachments from a local storage — so its CPU and RSS come from /proc.

1. ``intake`` — ``--emails`` SendEmail (a ~5 KB text body; every
   ``--attachment-every``-th with a 100 KB attachment from the local storage)
   published to the MAIL stream in pipelined batches, then timed until the
   mailer queued all of them (rows in ``mailer.emails``) and until its outbox
   relayed their `queued` events. The mailer renders each email as it queues
   it (every attempt sends those bytes), so intake's CPU includes rendering.
   No run is due, so nothing is sent yet.
2. ``mailer`` — one `email-send` run (a JobDue as the scheduler fires it,
   ``max_emails`` = all, a large ``max_seconds``): seconds from publishing the
   JobDue to receiving its RunFinished; the run must report every email sent
   and the sink must have received that many. The mailer's CPU over the run
   gives CPU per email; its RSS is sampled every ``--rss-interval`` seconds
   (flat = max - min of the samples within ``RSS_FLAT_BOUND_MIB``). The
   `sent` events' relay is timed after the run too.
3. ``bare`` — the same messages, built and rendered with the mailer's own
   ``build_message``/``render`` (same Message-IDs, attachments, SMTPUTF8 as
   the sink offers) before the clock starts, sent by ``--connections``
   aiosmtplib clients back to back (``sendmail``: MAIL, RCPT, DATA), one round
   before and one after the mailer's run. Ratio = mailer / the better bare round
   (goal ≥ 0.70).

``--profile`` records the mailer with py-spy during its run (py-spy is in the
bench group: run from ``.jobwire/bench-venv``); the profile is saved next to the
results and summarised in them.
The machine is shared: each window records the busy fraction of all CPUs and
what the other processes used. Run: ``make bench-mailer``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import httpx
from _measure import (
    RssSampler,
    Window,
    finish_profile,
    machine_info,
    merge_results,
    rounded,
    start_profile,
)
from _smtp_sink import SmtpSink
from api import Env, private_servers

from jobwire.contracts.envelope import decode
from jobwire.contracts.mail import SendEmail
from jobwire.contracts.objects import EmailAddress
from jobwire.contracts.runs import RunFinished
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.mailer.domain.message import build_message, message_id, render
from jobwire.runtime.broker import Broker, Outgoing
from jobwire.runtime.embedded import child_options, free_port
from jobwire.runtime.settings import ServiceSettings
from jobwire.testing import job_due
from jobwire.testing.databases import scratch_database

PACKAGES = ("jobwire-mailer", "jobwire-runtime", "aiosmtplib", "asyncpg", "nats-py")
COMMAND = "uv run python bench/mailer.py --out bench/results/mailer.json"
GOAL = 0.70
RSS_FLAT_BOUND_MIB = 32
ACCOUNT = "default"
FROM_ADDRESS = "bench@mailer.bench"
TEXT_BYTES = 5 * 1024
ATTACHMENT_BYTES = 100 * 1024
ATTACHMENT_FILES = 100  # distinct files, cycled
PUBLISH_BATCH = 500


# -- the emails ------------------------------------------------------------------------------


def make_commands(n: int, every: int, tag: str) -> list[SendEmail]:
    """``n`` commands: ~5 KB of text each, a 100 KB attachment on every ``every``-th."""
    rng = random.Random(11)
    words = ["case", "file", "hearing", "court", "letter", "party", "claim", "deadline", "notice"]
    commands = []
    for i in range(n):
        lines, size = [f"Dear recipient {i},", ""], 0
        while size < TEXT_BYTES:
            line = " ".join(rng.choice(words) for _ in range(11)).capitalize() + "."
            lines.append(line)
            size += len(line) + 1
        values: dict[str, Any] = {
            "idempotency_key": f"{tag}-{i}",
            "account": ACCOUNT,
            "to": [{"address": f"r{i}@example.com", "name": f"Recipient {i}"}],
            "subject": f"Bench email {i} of case {i % 97}",
            "text": "\n".join(lines) + "\n",
            "conversation_id": f"case-{i % 97}",
        }
        if every and i % every == every - 1:
            values["attachments"] = [
                {
                    "file": {
                        "storage": "local",
                        "path": attachment_path(i // every),
                        "size": ATTACHMENT_BYTES,
                        "content_type": "application/pdf",
                    },
                    "filename": f"letter-{i}.pdf",
                }
            ]
        commands.append(SendEmail.model_validate(values))
    return commands


def attachment_path(number: int) -> str:
    return f"attachments/{number % ATTACHMENT_FILES:03}.pdf"


def write_attachments(root: Path) -> None:
    rng = random.Random(5)
    (root / "attachments").mkdir(parents=True, exist_ok=True)
    for number in range(ATTACHMENT_FILES):
        (root / attachment_path(number)).write_bytes(rng.randbytes(ATTACHMENT_BYTES))


def prerender(commands: Sequence[SendEmail], root: Path, domain: str) -> list[bytes]:
    """Each command's DATA as the mailer would send it to the sink (which offers SMTPUTF8)."""
    sender = EmailAddress(address=FROM_ADDRESS)
    now = datetime.now(UTC)
    rendered = []
    for command in commands:
        attachments = [(a, (root / a.file.path).read_bytes()) for a in command.attachments]
        message = build_message(
            command,
            account_from=sender,
            message_id=message_id(command.idempotency_key, domain),
            date=now,
            references=[],
            attachments=attachments,
        )
        rendered.append(render(message, smtputf8=True))
    return rendered


# -- the mailer process --------------------------------------------------------------------------


@dataclass
class Setup:
    env: Env
    sink: SmtpSink
    dsn: str
    namespace: str
    files: Path
    args: argparse.Namespace


@contextlib.asynccontextmanager
async def mailer_process(setup: Setup) -> AsyncIterator[int]:
    """``jobwire mailer`` in its own process, ready; yields its pid."""
    port = free_port()
    secrets = setup.env.tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    account = {
        "host": "127.0.0.1",
        "port": setup.sink.port,
        "security": "none",
        "from_address": FROM_ADDRESS,
        "max_connections": setup.args.connections,
    }
    child_env = {
        **os.environ,
        "JOBWIRE_DATABASE_URL": setup.dsn,
        "JOBWIRE_NATS__URL": setup.env.nats_url,
        "JOBWIRE_NAMESPACE": setup.namespace,
        "JOBWIRE_HTTP_HOST": "127.0.0.1",
        "JOBWIRE_HTTP_PORT": str(port),
        "JOBWIRE_HOST": "bench-mailer",
        "JOBWIRE_LOG_LEVEL": setup.args.log_level,
        "JOBWIRE_LOG_FORMAT": "json",
        "JOBWIRE_MAILER__ACCOUNTS": json.dumps({ACCOUNT: account}),
        "JOBWIRE_MAILER__STORAGES": json.dumps([{"kind": "local", "root": str(setup.files)}]),
        "JOBWIRE_MAILER__SECRETS_DIR": str(secrets),
    }
    log = (setup.env.tmp / "mailer.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobwire.cli",
        "mailer",
        env=child_env,
        stdout=log,
        stderr=log,
        **child_options(),  # dies with the benchmark, however it ends
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the mailer exited {process.returncode}; see {log.name}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the mailer did not become ready in 60 s")
                await asyncio.sleep(0.2)
        yield process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def wait_until(check: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Seconds until ``await check()`` is true; raises after ``timeout``."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{what}: not after {timeout:g} s")
        await asyncio.sleep(interval)
    return time.perf_counter() - started


# -- the scenarios -------------------------------------------------------------------------------


async def intake(
    broker: Broker, pool: asyncpg.Pool, commands: Sequence[SendEmail], pids: dict[str, int | None]
) -> dict[str, Any]:
    n = len(commands)
    subject = broker.subjects.mail_send(ACCOUNT)
    items = [Outgoing(subject, c, msg_id=f"send:{c.idempotency_key}") for c in commands]
    window = Window(pids)
    started = time.perf_counter()
    for offset in range(0, n, PUBLISH_BATCH):
        results = await broker.publish_batch(items[offset : offset + PUBLISH_BATCH])
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"publishing SendEmail failed: {failed[0]!r}")
    published = time.perf_counter() - started

    async def all_queued() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM mailer.emails") >= n)

    await wait_until(all_queued, 600, f"{n} emails queued", interval=0.2)
    queued = time.perf_counter() - started
    cost = window.close()
    relayed = await wait_until(lambda: _outbox_empty(pool), 600, "queued events relayed")
    statuses = await _statuses(pool)
    if statuses != {"queued": n}:
        raise RuntimeError(f"after intake: {statuses}, expected {n} queued")
    return {
        "publish_seconds": round(published, 2),
        "queued_seconds": round(queued, 2),
        "queued_per_s": round(n / queued),
        "queued_events_relayed_after_seconds": round(relayed, 2),
        "cpu_ms_per_email": _per_email_ms(cost, n),
        "window": cost,
    }


async def mailer_run(
    setup: Setup, broker: Broker, pool: asyncpg.Pool, pid: int, n: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    due = job_due("email-send", {"max_emails": n, "max_seconds": 3600}, timeout_seconds=3600)
    finished: asyncio.Future[tuple[float, RunFinished]] = asyncio.get_running_loop().create_future()

    async def on_finished(msg: Any) -> None:
        if not finished.done():
            finished.set_result((time.perf_counter(), decode(msg.data, RunFinished).data))

    # A core subscription sees the RunFinished the moment JetStream stores it.
    sub = await broker.nc.subscribe(
        broker.subjects.run_event(due.run_id, RunEvent.FINISHED), cb=on_finished
    )
    sink_before = setup.sink.counts()
    rss = RssSampler(pid, setup.args.rss_interval, RSS_FLAT_BOUND_MIB)
    spied = setup.env.tmp / "mailer.pyspy.txt"
    profile = start_profile(pid, spied) if setup.args.profile else None
    rss.start()
    window = Window(pids)
    started = time.perf_counter()
    try:
        await broker.publish(broker.subjects.job_due("email-send"), due, msg_id=due.run_id)
        ended, result = await asyncio.wait_for(finished, 3600)
    finally:
        await sub.unsubscribe()
    cost = window.close(ended)
    memory = await rss.stop()
    seconds = ended - started
    sink = _delta(setup.sink.counts(), sink_before)
    relayed = await wait_until(lambda: _outbox_empty(pool), 600, "sent events relayed")
    statuses = await _statuses(pool)
    if result.status != "succeeded" or (result.result or {}).get("sent") != n:
        raise RuntimeError(f"the run ended {result.status}: {result.result} {result.error}")
    if sink["messages"] != n or statuses != {"sent": n}:
        raise RuntimeError(f"the sink received {sink}, the queue says {statuses}; expected {n}")
    output = {
        "seconds": round(seconds, 2),
        "emails_per_s": round(n / seconds, 1),
        "run_result": result.result,
        "sink_received": sink,
        "sent_events_relayed_after_run_seconds": round(relayed, 2),
        "cpu_ms_per_email": _per_email_ms(cost, n),
        "window": cost,
        "rss": memory,
    }
    if profile is not None:
        output["profile"] = await finish_profile(profile, spied, "mailer.pyspy.txt")
    return output


async def bare_round(
    setup: Setup, messages: Sequence[bytes], recipients: Sequence[str], pids: dict[str, int | None]
) -> dict[str, Any]:
    """``--connections`` aiosmtplib clients sending ``messages`` back to back."""
    n = len(messages)
    next_index = iter(range(n))
    sent = Counter[str]()

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.sink.port, timeout=30)
        await smtp.connect()
        try:
            for i in next_index:
                await smtp.sendmail(FROM_ADDRESS, [recipients[i]], messages[i])
                sent["sent"] += 1
        finally:
            await smtp.quit()

    sink_before = setup.sink.counts()
    window = Window(pids)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(setup.args.connections):
            tasks.create_task(client())
    seconds = time.perf_counter() - started
    cost = window.close()
    sink = _delta(setup.sink.counts(), sink_before)
    if sent["sent"] != n or sink["messages"] != n:
        raise RuntimeError(f"bare loop: {sent['sent']} sent, the sink received {sink}")
    return {
        "seconds": round(seconds, 2),
        "emails_per_s": round(n / seconds, 1),
        "sink_received": sink,
        "cpu_ms_per_email": _per_email_ms(cost, n),
        "window": cost,
    }


def _per_email_ms(window: dict[str, Any], n: int) -> dict[str, float | None]:
    return {
        name: rounded(seconds * 1000 / n, 3) if seconds is not None else None
        for name, seconds in window["cpu_seconds"].items()
    }


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


async def _outbox_empty(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT count(*) FROM mailer.outbox")


async def _statuses(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM mailer.emails GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


# -- the whole run ---------------------------------------------------------------------------------


async def run(env: Env, sink: SmtpSink, args: argparse.Namespace) -> dict[str, Any]:
    files = env.tmp / "files"
    write_attachments(files)
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    commands = make_commands(args.emails, args.attachment_every, tag)
    started = time.perf_counter()
    messages = prerender(commands, files, FROM_ADDRESS.rpartition("@")[2])
    render_seconds = time.perf_counter() - started
    recipients = [c.to[0].address for c in commands]
    sizes = sorted(len(m) for m in messages)
    print(
        f"  {len(messages):,} messages rendered in {render_seconds:.1f} s "
        f"({sum(sizes) / 1e6:.0f} MB, {sizes[0]:,}..{sizes[-1]:,} bytes)",
        flush=True,
    )
    async with scratch_database(env.admin_dsn, "jobwire_bench_mailer_") as dsn:
        namespace = f"bm{uuid.uuid4().hex[:8]}"
        setup = Setup(env, sink, dsn, namespace, files, args)
        broker = Broker(
            ServiceSettings(nats={"url": env.nats_url}, namespace=namespace),
            source="/jobwire/bench-mailer",
        )
        await broker.connect()
        await broker.ensure_streams()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        base_pids = {
            "bench_process": os.getpid(),
            "sink": sink.pid,
            "postgresql": env.postgres_pid,
            "nats_server": env.nats_pid,
        }
        try:
            bare = [await bare_round(setup, messages, recipients, base_pids)]
            _print_bare(bare[-1])
            async with mailer_process(setup) as pid:
                pids = {"mailer": pid, **base_pids}
                taken = await intake(broker, pool, commands, pids)
                print(
                    f"  intake: {taken['queued_seconds']} s ({taken['queued_per_s']:,}/s), "
                    f"events relayed {taken['queued_events_relayed_after_seconds']} s later",
                    flush=True,
                )
                sent = await mailer_run(setup, broker, pool, pid, len(commands), pids)
                print(
                    f"  mailer: {sent['seconds']} s ({sent['emails_per_s']:,}/s), "
                    f"{sent['cpu_ms_per_email']['mailer']} ms CPU/email, RSS "
                    f"{sent['rss']['min_mib']}..{sent['rss']['max_mib']} MiB",
                    flush=True,
                )
            bare.append(await bare_round(setup, messages, recipients, base_pids))
            _print_bare(bare[-1])
        finally:
            for stream in Stream:
                with contextlib.suppress(Exception):
                    await broker.js.delete_stream(broker.subjects.stream_name(stream))
            await broker.close()
            await pool.close()
    best = max(bare, key=lambda r: r["emails_per_s"])
    ratio = sent["emails_per_s"] / best["emails_per_s"]
    return {
        "emails": len(commands),
        "connections": args.connections,
        "text_bytes": TEXT_BYTES,
        "attachment_bytes": ATTACHMENT_BYTES,
        "attachment_every": args.attachment_every,
        "message_bytes": {
            "total": sum(sizes),
            "min": sizes[0],
            "median": sizes[len(sizes) // 2],
            "max": sizes[-1],
        },
        "bare_prerender_seconds": round(render_seconds, 2),
        "bare_prerender_ms_per_email": round(render_seconds * 1000 / len(commands), 3),
        "mailer_log_level": args.log_level,
        "intake": taken,
        "mailer": sent,
        "bare": {
            "rounds": bare,
            "best_emails_per_s": best["emails_per_s"],
            "cpu_ms_per_email_best_round": best["cpu_ms_per_email"]["bench_process"],
        },
        "mailer_emails_per_s": sent["emails_per_s"],
        "bare_emails_per_s": best["emails_per_s"],
        "ratio": round(ratio, 3),
        "ratio_to_each_bare_round": [
            round(sent["emails_per_s"] / r["emails_per_s"], 3) for r in bare
        ],
        "goal_ratio": GOAL,
        "goal_met": ratio >= GOAL,
        "mailer_cpu_ms_per_email": sent["cpu_ms_per_email"]["mailer"],
        "memory_flat": sent["rss"]["flat"],
        "memory_flat_after_warmup": sent["rss"]["flat_after_warmup"],
    }


def _print_bare(result: dict[str, Any]) -> None:
    print(
        f"  bare: {result['seconds']} s ({result['emails_per_s']:,}/s), "
        f"{result['cpu_ms_per_email']['bench_process']} ms CPU/email (client), "
        f"sink {result['cpu_ms_per_email']['sink']} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--attachment-every", type=int, default=10, help="0: no attachments")
    parser.add_argument("--rss-interval", type=float, default=0.5)
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the mailer's (INFO logs a line per email queued and sent)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the mailer during its run")
    parser.add_argument("--database-url", default=os.environ.get("JOBWIRE_BENCH_DATABASE_URL"))
    parser.add_argument("--nats-url", default=os.environ.get("JOBWIRE_BENCH_NATS_URL"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/mailer.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.perf_counter()
    with private_servers(args.database_url, args.nats_url, "mailer") as env:
        sink = SmtpSink(env.tmp)
        sink.start()
        try:
            result = asyncio.run(run(env, sink, args))
        finally:
            sink.stop()
    machine = machine_info(PACKAGES)
    machine["load"] = {
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "note": "per-window busy fractions are in each window",
    }
    output = {
        "benchmark": "mailer",
        "command": COMMAND,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": __doc__,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        **result,
    }
    merge_results(args.out, output)
    print(
        f"mailer {result['mailer_emails_per_s']:,}/s vs bare {result['bare_emails_per_s']:,}/s: "
        f"ratio {result['ratio']:.2f} (goal ≥ {GOAL}: {result['goal_met']}); mailer "
        f"{result['mailer_cpu_ms_per_email']} ms CPU/email; memory flat: {result['memory_flat']}"
    )
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
