"""Listener benchmark: Kafka → StartWorkflow vs. a bare loop, and the file listener.

Everything runs on private servers this script starts and stops by PID: a
nats-server (JetStream, file storage, de-duplication on), a Tansu broker
(Kafka protocol, memory storage; not Apache Kafka) and SeaweedFS (S3).

1. ``kafka`` — N records (~200-byte JSON values, 4 partitions, produced with
   acks=all and no idempotence, which Tansu lacks) read by one listener slot —
   the real ``SlotRunner``, ``KafkaSource`` and ``Broker`` publishing into the
   WORKFLOWS stream — and, in alternating rounds, by a bare loop: aiokafka
   ``getmany(max_records=500)`` → nats-py ``publish_async`` of the raw value
   (``Nats-Msg-Id`` = group/topic/partition/offset) → all acks → ``commit``.
   Same consumer settings (KafkaSource's), a fresh group per round. Rate = N /
   (last commit - first records received); ratio = ours / bare (goal ≥ 0.70).
   Each round checks the stream holds N messages and the group committed the end
   offsets. When the goal is not met (``--diagnose``), two what-if runners
   (``_listeners_whatif.py``: the shipped pipeline without mapping/envelope, and
   with the StartWorkflow written as bytes) run alternating with bare rounds, and
   one more round of each side runs under py-spy (``_listeners_profile.py``):
   none of these counts in the figures. See ``_listeners_kafka.py``.
2. ``files`` — N small files in a local folder and in an S3 bucket, then a slot
   with the real ``FileSource`` (stable_seconds 0, after move, poll 1 s, batches
   of 500): seconds until N StartWorkflow are stored and until N files were
   moved; 2 local rounds and 1 S3 round by default (best reported, all kept).
   See ``_listeners_files.py``.

The machine is shared: the load average before and after, and per measured
window the busy fraction of all CPUs next to the CPU of this process and each
server (``others_busy_fraction`` = what other processes used), are recorded.
Run: ``make bench-listeners`` or ``uv run python bench/listeners.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _listeners_common import PACKAGES
from _listeners_files import local_round, s3_round
from _listeners_files import summarize as summarize_files
from _listeners_kafka import KafkaSetup, run_kafka
from _measure import machine_info, merge_results

from jobwire.contracts.subjects import Stream
from jobwire.listeners.settings import ListenersSettings
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import NatsServer
from jobwire.runtime.logs import setup_logging
from jobwire.runtime.telemetry import setup_telemetry
from jobwire.testing.kafka import TansuBroker
from jobwire.testing.storage_servers import SeaweedS3Server

COMMAND = "uv run python bench/listeners.py --out bench/results/listeners.json"


async def run(args: argparse.Namespace, tmp: Path, servers: dict[str, Any]) -> dict[str, Any]:
    nats_server: NatsServer = servers["nats"]
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    settings = ListenersSettings(nats={"url": nats_server.url}, namespace=namespace)
    broker = Broker(settings, source="/jobwire/listeners/bench")
    await broker.connect()
    await broker.ensure_streams()
    result: dict[str, Any] = {}
    try:
        if args.kafka_messages:
            tansu: TansuBroker = servers["tansu"]
            setup = KafkaSetup(
                broker,
                nats_server.url,
                tansu.bootstrap,
                {"bench_process": os.getpid(), "nats_server": nats_server.pid, "tansu": tansu.pid},
                n=args.kafka_messages,
                partitions=args.partitions,
            )
            started = time.perf_counter()
            result["kafka"] = await run_kafka(setup, args.kafka_rounds, args.diagnose, tmp)
            result["kafka"]["total_seconds"] = round(time.perf_counter() - started, 1)
        if args.files:
            files: dict[str, Any] = {}
            pids = {"bench_process": os.getpid(), "nats_server": nats_server.pid}
            local = []
            for r in range(args.local_rounds):
                local.append(await local_round(broker, tmp / f"local-{r}", args.files, pids))
                _print_files("local", r, local[-1])
            files["local"] = summarize_files("local", args.files, local)
            weed: SeaweedS3Server | None = servers.get("seaweed")
            if weed is not None:
                s3 = []
                pids = {**pids, "seaweedfs": weed.pid}
                for r in range(args.s3_rounds):
                    s3.append(await s3_round(broker, weed.endpoint, args.files, pids))
                    _print_files("s3", r, s3[-1])
                files["s3"] = summarize_files("s3 (SeaweedFS)", args.files, s3)
            else:
                files["s3"] = {"skipped": servers.get("seaweed_error", "--no-s3")}
            result["files"] = files
    finally:
        for stream in Stream:
            with contextlib.suppress(Exception):
                await broker.js.delete_stream(broker.subjects.stream_name(stream))
        await broker.close()
    return result


def _print_files(kind: str, r: int, result: dict[str, Any]) -> None:
    print(
        f"  files {kind:5} round {r}: emit {result['seconds_to_emit']:.1f} s, "
        f"moved {result['seconds_to_move']:.1f} s ({result['files_per_s']:,} files/s; "
        f"setup {result['setup_seconds']:.1f} s, others busy "
        f"{result['window']['others_busy_fraction']:.0%})",
        flush=True,
    )


def summary(result: dict[str, Any]) -> str:
    lines = []
    kafka = result.get("kafka")
    if kafka:
        bare, ours = kafka["bare_msgs_per_s"], kafka["ours_msgs_per_s"]
        cpu = kafka["cpu_ms_per_1000_msgs_median"]
        lines.append(
            f"kafka  {kafka['n']:,} records, {kafka['rounds']} rounds: "
            f"bare {bare['best']:,} msg/s (median {bare['median']:,}) · "
            f"ours {ours['best']:,} msg/s (median {ours['median']:,}) · "
            f"ratio {kafka['ratio_best']:.2f} (median {kafka['ratio_median']:.2f}), "
            f"goal ≥ 0.70 met: {kafka['met']} · CPU ms/1000 msgs bare {cpu['bare']} "
            f"ours {cpu['ours']}"
        )
        what_if = kafka.get("what_if")
        if what_if:
            lines.append(
                "       what-if (median ratio to bare): "
                + ", ".join(
                    f"{name} {found['ratio_median_to_bare']:.2f}"
                    for name, found in what_if.items()
                    if isinstance(found, dict) and "ratio_median_to_bare" in found
                )
            )
        for side, profile in (kafka.get("profile") or {}).items():
            if not isinstance(profile, dict) or "approx_us_per_msg" not in profile:
                continue
            groups = sorted(profile["approx_us_per_msg"].items(), key=lambda item: -item[1])
            lines.append(
                f"       py-spy {side} ({profile['cpu_us_per_msg_while_profiled']} µs CPU/msg): "
                + ", ".join(f"{group} ~{us:g} µs" for group, us in groups if us >= 1)
            )
    for kind, files in (result.get("files") or {}).items():
        if "skipped" in files:
            lines.append(f"files  {kind}: skipped ({files['skipped']})")
            continue
        lines.append(
            f"files  {kind}: {files['n']:,} files, emitted in {files['seconds_to_emit']:.1f} s "
            f"({files['files_per_s']:,} files/s), moved in {files['seconds_to_move']:.1f} s "
            f"[best of {files['rounds']} round(s)]"
        )
    load = result["machine"]["load"]
    lines.append(
        f"load   1-min average {load['loadavg_before'][0]} before, {load['loadavg_after'][0]} "
        f"after, on {result['machine']['cpus']} CPUs"
    )
    return "\n".join(lines)


def start_servers(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    # Private servers: nothing else shares their disk, CPU queue or state.
    servers["nats"] = NatsServer(tmp / "nats")
    servers["nats"].start()
    if args.kafka_messages:
        servers["tansu"] = TansuBroker(tmp / "tansu")
        servers["tansu"].start()
    if args.files and args.s3:
        weed = SeaweedS3Server(tmp / "seaweedfs")
        try:
            weed.start()
            servers["seaweed"] = weed
        except Exception as error:  # the local part still says something
            servers["seaweed_error"] = f"SeaweedFS did not start: {error}"
    return servers


def stop_servers(servers: dict[str, Any]) -> None:
    for name in ("seaweed", "tansu", "nats"):
        server = servers.get(name)
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka-messages", type=int, default=50_000, help="0 skips Kafka")
    parser.add_argument("--kafka-rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--files", type=int, default=10_000, help="0 skips the file listener")
    # Local rounds take seconds; an S3 round takes a minute and a half on 2 cores.
    parser.add_argument("--local-rounds", type=int, default=2)
    parser.add_argument("--s3-rounds", type=int, default=1)
    parser.add_argument(
        "--diagnose",
        choices=("auto", "always", "never"),
        default="auto",
        help="Kafka what-if rounds and a py-spy round of each side (auto: when the goal "
        "is not met); none of them counts in the figures",
    )
    parser.add_argument("--no-s3", dest="s3", action="store_false", help="local folder only")
    parser.add_argument("--out", type=Path, default=Path("bench/results/listeners.json"))
    args = parser.parse_args()
    # As the service does (traceparent injected, spans recorded); logs at WARNING
    # so that this run's own output stays readable.
    setup_logging("WARNING")
    setup_telemetry("bench-listeners", "0", "bench", platform.node())
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-listeners-") as tmp:
        servers = start_servers(args, Path(tmp))
        try:
            result = asyncio.run(run(args, Path(tmp), servers))
        finally:
            stop_servers(servers)
    machine = machine_info(PACKAGES)
    machine["load"] = {
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "note": "per-window busy fractions are in each round's `window`",
    }
    output = {
        "benchmark": "listeners",
        "command": COMMAND,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        **result,
    }
    merge_results(args.out, output)
    print(summary(output))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
