import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from jobwire.contracts import CONTENT_TYPE, Envelope, JobDue, RunStarted, decode

FIRED = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def job_due() -> JobDue:
    return JobDue(
        run_id="run-1",
        job_id="job-1",
        job_name="Nightly",
        job_type="start-workflow",
        scheduled_for=FIRED,
        fired_at=FIRED,
        attempt=1,
        params={"workflow": "nightly"},
    )


def test_wrap_takes_type_and_dataschema_from_the_model() -> None:
    envelope = Envelope.wrap(job_due(), source="jobwire/scheduler", subject="run-1")

    assert envelope.type == "io.jobwire.job.due.v1"
    assert envelope.dataschema == "urn:jobwire:schema:JobDue:v1"
    assert envelope.specversion == "1.0"
    assert envelope.datacontenttype == "application/json"
    assert envelope.subject == "run-1"
    assert envelope.id
    assert envelope.time.tzinfo is not None
    assert CONTENT_TYPE == "application/cloudevents+json"


def test_wrapped_message_round_trips_through_json() -> None:
    envelope = Envelope.wrap(job_due(), source="jobwire/scheduler", traceparent="00-ab-cd-01")

    decoded = decode(envelope.model_dump_json(), JobDue)

    assert decoded == envelope
    assert decoded.data.params == {"workflow": "nightly"}


def test_ids_are_unique_per_event() -> None:
    first = Envelope.wrap(job_due(), source="s")
    second = Envelope.wrap(job_due(), source="s")

    assert first.id != second.id


def test_decode_refuses_another_event_type() -> None:
    raw = Envelope.wrap(job_due(), source="jobwire/scheduler").model_dump_json()

    with pytest.raises(ValidationError, match=r"io\.jobwire\.job\.due\.v1.*RunStarted"):
        decode(raw, RunStarted)


def test_decode_refuses_another_major_version() -> None:
    envelope = Envelope.wrap(job_due(), source="jobwire/scheduler")
    raw = envelope.model_dump_json().replace("io.jobwire.job.due.v1", "io.jobwire.job.due.v2")

    with pytest.raises(ValidationError, match=r"expected 'io\.jobwire\.job\.due\.v1'"):
        decode(raw, JobDue)


def test_decode_names_the_failing_field_path() -> None:
    raw = Envelope.wrap(job_due(), source="jobwire/scheduler").model_dump_json()

    with pytest.raises(ValidationError) as excinfo:
        decode(raw.replace('"attempt":1', '"attempt":0'), JobDue)

    assert excinfo.value.errors()[0]["loc"] == ("data", "attempt")


def test_times_without_a_timezone_are_refused() -> None:
    event = json.loads(Envelope.wrap(job_due(), source="s").model_dump_json())
    event["time"] = "2025-03-01T08:00:00"
    event["data"]["fired_at"] = "2025-03-01T08:00:00"

    with pytest.raises(ValidationError) as excinfo:
        decode(json.dumps(event), JobDue)

    assert {error["loc"] for error in excinfo.value.errors()} == {
        ("time",),
        ("data", "fired_at"),
    }
