"""Kit publish path vs. a bare nats-py ``publish_async`` loop, in the same run.

Both sides publish N small StartWorkflow messages to the same kind of
JetStream stream (file storage, de-duplication on) and wait for every ack:

- bare: pre-serialised envelope bytes, only a ``Nats-Msg-Id`` header —
  the floor of what JetStream can take from one client;
- kit:  ``Broker.publish_batch`` with StartWorkflow models, which builds the
  CloudEvents envelope, serialises it and adds the dedupe and trace headers,
  inside an active span (so trace context really is injected).

Rounds alternate bare/kit so drift on the machine hits both alike; the best
round of each is reported (the least disturbed measurement of each path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import nats
from opentelemetry import trace

from jobwire.contracts.subjects import Stream
from jobwire.contracts.workflows import Origin, StartWorkflow
from jobwire.runtime.broker import Broker, Outgoing
from jobwire.runtime.embedded import NatsServer
from jobwire.runtime.settings import ServiceSettings
from jobwire.runtime.telemetry import setup_telemetry


def command(i: int) -> StartWorkflow:
    return StartWorkflow(
        workflow="invoice",
        input={"order": i, "customer": "c-42"},
        idempotency_key=f"k-{i}",
        origin=Origin(kind="job", job_id="job-1", job_name="invoices", run_id=f"r-{i}"),
    )


async def bare_round(url: str, subject: str, payload: bytes, n: int, tag: str) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4096)
    start = time.perf_counter()
    futures = [
        await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"{tag}-{i}"})
        for i in range(n)
    ]
    acks = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    assert len(acks) == n
    assert not any(a.duplicate for a in acks)
    await nc.close()
    return n / elapsed


async def kit_round(broker: Broker, subject: str, commands: list[StartWorkflow], tag: str) -> float:
    items = [Outgoing(subject, c, msg_id=f"{tag}-{i}") for i, c in enumerate(commands)]
    with trace.get_tracer("bench").start_as_current_span("bench-batch"):
        start = time.perf_counter()
        results = await broker.publish_batch(items, timeout=120)
        elapsed = time.perf_counter() - start
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed[:3]
    return len(items) / elapsed


async def run(url: str, n: int, rounds: int) -> dict[str, object]:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(nats={"url": url}, namespace=namespace)
    broker = Broker(settings, source="/jobwire/bench")
    await broker.connect()
    await broker.ensure_streams()
    subject = broker.subjects.workflow_start("invoice")
    commands = [command(i) for i in range(n)]
    payload, _ = broker.encode(commands[0], msg_id="sample")
    bare, kit = [], []
    try:
        for r in range(rounds):
            bare.append(await bare_round(url, subject, payload, n, f"bare{r}"))
            kit.append(await kit_round(broker, subject, commands, f"kit{r}"))
            await broker.js.purge_stream(broker.subjects.stream_name(Stream.WORKFLOWS))
    finally:
        for stream in Stream:
            await broker.js.delete_stream(broker.subjects.stream_name(stream))
        await broker.close()
    return {
        "benchmark": "kit_publish",
        "messages_per_round": n,
        "rounds": rounds,
        "payload_bytes": len(payload),
        "bare_msgs_per_s": {"best": max(bare), "median": statistics.median(bare), "all": bare},
        "kit_msgs_per_s": {"best": max(kit), "median": statistics.median(kit), "all": kit},
        "ratio_best": max(kit) / max(bare),
        "ratio_median": statistics.median(kit) / statistics.median(bare),
        "goal_ratio": 0.8,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/kit.json"))
    parser.add_argument("--nats-url", default=os.environ.get("JOBWIRE_BENCH_NATS_URL"))
    args = parser.parse_args()
    setup_telemetry("bench", "0", "bench", platform.node())
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        url = args.nats_url
        if not url:
            # A private server: nothing else shares its disk or CPU queue.
            server = NatsServer(Path(tmp) / "nats")
            server.start()
            url = server.url
        try:
            result = asyncio.run(run(url, args.messages, args.rounds))
        finally:
            if server is not None:
                server.stop()
    result["environment"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "nats": "embedded nats-server (file storage)" if not args.nats_url else args.nats_url,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    bare, kit = result["bare_msgs_per_s"], result["kit_msgs_per_s"]
    print(
        f"bare {bare['best']:,.0f} msg/s · kit {kit['best']:,.0f} msg/s · "  # type: ignore[index]
        f"ratio {result['ratio_best']:.2f} (median {result['ratio_median']:.2f}) → {args.out}"
    )


if __name__ == "__main__":
    main()
