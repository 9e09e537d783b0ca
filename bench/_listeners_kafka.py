"""Kafka → StartWorkflow: the listener slot against a bare aiokafka → nats-py loop.

Both sides read the same pre-produced records of one topic, each in a consumer
group of its own (fresh per round, so both start at the earliest offset), with
the same consumer settings, and commit offsets only after JetStream acked the
batch. A side's rate is N / (end - first records received): the group join
before the first fetch (Tansu answers a join after about half the session
timeout) is reported apart, not counted.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from _listeners_common import Window, build_slot, purge_workflows, stored_starts
from _listeners_profile import Profile, find_py_spy
from _listeners_whatif import WHAT_IF_ABOUT, WHAT_IFS
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.js.api import StorageType, StreamConfig

from jobwire.contracts.listeners import KafkaSubscriberParams
from jobwire.contracts.subjects import Stream
from jobwire.listeners.runner import SlotRunner
from jobwire.listeners.sources import kafka as kafka_source
from jobwire.runtime.broker import MSG_ID_HEADER, Broker
from jobwire.testing.kafka import create_topic

WORKFLOW = "bench-record"
VALUE_BYTES = 200


@dataclass
class KafkaSetup:
    broker: Broker
    nats_url: str
    bootstrap: str
    pids: dict[str, int | None]
    topic: str = ""
    n: int = 0
    partitions: int = 4
    batch: int = 500
    session_timeout_ms: int = 2000
    heartbeat_interval_ms: int = 500

    def params(self, group: str) -> KafkaSubscriberParams:
        return KafkaSubscriberParams(
            workflow=WORKFLOW,
            bootstrap_servers=[self.bootstrap],
            topics=[self.topic],
            group_id=group,
            start_from="earliest",
            batch_max_messages=self.batch,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )


def consumer_options(params: KafkaSubscriberParams, client_id: str) -> dict[str, Any]:
    """What ``KafkaSource.open`` passes to ``AIOKafkaConsumer``, for the bare side.

    Everything else (fetch_min_bytes 1, fetch_max_bytes 50 MiB,
    max_partition_fetch_bytes 1 MiB, check_crcs …) is aiokafka's default on both
    sides: KafkaSource sets none of them.
    """
    session_s = params.session_timeout_ms / 1000
    revoke_wait = min(session_s / 2, kafka_source.REVOKE_WAIT_CAP)
    rebalance_timeout_ms = params.session_timeout_ms + int(2 * revoke_wait * 1000)
    return {
        "bootstrap_servers": params.bootstrap_servers,
        "client_id": client_id,
        "group_id": params.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": params.start_from,
        "session_timeout_ms": params.session_timeout_ms,
        "heartbeat_interval_ms": params.heartbeat_interval_ms,
        "fetch_max_wait_ms": params.batch_max_wait_ms,
        "rebalance_timeout_ms": rebalance_timeout_ms,
        "request_timeout_ms": max(40_000, rebalance_timeout_ms + 5_000),
        "security_protocol": params.security_protocol,
    }


def record_value(i: int) -> bytes:
    """A small JSON object of VALUE_BYTES bytes (an order event, padded)."""
    head = {"order_id": i, "customer": f"c-{i % 977:04d}", "amount": i % 10_000 / 100}
    body = json.dumps({**head, "currency": "EUR", "note": ""}, separators=(",", ":"))
    pad = "x" * max(0, VALUE_BYTES - len(body))
    return json.dumps({**head, "currency": "EUR", "note": pad}, separators=(",", ":")).encode()


async def produce(setup: KafkaSetup) -> tuple[dict[str, Any], dict[int, int]]:
    """N records spread evenly over the partitions; Tansu has no idempotent producer.

    Returns the end offset of each partition from the producer's acks: Tansu's
    ListOffsets (``end_offsets``) answers less than the high watermark.
    """
    setup.topic = await create_topic(setup.bootstrap, setup.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=setup.bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    started = time.perf_counter()
    ends: dict[int, int] = {}
    try:
        chunk = 5000
        for first in range(0, setup.n, chunk):
            futures = [
                await producer.send(setup.topic, record_value(i), partition=i % setup.partitions)
                for i in range(first, min(setup.n, first + chunk))
            ]
            for meta in await asyncio.gather(*futures):
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    seconds = time.perf_counter() - started
    assert sum(ends.values()) == setup.n, ends
    return {"seconds": round(seconds, 2), "records_per_s": round(setup.n / seconds)}, ends


async def committed(setup: KafkaSetup, group: str) -> dict[int, int | None]:
    """The group's committed offsets, read by a consumer outside the group (Tansu
    drops the connection on the admin client's OffsetFetch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=setup.bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(setup.topic, p) for p in range(setup.partitions)]
        consumer.assign(tps)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def check_committed(setup: KafkaSetup, group: str, ends: dict[int, int]) -> None:
    found = await committed(setup, group)
    if found != ends:
        raise RuntimeError(f"group {group}: committed {found}, end offsets {ends}")


