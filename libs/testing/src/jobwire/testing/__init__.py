"""jobwire's real-server test harness; the pytest fixtures live in ``jobwire.testing.plugin``."""

from jobwire.testing.jetstream import purge_namespace
from jobwire.testing.kafka import TansuBroker, create_topic, delete_topics, wait_kafka_ready
from jobwire.testing.signals import with_signals
from jobwire.testing.waiting import wait_for

__all__ = [
    "TansuBroker",
    "create_topic",
    "delete_topics",
    "purge_namespace",
    "wait_for",
    "wait_kafka_ready",
    "with_signals",
]
