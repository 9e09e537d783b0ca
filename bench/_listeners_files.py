"""File listener: time to detect and emit N new files, on a local folder and on S3.

The files are written before the slot starts (not timed: ``setup_seconds``).
The clock starts when the slot task is created, so opening the storage and the
checkpoint bucket counts. ``seconds_to_emit``: until JetStream stored the N-th
StartWorkflow; ``seconds_to_move``: until the N-th file was moved under
``processed/`` (the source moves a batch right after its StartWorkflow are
stored, so the two differ by the last batch's checkpoints and moves).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from _listeners_common import Window, build_slot, purge_workflows, stored_starts

from jobwire.contracts.storage import S3StorageConfig
from jobwire.runtime.broker import Broker
from jobwire.runtime.secrets import Secrets, variable_name
from jobwire.runtime.storage import Storage, open_storage
from jobwire.testing.storage_servers import S3Endpoint, create_bucket, delete_bucket

UPLOAD_CONCURRENCY = 32


def file_name(i: int) -> str:
    return f"invoice-{i:05d}.json"


def file_content(i: int) -> bytes:
    return json.dumps({"invoice": i, "customer": f"c-{i % 977:04d}", "total": i % 1000}).encode()


def listener_params(storage: dict[str, Any]) -> dict[str, Any]:
    return {
        "workflow": "file-arrived",
        "storage": storage,
        "stable_seconds": 0,
        "after": "move",
        "poll_seconds": 1,
        "batch_max_files": 500,
    }


async def _listen(
    broker: Broker,
    params: dict[str, Any],
    n: int,
    pids: dict[str, int | None],
    secrets: Secrets | None = None,
) -> dict[str, Any]:
    await purge_workflows(broker)
    slot = build_slot(broker, "file-listener", params, n, pids, secrets=secrets)
    window = Window.open(pids)
    started = window.started
    slot.start()
    try:
        await slot.wait(timeout=900)
    finally:
        await slot.finish()
    source = slot.source
    assert source.first_at is not None
    assert source.stored_at is not None
    assert source.done_at is not None
    measured = window.close(source.done_at)
    stored = await stored_starts(broker)
    if stored != n or slot.runner.stats.dead_lettered:
        raise RuntimeError(
            f"file listener: {stored} StartWorkflow stored, "
            f"{slot.runner.stats.dead_lettered} dead-lettered, expected {n} and 0"
        )
    emit = source.stored_at - started
    move = source.done_at - started
    return {
        "seconds_to_first": round(source.first_at - started, 3),
        "seconds_to_emit": round(emit, 3),
        "seconds_to_move": round(move, 3),
        "files_per_s": round(n / emit),
        "files_moved_per_s": round(n / move),
        "cpu_ms_per_1000_files": round(1e6 * (measured["cpu_seconds"]["bench_process"] or 0) / n),
        # From the first file listed (the scan before it is in seconds_to_first).
        "seconds_split": source.split(source.done_at - source.first_at),
        "window": measured,
    }


def _write_local(root: Path, n: int) -> float:
    root.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(n):
        (root / file_name(i)).write_bytes(file_content(i))
    return time.perf_counter() - started


def _check_local(root: Path, n: int) -> None:
    left = [p.name for p in root.iterdir() if p.name != "processed"]
    moved = sum(1 for _ in (root / "processed").iterdir())
    if left or moved != n:
        raise RuntimeError(f"local: {len(left)} files left, {moved} moved, expected 0 and {n}")


async def local_round(
    broker: Broker, root: Path, n: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    setup = await asyncio.to_thread(_write_local, root, n)
    result = await _listen(broker, listener_params({"kind": "local", "root": str(root)}), n, pids)
    await asyncio.to_thread(_check_local, root, n)
    return {"setup_seconds": round(setup, 2), **result}


async def _count(storage: Storage, prefix: str) -> int:
    return sum([len(page) async for page in storage.list(prefix)])


async def s3_round(
    broker: Broker, endpoint: S3Endpoint, n: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    bucket = await create_bucket(endpoint)
    config = S3StorageConfig(
        bucket=bucket,
        endpoint_url=endpoint.url,
        region=endpoint.region,
        access_key_id="s3-access-key",
        secret_access_key="s3-secret-key",  # noqa: S106 (the secret's name)
    )
    secrets = Secrets(
        None,
        {
            variable_name("s3-access-key"): endpoint.access_key,
            variable_name("s3-secret-key"): endpoint.secret_key,
        },
    )
    try:
        storage = open_storage(config, secrets)
        try:
            gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

            async def upload(i: int) -> None:
                async with gate:
                    await storage.write(file_name(i), file_content(i))

            started = time.perf_counter()
            await asyncio.gather(*(upload(i) for i in range(n)))
            setup = time.perf_counter() - started
            params = listener_params(config.model_dump(mode="json"))
            result = await _listen(broker, params, n, pids, secrets)
            moved = await _count(storage, "processed/")
            left = await _count(storage, "") - moved
        finally:
            await storage.close()
        if left or moved != n:
            raise RuntimeError(f"s3: {left} files left, {moved} moved, expected 0 and {n}")
    finally:
        await delete_bucket(endpoint, bucket)
    return {"setup_seconds": round(setup, 2), **result}


def summarize(kind: str, n: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round's figures on top (the least disturbed), every round below."""
    best = min(rounds, key=lambda r: r["seconds_to_emit"])
    return {
        "storage": kind,
        "n": n,
        "rounds": len(rounds),
        "seconds_to_emit": best["seconds_to_emit"],
        "seconds_to_move": best["seconds_to_move"],
        "files_per_s": best["files_per_s"],
        "files_moved_per_s": best["files_moved_per_s"],
        "round_details": rounds,
    }
