"""One jobwire scheduler instance in its own process, for ``bench/scheduler.py``.

Built the way ``run_service`` builds it (settings, telemetry providers, a Broker,
an asyncpg pool of ``database_pool_max`` connections, a ServiceContext, then
``Scheduler``), but only its firing loop and outbox relay run: the run-event
recorder and history retention have nothing to do in these scenarios.

Instrumentation, none of it inside the scheduler's code:

- ``Dispatcher.fire`` is wrapped (instance attribute) to remember each run's
  ``scheduled_for`` under its run id (= its ``Nats-Msg-Id``);
- ``JetStreamContext.publish_async`` is wrapped to put a done-callback on every
  ack future: the callback stamps ``time.time()`` when nats-py resolves the
  future with JetStream's PubAck, i.e. when the ack reached this process and
  the event loop got to it — the same moment the relay itself learns that the
  message is stored. Loop congestion delays that stamp, which is the truth from
  the scheduler's side (and slightly pessimistic as an "ack time");
- ``Firer.fire_due`` and ``OutboxRelay.relay_once`` are wrapped to time each
  claim transaction and each relay batch;
- ``gc.callbacks`` times the cyclic garbage collector, and a 50 ms timer measures
  how long the event loop is blocked at a stretch (``loop_stall_ms``).

The process prints ``ready`` once connected, stops on SIGTERM (or after
``--expect`` StartWorkflow acks), gives the loops the service's shutdown grace
period (as ``run_service`` does), and writes what it
measured to ``--result`` (JSON) and ``--result.bin`` (float64 pairs:
scheduled_for, ack time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool
from jobwire.runtime.health import Readiness
from jobwire.runtime.logs import setup_logging
from jobwire.runtime.service import ServiceContext, tune_garbage_collector
from jobwire.runtime.telemetry import setup_telemetry
from jobwire.scheduler.main import Scheduler
from jobwire.scheduler.settings import SchedulerSettings

MSG_ID = "Nats-Msg-Id"


class Recorder:
    def __init__(self, workflow_prefix: str, keep_ids: bool) -> None:
        self.workflow_prefix = workflow_prefix
        self.keep_ids = keep_ids
        self.scheduled: dict[str, float] = {}
        self.pairs = array("d")  # scheduled_for, ack time
        self.ids: list[str] = []
        self.acked = 0
        self.duplicates = 0
        self.errors = 0
        self.other_acks = 0  # e.g. RunSkipped events (RUNS stream)
        self.decided = 0  # StartWorkflow messages built by claims (runs dispatched)
        self.claims: list[tuple[float, float, int, int]] = []
        self.relays: list[tuple[float, float, int, int]] = []
        self.done = asyncio.Event()
        self.expect: int | None = None

    def on_ack(self, future: asyncio.Future[Any], msg_id: str, subject: str) -> None:
        now = time.time()
        if future.cancelled() or future.exception() is not None:
            self.errors += 1
            return
        if future.result().duplicate:
            self.duplicates += 1
            return
        if not subject.startswith(self.workflow_prefix):
            self.other_acks += 1
            return
        scheduled = self.scheduled.pop(msg_id, float("nan"))
        self.pairs.append(scheduled)
        self.pairs.append(now)
        if self.keep_ids:
            self.ids.append(msg_id)
        self.acked += 1
        if self.expect is not None and self.acked >= self.expect:
            self.done.set()


class GcClock:
    """Time spent in the cyclic garbage collector, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._start
            self.collections[generation] += 1


