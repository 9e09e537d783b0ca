"""Kafka-protocol fixtures on Tansu (not Apache Kafka): topics, produce and consume."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from jobwire.runtime.embedded import is_listening, pid_alive
from jobwire.testing import TansuBroker
from jobwire.testing.plugin import KafkaTopicFactory

pytestmark = pytest.mark.integration


async def test_kafka_topic_round_trip_through_a_consumer_group(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            kafka_topic, b"payload", key=b"key", headers=[("trace", b"abc")]
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{kafka_topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Group joins take about half the session timeout on Tansu.
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000, max_records=1)
        records = [record for batch in batches.values() for record in batch]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert [(r.key, r.value, list(r.headers)) for r in records] == [
        (b"key", b"payload", [("trace", b"abc")])
    ]


async def _partitions(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert description["error_code"] == 0, description
    return len(description["partitions"])


@pytest.mark.kafka_topic(partitions=3)
async def test_kafka_topic_marker_sets_partitions(kafka_bootstrap: str, kafka_topic: str) -> None:
    assert await _partitions(kafka_bootstrap, kafka_topic) == 3


@pytest.mark.parametrize("kafka_topic", [2], indirect=True)
async def test_kafka_topic_indirect_param_sets_partitions(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    assert await _partitions(kafka_bootstrap, kafka_topic) == 2


async def test_kafka_topic_factory_makes_distinct_topics(
    kafka_bootstrap: str, kafka_topic_factory: KafkaTopicFactory
) -> None:
    first = await kafka_topic_factory()
    second = await kafka_topic_factory(partitions=4)
    assert first != second
    assert await _partitions(kafka_bootstrap, second) == 4


def test_tansu_broker_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path)
    with broker:
        pid = broker.pid
        assert pid is not None
        assert is_listening("127.0.0.1", broker.port)
    assert broker.pid is None
    assert not pid_alive(pid)
    assert not is_listening("127.0.0.1", broker.port)
