from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from jobwire.contracts.subjects import Stream
from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings


def test_reads_prefixed_and_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_NAMESPACE", "acme")
    monkeypatch.setenv("JOBWIRE_NATS__URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("JOBWIRE_NATS__PASSWORD", "hunter2")
    monkeypatch.setenv("JOBWIRE_STREAMS__REPLICAS", "3")
    monkeypatch.setenv("JOBWIRE_STREAMS__DUPLICATE_WINDOW", "PT2M")
    monkeypatch.setenv("JOBWIRE_STREAMS__MAX_AGE", '{"DLQ": "P90D"}')
    settings = load_settings(ServiceSettings)
    assert settings.namespace == "acme"
    assert settings.nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.streams.replicas == 3
    assert settings.streams.duplicate_window == timedelta(minutes=2)
    assert settings.streams.retention(Stream.DLQ) == timedelta(days=90)
    assert settings.streams.retention(Stream.JOBS) == timedelta(days=7)
    # A secret stays a secret when printed.
    assert "hunter2" not in repr(settings)
    assert settings.nats.password is not None
    assert settings.nats.password.get_secret_value() == "hunter2"


def test_invalid_values_name_the_variable_and_hide_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBWIRE_NATS__CONNECT_TIMEOUT_SECONDS", "soon-ish")
    monkeypatch.setenv("JOBWIRE_HTTP_PORT", "70000")
    with pytest.raises(SettingsError) as caught:
        load_settings(ServiceSettings)
    message = str(caught.value)
    assert "JOBWIRE_NATS__CONNECT_TIMEOUT_SECONDS" in message
    assert "JOBWIRE_HTTP_PORT" in message
    assert "soon-ish" not in message
    assert "\n" not in message


def test_namespace_must_be_one_subject_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_NAMESPACE", "a.b")
    with pytest.raises(SettingsError, match="JOBWIRE_NAMESPACE"):
        load_settings(ServiceSettings)


def test_command_exits_2_with_one_line_on_bad_settings() -> None:
    env = {"JOBWIRE_NATS__CONNECT_TIMEOUT_SECONDS": "-1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "jobwire.cli", "hosts"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "JOBWIRE_NATS__CONNECT_TIMEOUT_SECONDS" in lines[0]