def _round_result(
    side: str, n: int, opened: float, first: float, end: float, window: dict[str, Any]
) -> dict[str, Any]:
    return {
        "side": side,
        "msgs_per_s": round(n / (end - first)),
        "seconds": round(end - first, 3),
        "join_seconds": round(first - opened, 3),
        "cpu_ms_per_1000_msgs": round(1e6 * (window["cpu_seconds"]["bench_process"] or 0) / n, 1),
        "window": window,
    }


async def bare_round(setup: KafkaSetup, ends: dict[int, int]) -> dict[str, Any]:
    """getmany → publish_async the raw value → all acks → commit, until N are in."""
    group = f"bench-bare-{uuid.uuid4().hex[:8]}"
    params = setup.params(group)
    nc = await nats.connect(setup.nats_url)
    # The Broker's pending limit, so the bare side may pipeline as far as ours.
    js = nc.jetstream(publish_async_max_pending=4096)
    stream = f"BENCH_BARE_{uuid.uuid4().hex[:8]}"
    subject = f"{stream.lower()}.records"
    duplicate_window = setup.broker.stream_config(Stream.WORKFLOWS).duplicate_window
    await js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[subject],
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
        )
    )
    consumer = AIOKafkaConsumer(setup.topic, **consumer_options(params, f"{group}-0"))
    opened = time.perf_counter()
    try:
        await consumer.start()
        consumed = 0
        window: Window | None = None
        first = 0.0
        while consumed < setup.n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=setup.batch)
            if not batches:
                continue
            if window is None:
                first = time.perf_counter()
                window = Window.open(setup.pids)
            futures = []
            offsets = {}
            for tp, records in batches.items():
                for record in records:
                    msg_id = f"{group}/{record.topic}/{record.partition}/{record.offset}"
                    futures.append(
                        await js.publish_async(
                            subject, record.value or b"", headers={MSG_ID_HEADER: msg_id}
                        )
                    )
                offsets[tp] = records[-1].offset + 1
            acks = await asyncio.gather(*futures)
            assert not any(ack.duplicate for ack in acks)
            await consumer.commit(offsets)
            consumed += len(futures)
        end = time.perf_counter()
        assert window is not None
        measured = window.close(end)
        stored = (await js.stream_info(stream)).state.messages
        if stored != setup.n:
            raise RuntimeError(f"bare: {stored} messages stored, expected {setup.n}")
    finally:
        await consumer.stop()
        await js.delete_stream(stream)
        await nc.close()
    await check_committed(setup, group, ends)
    return _round_result("bare", setup.n, opened, first, end, measured)


async def ours_round(
    setup: KafkaSetup, ends: dict[int, int], what_if: str | None = None
) -> dict[str, Any]:
    """The SlotRunner with the real KafkaSource and Broker, until N are committed."""
    group = f"bench-ours-{uuid.uuid4().hex[:8]}"
    params = setup.params(group)
    slot = build_slot(
        setup.broker,
        "kafka-subscriber",
        params.model_dump(mode="json"),
        setup.n,
        setup.pids,
        runner_class=WHAT_IFS[what_if] if what_if else SlotRunner,
    )
    await purge_workflows(setup.broker)
    opened = time.perf_counter()
    slot.start()
    try:
        await slot.wait(timeout=300)
    finally:
        await slot.finish()
    source = slot.source
    assert source.window is not None
    assert source.first_at is not None
    assert source.done_at is not None
    measured = source.window.close(source.done_at)
    stored = await stored_starts(setup.broker)
    if stored != setup.n or slot.runner.stats.dead_lettered:
        raise RuntimeError(
            f"ours: {stored} StartWorkflow stored, {slot.runner.stats.dead_lettered} "
            f"dead-lettered, expected {setup.n} and 0"
        )
    await check_committed(setup, group, ends)
    side = f"ours+{what_if}" if what_if else "ours"
    result = _round_result(side, setup.n, opened, source.first_at, source.done_at, measured)
    result["seconds_split"] = source.split(source.done_at - source.first_at)
    result["redelivered"] = source.received - setup.n
    result["runner_errors"] = slot.runner.stats.errors
    return result


