"""v1 messages as an external producer writes them must keep parsing.

The fixtures are hand-written, not generated: if a change to a model breaks
one of them, the change is breaking and belongs in a new version.
"""

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jobwire.contracts import (
    Contract,
    DeadLetter,
    EmailDeferred,
    EmailFailed,
    EmailObject,
    EmailQueued,
    EmailSent,
    FileObject,
    JobDue,
    RunCancelRequested,
    RunFinished,
    RunProgress,
    RunSkipped,
    RunStarted,
    SendEmail,
    SkipReason,
    StartWorkflow,
    StorageKind,
    Versioned,
    decode,
    email_id,
)
from jobwire.contracts.asyncapi import CHANNELS, OBJECT_MODELS

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
MESSAGES = [channel.model for channel in CHANNELS]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_every_message_and_object_has_a_fixture() -> None:
    messages = {path.stem for path in FIXTURES.glob("*.json")}
    objects = {path.stem for path in (FIXTURES / "objects").glob("*.json")}

    assert messages == {model.__name__ for model in MESSAGES}
    assert objects == {model.__name__ for model in OBJECT_MODELS}


def test_job_due() -> None:
    event = decode(fixture("JobDue.json"), JobDue)
    due = event.data

    assert event.type == "io.jobwire.job.due.v1"
    assert event.source == "jobwire/scheduler"
    assert event.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert due.run_id == "run-20250301-0800-nightly-sync"
    assert due.job_type == "search-incremental"
    assert due.scheduled_for == datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    assert due.scheduled_for.utcoffset() == timedelta(hours=1)
    assert (due.attempt, due.max_attempts, due.timeout_seconds) == (2, 3, 1800)
    assert due.params == {"index": "cases", "batch_size": 500}
    assert due.state == {"watermark": "2025-02-28T23:59:59Z", "last_id": 98123}


def test_run_started() -> None:
    started = decode(fixture("RunStarted.json"), RunStarted).data

    assert started.attempt == 2
    assert started.host == "search-sync-7f9c6d-xk2lp"
    assert started.instance_id == "search-sync-7f9c6d-xk2lp:1"
    assert started.started_at == datetime(2025, 3, 1, 8, 0, 1, tzinfo=UTC)


def test_run_progress() -> None:
    progress = decode(fixture("RunProgress.json"), RunProgress).data

    assert progress.percent == 42.5
    assert progress.message == "indexing cases"
    assert progress.counters == {"indexed": 4250, "deleted": 12, "failed": 0}


def test_run_finished() -> None:
    finished = decode(fixture("RunFinished.json"), RunFinished).data

    assert finished.status == "failed"
    assert finished.error is not None
    assert finished.error.type == "ConnectionTimeout"
    assert finished.error.traceback is not None
    assert finished.result == {"indexed": 9800}
    assert finished.state == {"watermark": "2025-03-01T07:59:59Z", "last_id": 99950}


def test_run_skipped() -> None:
    skipped = decode(fixture("RunSkipped.json"), RunSkipped).data

    assert skipped.reason is SkipReason.OVERLAP
    assert skipped.scheduled_for == datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def test_run_cancel_requested() -> None:
    cancel = decode(fixture("RunCancelRequested.json"), RunCancelRequested).data

    assert cancel.run_id == "run-20250301-0800-nightly-sync"
    assert cancel.requested_by == "ops@example.com"


def test_start_workflow() -> None:
    command = decode(fixture("StartWorkflow.json"), StartWorkflow).data

    assert command.workflow == "order-approval"
    assert command.idempotency_key == "kafka:orders:3:1042"
    assert command.correlation_id == "SO-1042"
    assert command.origin.kind == "listener"
    assert command.origin.coordinates == {"topic": "orders", "partition": 3, "offset": 1042}
    assert command.input == {
        "order": {
            "number": "SO-1042",
            "lines": [{"sku": "A-1", "qty": 2}],
            "total": 99.9,
            "rush": False,
            "note": None,
        }
    }


