"""Listeners under fire: real ``jobwire listeners`` processes killed by PID (SIGKILL),
NATS stopped under them, poison in the stream. Whatever happens, each message or
file starts exactly one workflow: the WORKFLOWS stream holds one StartWorkflow per
source message, and the source is acked only after that.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from jobwire.contracts.listeners import ListenerSlotStatus
from jobwire.runtime.hosts import live_hosts
from jobwire.testing import wait_for
from jobwire.testing.fleet import Fleet, Instance

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration

JOBWIRE = str(Path(sys.executable).with_name("jobwire"))


@pytest.fixture
def fleet(tmp_path: Path, namespace: str) -> Iterator[Fleet]:
    fleet = Fleet(
        tmp_path,
        [JOBWIRE, "listeners"],
        namespace=namespace,
        env={"JOBWIRE_HEARTBEAT_SECONDS": "0.5"},
        prefix="listeners",
    )
    try:
        yield fleet
    finally:
        fleet.close()


async def slot_states(js: Any, namespace: str, job_id: str) -> dict[str, list[str]]:
    """Instance id → states it reports for the job (host registry)."""
    found: dict[str, list[str]] = {}
    for host in await live_hosts(js, namespace):
        for raw in host.status.get("listeners", []):
            status = ListenerSlotStatus.model_validate(raw)
            if status.job_id == job_id:
                found.setdefault(host.instance_id, []).append(status.state)
    return found


async def owner(js: Any, namespace: str, job_id: str) -> str | None:
    states = await slot_states(js, namespace, job_id)
    running = [instance for instance, s in states.items() if "Running" in s]
    return running[0] if len(running) == 1 else None


async def test_the_standby_takes_over_within_the_lease_time_and_nothing_fires_twice(
    listeners: Listeners, fleet: Fleet, nats_client: NatsClient, nats_url: str, namespace: str
) -> None:
    """Two instances, one listener (replicas = 1), default lease settings (10 s TTL,
    2 s renewal). Messages keep arriving; the owner is SIGKILLed mid-flow. The standby
    must run the listener within 15 s, and every message must start one workflow."""
    js = nats_client.jetstream()
    stream, subject = f"{namespace}_IN", f"{namespace}in.orders"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    definition = await listeners.define(
        "message-bus-listener",
        {
            "workflow": "order",
            "mode": "jetstream",
            "stream": stream,
            "subject": subject,
            "deliver": "all",
        },
    )
    instances = {i.name: i for i in (fleet.start(nats_url), fleet.start(nats_url))}
    sent = 0

    async def produce(stop: asyncio.Event) -> None:
        nonlocal sent
        while not stop.is_set():
            await js.publish(subject, json.dumps({"n": sent}).encode())
            sent += 1
            await asyncio.sleep(0.005)  # a steady trickle, ~150 messages/s

    with fleet.explained():
        for instance in instances.values():
            await fleet.ready(instance)
        first = await wait_for(
            lambda: owner(js, namespace, definition.job_id), timeout=20, description="an owner"
        )
        standby_states = await wait_for(
            lambda: _standby(js, namespace, definition.job_id, first),
            timeout=10,
            description="the other instance reports Suspended",
        )
        assert standby_states == ["Suspended"]
        stop = asyncio.Event()
        producer = asyncio.create_task(produce(stop))
        await wait_for(lambda: _count(listeners, 300), timeout=20, description="flowing")

        victim = _instance(fleet, first)
        fleet.kill(victim)
        killed_at = time.monotonic()
        second = await wait_for(
            lambda: _new_owner(js, namespace, definition.job_id, first),
            timeout=20,
            interval=0.05,
            description="the standby running the listener",
        )
        takeover = time.monotonic() - killed_at
        await asyncio.sleep(1.0)  # let messages flow through the new owner, then stop
        stop.set()
        await producer

        starts = await wait_for(
            # What the victim had in flight comes back after the consumer's ack wait (15 s).
            lambda: _count(listeners, sent),
            timeout=40,
            description=f"{sent} starts",
        )

    keys = [s.idempotency_key for s in starts]
    assert len(keys) == len(set(keys)) == sent, "one StartWorkflow per message"
    assert sorted(s.input["body"]["n"] for s in starts) == list(range(sent))  # type: ignore[index]
    assert second != first
    assert takeover <= 15.0, f"took over after {takeover:.1f} s"
    print(
        f"\nfailover: SIGKILL → standby Running in {takeover:.2f} s "
        f"(lease TTL 10 s, renewal every 2 s); {sent} messages, {sent} workflows started"
    )


async def test_too_large_for_nats_is_dead_lettered_with_its_bytes_kept(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    """A 900 KB message fits NATS; base64 in a StartWorkflow it does not. The dead
    letter cannot carry it either: its bytes go to the object store, named in it."""
    js = nats_client.jetstream()
    stream, subject = f"{namespace}_BIG", f"{namespace}big.files"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    payload = bytes(range(256)) * 3600  # 921,600 bytes
    await js.publish(subject, payload)
    await js.publish(subject, b"small")
    await listeners.define(
        "message-bus-listener",
        {
            "workflow": "w",
            "mode": "jetstream",
            "stream": stream,
            "subject": subject,
            "deliver": "all",
            "max_message_bytes": 4 * 1024 * 1024,
            "input": {"body": "base64"},
        },
    )
    listeners.start()

    [dead] = await wait_for(lambda: _dead(listeners), timeout=20, description="a dead letter")
    [start] = await wait_for(lambda: _count(listeners, 1), timeout=10, description="1 start")

    assert dead.reason == "too_large"
    assert "NATS allows" in dead.detail
    assert dead.payload == b""
    bucket, _, name = dead.headers["jobwire-payload-object"].partition("/")
    kept = await (await js.object_store(bucket)).get(name)
    assert kept.data == payload
    assert start.input["body"] == "c21hbGw="  # type: ignore[index]


# -- helpers ------------------------------------------------------------------------


def _instance(fleet: Fleet, instance_id: str) -> Instance:
    [found] = [i for i in fleet.replicas if instance_id.endswith(i.name)]
    return found


async def _standby(js: Any, namespace: str, job_id: str, owner_id: str) -> list[str] | None:
    states = await slot_states(js, namespace, job_id)
    others = [s for instance, s in states.items() if instance != owner_id]
    return others[0] if others else None


async def _new_owner(js: Any, namespace: str, job_id: str, old: str) -> str | None:
    states = await slot_states(js, namespace, job_id)
    for instance, found in states.items():
        if instance != old and "Running" in found:
            return instance
    return None


async def _count(listeners: Listeners, count: int):  # type: ignore[no-untyped-def]
    if await listeners.stored() < count:  # cheap to poll; reading them all is not
        return None
    return await listeners.starts()


async def _dead(listeners: Listeners):  # type: ignore[no-untyped-def]
    return await listeners.dead_letters() or None


# -- Kafka --------------------------------------------------------------------------

KAFKA_TEST_TUNING = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


def kafka_params(bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "workflow": "order",
        "bootstrap_servers": [bootstrap],
        "topics": [topic],
        "start_from": "earliest",
        **KAFKA_TEST_TUNING,
    }


async def produce(bootstrap: str, topic: str, first: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(topic, json.dumps({"n": n}).encode(), key=str(n).encode())
            for n in range(first, first + count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets (Tansu's admin client cannot list them)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for partition in range(partitions):
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


async def test_sigkill_mid_batch_with_10000_kafka_messages_loses_and_duplicates_none(
    listeners: Listeners,
    fleet: Fleet,
    nats_url: str,
    namespace: str,
    kafka_bootstrap: str,
    kafka_topic_factory: Any,
) -> None:
    """10,000 records flow through a Kafka listener (replicas = 1, two instances);
    the owner is SIGKILLed in the middle. The standby resumes from the committed
    offsets: what the victim published but had not committed comes again and is
    dropped by JetStream's de-duplication."""
    total, partitions = 10_000, 4
    topic = await kafka_topic_factory(partitions=partitions)
    definition = await listeners.define("kafka-subscriber", kafka_params(kafka_bootstrap, topic))
    fast = {"JOBWIRE_LISTENERS__LEASE_TTL_SECONDS": "4", "JOBWIRE_LISTENERS__POLL_SECONDS": "1"}
    instances = [fleet.start(nats_url, **fast), fleet.start(nats_url, **fast)]
    js = listeners.broker.js

    with fleet.explained():
        for instance in instances:
            await fleet.ready(instance)
        first = await wait_for(
            lambda: owner(js, namespace, definition.job_id), timeout=30, description="an owner"
        )
        producer = asyncio.create_task(_trickle(kafka_bootstrap, topic, total))
        await wait_for(lambda: _count(listeners, 3000), timeout=60, description="3,000 in")
        fleet.kill(_instance(fleet, first))
        killed_at = time.monotonic()
        await producer
        await wait_for(
            lambda: _new_owner(js, namespace, definition.job_id, first),
            timeout=30,
            description="the standby running the listener",
        )
        takeover = time.monotonic() - killed_at
        starts = await wait_for(
            lambda: _count(listeners, total), timeout=90, description=f"{total} starts"
        )
        await wait_for(
            lambda: _equals(
                committed(kafka_bootstrap, f"jobwire-{definition.job_id}", topic, partitions), total
            ),
            timeout=30,
            description="every offset committed",
        )

    keys = [s.idempotency_key for s in starts]
    assert len(keys) == len(set(keys)) == total
    assert sorted(s.input["body"]["n"] for s in starts) == list(range(total))  # type: ignore[index]
    print(
        f"\nkafka: {total} records, owner SIGKILLed after ≥3,000; standby running after "
        f"{takeover:.1f} s (lease TTL 4 s); {len(set(keys))} StartWorkflow, none twice"
    )


