"""Listener benchmark: Azure Service Bus (test peer) → StartWorkflow, 1 and 2 replicas.

N messages (~200-byte JSON bodies) are sent to a fresh queue with the real
azure-servicebus SDK, then read by R listener slots (R = 1, then 2) — the real
``SlotRunner`` and ``ServiceBusSource`` (peek-lock, prefetch 0 unless told,
batches of 500, AutoLockRenewer on), publishing into the WORKFLOWS stream of a
private nats-server — as competing consumers in this one process. Rate = N /
(last message completed - first message received). Each round checks that the
stream holds N StartWorkflow and that the slots published N (nothing twice).

The peer is jobwire's AMQP test peer (``jobwire.testing.servicebus_peer``), run
as a process of its own so that it does not share this process's GIL. It is
not Service Bus: these figures say what the listener and the SDK cost on one
machine with a fast, local peer, not what a namespace over the network does
(there, each settlement is a round trip of milliseconds).

The result is merged into ``bench/results/listeners.json`` under ``"servicebus"``;
other keys of that file are left as they are.
Run: ``uv run python bench/listeners_servicebus.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _measure import CLK_TCK, cpu_seconds, machine_busy, machine_info, merge_results
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from jobwire.contracts.listeners import ListenerDefinition, ServiceBusListenerParams
from jobwire.contracts.subjects import Stream
from jobwire.listeners.runner import SlotRunner
from jobwire.listeners.settings import ListenerOptions, ListenersSettings
from jobwire.listeners.sources import SourceContext, Trigger
from jobwire.listeners.sources.servicebus import ServiceBusSource
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import NatsServer, child_options, free_port, is_listening
from jobwire.runtime.logs import setup_logging
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.telemetry import setup_telemetry

COMMAND = "uv run python bench/listeners_servicebus.py --out bench/results/listeners.json"
PACKAGES = (
    "jobwire-listeners",
    "jobwire-runtime",
    "jobwire-testing",
    "azure-servicebus",
    "python-qpid-proton",
    "nats-py",
)
SECRET = "servicebus-connection"  # noqa: S105 (the secret's name)
WORKFLOW = "bench-message"
BODY_BYTES = 200


def body(n: int) -> bytes:
    head = json.dumps({"order": n, "pad": ""})
    return json.dumps({"order": n, "pad": "x" * (BODY_BYTES - len(head))}).encode()


class Peer:
    """The Service Bus test peer in a process of its own, stopped by PID."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def connection_string(self) -> str:
        return (
            f"Endpoint=sb://127.0.0.1:{self.port};SharedAccessKeyName=bench;"
            "SharedAccessKey=bench;UseDevelopmentEmulator=true"
        )

    def start(self, timeout: float = 10.0) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "jobwire.testing.servicebus_peer", "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **child_options(),  # dies with the benchmark, however it ends
            )
        deadline = time.monotonic() + timeout
        while not is_listening("127.0.0.1", self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Service Bus peer did not start; see {self.log_path}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class Progress:
    """Shared by every slot of a round: when the first message came, when the last
    was completed (the runner acks only after JetStream stored its StartWorkflow)."""

    n: int
    first_at: float | None = None
    done_at: float | None = None
    received: int = 0
    settled: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CountedSource:
    """The real source, unchanged, counting what the runner's calls reveal."""

    def __init__(self, inner: ServiceBusSource, progress: Progress) -> None:
        self.inner = inner
        self.progress = progress

    async def open(self) -> None:
        await self.inner.open()

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        triggers = await self.inner.receive(max_items, timeout)
        if triggers and self.progress.first_at is None:
            self.progress.first_at = time.perf_counter()
        self.progress.received += len(triggers)
        return triggers

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        await self.inner.ack(triggers)
        progress = self.progress
        progress.settled += len(triggers)
        if progress.settled >= progress.n and progress.done_at is None:
            progress.done_at = time.perf_counter()
            progress.done.set()

    async def release(self, triggers: Sequence[Trigger]) -> None:
        await self.inner.release(triggers)

    async def close(self) -> None:
        await self.inner.close()

    def lag(self) -> int | None:
        return self.inner.lag()


async def send_all(connection_string: str, queue: str, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender(queue) as sender,
    ):
        for first in range(0, n, 500):
            batch = [
                ServiceBusMessage(body(i), message_id=f"{queue}-{i}")
                for i in range(first, min(first + 500, n))
            ]
            await asyncio.wait_for(sender.send_messages(batch), 60)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "msgs_per_s": round(n / seconds)}


