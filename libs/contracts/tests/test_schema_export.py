import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobwire.contracts import MailEvent, RunEvent, Subjects
from jobwire.contracts.asyncapi import CHANNELS, document
from jobwire.contracts.export import check, default_dir, main, render, write

COMMITTED = Path(__file__).parents[1] / "schemas"


def files_under(directory: Path) -> dict[str, str]:
    return {
        path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_committed_schemas_match_the_models() -> None:
    # In a fresh interpreter: the test process may hold job types that other
    # tests registered for themselves, which are not part of the contracts.
    result = subprocess.run(
        [sys.executable, "-m", "jobwire.contracts.export", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        "libs/contracts/schemas is stale: run `uv run python -m jobwire.contracts.export`\n"
        + result.stderr
    )
    assert "up to date" in result.stdout
    assert default_dir() == COMMITTED.resolve()


def test_check_names_every_stale_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path)
    (tmp_path / "JobDue.v1.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "job-params" / "start-workflow.v1.json").unlink()
    (tmp_path / "Retired.v1.json").write_text("{}\n", encoding="utf-8")
    before = files_under(tmp_path)

    assert main(["--check", str(tmp_path)]) == 1

    err = capsys.readouterr().err
    assert "differs: JobDue.v1.json" in err
    assert "missing: job-params/start-workflow.v1.json" in err
    assert "extra: Retired.v1.json" in err
    assert files_under(tmp_path) == before


def test_write_replaces_stale_files_and_keeps_unrelated_ones(tmp_path: Path) -> None:
    (tmp_path / "Retired.v1.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("hand-written\n", encoding="utf-8")

    assert main([str(tmp_path)]) == 0

    assert check(tmp_path) == []
    assert not (tmp_path / "Retired.v1.json").exists()
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "hand-written\n"
    assert write(tmp_path) == []


def test_output_is_deterministic_sorted_json() -> None:
    first, second = render(), render()

    assert first == second
    for path, text in first.items():
        assert text.endswith("}\n"), path
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", path


def test_each_schema_identifies_itself() -> None:
    files = render()

    assert json.loads(files["JobDue.v1.json"])["$id"] == "urn:jobwire:schema:JobDue:v1"
    assert json.loads(files["Envelope.v1.json"])["$id"] == "urn:jobwire:schema:Envelope:v1"
    params = json.loads(files["job-params/start-workflow.v1.json"])
    assert params["additionalProperties"] is False
    assert params["required"] == ["workflow"]


def test_asyncapi_has_one_channel_per_subject_pattern() -> None:
    doc = document()
    addresses = {channel["address"] for channel in doc["channels"].values()}

    assert doc["asyncapi"] == "3.0.0"
    assert doc["defaultContentType"] == "application/cloudevents+json"
    assert addresses == {
        "jobwire.jobs.due.{jobType}",
        "jobwire.workflows.start.{workflow}",
        *(f"jobwire.runs.{{runId}}.{event}" for event in RunEvent),
        "jobwire.dlq.{source}",
        "jobwire.mail.send.{account}",
        *(f"jobwire.mail.events.{{emailId}}.{event}" for event in MailEvent),
    }


def test_asyncapi_addresses_agree_with_subjects() -> None:
    subjects = Subjects()
    example = {
        "jobType": "start-workflow",
        "workflow": "w1",
        "runId": "r1",
        "source": "mailer",
        "account": "default",
        "emailId": "e1",
    }
    built = {
        subjects.job_due("start-workflow"),
        subjects.workflow_start("w1"),
        *(subjects.run_event("r1", event) for event in RunEvent),
        subjects.dlq("mailer"),
        subjects.mail_send("default"),
        *(subjects.mail_event("e1", event) for event in MailEvent),
    }

    filled = {channel.address.format(**example) for channel in CHANNELS}

    assert filled == built


def test_asyncapi_parameters_match_addresses() -> None:
    for channel in document()["channels"].values():
        names = {part[1:-1] for part in channel["address"].split(".") if part.startswith("{")}
        assert set(channel["parameters"]) == names


def test_asyncapi_operations_are_from_jobwire_point_of_view() -> None:
    operations = document()["operations"]

    assert {op["action"] for op in operations.values()} == {"send", "receive"}
    assert operations["sendJobDue"]["action"] == "send"
    assert operations["receiveJobDue"]["action"] == "receive"
    assert operations["sendStartWorkflow"]["action"] == "send"
    assert "receiveStartWorkflow" not in operations
    assert operations["receiveRunCancelRequested"]["channel"] == {
        "$ref": "#/channels/runCancelRequested"
    }


def test_asyncapi_message_payload_is_the_envelope_around_the_model() -> None:
    message = document()["components"]["messages"]["RunFinished"]
    envelope, specifics = message["payload"]["allOf"]

    assert message["contentType"] == "application/cloudevents+json"
    assert envelope == {"$ref": "#/components/schemas/Envelope"}
    assert specifics["properties"]["type"] == {"const": "io.jobwire.run.finished.v1"}
    assert specifics["properties"]["data"] == {"$ref": "#/components/schemas/RunFinished"}


def test_every_asyncapi_reference_resolves() -> None:
    doc = document()

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert part in target, ref
            target = target[part]