def test_dead_letter() -> None:
    letter = decode(fixture("DeadLetter.json"), DeadLetter).data

    assert letter.payload == b"\xff\x00{}"
    assert letter.reason == "undecodable"
    assert letter.headers["Nats-Msg-Id"] == "run-42"
    assert letter.attempts == 5


def test_file_object() -> None:
    file = FileObject.model_validate_json(fixture("objects/FileObject.json"))

    assert file.storage is StorageKind.S3
    assert file.bucket == "incoming"
    assert file.size == 48213
    assert file.metadata == {"uploaded-by": "erp"}


def test_email_object() -> None:
    email = EmailObject.model_validate_json(fixture("objects/EmailObject.json"))

    assert email.from_.address == "alice@example.com"
    assert email.from_.name == "Alice Example"
    assert [to.address for to in email.to] == ["claims@example.org"]
    assert email.date is not None
    assert email.date.tzinfo == timezone(timedelta(hours=1))
    assert email.headers["received"] == ["from mx1.example.org", "from mail.example.com"]
    assert email.attachments[0].storage is StorageKind.AZURE_BLOB


@pytest.mark.parametrize("model", MESSAGES, ids=lambda model: model.__name__)
def test_message_json_round_trip_is_exact(model: type[Contract]) -> None:
    raw = fixture(f"{model.__name__}.json")

    assert json.loads(decode(raw, model).model_dump_json()) == json.loads(raw)


@pytest.mark.parametrize("model", OBJECT_MODELS, ids=lambda model: model.__name__)
def test_object_json_round_trip_is_exact(model: type[Versioned]) -> None:
    raw = fixture(f"objects/{model.__name__}.json")

    assert json.loads(model.model_validate_json(raw).model_dump_json()) == json.loads(raw)


@pytest.mark.parametrize("model", MESSAGES, ids=lambda model: model.__name__)
def test_unknown_fields_from_a_newer_producer_are_ignored(model: type[Contract]) -> None:
    event: dict[str, Any] = json.loads(fixture(f"{model.__name__}.json"))
    event["data"]["added_in_v1_5"] = {"anything": [1, 2]}
    event["partitionkey"] = "extension attribute"

    decoded = decode(json.dumps(event), model)

    assert json.loads(decoded.model_dump_json()) == json.loads(fixture(f"{model.__name__}.json"))


def test_send_email() -> None:
    command = decode(fixture("SendEmail.json"), SendEmail).data

    assert command.idempotency_key == "case-4711:reply:3"
    assert command.from_ is not None
    assert command.from_.name == "Kundenservice Müller"
    assert [a.address for a in command.to] == ["jörg@beispiel.de"]
    assert [a.address for a in command.bcc] == ["archive@cases.example.com"]
    assert command.attachments[0].file.storage is StorageKind.S3
    assert command.attachments[0].filename == "Rechnung 4711.pdf"
    assert command.attachments[1].content_id == "logo"
    assert command.headers == {"X-Case": "4711"}
    assert command.send_at == datetime(2025, 3, 1, 11, 0, tzinfo=UTC)
    assert command.in_reply_to == "<CAF=abc123@mail.beispiel.de>"


def test_email_events() -> None:
    queued = decode(fixture("EmailQueued.json"), EmailQueued).data
    deferred = decode(fixture("EmailDeferred.json"), EmailDeferred).data
    sent = decode(fixture("EmailSent.json"), EmailSent).data
    failed = decode(fixture("EmailFailed.json"), EmailFailed).data

    assert {e.email_id for e in (queued, deferred, sent, failed)} == {email_id("case-4711:reply:3")}
    assert queued.send_at == datetime(2025, 3, 1, 11, 0, tzinfo=UTC)
    assert (deferred.code, deferred.recipients[0].code) == (451, 451)
    assert deferred.next_attempt_at == datetime(2025, 3, 1, 11, 1, 5, tzinfo=UTC)
    assert sent.accepted == ["jörg@beispiel.de", "team@cases.example.com"]
    assert sent.refused[0].code == 550
    assert (failed.code, failed.attempt) == (552, 1)