def summarize(
    setup: KafkaSetup, rounds: list[dict[str, Any]], produced: dict[str, Any]
) -> dict[str, Any]:
    bare = [r["msgs_per_s"] for r in rounds if r["side"] == "bare"]
    ours = [r["msgs_per_s"] for r in rounds if r["side"] == "ours"]
    ratio_best = max(ours) / max(bare)
    ratio_median = statistics.median(ours) / statistics.median(bare)

    def cpu(side: str) -> float:
        return statistics.median(r["cpu_ms_per_1000_msgs"] for r in rounds if r["side"] == side)

    return {
        "n": setup.n,
        "rounds": len(bare),
        "partitions": setup.partitions,
        "value_bytes": len(record_value(0)),
        "batch_max_messages": setup.batch,
        "consumer": {
            "session_timeout_ms": setup.session_timeout_ms,
            "heartbeat_interval_ms": setup.heartbeat_interval_ms,
            "fetch": "fetch_max_wait_ms = batch_max_wait_ms, else aiokafka defaults, both sides",
        },
        "produce": produced,
        "bare_msgs_per_s": {"best": max(bare), "median": statistics.median(bare), "all": bare},
        "ours_msgs_per_s": {"best": max(ours), "median": statistics.median(ours), "all": ours},
        "ratio_best": round(ratio_best, 3),
        "ratio_median": round(ratio_median, 3),
        "goal_ratio": 0.70,
        "met": ratio_best >= 0.70,
        "met_median": ratio_median >= 0.70,
        "cpu_ms_per_1000_msgs_median": {"bare": cpu("bare"), "ours": cpu("ours")},
        "round_details": rounds,
    }


async def run_kafka(setup: KafkaSetup, rounds: int, diagnose: str, tmp: Path) -> dict[str, Any]:
    produced, ends = await produce(setup)
    results: list[dict[str, Any]] = []
    for r in range(rounds):
        # Alternating, so drift on a shared machine hits both sides alike.
        for side in (bare_round, ours_round) if r % 2 == 0 else (ours_round, bare_round):
            result = await side(setup, ends)
            result["round"] = r
            results.append(result)
            _print_round(result, str(r))
    summary = summarize(setup, results, produced)
    if diagnose == "always" or (diagnose == "auto" and not summary["met"]):
        summary["what_if"] = await what_ifs(setup, ends)
        summary["profile"] = await profile_sides(setup, ends, tmp)
    await purge_workflows(setup.broker)
    return summary


async def what_ifs(setup: KafkaSetup, ends: dict[int, int], rounds: int = 2) -> dict[str, Any]:
    """Rounds of each what-if runner (see _listeners_whatif) alternating with bare
    rounds; ratios are of medians over these rounds only."""
    found: dict[str, Any] = {"about": WHAT_IF_ABOUT, "rounds": rounds}
    rates: dict[str, list[int]] = {"bare": [], **{name: [] for name in WHAT_IFS}}
    cpu: dict[str, list[float]] = {name: [] for name in rates}
    for r in range(rounds):
        for name in ("bare", *WHAT_IFS) if r % 2 == 0 else (*reversed(WHAT_IFS), "bare"):
            if name == "bare":
                result = await bare_round(setup, ends)
            else:
                result = await ours_round(setup, ends, name)
            _print_round(result, f"what-if {r}")
            rates[name].append(result["msgs_per_s"])
            cpu[name].append(result["cpu_ms_per_1000_msgs"])
    bare = statistics.median(rates["bare"])
    for name, values in rates.items():
        found[name] = {
            "msgs_per_s": {"median": statistics.median(values), "all": values},
            "cpu_ms_per_1000_msgs_median": statistics.median(cpu[name]),
        }
        if name != "bare":
            found[name]["ratio_median_to_bare"] = round(statistics.median(values) / bare, 3)
    return found


async def profile_sides(setup: KafkaSetup, ends: dict[int, int], tmp: Path) -> dict[str, Any]:
    """One more round of each side under py-spy; not counted in the figures above.

    ``approx_us_per_msg`` = share of the samples times the process's CPU per message
    in that round (py-spy counts only busy samples, so shares are of CPU time).
    """
    py_spy = find_py_spy()
    if py_spy is None:
        return {"skipped": "py-spy not found (it is in the bench group: see the module docs)"}
    found: dict[str, Any] = {}
    for side in (ours_round, bare_round):
        spy = Profile(py_spy, tmp / f"{side.__name__}.pyspy.txt")
        result = await side(setup, ends)
        _print_round(result, "profiled")
        profile = await asyncio.to_thread(spy.stop)
        cpu_us = result["cpu_ms_per_1000_msgs"]  # ms per 1,000 = µs per message
        if "groups_inclusive" in profile:
            profile["approx_us_per_msg"] = {
                group: round(share * cpu_us, 1)
                for group, share in profile["groups_inclusive"].items()
            }
        found[result["side"]] = {
            "msgs_per_s_while_profiled": result["msgs_per_s"],
            "cpu_us_per_msg_while_profiled": cpu_us,
            **profile,
        }
    return found


def _print_round(result: dict[str, Any], label: str) -> None:
    print(
        f"  kafka {result['side']:4} round {label}: {result['msgs_per_s']:>7,} msg/s "
        f"(join {result['join_seconds']:.1f} s, others busy "
        f"{result['window']['others_busy_fraction']:.0%})",
        flush=True,
    )
