"""The peer of ``burst_2000``: APScheduler 4 in its own process, for ``bench/scheduler.py``.

``AsyncScheduler`` (role both: it schedules and runs the jobs) with a
``SQLAlchemyDataStore`` on the same PostgreSQL through asyncpg, the default
local event broker, and ``--schedules`` date-trigger schedules for one instant.
The task is a trivial coroutine that stamps ``time.time()`` when it runs: that
is the peer's "fire" (it has no broker hop; the jobwire side is measured to the
JetStream ack, which is further).

Setup is not measured: the schedules are added through the public API before
the scheduler starts, and the instant is ``--lead`` seconds after the process
began, chosen so that adding finishes well before it (``setup_overran`` says
if it did not). The first schedule acquisition that returns schedules is
timed through a subclass of the data store (its "first claim").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler import AsyncScheduler
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.triggers.date import DateTrigger
from sqlalchemy.ext.asyncio import create_async_engine

RUNS: list[tuple[float, float]] = []
EXPECTED = 0
DONE: asyncio.Event | None = None
FIRST_ACQUIRE: list[float] = []


async def record_run(scheduled: float) -> None:
    RUNS.append((scheduled, time.time()))
    if len(RUNS) >= EXPECTED and DONE is not None:
        DONE.set()


class TimedStore(SQLAlchemyDataStore):
    async def acquire_schedules(self, scheduler_id: str, lease_duration: timedelta, limit: int):  # type: ignore[no-untyped-def]
        start = time.time()
        schedules = await super().acquire_schedules(scheduler_id, lease_duration, limit)
        if schedules and not FIRST_ACQUIRE:
            FIRST_ACQUIRE.append(start)
        return schedules


async def run(args: argparse.Namespace) -> dict[str, Any]:
    global EXPECTED, DONE
    EXPECTED = args.schedules
    DONE = asyncio.Event()
    began = time.time()
    due = datetime.fromtimestamp(began + args.lead, UTC)
    engine = create_async_engine(args.url, pool_size=args.pool_size)
    store = TimedStore(engine, schema="apscheduler")
    async with AsyncScheduler(store, max_concurrent_jobs=args.max_concurrent_jobs) as scheduler:
        semaphore = asyncio.Semaphore(args.pool_size)

        async def add(i: int) -> None:
            async with semaphore:
                await scheduler.add_schedule(
                    record_run,
                    DateTrigger(due),
                    id=f"bench-{i}",
                    kwargs={"scheduled": due.timestamp()},
                )

        await asyncio.gather(*(add(i) for i in range(args.schedules)))
        added = time.time()
        await scheduler.start_in_background()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(DONE.wait(), timeout=args.timeout)
        await scheduler.stop()
    await engine.dispose()
    return {
        "began": began,
        "scheduled": due.timestamp(),
        "setup_seconds": added - began,
        "setup_overran": added > due.timestamp() - 0.5,
        "first_acquire": FIRST_ACQUIRE[0] if FIRST_ACQUIRE else None,
        "runs": RUNS,
        "max_concurrent_jobs": args.max_concurrent_jobs,
        "pool_size": args.pool_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="APScheduler 4 burst peer (bench helper)")
    parser.add_argument("--url", required=True, help="postgresql+asyncpg://… URL")
    parser.add_argument("--schedules", type=int, default=2000)
    parser.add_argument("--lead", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--max-concurrent-jobs", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
