"""KafkaSubscriberParams refuses definitions a Kafka listener could not run, saying why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from jobwire.contracts.listeners import KafkaSubscriberParams

VALID: dict[str, Any] = {
    "workflow": "on-order",
    "bootstrap_servers": ["kafka-0:9092"],
    "topics": ["orders"],
}


def params(**changes: Any) -> KafkaSubscriberParams:
    values = {**VALID, **changes}
    return KafkaSubscriberParams(**{k: v for k, v in values.items() if v is not None})


def test_defaults() -> None:
    p = params()
    assert p.topics == ["orders"]
    assert p.topic_pattern is None
    assert p.group_id is None
    assert p.start_from == "latest"
    assert p.security_protocol == "PLAINTEXT"
    assert p.heartbeat_interval_ms < p.session_timeout_ms
    assert KafkaSubscriberParams.scalable


def test_a_pattern_instead_of_topics() -> None:
    assert params(topics=None, topic_pattern=r"orders\..*").topic_pattern == r"orders\..*"


def test_sasl_with_secret_names() -> None:
    p = params(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="kafka-user",
        sasl_password="kafka-password",
        ssl_ca="kafka-ca",
    )
    assert (p.sasl_username, p.sasl_password, p.ssl_ca) == (
        "kafka-user",
        "kafka-password",
        "kafka-ca",
    )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param(
            {"topic_pattern": "orders.*"}, "set either topics or topic_pattern", id="both"
        ),
        pytest.param({"topics": None}, "set either topics or topic_pattern", id="neither"),
        pytest.param({"topics": []}, "set either topics or topic_pattern", id="empty-topics"),
        pytest.param(
            {"topics": None, "topic_pattern": "orders-("},
            "topic_pattern is not a regular expression",
            id="bad-regex",
        ),
        pytest.param(
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "SASL needs sasl_mechanism, sasl_username and sasl_password",
            id="sasl-without-password",
        ),
        pytest.param(
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "u",
                "sasl_password": "p",
            },
            "SASL needs sasl_mechanism",
            id="sasl-without-mechanism",
        ),
        pytest.param(
            {"session_timeout_ms": 3000, "heartbeat_interval_ms": 3000},
            "heartbeat_interval_ms must be shorter than session_timeout_ms",
            id="heartbeat-equals-session",
        ),
        pytest.param(
            {"session_timeout_ms": 2000, "heartbeat_interval_ms": 5000},
            "heartbeat_interval_ms must be shorter than session_timeout_ms",
            id="heartbeat-above-session",
        ),
        pytest.param(
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": "The Password",
            },
            "secret name 'The Password' is not valid",
            id="secret-value-instead-of-name",
        ),
        pytest.param({"bootstrap_servers": []}, "bootstrap_servers", id="no-brokers"),
        pytest.param({"session_timeout_ms": 500}, "session_timeout_ms", id="session-too-short"),
        pytest.param({"start_from": "beginning"}, "start_from", id="unknown-start"),
        pytest.param({"group": "g"}, "group", id="misspelt-parameter"),
    ],
)
def test_refused_with_the_problem_named(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        params(**changes)
    assert problem in str(raised.value)
