"""EmailListenerParams: what an email listener definition may say, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from jobwire.contracts.job_types import params_model
from jobwire.contracts.listeners import MIB, EmailListenerParams
from jobwire.contracts.storage import LocalStorageConfig, S3StorageConfig

VALID: dict[str, Any] = {
    "workflow": "invoice-received",
    "host": "imap.example.com",
    "username": "imap-user",
    "password": "imap-password",
}


def params(**changes: Any) -> EmailListenerParams:
    values = {**VALID, **changes}
    return EmailListenerParams(**{k: v for k, v in values.items() if v is not None})


def test_defaults() -> None:
    p = params()
    assert (p.port, p.tls, p.ca) == (None, True, None)
    assert p.folder == "INBOX"
    assert p.idle
    assert p.poll_seconds == 60
    assert (p.mark_seen, p.move_to) == (True, None)
    assert p.attachments is None
    assert p.max_message_bytes == 25 * MIB
    assert p.batch_max_messages == 50
    assert not EmailListenerParams.scalable  # two readers of one folder would fire twice


def test_it_is_the_email_listener_job_type() -> None:
    assert params_model("email-listener") is EmailListenerParams


def test_credentials_and_ca_are_secret_names_not_values() -> None:
    p = params(ca="imap-ca")
    assert (p.username, p.password, p.ca) == ("imap-user", "imap-password", "imap-ca")
    with pytest.raises(ValidationError):
        params(password="hunter2 with spaces")


def test_attachments_name_a_storage_by_kind() -> None:
    local = params(attachments={"kind": "local", "root": "/data/mail"})
    s3 = params(attachments={"kind": "s3", "bucket": "mail-attachments", "access_key_id": "s3-key"})
    assert isinstance(local.attachments, LocalStorageConfig)
    assert isinstance(s3.attachments, S3StorageConfig)
    with pytest.raises(ValidationError, match="kind"):
        params(attachments={"kind": "ftp", "root": "/x"})


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"host": ""}, id="empty host"),
        pytest.param({"host": None}, id="no host"),
        pytest.param({"username": None}, id="no username"),
        pytest.param({"password": None}, id="no password"),
        pytest.param({"port": 0}, id="port 0"),
        pytest.param({"port": 65_536}, id="port too high"),
        pytest.param({"folder": ""}, id="empty folder"),
        pytest.param({"poll_seconds": 0}, id="no poll interval"),
        pytest.param({"poll_seconds": 3601}, id="poll over an hour"),
        pytest.param({"batch_max_messages": 0}, id="empty batches"),
        pytest.param({"batch_max_messages": 1001}, id="huge batches"),
        pytest.param({"max_message_bytes": 0}, id="no size"),
        pytest.param({"max_message_bytes": 64 * MIB + 1}, id="over 64 MiB"),
        pytest.param({"workflow": None}, id="no workflow"),
        pytest.param({"mark_seen": "sometimes"}, id="not a bool"),
        pytest.param({"imap_host": "x"}, id="unknown field"),
    ],
)
def test_definitions_that_cannot_work_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        params(**changes)


def test_limits_at_their_bounds_are_accepted() -> None:
    p = params(
        port=993,
        poll_seconds=3600,
        batch_max_messages=1000,
        max_message_bytes=64 * MIB,
        move_to="Processed",
        idle=False,
    )
    assert (p.port, p.batch_max_messages, p.max_message_bytes) == (993, 1000, 64 * MIB)
    assert p.move_to == "Processed"
    assert not p.idle


def test_a_definition_round_trips_through_json() -> None:
    p = params(attachments={"kind": "local", "root": "/data/mail"}, move_to="Done")
    assert EmailListenerParams.model_validate_json(p.model_dump_json()) == p