async def test_a_10_second_nats_outage_pauses_without_committing_and_loses_nothing(
    nats_server_factory: Any,
    listeners_on: Any,
    fleet: Fleet,
    namespace: str,
    kafka_bootstrap: str,
    kafka_topic_factory: Any,
) -> None:
    """NATS (a private server) stops for 10 s while records keep arriving. The
    listener cannot publish, so it commits nothing; when NATS is back every record
    starts its workflow, each once."""
    server = nats_server_factory()
    harness = await listeners_on(server.url)
    partitions = 2
    topic = await kafka_topic_factory(partitions=partitions)
    definition = await harness.define("kafka-subscriber", kafka_params(kafka_bootstrap, topic))
    group = f"jobwire-{definition.job_id}"
    instance = fleet.start(
        server.url,
        JOBWIRE_NATS__RECONNECT_WAIT_SECONDS="1",
        JOBWIRE_NATS__CONNECT_TIMEOUT_SECONDS="1",
    )
    with fleet.explained():
        await fleet.ready(instance)
        await produce(kafka_bootstrap, topic, 0, 500)
        await wait_for(lambda: _count(harness, 500), timeout=60, description="500 in")
        await wait_for(
            lambda: _equals(committed(kafka_bootstrap, group, topic, partitions), 500),
            timeout=20,
            description="500 committed",
        )

        server.stop()
        stopped = time.monotonic()
        await produce(kafka_bootstrap, topic, 500, 1500)
        # The scenario: NATS stays down 10 s. Meanwhile nothing may be committed.
        while time.monotonic() - stopped < 10:
            assert await committed(kafka_bootstrap, group, topic, partitions) == 500
            await asyncio.sleep(1.0)
        server.start()  # same port and data: every client reconnects by itself

        starts = await wait_for(
            lambda: _count(harness, 2000),
            timeout=90,
            description="2,000 starts after the outage",
        )
        await wait_for(
            lambda: _equals(committed(kafka_bootstrap, group, topic, partitions), 2000),
            timeout=30,
            description="all committed",
        )

    keys = [s.idempotency_key for s in starts]
    assert len(keys) == len(set(keys)) == 2000
    assert sorted(s.input["body"]["n"] for s in starts) == list(range(2000))  # type: ignore[index]


async def _trickle(bootstrap: str, topic: str, total: int, batch: int = 250) -> None:
    """Records arrive over several seconds, not at once: the kill lands mid-flow."""
    for first in range(0, total, batch):
        await produce(bootstrap, topic, first, batch)
        await asyncio.sleep(0.1)


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected
