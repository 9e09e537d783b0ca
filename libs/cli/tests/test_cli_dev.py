"""What `jobwire dev` records and how the other commands use it, without servers."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from jobwire.cli import devfile
from jobwire.cli.config import load_config
from jobwire.cli.dev import _embedded_smtp, stop_leftovers
from jobwire.runtime.embedded import is_listening, pid_alive, process_start_time
from jobwire.runtime.mail_sink import DEV_SMTP_VARIABLE, dev_smtp_address
from jobwire.testing import wait_for


def _dead_pid() -> int:
    """The PID of a process that has exited (and was reaped)."""
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return probe.pid


def _record(folder: Path, owner: int, **values: object) -> devfile.DevFile:
    me = devfile.Recorded.of(owner)
    record = devfile.DevFile(folder / devfile.FILE_NAME, {"pid": me.pid, "start": me.start})
    record.values.update(values)
    record.save()
    return record


def test_the_cli_uses_a_running_dev_system_and_variables_still_win(tmp_path: Path) -> None:
    project = tmp_path / "project"
    data = project / ".jobwire"
    record = _record(data, os.getpid(), api_url="http://127.0.0.1:8089", token="jw_dev")
    # It holds an admin token: its owner alone may read it.
    assert stat.S_IMODE(record.path.stat().st_mode) == 0o600
    config = tmp_path / "config.toml"
    config.write_text('api_url = "http://file:1"\ntoken = "jw_from-file"\n')
    config.chmod(0o600)
    env = {"JOBWIRE_CONFIG": str(config), "JOBWIRE_DEV_DIR": str(data)}

    found = load_config(None, environ=env)
    assert (found.api_url, found.token) == ("http://127.0.0.1:8089", "jw_dev")
    assert found.token_source is not None
    assert str(record.path) in found.token_source
    # Found from any folder of the project, without JOBWIRE_DEV_DIR.
    inside = project / "services" / "x"
    inside.mkdir(parents=True)
    assert devfile.locate({}, inside) == record.path
    assert devfile.locate({}, tmp_path) is None

    # A variable or an option wins; the dev token never goes to another URL.
    elsewhere = load_config(None, environ=env | {"JOBWIRE_API_URL": "http://env:2"})
    assert (elsewhere.api_url, elsewhere.token) == ("http://env:2", "jw_from-file")
    option = load_config("http://option:3", environ=env)
    assert (option.api_url, option.token) == ("http://option:3", "jw_from-file")
    token_env = load_config(None, environ=env | {"JOBWIRE_TOKEN": "jw_env"})
    assert (token_env.api_url, token_env.token) == ("http://127.0.0.1:8089", "jw_env")


def test_a_file_left_by_a_stopped_dev_system_sends_nobody_anywhere(tmp_path: Path) -> None:
    config = tmp_path / "missing.toml"
    _record(tmp_path, os.getpid(), api_url="http://127.0.0.1:8089", token="jw_dev")
    stale = devfile.read(tmp_path / devfile.FILE_NAME)
    stale.values["pid"] = _dead_pid()
    stale.save()
    env = {"JOBWIRE_CONFIG": str(config), "JOBWIRE_DEV_DIR": str(tmp_path)}
    assert (load_config(None, environ=env).api_url, load_config(None, environ=env).token) == (
        "http://127.0.0.1:8080",
        None,
    )
    # Its PID reused by another process (another start time): still not ours.
    stale.values["pid"] = os.getpid()
    stale.values["start"] = (process_start_time(os.getpid()) or 0) + 1
    stale.save()
    assert devfile.running(env) is None


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_the_next_run_stops_what_a_killed_run_left_by_recorded_pid_only(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    left = devfile.DevFile(tmp_path / devfile.FILE_NAME, {"pid": _dead_pid()})
    left.record("example", sleeper.pid)
    assert stop_leftovers(devfile.read(left.path)) == [f"example (pid {sleeper.pid})"]
    sleeper.wait(timeout=10)
    assert not pid_alive(sleeper.pid)


def test_a_recorded_pid_that_is_another_process_now_is_left_alone(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    start = process_start_time(sleeper.pid)
    assert start is not None
    left = devfile.DevFile(
        tmp_path / devfile.FILE_NAME,
        {
            "pid": _dead_pid(),
            "processes": {"nats-server": {"pid": sleeper.pid, "start": start - 1}},
        },
    )
    left.save()
    assert stop_leftovers(devfile.read(left.path)) == []
    assert sleeper.poll() is None


async def test_the_mail_sink_keeps_a_sent_message_and_dev_json_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(DEV_SMTP_VARIABLE, raising=False)
    record = _record(tmp_path, os.getpid())
    raw = b"From: cases@example.com\r\nTo: alice@example.com\r\nSubject: Case 42\r\n\r\nhi\r\n"
    with _embedded_smtp(tmp_path, record) as shown:
        address = dev_smtp_address()
        assert address is not None
        host, port = address
        assert shown.startswith(f"{host}:{port} → ")
        saved = devfile.read(record.path)
        assert saved.string("smtp") == f"{host}:{port}"
        assert saved.string("mail_dir") == str(tmp_path / "mail")
        await aiosmtplib.send(
            raw, sender="cases@example.com", recipients=["alice@example.com"],
            hostname=host, port=port, start_tls=False, timeout=5,
        )  # fmt: skip
        [eml] = await wait_for(lambda: list((tmp_path / "mail").glob("*.eml")), timeout=5)
    # Gone with the sink: nothing listens, and no service is told otherwise.
    assert DEV_SMTP_VARIABLE not in os.environ
    assert not is_listening(host, port)
    assert eml.read_bytes() == raw
    assert re.fullmatch(r"\d{8}-\d{6}-1\.eml", eml.name)
    assert f'mail  → alice@example.com  "Case 42"  {eml}' in capsys.readouterr().out


def test_a_sink_named_in_the_environment_is_used_instead_of_one_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEV_SMTP_VARIABLE, "mail.example.com:2526")
    record = _record(tmp_path, os.getpid())
    with _embedded_smtp(tmp_path, record) as shown:
        assert shown == f"mail.example.com:2526 (from {DEV_SMTP_VARIABLE})"
        assert dev_smtp_address() == ("mail.example.com", 2526)
    assert devfile.read(record.path).string("smtp") == "mail.example.com:2526"
    assert not (tmp_path / "mail").exists()
