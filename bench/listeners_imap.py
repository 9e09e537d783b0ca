"""Listener benchmark: IMAP emails → StartWorkflow, each with a 100 KB attachment.

N emails (a text and an HTML body, one 100 KB PDF attachment; ~137 KB on the
wire) are APPENDed to a fresh mailbox of a private Dovecot (Debian's
``dovecot-imapd``, plain IMAP on loopback), then read by one listener slot: the
real ``SlotRunner`` and ``ImapSource`` (UID SEARCH, UID FETCH of sizes and
bodies, parsing with the ``email`` package, attachments written to local
storage, checkpoint and Message-IDs in NATS KV, \\Seen flags), publishing into
the WORKFLOWS stream of a private nats-server. The clock starts when the slot
starts, so connecting, logging in and selecting the folder count.

``seconds_to_emit``: until JetStream stored the N-th StartWorkflow;
``seconds_to_settle``: until the last batch was checkpointed and flagged \\Seen.
Each round checks that N StartWorkflow are stored, none dead-lettered, and N
attachment files written.

Dovecot's CPU is its master and every process it started (the session's ``imap``
process does the work). It is not a remote mail server: these figures say what
the listener costs with a fast local server; over a network every batch adds a
few round trips (a search, two fetches, a store).

The result is merged into ``bench/results/listeners.json`` under ``"imap"``;
other keys of that file are left as they are.
Run: ``uv run python bench/listeners_imap.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from _listeners_common import Window, build_slot, purge_workflows, stored_starts
from _measure import cpu_seconds, machine_info, merge_results

from jobwire.contracts.subjects import Stream
from jobwire.listeners.settings import ListenersSettings
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import NatsServer
from jobwire.runtime.logs import setup_logging
from jobwire.runtime.secrets import Secrets, variable_name
from jobwire.runtime.telemetry import setup_telemetry
from jobwire.testing.dovecot import DovecotServer, ImapAccount, ImapTestClient

COMMAND = "uv run python bench/listeners_imap.py --out bench/results/listeners.json"
PACKAGES = ("jobwire-listeners", "jobwire-runtime", "aioimaplib", "nats-py")
APPEND_BATCH = 50


def email(n: int, attachment_bytes: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Supplier {n % 37} <billing{n % 37}@supplier.example>"
    message["To"] = "invoices@jobwire.example"
    message["Subject"] = f"Invoice {n:05d}"
    message["Message-ID"] = f"<invoice-{n}-{uuid.uuid4().hex}@supplier.example>"
    message.set_content(f"Please find invoice {n:05d} attached.\n")
    message.add_alternative(f"<p>Please find invoice <b>{n:05d}</b> attached.</p>\n", "html")
    pdf = (b"%PDF-1.7 " + os.urandom(64)) * (attachment_bytes // 73 + 1)
    message.add_attachment(
        pdf[:attachment_bytes],
        maintype="application",
        subtype="pdf",
        filename=f"invoice-{n:05d}.pdf",
    )
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def listener_params(account: ImapAccount, storage: Path, batch: int) -> dict[str, Any]:
    return {
        "workflow": "invoice-received",
        "host": account.host,
        "port": account.port,
        "tls": False,
        "username": "imap-user",
        "password": "imap-password",
        "attachments": {"kind": "local", "root": str(storage)},
        "batch_max_messages": batch,
        "poll_seconds": 1,
    }


async def one_round(
    broker: Broker,
    servers: tuple[NatsServer, DovecotServer],
    tmp: Path,
    args: argparse.Namespace,
    round_no: int,
) -> dict[str, Any]:
    nats_server, dovecot = servers
    account = dovecot.add_user()
    storage = tmp / f"attachments-{round_no}"
    storage.mkdir()
    started = time.perf_counter()
    wire_bytes = 0
    async with ImapTestClient(account) as imap:
        for first in range(0, args.emails, APPEND_BATCH):
            raws = [email(n, args.attachment_bytes) for n in range(first, first + APPEND_BATCH)]
            raws = raws[: args.emails - first]
            wire_bytes += sum(len(raw) for raw in raws)
            await imap.append_many(raws)
    setup = time.perf_counter() - started

    await purge_workflows(broker)
    pids = {"bench_process": os.getpid(), "nats_server": nats_server.pid}
    secrets = Secrets(
        None,
        {
            variable_name("imap-user"): account.user,
            variable_name("imap-password"): account.password,
        },
    )
    slot = build_slot(
        broker,
        "email-listener",
        listener_params(account, storage, args.batch),
        args.emails,
        pids,
        secrets=secrets,
    )
    dovecot_cpu = cpu_seconds(dovecot.pid, children=True)
    window = Window.open(pids)
    slot.start()
    try:
        await slot.wait(timeout=600)
    finally:
        await slot.finish()
    source = slot.source
    assert source.stored_at is not None
    assert source.done_at is not None
    measured = window.close(source.done_at)
    dovecot_after = cpu_seconds(dovecot.pid, children=True)
    stored = await stored_starts(broker)
    files = sum(1 for _ in storage.rglob("*.pdf"))
    if stored != args.emails or slot.runner.stats.dead_lettered or files != args.emails:
        raise RuntimeError(
            f"imap: {stored} StartWorkflow stored, {slot.runner.stats.dead_lettered} "
            f"dead-lettered, {files} attachments; expected {args.emails}, 0, {args.emails}"
        )
    emit = source.stored_at - window.started
    settle = source.done_at - window.started
    bench_cpu = measured["cpu_seconds"]["bench_process"] or 0.0
    return {
        "setup_seconds": round(setup, 2),
        "seconds_to_first": round((source.first_at or window.started) - window.started, 3),
        "seconds_to_emit": round(emit, 3),
        "seconds_to_settle": round(settle, 3),
        "emails_per_s": round(args.emails / emit, 1),
        "mib_per_s": round(wire_bytes / emit / 2**20, 2),
        "cpu_ms_per_email": {
            "listener": round(1000 * bench_cpu / args.emails, 2),
            "dovecot": (
                round(1000 * (dovecot_after - dovecot_cpu) / args.emails, 2)
                if dovecot_cpu is not None and dovecot_after is not None
                else None
            ),
        },
        "window": measured,
    }


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    nats_server = NatsServer(tmp / "nats")
    nats_server.start()
    dovecot = DovecotServer(Path(tempfile.mkdtemp(prefix="jobwire-bench-dovecot-")))
    dovecot.start()
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = ListenersSettings(nats={"url": nats_server.url}, namespace=namespace)
    broker = Broker(settings, source="/jobwire/listeners/bench")
    await broker.connect()
    await broker.ensure_streams()
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            rounds.append(await one_round(broker, (nats_server, dovecot), tmp, args, r))
            last = rounds[-1]
            print(
                f"  imap round {r}: {args.emails} emails emitted in "
                f"{last['seconds_to_emit']:.2f} s ({last['emails_per_s']:,} emails/s, "
                f"{last['mib_per_s']} MiB/s), settled in "
                f"{last['seconds_to_settle']:.2f} s; CPU ms/email listener "
                f"{last['cpu_ms_per_email']['listener']}, dovecot "
                f"{last['cpu_ms_per_email']['dovecot']}; others busy "
                f"{last['window']['others_busy_fraction']:.0%}",
                flush=True,
            )
    finally:
        for stream in Stream:
            with contextlib.suppress(Exception):
                await broker.js.delete_stream(broker.subjects.stream_name(stream))
        await broker.close()
        dovecot.stop()
        nats_server.stop()
        # Not under `tmp`: Dovecot's own users must reach it (mkdtemp is 0700).
        shutil.rmtree(dovecot.directory, ignore_errors=True)
    rates = [r["emails_per_s"] for r in rounds]
    best = max(rounds, key=lambda r: r["emails_per_s"])
    return {
        "n": args.emails,
        "attachment_bytes": args.attachment_bytes,
        "batch_max_messages": args.batch,
        "rounds": len(rounds),
        "emails_per_s": {"best": max(rates), "median": statistics.median(rates), "all": rates},
        "seconds_to_emit": best["seconds_to_emit"],
        "seconds_to_settle": best["seconds_to_settle"],
        "mib_per_s": best["mib_per_s"],
        "server": "Dovecot 2.3 (Debian dovecot-imapd), plain IMAP on loopback",
        "storage": "local directory",
        "round_details": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=300)
    parser.add_argument("--attachment-bytes", type=int, default=100 * 1024)
    parser.add_argument("--batch", type=int, default=50, help="batch_max_messages (its default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/listeners.json"))
    args = parser.parse_args()
    # As the service does (traceparent injected, spans recorded); logs at WARNING.
    setup_logging("WARNING")
    setup_telemetry("bench-listeners-imap", "0", "bench", platform.node())
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-imap-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    machine = machine_info(PACKAGES)
    machine["load"] = {
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    result = {
        "command": COMMAND,
        "total_seconds": round(time.perf_counter() - started, 1),
        **result,
        "machine": machine,
    }
    merge_results(args.out, {"imap": result})
    print(
        f"imap   {args.emails} emails with {args.attachment_bytes // 1024} KB attachments x "
        f"{result['rounds']} rounds: best {result['emails_per_s']['best']:,} emails/s "
        f"(median {result['emails_per_s']['median']:,}), "
        f"{result['mib_per_s']} MiB/s; emitted in {result['seconds_to_emit']:.2f} s"
    )
    print(f"→ {args.out} (key 'imap')")


if __name__ == "__main__":
    main()
