"""KafkaSource on a real Kafka-protocol broker (Tansu, not Apache Kafka).

Group membership, rebalances, commits and redelivery below are what Tansu and
aiokafka actually did; where Apache Kafka might differ the test says so.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from nats.aio.client import Client as NatsClient

from jobwire.contracts.listeners import KafkaSubscriberParams, ListenerDefinition
from jobwire.listeners.sources import SourceContext, Trigger, kafka
from jobwire.listeners.sources.kafka import KafkaSource
from jobwire.runtime.embedded import free_port
from jobwire.runtime.secrets import Secrets
from jobwire.testing import TansuBroker, create_topic, wait_for
from jobwire.testing.plugin import KafkaTopicFactory

pytestmark = pytest.mark.integration

# Tansu completes a group join after about half the session timeout.
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


@dataclass
class Kit:
    bootstrap: str
    nc: NatsClient
    namespace: str
    created: list[KafkaSource] = field(default_factory=list)

    @staticmethod
    def job_id() -> str:
        return f"j{secrets.token_hex(5)}"

    def params(self, *topics: str, **overrides: Any) -> KafkaSubscriberParams:
        values: dict[str, Any] = {
            "workflow": "on-record",
            "bootstrap_servers": [self.bootstrap],
            "topics": list(topics),
            "start_from": "earliest",
            **FAST_GROUP,
        }
        values.update(overrides)
        return KafkaSubscriberParams(**values)

    def context(
        self,
        params: KafkaSubscriberParams,
        job_id: str,
        slot: int = 0,
        environ: dict[str, str] | None = None,
    ) -> SourceContext:
        definition = ListenerDefinition(
            job_id=job_id,
            job_name=f"kafka {job_id}",
            job_type="kafka-subscriber",
            job_version=1,
            replicas=2,
            params=params.model_dump(mode="json"),
        )
        return SourceContext(
            definition=definition,
            slot=slot,
            secrets=Secrets(None, environ or {}),
            nc=self.nc,
            js=self.nc.jetstream(),
            namespace=self.namespace,
        )

    def make(
        self,
        params: KafkaSubscriberParams,
        job_id: str | None = None,
        slot: int = 0,
        environ: dict[str, str] | None = None,
        **options: Any,
    ) -> KafkaSource:
        ctx = self.context(params, job_id or self.job_id(), slot, environ)
        source = KafkaSource(params, ctx, **options)
        self.created.append(source)
        return source

    async def open(
        self, params: KafkaSubscriberParams, job_id: str | None = None, slot: int = 0
    ) -> KafkaSource:
        source = self.make(params, job_id, slot)
        await source.open()
        return source


@pytest_asyncio.fixture(loop_scope="session")
async def kit(kafka_bootstrap: str, nats_client: NatsClient, namespace: str) -> AsyncIterator[Kit]:
    kit = Kit(kafka_bootstrap, nats_client, namespace)
    try:
        yield kit
    finally:
        for source in kit.created:
            await source.close()


async def produce(
    bootstrap: str,
    topic: str,
    count: int,
    partitions: int = 1,
) -> list[str]:
    """``count`` records spread round-robin over the partitions; their trigger keys."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value=b"v%d" % i, key=b"k%d" % i, partition=i % partitions)
            for i in range(count)
        ]
        stored = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return [f"{meta.topic}/{meta.partition}/{meta.offset}" for meta in stored]


async def receive_batch(source: KafkaSource, max_items: int) -> list[Trigger]:
    """The next non-empty batch."""

    async def batch() -> list[Trigger]:
        return list(await source.receive(max_items, 0.2))

    return await wait_for(batch, 15, interval=0, description="a non-empty batch")


async def drain(
    source: KafkaSource, count: int, *, ack: bool = True, max_items: int = 500
) -> list[Trigger]:
    """Receive (and ack, as the runner would) until ``count`` triggers arrived."""
    got: list[Trigger] = []

    async def enough() -> bool:
        batch = await source.receive(max_items, 0.2)
        got.extend(batch)
        if ack and batch:
            await source.ack(batch)
        return len(got) >= count

    await wait_for(enough, 30, interval=0, description=f"{count} triggers")
    return got