async def one_round(
    broker: Broker, peer: Peer, n: int, replicas: int, prefetch: int
) -> dict[str, Any]:
    queue = f"bench-{replicas}r-{uuid.uuid4().hex[:8]}"
    sent = await send_all(peer.connection_string, queue, n)
    model = ServiceBusListenerParams(
        workflow=WORKFLOW, connection_string=SECRET, queue=queue, prefetch=prefetch
    )
    definition = ListenerDefinition(
        job_id=f"bench-{uuid.uuid4().hex[:10]}",
        job_name="bench servicebus",
        job_type="servicebus-listener",
        job_version=1,
        replicas=replicas,
        params=model.model_dump(mode="json"),
    )
    secrets = Secrets(None, {"JOBWIRE_SECRET_SERVICEBUS_CONNECTION": peer.connection_string})
    progress = Progress(n)
    runners: list[SlotRunner] = []
    for slot in range(replicas):
        context = SourceContext(
            definition=definition,
            slot=slot,
            secrets=secrets,
            nc=broker.nc,
            js=broker.js,
            namespace=broker.subjects.namespace,
        )
        source = CountedSource(ServiceBusSource(model, context), progress)
        runners.append(SlotRunner(definition, model, slot, source, broker, ListenerOptions()))
    pids = {"bench_process": os.getpid(), "peer": peer.pid}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy_before = machine_busy()
    stop = asyncio.Event()
    opened = time.perf_counter()
    tasks = [asyncio.create_task(r.run(stop), name=f"slot-{r.slot}") for r in runners]
    try:
        await asyncio.wait_for(progress.done.wait(), timeout=max(120, n / 100))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert progress.first_at is not None
    assert progress.done_at is not None
    seconds = progress.done_at - progress.first_at
    busy_after = machine_busy()
    cpu = {
        name: round((cpu_seconds(pid) or 0) - (before or 0), 2)
        for (name, pid), before in zip(pids.items(), cpu_before.values(), strict=True)
    }
    total = max((busy_after[1] - busy_before[1]) / CLK_TCK, 1e-9)
    busy = (busy_after[0] - busy_before[0]) / CLK_TCK
    stored = (await broker.js.stream_info(broker.subjects.stream_name(Stream.WORKFLOWS))).state
    published = sum(r.stats.published for r in runners)
    if stored.messages != n or published != n:
        raise RuntimeError(f"stored {stored.messages}, published {published}, expected {n}")
    await broker.js.purge_stream(broker.subjects.stream_name(Stream.WORKFLOWS))
    return {
        "replicas": replicas,
        "n": n,
        "msgs_per_s": round(n / seconds),
        "seconds": round(seconds, 2),
        "open_to_first_message_s": round(progress.first_at - opened, 2),
        "received": progress.received,
        "redelivered_or_released_and_received_again": progress.received - n,
        "per_slot_published": [r.stats.published for r in runners],
        "runner_errors": sum(r.stats.errors for r in runners),
        "send": sent,
        "cpu_seconds": cpu,
        "cpu_ms_per_1000_msgs": {k: round(v * 1e6 / n, 1) for k, v in cpu.items()},
        "machine_busy_fraction": round(busy / total, 3),
        "others_busy_fraction": round(max(0.0, busy - sum(cpu.values())) / total, 3),
    }


async def run(args: argparse.Namespace, nats_url: str, peer: Peer) -> dict[str, Any]:
    settings = ListenersSettings(nats={"url": nats_url}, namespace=f"bench{uuid.uuid4().hex[:8]}")
    broker = Broker(settings, source="/jobwire/listeners/bench")
    await broker.connect()
    await broker.ensure_streams()
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            # Alternating, so drift on a shared machine hits both alike.
            for replicas in (1, 2) if r % 2 == 0 else (2, 1):
                result = await one_round(broker, peer, args.messages, replicas, args.prefetch)
                result["round"] = r
                rounds.append(result)
                print(
                    f"  round {r} replicas {replicas}: {result['msgs_per_s']:>6,} msg/s "
                    f"(send {result['send']['msgs_per_s']:,} msg/s; CPU ms/1000 msgs "
                    f"{result['cpu_ms_per_1000_msgs']}; others busy "
                    f"{result['others_busy_fraction']:.0%})",
                    flush=True,
                )
    finally:
        for stream in Stream:
            with contextlib.suppress(Exception):
                await broker.js.delete_stream(broker.subjects.stream_name(stream))
        await broker.close()

    def rates(replicas: int) -> list[int]:
        return [x["msgs_per_s"] for x in rounds if x["replicas"] == replicas]

    return {
        "n": args.messages,
        "rounds": args.rounds,
        "body_bytes": len(body(0)),
        "prefetch": args.prefetch,
        "batch_max_messages": 500,
        "peer": "jobwire.testing.servicebus_peer (python-qpid-proton) in its own process; "
        "not Service Bus",
        "replicas_1_msgs_per_s": {"best": max(rates(1)), "median": statistics.median(rates(1))},
        "replicas_2_msgs_per_s": {"best": max(rates(2)), "median": statistics.median(rates(2))},
        "scaling_2_over_1_median": round(
            statistics.median(rates(2)) / statistics.median(rates(1)), 2
        ),
        "round_details": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/listeners.json"))
    args = parser.parse_args()
    # As the service does (spans recorded); logs at WARNING to keep the output readable.
    setup_logging("WARNING")
    setup_telemetry("bench-listeners-servicebus", "0", "bench", platform.node())
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-servicebus-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats")
        peer = Peer(Path(tmp) / "peer.log")
        nats_server.start()
        try:
            peer.start()
            result = asyncio.run(run(args, nats_server.url, peer))
        finally:
            peer.stop()
            nats_server.stop()
    machine = machine_info(PACKAGES)
    machine["load"] = {
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    block = {
        "benchmark": "listeners_servicebus",
        "command": COMMAND,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        **result,
    }
    merge_results(args.out, {"servicebus": block})  # other keys stay as they are
    one, two = result["replicas_1_msgs_per_s"], result["replicas_2_msgs_per_s"]
    print(
        f"servicebus {args.messages:,} messages x {args.rounds} rounds: 1 replica "
        f"{one['best']:,} msg/s (median {one['median']:,}) · 2 replicas {two['best']:,} msg/s "
        f"(median {two['median']:,}) · 2/1 = {result['scaling_2_over_1_median']}"
    )
    print(f"→ {args.out} (key 'servicebus')")


if __name__ == "__main__":
    main()
