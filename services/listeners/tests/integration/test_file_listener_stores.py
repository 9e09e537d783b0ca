"""The file listener on every storage: a local folder, S3 (SeaweedFS), Azure Blob (Azurite)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from jobwire.runtime.storage import open_storage
from jobwire.testing import wait_for
from jobwire.testing.plugin import StorageSetup

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration


async def test_files_in_each_storage_start_one_workflow_each_and_move(
    storage_config: StorageSetup, listeners: Listeners
) -> None:
    config, secrets = storage_config
    storage = open_storage(config, secrets)
    try:
        for n in range(30):
            await storage.write(f"in/{n:02}.pdf", b"%PDF-" + bytes([n]), metadata={"n": str(n)})
        await storage.write("in/readme.txt", b"not a pdf")
        definition = await listeners.define(
            "file-listener",
            {
                "workflow": "document",
                "storage": config.model_dump(mode="json"),
                "pattern": "in/*.pdf",
                "stable_seconds": 0,
                "poll_seconds": 0.3,
                "batch_max_files": 7,
            },
        )
        listeners.start(secrets=secrets)

        async def all_started():  # type: ignore[no-untyped-def]
            found = await listeners.starts()
            return found if len(found) >= 30 else None

        starts = await wait_for(all_started, timeout=60, description="30 StartWorkflow")

        async def moved() -> list[str]:
            return [f.path for page in [p async for p in storage.list("processed/")] for f in page]

        await wait_for(lambda: _length(moved(), 30), timeout=30, description="30 moved")
        remaining = [f.path for page in [p async for p in storage.list("in/")] for f in page]
    finally:
        await storage.close()

    assert len(starts) == 30
    assert remaining == ["in/readme.txt"]
    by_path = {s.input["path"]: s for s in starts}  # type: ignore[index]
    first = by_path[f"{config.prefix}in/00.pdf"]
    assert first.input["storage"] == config.kind  # type: ignore[index]
    assert first.input["bucket"] == getattr(config, "bucket", getattr(config, "container", None))  # type: ignore[index]
    assert first.input["size"] == 6
    assert first.input["etag"]
    assert first.input["content_type"] == "application/pdf"  # type: ignore[index]
    if config.kind != "local":  # local storage keeps no metadata
        assert first.input["metadata"] == {"n": "0"}  # type: ignore[index]
    assert first.origin.job_id == definition.job_id
    assert first.idempotency_key == (
        f"listener:{definition.job_id}:{config.prefix}in/00.pdf@{first.input['etag']}"  # type: ignore[index]
    )


async def _length(coro, count: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await coro) >= count