async def consume_together(
    sources: Sequence[KafkaSource], expected: set[str], acked: Counter[str]
) -> list[Counter[str]]:
    """Drive every source as its runner would until ``expected`` were all acked."""
    per_source: list[Counter[str]] = [Counter() for _ in sources]

    async def all_acked() -> bool:
        for source, mine in zip(sources, per_source, strict=True):
            batch = await source.receive(500, 0.1)
            await source.ack(batch)
            keys = [trigger.key for trigger in batch]
            mine.update(keys)
            acked.update(keys)
        return expected <= acked.keys()

    await wait_for(all_acked, 30, interval=0, description="every record acked")
    return per_source


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offsets, read by a fresh consumer outside the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


def end_offsets(keys: Sequence[str]) -> dict[int, int]:
    """Per partition, the offset after the last record produced.

    From the producer's acknowledgements: Tansu 0.6 answers ListOffsets
    (latest) with the base offset of the last record batch + 1, which is not
    the end of a partition written in multi-record batches.
    """
    ends: dict[int, int] = {}
    for key in keys:
        _, partition, offset = key.rsplit("/", 2)
        ends[int(partition)] = max(int(offset) + 1, ends.get(int(partition), 0))
    return ends


def highest_per_partition(triggers: Sequence[Trigger]) -> dict[int, int]:
    highest: dict[int, int] = {}
    for trigger in triggers:
        partition, offset = trigger.coordinates["partition"], trigger.coordinates["offset"]
        assert isinstance(partition, int)
        assert isinstance(offset, int)
        highest[partition] = max(offset, highest.get(partition, -1))
    return highest


# ------------------------------------------------------------------- tests


@pytest.mark.kafka_topic(partitions=3)
async def test_every_record_once_in_partition_order_and_committed_to_the_end(
    kit: Kit, kafka_topic: str
) -> None:
    expected = await produce(kit.bootstrap, kafka_topic, 1000, partitions=3)
    job = kit.job_id()
    source = await kit.open(kit.params(kafka_topic), job)

    triggers = await drain(source, 1000)

    assert Counter(t.key for t in triggers) == Counter(expected)
    offsets: dict[int, list[int]] = {}
    for trigger in triggers:
        offsets.setdefault(int(trigger.coordinates["partition"]), []).append(
            int(trigger.coordinates["offset"])
        )
    assert sorted(offsets) == [0, 1, 2]
    assert all(seen == sorted(seen) for seen in offsets.values())
    assert await source.receive(500, 0.3) == []
    # The group defaults to `jobwire-<job id>`.
    ends = end_offsets(expected)
    assert sum(ends.values()) == 1000
    assert await committed_offsets(kit.bootstrap, f"jobwire-{job}", kafka_topic) == ends


@pytest.mark.kafka_topic(partitions=3)
async def test_restart_resumes_right_after_the_last_acked_offset(
    kit: Kit, kafka_topic: str
) -> None:
    expected = await produce(kit.bootstrap, kafka_topic, 300, partitions=3)
    job = kit.job_id()
    params = kit.params(kafka_topic)
    first = await kit.open(params, job)
    acked = await receive_batch(first, 40)
    await first.ack(acked)
    unacked = await receive_batch(first, 40)
    await first.close()

    second = await kit.open(params, job)
    after_restart = await drain(second, len(expected) - len(acked))

    keys = Counter(t.key for t in after_restart)
    assert set(keys) == set(expected) - {t.key for t in acked}
    assert max(keys.values()) == 1
    assert {t.key for t in unacked} <= set(keys)
    first_offsets: dict[int, int] = {}
    for trigger in after_restart:
        first_offsets.setdefault(
            int(trigger.coordinates["partition"]), int(trigger.coordinates["offset"])
        )
    acked_up_to = highest_per_partition(acked)
    assert first_offsets == {
        p: acked_up_to.get(p, -1) + 1
        for p, end in end_offsets(expected).items()
        if acked_up_to.get(p, -1) + 1 < end
    }


@pytest.mark.kafka_topic(partitions=3)
async def test_rebalance_commits_the_batch_acked_while_revoking(kit: Kit, kafka_topic: str) -> None:
    expected = await produce(kit.bootstrap, kafka_topic, 600, partitions=3)
    job = kit.job_id()
    params = kit.params(kafka_topic)
    first = await kit.open(params, job, slot=0)
    in_flight = await receive_batch(first, 90)

    joining = asyncio.create_task(kit.open(params, job, slot=1))
    # White-box: the first member's revoke callback now waits for its batch.
    await wait_for(lambda: first._revoking, 10, description="first member revoking")
    await first.ack(in_flight)
    second = await joining

    acked: Counter[str] = Counter(t.key for t in in_flight)
    per_source = await consume_together([first, second], set(expected), acked)

    assert set(acked) == set(expected)
    assert [key for key, times in acked.items() if times > 1] == []
    assert all(per_source), "both members got partitions"
    ends = end_offsets(expected)
    assert await committed_offsets(kit.bootstrap, f"jobwire-{job}", kafka_topic) == ends


