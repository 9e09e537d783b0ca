"""Bad entries in the listener definitions bucket, next to a good listener.

The scheduler validates listener definitions before it mirrors them into
``<ns>_listeners``, but the bucket is plain NATS KV: anyone with access to it, a
newer scheduler, or a broken write can leave there what this listener cannot
read or run. Each such entry must be skipped and reported (a Failed status
naming it), while the good listener next to it keeps running: never a crash,
never a restart loop, never all listeners stopped for one bad entry.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jobwire.contracts.listeners import ListenerDefinition
from jobwire.testing import wait_for

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration


def _file_params(root: Path) -> dict[str, Any]:
    return {
        "workflow": "good-files",
        "storage": {"kind": "local", "root": str(root)},
        "stable_seconds": 0,
        "poll_seconds": 0.2,
    }


def _definition(job_type: str, params: dict[str, Any], **extra: Any) -> bytes:
    values = {
        "job_id": str(uuid.uuid4()),
        "job_name": f"bad-{uuid.uuid4().hex[:6]}",
        "job_type": job_type,
        "job_version": 1,
        "replicas": 1,
        "params": params,
        **extra,
    }
    return json.dumps(values).encode()


def bad_entries(tmp_path: Path) -> dict[str, bytes]:
    """Key → value of entries no listener can run, each for another reason."""
    return {
        "undecodable": b"\xff\xfe\x00 not json",
        "truncated": _definition("file-listener", _file_params(tmp_path))[:40],
        "not-an-object": b'["a", "list"]',
        "schema-invalid": b'{"job_id": "x", "job_version": "one"}',
        "deep": b"[" * 100_000 + b"]" * 100_000,
        # Under NATS' 1 MiB message limit, still far larger than any definition.
        "oversized": _definition("file-listener", {"workflow": "w", "pad": "x" * 900_000}),
        "unknown-type": _definition("no-such-listener", {"workflow": "w"}),
        "not-a-listener": _definition("start-workflow", {"workflow": "w"}),
        "bad-params": _definition(
            "file-listener", {"workflow": "w", "storage": {"kind": "ftp", "root": "/"}}
        ),
        "bad-secret": _definition(
            "email-listener",
            {"workflow": "w", "host": "127.0.0.1", "username": "../etc", "password": "P W"},
        ),
        "no-replicas": _definition("file-listener", _file_params(tmp_path), replicas=0),
    }


async def test_bad_entries_are_reported_and_the_good_listener_keeps_running(
    listeners: Listeners, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = await listeners.define("file-listener", _file_params(inbox), name="good-one")
    kv = await listeners._definitions()
    entries = bad_entries(tmp_path)
    for key, value in entries.items():
        await kv.put(key, value)
    supervisor = listeners.start()

    (inbox / "first.txt").write_text("1")
    await listeners.wait_starts(1)

    def reported() -> dict[str, str]:
        failed = {
            s.job_id: s.last_error or "" for s in supervisor.statuses() if s.state == "Failed"
        }
        names = {s.job_name: s.last_error or "" for s in supervisor.statuses()}
        return failed | {k: v for k, v in names.items() if k in entries}

    # Every bad entry is named in the status, as Failed, with a reason.
    def all_reported() -> bool:
        seen = reported()
        return all(_is_reported(key, value, seen) for key, value in entries.items())

    await wait_for(all_reported, timeout=15, description="every bad entry reported")
    # Still running the good one, after several rounds over the bad entries.
    (inbox / "second.txt").write_text("2")
    starts = await listeners.wait_starts(2)
    assert {s.input["path"] for s in starts} == {"first.txt", "second.txt"}  # type: ignore[index]
    running = [s for s in supervisor.statuses() if s.state == "Running"]
    assert [s.job_id for s in running] == [good.job_id]
    assert len(supervisor.held) == 1
    task = listeners.tasks[0]
    assert not task.done(), task


def _is_reported(key: str, value: bytes, seen: dict[str, str]) -> bool:
    """A Failed status under the entry's key or, for a readable one, its job id."""
    try:
        job_id = ListenerDefinition.model_validate_json(value).job_id
    except ValueError:
        job_id = key
    return bool(seen.get(job_id) or seen.get(key))


@pytest.mark.timeout(60)
async def test_a_listener_with_absurd_replicas_does_not_take_this_instance_down(
    listeners: Listeners, tmp_path: Path
) -> None:
    """The API allows 64 replicas, and more than one only for scalable types; the
    bucket can hold a million. A file listener (not scalable) with a million slots
    must neither start a million runners nor stall the good listener beside it."""
    inbox, other = tmp_path / "inbox", tmp_path / "other"
    inbox.mkdir()
    other.mkdir()
    good = await listeners.define("file-listener", _file_params(inbox), name="good-one")
    kv = await listeners._definitions()
    absurd = _definition("file-listener", _file_params(other), replicas=1_000_000)
    await kv.put("a-million-replicas", absurd)
    supervisor = listeners.start()

    (inbox / "first.txt").write_text("1")
    starts = await listeners.wait_starts(1, timeout=20)
    assert [s.input["path"] for s in starts] == ["first.txt"]  # type: ignore[index]
    await wait_for(lambda: len(supervisor.held) >= 1, timeout=10)
    assert len(supervisor.held) <= 2, f"{len(supervisor.held)} slots held"
    assert any(h.definition.job_id == good.job_id for h in supervisor.held.values())
    absurd_id = json.loads(absurd)["job_id"]
    [status] = [s for s in supervisor.statuses() if s.job_id == absurd_id]
    assert status.state == "Failed"
    assert "replicas" in (status.last_error or "")
