"""ServiceBusListenerParams refuses definitions a Service Bus listener could not run, saying why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from jobwire.contracts.listeners import ServiceBusListenerParams

VALID: dict[str, Any] = {
    "workflow": "on-order",
    "connection_string": "servicebus-connection",
    "queue": "orders",
}


def params(**changes: Any) -> ServiceBusListenerParams:
    values = {**VALID, **changes}
    return ServiceBusListenerParams(**{k: v for k, v in values.items() if v is not None})


def test_defaults() -> None:
    p = params()
    assert (p.queue, p.topic, p.subscription) == ("orders", None, None)
    assert p.connection_string == "servicebus-connection"
    assert p.prefetch == 0
    assert p.max_lock_renewal_seconds == 300
    assert p.max_wait_seconds == 1
    assert p.batch_max_messages == 500
    assert p.input.body == "json"
    assert ServiceBusListenerParams.scalable  # replicas are competing consumers


def test_a_topic_subscription_instead_of_a_queue() -> None:
    p = params(queue=None, topic="orders", subscription="jobwire")
    assert (p.queue, p.topic, p.subscription) == (None, "orders", "jobwire")


def test_a_namespace_with_a_sas_key_instead_of_a_connection_string() -> None:
    p = params(
        connection_string=None,
        fully_qualified_namespace="acme.servicebus.windows.net",
        sas_key_name="listen",
        sas_key="servicebus-key",
    )
    assert p.connection_string is None
    assert (p.fully_qualified_namespace, p.sas_key_name, p.sas_key) == (
        "acme.servicebus.windows.net",
        "listen",
        "servicebus-key",
    )


BY_KEY = {
    "connection_string": None,
    "fully_qualified_namespace": "acme.servicebus.windows.net",
    "sas_key_name": "listen",
    "sas_key": "servicebus-key",
}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"queue": None}, "set either queue or topic", id="no-entity"),
        pytest.param({"topic": "t", "subscription": "s"}, "set either queue or topic", id="both"),
        pytest.param({"queue": ""}, "set either queue or topic", id="empty-queue"),
        pytest.param(
            {"queue": None, "topic": "orders"}, "topic and subscription go together", id="no-sub"
        ),
        pytest.param(
            {"subscription": "jobwire"}, "topic and subscription go together", id="sub-alone"
        ),
        pytest.param(
            {"connection_string": None},
            "set either connection_string or fully_qualified_namespace",
            id="no-credentials",
        ),
        pytest.param(
            {"fully_qualified_namespace": "acme.servicebus.windows.net"},
            "set either connection_string or fully_qualified_namespace",
            id="both-credentials",
        ),
        pytest.param(
            {**BY_KEY, "sas_key": None},
            "fully_qualified_namespace, sas_key_name and sas_key go together",
            id="key-name-without-key",
        ),
        pytest.param(
            {**BY_KEY, "sas_key_name": None},
            "fully_qualified_namespace, sas_key_name and sas_key go together",
            id="key-without-name",
        ),
        pytest.param(
            {"connection_string": "Endpoint=sb://x/;SharedAccessKey=abc"},
            "is not valid",
            id="connection-string-instead-of-secret-name",
        ),
        pytest.param({"prefetch": -1}, "prefetch", id="negative-prefetch"),
        pytest.param({"prefetch": 10_001}, "prefetch", id="huge-prefetch"),
        pytest.param({"max_lock_renewal_seconds": 0}, "max_lock_renewal_seconds", id="no-renewal"),
        pytest.param({"max_wait_seconds": 61}, "max_wait_seconds", id="long-wait"),
        pytest.param({"batch_max_messages": 0}, "batch_max_messages", id="empty-batches"),
        pytest.param({"input": {"body": "xml"}}, "body", id="unknown-body-mode"),
        pytest.param({"queue_name": "orders"}, "queue_name", id="misspelt-parameter"),
    ],
)
def test_refused_with_the_problem_named(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        params(**changes)
    assert problem in str(raised.value)
