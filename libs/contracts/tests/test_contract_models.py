import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from jobwire.contracts import (
    RUN_EVENT_MODELS,
    DeadLetter,
    EmailAddress,
    EmailObject,
    Envelope,
    FileObject,
    JobDue,
    Origin,
    RunError,
    RunEvent,
    RunFinished,
    RunProgress,
    RunSkipped,
    SkipReason,
    StartWorkflow,
    StorageKind,
    decode,
)

AT = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def error_locs(excinfo: pytest.ExceptionInfo[ValidationError]) -> set[tuple[str | int, ...]]:
    return {tuple(error["loc"]) for error in excinfo.value.errors()}


def job_due(**overrides: Any) -> JobDue:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "job_id": "job-1",
        "job_name": "Nightly",
        "job_type": "start-workflow",
        "scheduled_for": AT,
        "fired_at": AT,
        "attempt": 1,
    }
    return JobDue.model_validate(fields | overrides)


def run_finished(**overrides: Any) -> RunFinished:
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "job_id": "job-1",
        "job_type": "start-workflow",
        "attempt": 1,
        "status": "succeeded",
        "finished_at": AT,
    }
    return RunFinished.model_validate(fields | overrides)


def dead_letter(payload: bytes) -> DeadLetter:
    return DeadLetter(
        source="archiver",
        subject="jobwire.jobs.due.archive-data",
        reason="undecodable",
        payload=payload,
        first_failed_at=AT,
        last_failed_at=AT + timedelta(minutes=1),
        attempts=3,
    )


def test_job_due_defaults() -> None:
    due = job_due()

    assert due.max_attempts == 1
    assert due.timeout_seconds is None
    assert due.params == {}
    assert due.state is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"attempt": 0}, "attempt"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"job_type": "search.full"}, "job_type"),
        ({"run_id": "run 1"}, "run_id"),
        ({"fired_at": "2025-03-01T08:00:00"}, "fired_at"),
        ({"job_name": ""}, "job_name"),
    ],
)
def test_job_due_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        job_due(**overrides)

    assert error_locs(excinfo) == {(field,)}


def test_job_due_subject_tokens_are_explained() -> None:
    with pytest.raises(ValidationError, match=r"job type 'search\.full' cannot be a NATS subject"):
        job_due(job_type="search.full")


def test_job_due_attempt_cannot_exceed_max_attempts() -> None:
    with pytest.raises(ValidationError, match="attempt 3 exceeds max_attempts 2"):
        job_due(attempt=3, max_attempts=2)


def test_contracts_are_frozen() -> None:
    due = job_due()

    with pytest.raises(ValidationError, match="frozen"):
        due.attempt = 2  # type: ignore[misc]


def test_run_finished_failed_requires_an_error() -> None:
    with pytest.raises(ValidationError, match="error is required when status is 'failed'"):
        run_finished(status="failed")


def test_run_finished_succeeded_refuses_an_error() -> None:
    with pytest.raises(ValidationError, match="error must be null"):
        run_finished(error={"type": "X", "message": "y"})


def test_run_finished_failed_with_error_and_cancelled_without() -> None:
    failed = run_finished(status="failed", error={"type": "TimeoutError", "message": "slow"})
    cancelled = run_finished(status="cancelled")

    assert failed.error == RunError(type="TimeoutError", message="slow")
    assert cancelled.error is None


def test_run_finished_status_is_one_of_three() -> None:
    with pytest.raises(ValidationError) as excinfo:
        run_finished(status="done")

    assert error_locs(excinfo) == {("status",)}
    assert "'succeeded', 'failed' or 'cancelled'" in str(excinfo.value)


@pytest.mark.parametrize("percent", [-0.1, 100.1])
def test_run_progress_percent_is_bounded(percent: float) -> None:
    with pytest.raises(ValidationError) as excinfo:
        RunProgress(run_id="run-1", attempt=1, at=AT, percent=percent)

    assert error_locs(excinfo) == {("percent",)}


