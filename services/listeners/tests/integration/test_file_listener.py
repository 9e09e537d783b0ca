"""The file listener end to end on a local folder (S3 and Azure Blob: test_file_listener_stores)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jobwire.listeners.supervisor import Supervisor
from jobwire.testing import wait_for

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration


def _params(root: Path, **extra: object) -> dict[str, object]:
    return {
        "workflow": "file-arrived",
        "storage": {"kind": "local", "root": str(root)},
        "stable_seconds": 0,
        "poll_seconds": 0.2,
        **extra,
    }


async def _starts(listeners: Listeners, count: int, timeout: float = 20):  # type: ignore[no-untyped-def]
    return await listeners.wait_starts(count, timeout)


async def test_new_files_start_workflows_and_are_moved(
    listeners: Listeners, tmp_path: Path
) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for n in range(25):
        (tmp_path / "in" / f"f{n:02}.pdf").write_bytes(b"%PDF" + bytes([n]))
    (tmp_path / "in" / "sub" / "deep.pdf").write_bytes(b"deep")
    (tmp_path / "in" / "notes.txt").write_text("not a pdf")
    definition = await listeners.define(
        "file-listener",
        _params(
            tmp_path,
            storage={"kind": "local", "root": str(tmp_path), "prefix": "in/"},
            pattern="*.pdf",
        ),
    )
    listeners.start()

    starts = await _starts(listeners, 26)

    paths = sorted(s.input["path"] for s in starts)  # type: ignore[index]
    assert paths == sorted([f"in/f{n:02}.pdf" for n in range(25)] + ["in/sub/deep.pdf"])
    first = next(s for s in starts if s.input["path"] == "in/f00.pdf")  # type: ignore[index]
    assert first.input["storage"] == "local"
    assert first.input["size"] == 5
    assert first.input["content_type"] == "application/pdf"  # type: ignore[index]
    assert first.origin.coordinates["path"] == "in/f00.pdf"
    assert first.idempotency_key.startswith(f"listener:{definition.job_id}:in/f00.pdf@")
    await wait_for(
        lambda: len(list((tmp_path / "in" / "processed").rglob("*.pdf"))) == 26,
        timeout=10,
        description="26 files moved",
    )
    assert (tmp_path / "in" / "notes.txt").exists()
    assert sorted(p.name for p in (tmp_path / "in").glob("*.pdf")) == []


async def test_a_file_still_being_written_waits_until_stable(
    listeners: Listeners, tmp_path: Path
) -> None:
    growing = tmp_path / "big.csv"
    growing.write_text("a,b\n")
    await listeners.define("file-listener", _params(tmp_path, stable_seconds=1.0))
    listeners.start()
    for n in range(6):  # keeps changing for ~1.2 s
        await asyncio.sleep(0.2)
        with growing.open("a") as file:
            file.write(f"{n},{n}\n")
    assert await listeners.starts() == []

    [start] = await _starts(listeners, 1)

    assert start.input["size"] == growing.with_name("processed").joinpath("big.csv").stat().st_size  # type: ignore[index]


async def test_kept_files_fire_once_per_content_across_restarts(
    listeners: Listeners, tmp_path: Path
) -> None:
    (tmp_path / "a.xml").write_text("<a/>")
    (tmp_path / "b.xml").write_text("<b/>")
    await listeners.define("file-listener", _params(tmp_path, after="keep"))
    first = listeners.start()
    await _starts(listeners, 2)
    await listeners.stop(first)

    second = listeners.start()
    await wait_for(lambda: _scanned(second), timeout=10, description="a scan after restart")
    await asyncio.sleep(0.6)  # three more scans: a file that fired again would be in by now
    assert len(await listeners.starts()) == 2
    # Not even published again (which the stream would have dropped): the
    # checkpoint kept the files from being taken at all.
    assert [s.received for s in second.statuses()] == [0]
    (tmp_path / "a.xml").write_text("<a>changed</a>")

    starts = await _starts(listeners, 3)

    assert sorted(s.input["path"] for s in starts) == ["a.xml", "a.xml", "b.xml"]  # type: ignore[index]
    assert (tmp_path / "a.xml").exists()
    assert (tmp_path / "b.xml").exists()


async def test_a_failing_move_is_reported_and_the_file_does_not_fire_again(
    listeners: Listeners, tmp_path: Path
) -> None:
    (tmp_path / "done").write_text("a file where the processed folder should be")
    (tmp_path / "x.json").write_text("{}")
    await listeners.define(
        "file-listener", _params(tmp_path, processed_prefix="done/", pattern="*.json")
    )
    supervisor = listeners.start()

    await _starts(listeners, 1)
    [slot] = await wait_for(lambda: _failed(supervisor), timeout=10, description="move failed")
    assert "x.json" in slot.last_error or "done" in slot.last_error
    await asyncio.sleep(1.0)  # the slot reopens and rescans meanwhile
    assert len(await listeners.starts()) == 1
    # The checkpoint, not the stream's de-duplication: the file was taken once.
    assert [s.received for s in supervisor.statuses()] == [1]
    (tmp_path / "done").unlink()

    await wait_for(
        lambda: (tmp_path / "done" / "x.json").exists(),
        timeout=15,
        description="the move completed after the obstacle went",
    )
    assert len(await listeners.starts()) == 1


def _scanned(supervisor: Supervisor) -> bool:
    return any(s.state == "Running" for s in supervisor.statuses())


def _failed(supervisor: Supervisor):  # type: ignore[no-untyped-def]
    found = [s for s in supervisor.statuses() if s.last_error]
    return found or None


async def test_10000_files_in_one_folder_are_handed_on_as_they_are_listed(
    listeners: Listeners, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for n in range(10_000):
        (inbox / f"{n:05}.csv").write_bytes(b"x")
    await listeners.define(
        "file-listener",
        _params(tmp_path, storage={"kind": "local", "root": str(inbox)}, batch_max_files=500),
    )
    listeners.start()

    await _starts(listeners, 1)
    # Incremental: the first workflows start while most files are still unlisted.
    assert len(list(inbox.glob("*.csv"))) > 5_000
    starts = await _starts(listeners, 10_000, timeout=120)

    assert len({s.idempotency_key for s in starts}) == len(starts) == 10_000
    await wait_for(lambda: not any(inbox.glob("*.csv")), timeout=30, description="every file moved")
    assert len(list((inbox / "processed").iterdir())) == 10_000
