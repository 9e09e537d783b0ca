"""jobwire's real-server test harness; the pytest fixtures live in ``jobwire.testing.plugin``.

The names below are imported on first use, not with the package: a server the
harness runs as ``python -m jobwire.testing.<module>`` (the SMTP server) must
not wait a second for NATS and Kafka clients it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobwire.testing.jetstream import purge_namespace
    from jobwire.testing.kafka import TansuBroker, create_topic, delete_topics, wait_kafka_ready
    from jobwire.testing.runs import job_due, run_job
    from jobwire.testing.signals import with_signals
    from jobwire.testing.waiting import wait_for

__all__ = [
    "TansuBroker",
    "create_topic",
    "delete_topics",
    "job_due",
    "purge_namespace",
    "run_job",
    "wait_for",
    "wait_kafka_ready",
    "with_signals",
]

_MODULES = {
    "TansuBroker": "kafka",
    "create_topic": "kafka",
    "delete_topics": "kafka",
    "job_due": "runs",
    "purge_namespace": "jetstream",
    "run_job": "runs",
    "wait_for": "waiting",
    "wait_kafka_ready": "kafka",
    "with_signals": "signals",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
