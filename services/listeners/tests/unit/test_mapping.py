"""Trigger → StartWorkflow: what a workflow receives, and what is dead-lettered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobwire.contracts.job_types import JobParams
from jobwire.contracts.listeners import (
    KafkaSubscriberParams,
    ListenerDefinition,
    MessageBusListenerParams,
)
from jobwire.contracts.objects import FileObject, StorageKind
from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.domain.mapping import Poison, StartWorkflowWriter
from jobwire.listeners.domain.triggers import Trigger

DEFINITION = ListenerDefinition(
    job_id="job-1",
    job_name="orders",
    job_type="kafka-subscriber",
    job_version=1,
    replicas=1,
    params={},
)


def start_workflow(
    trigger: Trigger, definition: ListenerDefinition, params: JobParams
) -> StartWorkflow | Poison:
    """What the runner publishes, read back through the contract: the written JSON
    must be a valid StartWorkflow."""
    written = StartWorkflowWriter(definition, params).write(trigger)  # type: ignore[arg-type]
    if isinstance(written, Poison):
        return written
    key, data = written
    command = StartWorkflow.model_validate_json(data)
    assert command.idempotency_key == key
    return command


def _params(**input_: Any) -> KafkaSubscriberParams:
    return KafkaSubscriberParams(
        workflow="order",
        bootstrap_servers=["k:9092"],
        topics=["orders"],
        input=input_,
        max_message_bytes=100,
    )


def _trigger(body: bytes | None = b'{"order": {"id": 42, "ok": true}}', **extra: Any) -> Trigger:
    return Trigger(
        key="orders/0/7",
        coordinates={"topic": "orders", "partition": 0, "offset": 7},
        subject="orders",
        body=body,
        message_key=b"k-42",
        **{"headers": {"tenant": "acme"}, **extra},
    )


def test_a_wrapped_json_message() -> None:
    command = start_workflow(_trigger(), DEFINITION, _params())

    assert not isinstance(command, Poison)
    assert command.input == {
        "body": {"order": {"id": 42, "ok": True}},
        "key": "k-42",
        "headers": {"tenant": "acme"},
        "source": {"topic": "orders", "partition": 0, "offset": 7},
    }
    assert command.idempotency_key == "listener:job-1:orders/0/7"
    assert command.origin.kind == "listener"
    assert command.origin.job_name == "orders"
    assert command.correlation_id is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("json", {"order": {"id": 42, "ok": True}}),
        ("text", '{"order": {"id": 42, "ok": true}}'),
        ("base64", "eyJvcmRlciI6IHsiaWQiOiA0MiwgIm9rIjogdHJ1ZX19"),
    ],
)
def test_body_modes_unwrapped(mode: str, expected: object) -> None:
    command = start_workflow(_trigger(), DEFINITION, _params(body=mode, wrap=False))

    assert not isinstance(command, Poison)
    assert command.input == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("key", "k-42"),
        ("header:tenant", "acme"),
        ("header:missing", None),
        ("body:/order/id", "42"),
        ("body:/order/ok", "true"),
        ("body:/order", None),
        ("body:/nope/deeper", None),
    ],
)
def test_correlation_id_sources(source: str, expected: str | None) -> None:
    command = start_workflow(_trigger(), DEFINITION, _params(correlation_id=source))

    assert not isinstance(command, Poison)
    assert command.correlation_id == expected


@pytest.mark.parametrize(
    ("body", "mode", "reason", "detail"),
    [
        (b"{oops", "json", "undecodable", "not JSON"),
        (b"\xff\xfe", "text", "undecodable", "not UTF-8"),
        (b"", "json", "undecodable", "not JSON"),
        (b'"' + b"x" * 200 + b'"', "json", "too_large", "202 bytes; the job allows 100"),
    ],
)
def test_poison(body: bytes, mode: str, reason: str, detail: str) -> None:
    poison = start_workflow(_trigger(body), DEFINITION, _params(body=mode))

    assert isinstance(poison, Poison)
    assert poison.reason == reason
    assert detail in poison.detail


def test_a_source_verdict_wins() -> None:
    poison = start_workflow(
        _trigger(poison=("malformed_mime", "no boundary")), DEFINITION, _params()
    )

    assert poison == Poison("malformed_mime", "no boundary")


def test_an_object_is_the_input_as_is() -> None:
    obj = FileObject(storage=StorageKind.S3, bucket="in", path="a/b.pdf", size=3, etag="e1")
    params = MessageBusListenerParams(workflow="f", subject="x", stream="S")
    trigger = Trigger(key="a/b.pdf@e1", coordinates={"path": "a/b.pdf"}, subject="a/b.pdf", obj=obj)

    command = start_workflow(trigger, DEFINITION, params)

    assert not isinstance(command, Poison)
    assert command.input == obj.model_dump(mode="json")


def test_correlation_source_is_validated() -> None:
    with pytest.raises(ValueError, match="header:<name>"):
        _params(correlation_id="somewhere")


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "J\xc3\xbcrgen \xe2\x82\xac", "emoji": "\xf0\x9f\x93\xa6"}',
        b'  [1, 2.5, -3e10, null, true, "\\u00e9"]  ',
        b'"a string"',
        b"42",
        b'{"nested": {"deep": [{"x": "</script>"}]}}',
    ],
)
def test_a_json_body_is_embedded_as_received_and_reads_back_equal(body: bytes) -> None:
    command = start_workflow(_trigger(body), DEFINITION, _params(wrap=False))

    assert not isinstance(command, Poison)
    assert command.input == json.loads(body)


@pytest.mark.parametrize("body", [b"NaN", b'{"x": Infinity}', b"\xef\xbb\xbf{}"])
def test_what_python_reads_but_json_is_not_is_poison(body: bytes) -> None:
    poison = start_workflow(_trigger(body), DEFINITION, _params())

    assert isinstance(poison, Poison)
    assert poison.reason == "undecodable"


def test_names_and_headers_with_any_characters() -> None:
    definition = DEFINITION.model_copy(update={"job_name": 'Bestellungen "EU" \\ ü'})
    trigger = _trigger(headers={"x-quote": '"', "x-uni": "ü€"})

    command = start_workflow(trigger, definition, _params())

    assert not isinstance(command, Poison)
    assert command.origin.job_name == 'Bestellungen "EU" \\ ü'
    assert command.input["headers"] == {"x-quote": '"', "x-uni": "ü€"}  # type: ignore[index]