async def watch_loop(stalls: array[float], stop: asyncio.Event, every: float = 0.05) -> None:
    """How late a 50 ms timer fires: how long the event loop was blocked at a stretch."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + every
        await asyncio.sleep(every)
        stalls.append(max(0.0, loop.time() - due))


def instrument(scheduler: Scheduler, broker: Broker, rec: Recorder) -> None:
    dispatcher, firer, relay, js = scheduler.dispatcher, scheduler.firer, scheduler.relay, broker.js
    fire = dispatcher.fire

    def fire_recorded(job, run_id, scheduled_for, *args, **kwargs):  # type: ignore[no-untyped-def]
        rec.scheduled[str(run_id)] = scheduled_for.timestamp()
        rec.decided += 1
        return fire(job, run_id, scheduled_for, *args, **kwargs)

    dispatcher.fire = fire_recorded  # type: ignore[method-assign]

    publish_async = js.publish_async

    async def publish_recorded(subject, payload=b"", *args, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        future = await publish_async(subject, payload, *args, headers=headers, **kwargs)
        msg_id = (headers or {}).get(MSG_ID, "")
        future.add_done_callback(lambda f: rec.on_ack(f, msg_id, subject))
        return future

    js.publish_async = publish_recorded  # type: ignore[method-assign]

    fire_due = firer.fire_due

    async def fire_due_timed(now):  # type: ignore[no-untyped-def]
        start, decided = time.time(), rec.decided
        claimed = await fire_due(now)
        if claimed:
            rec.claims.append((start, time.time(), claimed, rec.decided - decided))
        return claimed

    firer.fire_due = fire_due_timed  # type: ignore[method-assign]

    relay_once = relay.relay_once

    async def relay_once_timed():  # type: ignore[no-untyped-def]
        start = time.time()
        seen, published = await relay_once()
        if seen:
            rec.relays.append((start, time.time(), seen, published))
        return seen, published

    relay.relay_once = relay_once_timed  # type: ignore[method-assign]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = SchedulerSettings(
        nats={"url": args.nats_url},
        namespace=args.namespace,
        database_url=args.dsn,
        log_level="WARNING",
        scheduler=json.loads(args.options),
    )
    setup_logging(settings.log_level, "json", service="scheduler")
    # The service's providers, as run_service installs them; nothing is exported.
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    os.environ.setdefault("OTEL_METRICS_EXPORTER", "none")
    setup_telemetry("scheduler", "bench", settings.instance_id, platform.node())
    readiness = Readiness()
    broker = Broker(
        settings, source=f"/jobwire/scheduler/{settings.instance_id}", readiness=readiness
    )
    await broker.connect()
    pool = await connect_pool(args.dsn, max_size=settings.database_pool_max)
    stop = asyncio.Event()
    ctx = ServiceContext("scheduler", settings, broker, readiness, stop, db=pool)
    scheduler = Scheduler(ctx)
    rec = Recorder(broker.subjects.all_workflow_start()[:-1], args.keep_ids)
    rec.expect = args.expect
    instrument(scheduler, broker, rec)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def until_done() -> None:
        waiters = {asyncio.ensure_future(rec.done.wait()), asyncio.ensure_future(stop.wait())}
        _, pending = await asyncio.wait(
            waiters, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        stop.set()

    if os.environ.get("JOBWIRE_BENCH_NO_DEFINITION_CACHE"):  # experiment only
        from jobwire.scheduler.adapters import store

        store._DEFINITIONS_CACHED = 1  # type: ignore[attr-defined]  # ≈ parse on every claim
    tune_garbage_collector()  # as `serve()` does for the service
    gc_clock = GcClock()
    print("ready", flush=True)
    started = time.time()

    async def serve() -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(scheduler.firer.run(stop))
            tasks.create_task(scheduler.relay.run(stop))

    stalls: array[float] = array("d")
    watcher = asyncio.create_task(watch_loop(stalls, stop))
    serving = asyncio.create_task(serve())
    serving.add_done_callback(lambda _: stop.set())  # a crashed loop ends the run
    await until_done()
    # As run_service does: in-flight work gets the grace period, then is cancelled
    # (the relay would otherwise drain a whole backlog before returning).
    _, pending = await asyncio.wait({serving}, timeout=settings.shutdown_grace_seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    if not serving.cancelled() and serving.exception() is not None:
        raise serving.exception()  # type: ignore[misc]
    stopped = time.time()
    watcher.cancel()
    stalls_ms = sorted(x * 1000 for x in stalls)
    tracked = [len(gc.get_objects(generation)) for generation in range(3)]
    kinds = Counter(type(o).__qualname__ for o in gc.get_objects()).most_common(12)
    await broker.close()
    await pool.close()
    return {
        "pid": os.getpid(),
        "instance_id": settings.instance_id,
        "started": started,
        "stopped": stopped,
        "acked": rec.acked,
        "duplicate_acks": rec.duplicates,
        "publish_errors": rec.errors,
        "other_acks": rec.other_acks,
        "gc_seconds": gc_clock.seconds,
        "gc_collections": gc_clock.collections,
        "gc_tracked_objects_at_stop": tracked,
        "gc_tracked_kinds_at_stop": kinds,
        "loop_stall_ms": {
            "p50": stalls_ms[len(stalls_ms) // 2] if stalls_ms else None,
            "p99": stalls_ms[int(len(stalls_ms) * 0.99)] if stalls_ms else None,
            "max": stalls_ms[-1] if stalls_ms else None,
            "over_100ms": sum(1 for x in stalls_ms if x > 100),
            "samples": len(stalls_ms),
        },
        "claims": rec.claims,
        "relays": rec.relays,
        "ids": rec.ids,
        "_pairs": rec.pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="one scheduler instance (bench helper)")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--options", default="{}", help="SchedulerOptions as JSON")
    parser.add_argument("--expect", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep-ids", action="store_true")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    pairs: array[float] = result.pop("_pairs")
    with Path(f"{args.result}.bin").open("wb") as out:
        pairs.tofile(out)
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.result)
    with contextlib.suppress(Exception):
        print("done", flush=True)


if __name__ == "__main__":
    main()