@pytest.mark.kafka_topic(partitions=3)
async def test_rebalance_redelivers_only_the_batch_not_acked_in_time(
    kit: Kit, kafka_topic: str
) -> None:
    expected = await produce(kit.bootstrap, kafka_topic, 600, partitions=3)
    job = kit.job_id()
    params = kit.params(kafka_topic)
    first = await kit.open(params, job, slot=0)
    in_flight = await receive_batch(first, 90)

    # The join completes only once the first member's revoke gave up waiting.
    second = await kit.open(params, job, slot=1)
    await first.ack(in_flight)  # too late: must neither raise nor commit

    acked: Counter[str] = Counter(t.key for t in in_flight)
    per_source = await consume_together([first, second], set(expected), acked)

    assert set(acked) == set(expected)
    duplicates = {key for key, times in acked.items() if times > 1}
    assert duplicates <= {t.key for t in in_flight}
    assert all(per_source), "both members got partitions"
    ends = end_offsets(expected)
    assert await committed_offsets(kit.bootstrap, f"jobwire-{job}", kafka_topic) == ends


@pytest.mark.kafka_topic(partitions=2)
async def test_ack_after_losing_membership_neither_raises_nor_rewinds_the_group(
    kit: Kit, kafka_topic: str
) -> None:
    expected = await produce(kit.bootstrap, kafka_topic, 20, partitions=2)
    job = kit.job_id()
    params = kit.params(kafka_topic)
    stalled = await kit.open(params, job, slot=0)
    in_flight = await drain(stalled, 20, ack=False)

    # The other member runs on its own event loop, so it keeps heartbeating
    # while this one is blocked.
    took_over = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def other_member() -> None:
        async def run() -> None:
            source = KafkaSource(params, kit.context(params, job, slot=1))
            seen: set[str] = set()
            try:
                await source.open()
                while not stop.is_set():
                    batch = await source.receive(500, 0.1)
                    await source.ack(batch)
                    seen.update(t.key for t in batch)
                    if seen >= set(expected):
                        took_over.set()
            finally:
                await source.close()

        try:
            asyncio.run(run())
        except BaseException as error:
            errors.append(error)
            took_over.set()

    thread = threading.Thread(target=other_member, name="other-member")
    thread.start()
    try:
        # Block this event loop on purpose, as a long GC pause would: the
        # stalled member stops heartbeating, the coordinator expels it and
        # the other member takes over, reads every record and commits.
        assert took_over.wait(timeout=30), "the other member never took over"
        assert errors == []
        # Acking an older prefix: Tansu answers UNKNOWN_MEMBER_ID, aiokafka
        # raises CommitFailedError, and the ack must swallow it.
        await stalled.ack([t for t in in_flight if int(t.coordinates["offset"]) < 5])
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert errors == []
    assert await committed_offsets(kit.bootstrap, f"jobwire-{job}", kafka_topic) == {0: 10, 1: 10}


async def test_ack_raises_when_the_commit_cannot_be_made_and_close_does_not(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka, "COMMIT_TIMEOUT", 1.0)
    monkeypatch.setattr(kafka, "CLOSE_TIMEOUT", 1.0)
    # A broker of its own, to take it away.
    with TansuBroker(tmp_path / "tansu") as broker:
        topic = await create_topic(broker.bootstrap)
        await produce(broker.bootstrap, topic, 5)
        source = kit.make(kit.params(topic, bootstrap_servers=[broker.bootstrap]))
        await source.open()
        batch = await drain(source, 5, ack=False)
        broker.stop(timeout=1.0)  # SIGKILL after 1 s: Tansu takes ~5 s to exit on SIGTERM

        # Not a rebalance race: the runner must hear of it and retry.
        with pytest.raises(TimeoutError):
            await source.ack(batch)
        await source.close()