def test_run_skipped_reason_must_be_known() -> None:
    fields = {
        "run_id": "run-1",
        "job_id": "job-1",
        "job_name": "Nightly",
        "job_type": "start-workflow",
        "scheduled_for": AT,
        "skipped_at": AT,
    }

    assert (
        RunSkipped.model_validate(fields | {"reason": "coalesced"}).reason is SkipReason.COALESCED
    )
    with pytest.raises(ValidationError) as excinfo:
        RunSkipped.model_validate(fields | {"reason": "bored"})
    assert error_locs(excinfo) == {("reason",)}


def test_every_run_event_has_a_model() -> None:
    assert set(RUN_EVENT_MODELS) == set(RunEvent)


def test_start_workflow_names_the_bad_workflow() -> None:
    with pytest.raises(ValidationError) as excinfo:
        StartWorkflow(workflow="a.b", idempotency_key="k", origin=Origin(kind="api"))

    assert error_locs(excinfo) == {("workflow",)}
    assert "workflow name 'a.b'" in str(excinfo.value)


def test_start_workflow_input_is_any_json() -> None:
    for value in [None, 1, "text", [1, "a"], {"nested": {"list": [True, None, 1.5]}}]:
        command = StartWorkflow(
            workflow="w", input=value, idempotency_key="k", origin=Origin(kind="api")
        )
        assert json.loads(command.model_dump_json())["input"] == value


def test_origin_from_a_job_or_listener_names_the_job() -> None:
    with pytest.raises(ValidationError, match="job_id is required when kind is 'listener'"):
        Origin(kind="listener", coordinates={"topic": "orders", "offset": 7})

    origin = Origin(kind="job", job_id="job-1", job_name="Nightly", run_id="run-1")
    assert origin.coordinates == {}


@pytest.mark.parametrize(
    "payload",
    [b"", b"plain text", b"\xff\xfe\x00\x80 not utf-8", bytes(range(256)), b"aGVsbG8="],
)
def test_dead_letter_payload_round_trips_byte_for_byte(payload: bytes) -> None:
    envelope = Envelope.wrap(dead_letter(payload), source="jobwire/archiver")

    raw = envelope.model_dump_json()

    assert json.loads(raw)["data"]["payload"] == base64.b64encode(payload).decode()
    assert decode(raw, DeadLetter).data.payload == payload


def test_dead_letter_payload_in_python_is_raw_bytes() -> None:
    # b"aGVsbG8=" is itself valid base64: it must not be decoded to b"hello".
    assert dead_letter(b"aGVsbG8=").payload == b"aGVsbG8="
    assert dead_letter(b"aGVsbG8=").model_dump()["payload"] == b"aGVsbG8="


def test_dead_letter_uses_the_standard_base64_alphabet() -> None:
    encoded = json.loads(dead_letter(b"\xfb\xff").model_dump_json())["payload"]

    assert encoded == "+/8="


def test_dead_letter_refuses_invalid_base64() -> None:
    raw = json.loads(dead_letter(b"x").model_dump_json())
    raw["payload"] = "not base64!"

    with pytest.raises(ValidationError) as excinfo:
        DeadLetter.model_validate_json(json.dumps(raw))

    assert error_locs(excinfo) == {("payload",)}


def test_dead_letter_failures_in_order() -> None:
    fields = dead_letter(b"x").model_dump() | {"last_failed_at": AT - timedelta(minutes=1)}

    with pytest.raises(ValidationError, match="last_failed_at is earlier"):
        DeadLetter.model_validate(fields)


def test_email_from_is_from_in_json_and_from_underscore_in_python() -> None:
    email = EmailObject(
        message_id="<1@example.com>",
        from_=EmailAddress(address="alice@example.com", name="Alice"),
        to=[EmailAddress(address="claims@example.org")],
        size=1200,
    )

    dumped = json.loads(email.model_dump_json())

    assert dumped["from"] == {"address": "alice@example.com", "name": "Alice"}
    assert "from_" not in dumped
    assert email.model_dump()["from"] == dumped["from"]
    assert EmailObject.model_validate_json(email.model_dump_json()) == email


def test_file_object_errors_name_each_field() -> None:
    with pytest.raises(ValidationError) as excinfo:
        FileObject(storage=StorageKind.LOCAL, path="", size=-1)

    assert error_locs(excinfo) == {("path",), ("size",)}