async def test_topic_pattern_reads_matching_topics_only(
    kit: Kit, kafka_topic_factory: KafkaTopicFactory
) -> None:
    orders = await kafka_topic_factory(2)
    refunds = await kafka_topic_factory(1)
    unrelated = await kafka_topic_factory(1)
    expected = await produce(kit.bootstrap, orders, 20, partitions=2)
    expected += await produce(kit.bootstrap, refunds, 10)
    await produce(kit.bootstrap, unrelated, 5)

    group = f"g{secrets.token_hex(5)}"
    params = kit.params(topic_pattern=f"^(?:{orders}|{refunds})$", group_id=group)
    source = await kit.open(params)
    triggers = await drain(source, len(expected))

    assert sorted(t.key for t in triggers) == sorted(expected)
    assert {t.subject for t in triggers} == {orders, refunds}
    # An explicit group_id replaces `jobwire-<job id>`.
    assert await committed_offsets(kit.bootstrap, group, refunds) == {0: 10}


async def test_tombstone_becomes_an_empty_body_and_headers_are_decoded(
    kit: Kit, kafka_topic: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kit.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(kafka_topic, value=None, key=b"order-7")
        await producer.send_and_wait(
            kafka_topic,
            value=b'{"id": 8}',
            headers=[("trace", b"abc"), ("raw", b"\xff\xfeok"), ("empty", b"")],
        )
    finally:
        await producer.stop()

    source = await kit.open(kit.params(kafka_topic))
    tombstone, record = await drain(source, 2)

    assert tombstone.key == f"{kafka_topic}/0/0"
    assert tombstone.coordinates == {"topic": kafka_topic, "partition": 0, "offset": 0}
    assert tombstone.subject == kafka_topic
    assert tombstone.body == b""
    assert tombstone.message_key == b"order-7"
    assert tombstone.headers == {}
    assert record.key == f"{kafka_topic}/0/1"
    assert record.body == b'{"id": 8}'
    assert record.message_key is None
    assert record.headers == {"trace": "abc", "raw": "\\xff\\xfeok", "empty": ""}
    assert record.token == (TopicPartition(kafka_topic, 0), 1)


async def test_lag_counts_records_not_yet_received(kit: Kit, kafka_topic: str) -> None:
    await produce(kit.bootstrap, kafka_topic, 100)
    source = kit.make(kit.params(kafka_topic))
    assert source.lag() is None

    await source.open()
    await wait_for(lambda: source.lag() == 100, 10, description="lag 100 after the first fetch")
    first = await receive_batch(source, 40)
    assert source.lag() == 100 - len(first)
    await source.ack(first)
    await drain(source, 100 - len(first))
    assert source.lag() == 0

    await produce(kit.bootstrap, kafka_topic, 10)
    await wait_for(lambda: source.lag() == 10, 10, description="lag 10 after new records")


async def test_open_fails_at_once_when_nothing_listens(kit: Kit) -> None:
    environ = {"JOBWIRE_SECRET_KAFKA_USER": "svc", "JOBWIRE_SECRET_KAFKA_PASSWORD": "hunter2-x"}
    params = kit.params(
        "orders",
        bootstrap_servers=[f"127.0.0.1:{free_port()}"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="kafka-user",
        sasl_password="kafka-password",
    )
    source = kit.make(params, environ=environ)
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError) as raised:
        await source.open()
    assert time.monotonic() - started < 5
    assert "hunter2-x" not in repr(raised.value)
    await source.close()
    assert source.lag() is None


async def test_open_gives_up_within_its_bound_on_a_silent_server(kit: Kit) -> None:
    # Accepts TCP connections (the kernel's backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        source = kit.make(
            kit.params("orders", bootstrap_servers=[f"127.0.0.1:{port}"]), open_timeout=1.0
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not joined within 1 s"):
            await source.open()
        assert time.monotonic() - started < 4
    await source.close()


async def test_ssl_ca_secret_builds_the_tls_context_and_a_bad_one_is_named(kit: Kit) -> None:
    ca = certifi.contents()
    tls = kit.params(
        "orders",
        bootstrap_servers=[f"127.0.0.1:{free_port()}"],
        security_protocol="SSL",
        ssl_ca="kafka-ca",
    )
    good = kit.make(tls, environ={"JOBWIRE_SECRET_KAFKA_CA": ca})
    # The context was built; connecting is what fails.
    with pytest.raises(KafkaConnectionError):
        await good.open()

    bad = kit.make(tls, environ={"JOBWIRE_SECRET_KAFKA_CA": "not-a-pem-s3cret"})
    with pytest.raises(ValueError, match="'kafka-ca'") as raised:
        await bad.open()
    assert "s3cret" not in str(raised.value)
