"""Scheduler benchmark: burst (vs. APScheduler 4), sustained throughput, replicas.

Everything runs on one machine in one run: a private PostgreSQL and a private
nats-server (JetStream, file storage) unless ``JOBWIRE_BENCH_DATABASE_URL`` /
``JOBWIRE_BENCH_NATS_URL`` point elsewhere. Each scenario gets a fresh database
and a fresh NATS namespace. Jobs are inserted in bulk (``INSERT … SELECT FROM
unnest``) with the definition JSON the store writes and ``next_fire_at`` from
``JobDefinition.first_fire``, so setup is never timed.

Each scheduler instance runs in its own process (``bench/_scheduler_worker.py``):
built from a ServiceContext like ``run_service`` builds it, running the firing
loop and the outbox relay. **Ack time** of a run is when JetStream's PubAck for
its StartWorkflow reached the scheduler process: the worker puts a done-callback
on each ``publish_async`` future (wrapping the JetStream context, not touching
scheduler code). That is after the stream stored the message — the moment the
relay itself knows the run is out — and it includes any event-loop delay in
getting to the ack. A core-NATS subscriber was not used: it would see the
message as the server routes it, before the stream has stored (and acked) it.
The stream's own message count is read as an independent cross-check.

1. ``burst_2000`` — 2,000 one-shot start-workflow jobs due at one instant a few
   seconds ahead, one scheduler, until all 2,000 StartWorkflow are acked.
   fires/s = 2,000 / (last ack - start of the first claim that claimed jobs);
   lag = ack time - scheduled time. ``peer``: APScheduler 4 (AsyncScheduler,
   SQLAlchemyDataStore via asyncpg on the same PostgreSQL, default settings,
   2,000 DateTrigger schedules for one instant, a trivial async task stamping its
   run time); fires/s = 2,000 / (last run - first schedule acquisition); lag =
   run time - scheduled time (no broker hop on that side). ``what_if``: our side
   again with ``claim_batch`` 250 instead of the default 1000.
2. ``sustained_100k`` — 100,000 schedules: 25k cron ``o/5 * * * * *`` and 25k
   ``o/10 * * * * *`` (every second offset ``o`` of the period equally used), 50k
   interval schedules of 2-8 s with anchors spread over the period. Offered load
   ~ 19.8k fires/s, above the 15k goal, so the scheduler — not the workload — is
   the limit. After a warm-up, fires/s = StartWorkflow acked inside a 60 s window
   / 60 (cross-checked with the stream's message count), plus lag in the window,
   the backlog left at its end, and CPU seconds of the scheduler process,
   PostgreSQL and nats-server over the window (the machine's busy fraction shows
   what else ran). Under backlog a claim fires every due slot of a job (within the
   misfire grace) at once, so ``runs_per_claimed_job`` is reported, and
   ``runs_decided_per_s`` (the firing loop) next to acked fires/s (firing loop +
   relay). The worker also times the cyclic garbage collector (``gc.callbacks``).
   Then (not in the window) 10 s of py-spy on the scheduler process under the
   same load (``--profile 0`` skips it), and ``what_if``: the scenario again with
   a 5 s warm-up, a 20 s window and a change the scheduler does not ship -
   ``no-definition-cache`` (parse every claimed definition again) - to show what
   the cache is worth (``--what-if-window 0`` skips it). Two earlier what-ifs now
   ship: the collector tuning of the service kit and the claim-order index.
3. ``replicas_3`` — 3 scheduler processes (own pool, own NATS connection) over
   20,000 one-shot jobs due evenly over 10 s. Checks: every job has exactly one
   run in the database and exactly one StartWorkflow in the stream; duplicates
   (same run id twice in the stream, or two runs for one job) and missed jobs
   (no run, no message) must be 0. Re-publishes absorbed by the stream's
   de-duplication (``PubAck.duplicate``) are reported as well.

The machine is shared: its load average before and after, and the busy fraction
of all CPUs against the CPU used by the scheduler, PostgreSQL and nats-server, are
in the results. Run: ``make bench-scheduler`` (~5 min) or
``uv run --group bench python bench/scheduler.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
from _measure import BENCH, cpu_seconds, machine_busy, machine_info, percentile, rounded
from nats.js.api import AckPolicy, ConsumerConfig

from jobwire.contracts.subjects import Stream
from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.runtime.embedded import NatsServer, PostgresServer, child_options
from jobwire.runtime.settings import ServiceSettings
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.scheduler.main import spec
from jobwire.testing.databases import scratch_database

SCHEDULER_PACKAGES = (
    "jobwire-scheduler",
    "nats-py",
    "asyncpg",
    "pydantic",
    "apscheduler",
    "sqlalchemy",
    "py-spy",
)

WORKER = BENCH / "_scheduler_worker.py"
PEER = BENCH / "_apscheduler_peer.py"


# -- statistics ------------------------------------------------------------------------


def lag_summary(lags_s: Iterable[float]) -> dict[str, float | None]:
    ms = sorted(x * 1000 for x in lags_s)
    return {
        "p50": rounded(percentile(ms, 50)),
        "p90": rounded(percentile(ms, 90)),
        "p99": rounded(percentile(ms, 99)),
        "max": rounded(ms[-1] if ms else None),
        "min": rounded(ms[0] if ms else None),
    }


# -- servers, databases, streams -------------------------------------------------------


@dataclass
class Env:
    admin_dsn: str
    nats_url: str
    tmp: Path
    postgres_pid: int | None = None
    nats_pid: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    experiments: frozenset[str] = frozenset()
    info: dict[str, Any] = field(default_factory=dict)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    py_spy: Path | None = None

    async def kill_leftovers(self) -> None:
        """Processes a failed scenario left running (by PID, ours only)."""
        for process in self.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    @contextlib.asynccontextmanager
    async def database(self, label: str) -> AsyncIterator[str]:
        """A fresh database for one scenario (dropped afterwards)."""
        async with scratch_database(self.admin_dsn, f"jobwire_bench_{label}_") as dsn:
            yield dsn

    @contextlib.asynccontextmanager
    async def streams(self) -> AsyncIterator[Broker]:
        """A fresh namespace with jobwire's streams (deleted afterwards)."""
        namespace = f"bs{uuid.uuid4().hex[:8]}"
        broker = Broker(
            ServiceSettings(nats={"url": self.nats_url}, namespace=namespace),
            source="/jobwire/bench",
        )
        await broker.connect()
        await broker.ensure_streams()
        try:
            yield broker
        finally:
            for stream in Stream:
                with contextlib.suppress(Exception):
                    await broker.js.delete_stream(broker.subjects.stream_name(stream))
            await broker.close()


EXPERIMENTS = {
    "no-definition-cache": "the store's per-process JobDefinition cache is held to one "
    "entry, so each claim parses definitions again (as before that cache existed)",
}


async def scheduler_pool(env: Env, dsn: str) -> asyncpg.Pool:
    pool = await connect_pool(dsn, max_size=4)
    assert spec.migrations is not None
    await migrate(pool, "scheduler", load_migrations(spec.migrations))
    return pool


async def stream_messages(broker: Broker, stream: Stream = Stream.WORKFLOWS) -> int:
    info = await broker.js.stream_info(broker.subjects.stream_name(stream))
    return int(info.state.messages)


# -- jobs ------------------------------------------------------------------------------

_INSERT = """
INSERT INTO scheduler.jobs (id, name, type, definition, enabled, group_name, priority,
                            next_fire_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bool[],
                     $6::text[], $7::int[], $8::timestamptz[])
"""


def job_row(name: str, schedule: dict[str, Any], now: datetime) -> tuple[Any, ...]:
    """A jobs row as ``PostgresJobStore.create`` writes it."""
    definition = parse_definition(
        {
            "name": name,
            "type": "start-workflow",
            "schedule": schedule,
            "params": {"workflow": "bench", "input": {"job": name}},
        }
    )
    return (
        uuid.uuid4(),
        definition.name,
        definition.type,
        definition.model_dump(mode="json"),
        definition.enabled,
        definition.group,
        definition.priority,
        definition.first_fire(now),
    )


async def insert_jobs(pool: asyncpg.Pool, rows: Sequence[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), 20_000):
        chunk = rows[start : start + 20_000]
        await pool.execute(_INSERT, *([r[i] for r in chunk] for i in range(8)))
    await pool.execute("ANALYZE scheduler.jobs")
    await pool.execute("SELECT pg_notify('jobwire_scheduler_jobs', '')")


# -- processes -------------------------------------------------------------------------


@dataclass
class Worker:
    process: asyncio.subprocess.Process
    result_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def terminate(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    async def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise RuntimeError(f"scheduler worker {self.pid} did not stop in {timeout} s") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"scheduler worker {self.pid} exited {self.process.returncode}")
        return _read_result(self.result_path)


def _read_result(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    pairs = array("d")
    pairs.frombytes(Path(f"{path}.bin").read_bytes())
    result["scheduled"] = pairs[0::2]
    result["acks"] = pairs[1::2]
    return result


async def start_worker(
    env: Env,
    dsn: str,
    namespace: str,
    label: str,
    *,
    expect: int | None = None,
    timeout: float = 600.0,
    keep_ids: bool = False,
    options: dict[str, Any] | None = None,
) -> Worker:
    result = env.tmp / f"{label}-{uuid.uuid4().hex[:6]}.json"
    command = [
        sys.executable,
        str(WORKER),
        "--dsn",
        dsn,
        "--nats-url",
        env.nats_url,
        "--namespace",
        namespace,
        "--options",
        json.dumps({**env.options, **(options or {})}),
        "--timeout",
        str(timeout),
        "--result",
        str(result),
    ]
    if expect is not None:
        command += ["--expect", str(expect)]
    if keep_ids:
        command.append("--keep-ids")
    child_env = dict(os.environ)
    if "no-definition-cache" in env.experiments:
        child_env["JOBWIRE_BENCH_NO_DEFINITION_CACHE"] = "1"
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        env=child_env,
        **child_options(),  # dies with the benchmark, however it ends
    )
    env.processes.append(process)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    if line.strip() != b"ready":
        await process.wait()
        raise RuntimeError(f"scheduler worker failed to start (exit {process.returncode})")
    return Worker(process, result)


def _namespace(broker: Broker) -> str:
    return broker.subjects.namespace


# -- 1. burst --------------------------------------------------------------------------


async def burst(
    env: Env, jobs: int, lead: float, peer: bool, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with env.database("burst") as dsn, env.streams() as broker:
        pool = await scheduler_pool(env, dsn)
        worker = await start_worker(
            env, dsn, _namespace(broker), "burst", expect=jobs, timeout=90, options=options
        )
        now = datetime.now(UTC)
        due = (now + timedelta(seconds=lead)).replace(microsecond=0)
        rows = [
            job_row(f"burst-{i}", {"kind": "once", "at": due.isoformat()}, now) for i in range(jobs)
        ]
        await insert_jobs(pool, rows)
        if datetime.now(UTC) > due - timedelta(seconds=0.5):
            raise RuntimeError("burst setup overran the due instant; raise --burst-lead")
        result = await worker.finish(timeout=120)
        stored = await stream_messages(broker)
        statuses = dict(
            await pool.fetch("SELECT status, count(*) FROM scheduler.runs GROUP BY status")
        )
        await pool.close()

    acks = sorted(result["acks"])
    first_claim = min(c[0] for c in result["claims"])
    last_ack = acks[-1]
    lags = [a - s for s, a in zip(result["scheduled"], result["acks"], strict=True)]
    ours = {
        "jobs": jobs,
        "acked": result["acked"],
        "stored_in_stream": stored,
        "runs_by_status": statuses,
        "fires_per_s": round(len(acks) / (last_ack - first_claim)),
        "fires_per_s_from_due": round(len(acks) / (last_ack - due.timestamp())),
        "duration_s": round(last_ack - first_claim, 3),
        "first_claim_after_due_ms": rounded((first_claim - due.timestamp()) * 1000),
        "lag_ms": lag_summary(lags),
        "event_loop_stall_ms": {
            k: rounded(v) if isinstance(v, float) else v for k, v in result["loop_stall_ms"].items()
        },
        "claims": [
            {
                "start_ms": rounded((s - due.timestamp()) * 1000),
                "ms": rounded((e - s) * 1000),
                "jobs": n,
            }
            for s, e, n, _ in result["claims"]
        ],
        "relay_batches": [
            {
                "start_ms": rounded((s - due.timestamp()) * 1000),
                "ms": rounded((e - s) * 1000),
                "rows": n,
            }
            for s, e, n, _ in result["relays"]
        ],
    }
    out: dict[str, Any] = {"ours": ours}
    if peer:
        out["peer"] = await burst_peer(env, jobs)
        peer_rate = out["peer"].get("fires_per_s") or 0
        out["ratio_vs_peer"] = round(ours["fires_per_s"] / peer_rate, 1) if peer_rate else None
    out["goal"] = {"lag_p99_ms_max": 250, "ratio_vs_peer_min": 100}
    out["goal_met"] = {
        "lag_p99": (ours["lag_ms"]["p99"] or math.inf) <= 250,
        "ratio_vs_peer": (out.get("ratio_vs_peer") or 0) >= 100 if peer else None,
    }
    return out


async def burst_peer(env: Env, jobs: int) -> dict[str, Any]:
    async with env.database("peer") as dsn:
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        result_path = env.tmp / f"peer-{uuid.uuid4().hex[:6]}.json"
        command = [
            sys.executable,
            str(PEER),
            "--url",
            url,
            "--schedules",
            str(jobs),
            "--lead",
            "8",
            "--timeout",
            "150",
            "--result",
            str(result_path),
        ]
        process = await asyncio.create_subprocess_exec(*command, **child_options())
        env.processes.append(process)
        await asyncio.wait_for(process.wait(), timeout=240)
        if process.returncode != 0:
            raise RuntimeError(f"APScheduler peer exited {process.returncode}")
    result = json.loads(result_path.read_text())
    runs = result["runs"]
    due = result["scheduled"]
    out: dict[str, Any] = {
        "scheduler": f"APScheduler {version('apscheduler')} AsyncScheduler + SQLAlchemyDataStore"
        f" (SQLAlchemy {version('sqlalchemy')}, asyncpg), LocalEventBroker, defaults "
        f"(max_concurrent_jobs={result['max_concurrent_jobs']})",
        "jobs": jobs,
        "fired": len(runs),
        "setup_seconds": round(result["setup_seconds"], 2),
        "setup_overran": result["setup_overran"],
    }
    if runs:
        last = max(r for _, r in runs)
        first = result["first_acquire"] or due
        out |= {
            "fires_per_s": round(len(runs) / (last - first), 1),
            "duration_s": round(last - first, 3),
            "first_acquire_after_due_ms": rounded((first - due) * 1000),
            "lag_ms": lag_summary(r - s for s, r in runs),
        }
    return out


# -- 2. sustained ----------------------------------------------------------------------


def sustained_schedules(count: int, rng: random.Random, base: datetime) -> list[dict[str, Any]]:
    schedules: list[dict[str, Any]] = []
    cron = count // 2
    for i in range(cron):
        period = 5 if i < cron // 2 else 10
        schedules.append(
            {"kind": "cron", "expression": f"{i % period}/{period} * * * * *", "timezone": "UTC"}
        )
    for _ in range(count - cron):
        every = rng.randint(2, 8)
        anchor = base + timedelta(milliseconds=rng.randrange(every * 1000))
        schedules.append({"kind": "interval", "every": every, "anchor": anchor.isoformat()})
    return schedules


def offered_rate(schedules: Sequence[dict[str, Any]]) -> float:
    rate = 0.0
    for s in schedules:
        if s["kind"] == "interval":
            rate += 1 / s["every"]
        else:
            rate += 1 / int(s["expression"].split()[0].split("/")[1])
    return rate


@dataclass
class Snapshot:
    at: float
    stored: int
    worker_cpu: float | None
    postgres_cpu: float | None
    nats_cpu: float | None
    busy: tuple[float, float]


async def snapshot(env: Env, broker: Broker, worker: Worker) -> Snapshot:
    return Snapshot(
        time.time(),
        await stream_messages(broker),
        cpu_seconds(worker.pid),
        cpu_seconds(env.postgres_pid, children=True),
        cpu_seconds(env.nats_pid),
        machine_busy(),
    )


async def table_health(pool: asyncpg.Pool) -> dict[str, Any]:
    """Dead tuples per table, and what the relay's outbox query costs right now."""
    stats = await pool.fetch(
        "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables "
        "WHERE schemaname = 'scheduler' AND relname IN ('jobs', 'runs', 'outbox')"
    )
    plan = await pool.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id, subject, payload, headers, "
        "completes FROM scheduler.outbox ORDER BY id LIMIT 2000"
    )
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]
    return {
        **{r["relname"]: {k: r[k] for k in list(r.keys())[1:]} for r in stats},
        "outbox_first_2000_rows_query_ms": round(top["Execution Time"], 1),
        "outbox_first_2000_rows_shared_buffers": top["Plan"].get("Shared Hit Blocks", 0)
        + top["Plan"].get("Shared Read Blocks", 0),
    }


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 2)


async def sustained(
    env: Env, jobs: int, warmup: float, window: float, profile: float = 0.0
) -> dict[str, Any]:
    rng = random.Random(7)
    async with env.database("sustained") as dsn, env.streams() as broker:
        pool = await scheduler_pool(env, dsn)
        setup_start = time.time()
        # Jobs start firing at `base`; everything before it is setup.
        base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=12)
        schedules = sustained_schedules(jobs, rng, base)
        rows = [job_row(f"s-{i}", s, base) for i, s in enumerate(schedules)]
        await insert_jobs(pool, rows)
        await pool.execute("VACUUM ANALYZE scheduler.jobs")
        worker = await start_worker(env, dsn, _namespace(broker), "sustained")
        setup_seconds = time.time() - setup_start
        overran = time.time() > base.timestamp()
        await asyncio.sleep(max(0.0, base.timestamp() - time.time()))
        w0 = base.timestamp() + warmup
        await asyncio.sleep(max(0.0, w0 - time.time()))
        first = await snapshot(env, broker, worker)
        timeline = []
        while time.time() < w0 + window:
            await asyncio.sleep(min(5.0, w0 + window - time.time()))
            timeline.append((time.time(), await stream_messages(broker)))
        last = await snapshot(env, broker, worker)
        backlog = {
            "due_jobs_unclaimed": await pool.fetchval(
                "SELECT count(*) FROM scheduler.jobs WHERE next_fire_at <= now()"
            ),
            "outbox_rows": await pool.fetchval("SELECT count(*) FROM scheduler.outbox"),
            "oldest_unclaimed_due_s": rounded(
                await pool.fetchval(
                    "SELECT extract(epoch FROM now() - min(next_fire_at)) FROM scheduler.jobs "
                    "WHERE next_fire_at <= now()"
                )
            ),
            "tables": await table_health(pool),
        }
        profiled = None
        if profile and env.py_spy is None:
            profiled = {"error": "py-spy is not installed (uv sync --group bench)"}
        elif profile:
            # After the measured window, so that py-spy's own CPU does not count in it.
            profiled = await finish_profile(*start_profile(env, worker.pid, profile), profile)
        worker.terminate()
        result = await worker.finish(timeout=60)
        await pool.close()
    w1 = last.at
    in_window = [
        (s, a) for s, a in zip(result["scheduled"], result["acks"], strict=True) if w0 <= a < w1
    ]
    span = w1 - first.at
    claims = [c for c in result["claims"] if w0 <= c[0] < w1]
    claimed_jobs = sum(c[2] for c in claims)
    decided = sum(c[3] for c in claims)
    busy = (last.busy[0] - first.busy[0]) / (last.busy[1] - first.busy[1])
    previous = (first.at, first.stored)
    rates = []
    for at, stored in timeline:
        rates.append(round((stored - previous[1]) / (at - previous[0])))
        previous = (at, stored)
    out: dict[str, Any] = {
        "jobs": jobs,
        "mix": "25k cron o/5 s, 25k cron o/10 s (offsets spread), 50k interval 2-8 s "
        "(anchors spread)",
        "offered_fires_per_s": round(offered_rate(schedules)),
        "setup_seconds": round(setup_seconds, 1),
        "setup_overran_start": overran,
        "warmup_s": warmup,
        "window_s": round(span, 2),
        "fires_per_s": round(len(in_window) / span),
        "stream_stored_per_s": round((last.stored - first.stored) / span),
        "fires_per_s_every_5s": rates,
        "lag_ms_in_window": lag_summary(a - s for s, a in in_window),
        "lag_ms_last_5s": lag_summary(a - s for s, a in in_window if a >= w1 - 5),
        "claims_in_window": len(claims),
        "jobs_claimed_per_s": round(claimed_jobs / span),
        "runs_decided_per_s": round(decided / span),
        "runs_per_claimed_job": round(decided / claimed_jobs, 2) if claimed_jobs else None,
        "mean_claim_ms": rounded(sum(c[1] - c[0] for c in claims) / len(claims) * 1000)
        if claims
        else None,
        "firer_busy_fraction": round(sum(c[1] - c[0] for c in claims) / span, 3),
        "relay_batches_first_vs_last_10s": [
            _relay_stats([r for r in result["relays"] if w0 <= r[0] < w0 + 10]),
            _relay_stats([r for r in result["relays"] if w1 - 10 <= r[0] < w1]),
        ],
        "relay_busy_fraction": round(
            sum(r[1] - r[0] for r in result["relays"] if w0 <= r[0] < w1) / span, 3
        ),
        "backlog_at_window_end": backlog,
        "cpu_seconds_per_s": {
            "scheduler_process": _per_s(_delta(first.worker_cpu, last.worker_cpu), span),
            "postgresql": _per_s(_delta(first.postgres_cpu, last.postgres_cpu), span),
            "nats_server": _per_s(_delta(first.nats_cpu, last.nats_cpu), span),
            "machine_busy_fraction": round(busy, 3),
        },
        "event_loop_stall_ms": {
            k: rounded(v) if isinstance(v, float) else v for k, v in result["loop_stall_ms"].items()
        },
        "gc_fraction_of_process_wall": round(
            sum(result["gc_seconds"]) / (result["stopped"] - result["started"]), 3
        ),
        "gc_collections_by_generation": result["gc_collections"],
        "gc_seconds_by_generation": [round(x, 2) for x in result["gc_seconds"]],
        "gc_tracked_objects_at_stop": result["gc_tracked_objects_at_stop"],
        "gc_tracked_kinds_at_stop": dict(result["gc_tracked_kinds_at_stop"][:8]),
        "other_acks": result["other_acks"],
        "goal_fires_per_s": 15_000,
    }
    out["goal_met"] = out["fires_per_s"] >= 15_000
    if profiled is not None:
        out["profile"] = profiled
    return out


def _relay_stats(batches: list[list[float]]) -> dict[str, Any]:
    if not batches:
        return {}
    rows = sum(b[2] for b in batches)
    seconds = sum(b[1] - b[0] for b in batches)
    return {
        "batches": len(batches),
        "mean_ms": round(seconds / len(batches) * 1000, 1),
        "rows_per_s_while_busy": round(rows / seconds) if seconds else None,
    }


def _per_s(value: float | None, span: float) -> float | None:
    return None if value is None else round(value / span, 2)


# -- profiling -------------------------------------------------------------------------

PROFILE_GROUPS = {
    # label: py-spy frame names (qualified), counted inclusively
    "claim transaction, Python side (Firer.fire_due)": ["Firer.fire_due"],
    "  claim_due: rows → JobRecord": ["PostgresJobStore.claim_due"],
    "    JobDefinition.model_validate (_record)": ["_record"],
    "  plan_due / next_fire": ["plan_due"],
    "  Dispatcher.fire: params, StartWorkflow, encode": ["Dispatcher.fire"],
    "    Broker.encode": ["Broker.encode"],
    "    run_id_for (uuid5)": ["run_id_for"],
    "  insert_runs (arguments → wire)": ["PostgresJobStore.insert_runs"],
    "  insert_outbox (arguments → wire, headers → JSON)": ["PostgresJobStore.insert_outbox"],
    "  set_next_fire": ["PostgresJobStore.set_next_fire"],
    "relay batch, Python side (OutboxRelay.relay_once)": ["OutboxRelay.relay_once"],
    "  PostgresOutbox.lock (rows, headers JSON → dict)": ["PostgresOutbox.lock"],
    "  Broker.publish_encoded (publish_async per message)": ["Broker.publish_encoded"],
    "  PostgresOutbox.delete": ["PostgresOutbox.delete"],
    "next_due query": ["PostgresJobStore.next_due"],
    "nats-py reading socket (acks → futures)": ["Client._read_loop"],
    "nats-py flusher (socket writes)": ["Client._flusher"],
}
_PASS_THROUGH = {"<module>", "main", "run", "until_done"}
_PROJECT_CODE = ("jobwire/", "scheduler/", "runtime/", "contracts/", "nats/", "asyncpg/")
IDLE_FRAMES = {"EpollSelector.select", "select", "poll", "epoll_wait"}


def start_profile(env: Env, pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
    variant = "-".join(sorted(env.experiments)) or "shipped"
    out = env.tmp / f"sustained-{variant}.pyspy"
    process = subprocess.Popen(
        [
            str(env.py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "100",
            "--nonblocking",
            "--idle",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, out


async def finish_profile(
    process: subprocess.Popen[bytes], out: Path, seconds: float
) -> dict[str, Any]:
    try:
        await asyncio.to_thread(process.wait, seconds + 15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return summarize_profile(out, process.returncode, seconds)


def summarize_profile(out: Path, exit_code: int | None, seconds: float) -> dict[str, Any]:
    if not out.exists():
        return {"error": f"py-spy wrote nothing (exit {exit_code})"}
    stacks: list[tuple[list[str], int]] = []
    instrumentation = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        named = [f.split(" (", 1) for f in stack.split(";")]
        frames = [n[0] for n in named]
        stacks.append((frames, int(count)))
        # The bench's own wrappers: samples inside them but not in the code they wrap.
        ours = [
            i
            for i, n in enumerate(named)
            if len(n) > 1 and n[1].startswith("_scheduler_worker.py") and n[0] not in _PASS_THROUGH
        ]
        if ours and not any(
            len(n) > 1 and n[1].startswith(_PROJECT_CODE) for n in named[ours[-1] + 1 :]
        ):
            instrumentation += int(count)
    total = sum(c for _, c in stacks) or 1
    groups = {}
    for label, names in PROFILE_GROUPS.items():
        hits = sum(c for frames, c in stacks if any(n in frames for n in names))
        groups[label] = round(100 * hits / total, 1)
    leaf: Counter[str] = Counter()
    for frames, c in stacks:
        leaf[frames[-1] if frames else "?"] += c
    idle = sum(c for frames, c in stacks if frames and frames[-1] in IDLE_FRAMES)
    saved = BENCH / "results" / f"scheduler-{out.stem}.pyspy.txt"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(out.read_text())
    return {
        "samples": total,
        "seconds": seconds,
        "note": "% of wall-clock samples of the scheduler's main thread (py-spy --idle, "
        "--nonblocking, 100 Hz, taken right after the measured window, same load): time "
        "awaiting PostgreSQL/NATS shows up as the event loop idle in select; garbage "
        "collector pauses are charged to whichever frame allocated when one started "
        "(see gc_seconds_by_generation for the collector's own measured time)",
        "idle_in_event_loop_pct": round(100 * idle / total, 1),
        "inclusive_pct": groups,
        "bench_instrumentation_pct": round(100 * instrumentation / total, 1),
        "top_self_pct": {k: round(100 * v / total, 1) for k, v in leaf.most_common(25)},
        "raw": str(saved.relative_to(BENCH.parent)),
    }


# -- 3. replicas -----------------------------------------------------------------------


async def replicas(env: Env, jobs: int, count: int, spread: float) -> dict[str, Any]:
    async with env.database("replicas") as dsn, env.streams() as broker:
        pool = await scheduler_pool(env, dsn)
        workers = [
            await start_worker(env, dsn, _namespace(broker), f"replica{i}", keep_ids=True)
            for i in range(count)
        ]
        now = datetime.now(UTC)
        base = now + timedelta(seconds=2)
        step = spread / jobs
        rows = [
            job_row(
                f"r-{i}",
                {"kind": "once", "at": (base + timedelta(seconds=i * step)).isoformat()},
                now,
            )
            for i in range(jobs)
        ]
        await insert_jobs(pool, rows)
        deadline = base.timestamp() + spread + 30
        while time.time() < deadline:
            if await stream_messages(broker) >= jobs:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # anything late or duplicated would show up now
        for worker in workers:
            worker.terminate()
        results = [await worker.finish(timeout=60) for worker in workers]

        no_run = await pool.fetchval(
            "SELECT count(*) FROM scheduler.jobs j WHERE NOT EXISTS "
            "(SELECT 1 FROM scheduler.runs r WHERE r.job_id = j.id)"
        )
        multi_run = await pool.fetchval(
            "SELECT count(*) FROM (SELECT job_id FROM scheduler.runs GROUP BY job_id "
            "HAVING count(*) > 1) m"
        )
        statuses = dict(
            await pool.fetch("SELECT status, count(*) FROM scheduler.runs GROUP BY status")
        )
        outbox_left = await pool.fetchval("SELECT count(*) FROM scheduler.outbox")
        job_ids = {str(r["id"]) for r in await pool.fetch("SELECT id FROM scheduler.jobs")}
        messages = await read_stream(broker)
        await pool.close()

    msg_ids = Counter(m for m, _ in messages)
    runs_per_job: dict[str, set[str]] = {}
    for msg_id, job_id in messages:
        runs_per_job.setdefault(job_id, set()).add(msg_id)
    lags = [
        a - s
        for r in results
        for s, a in zip(r["scheduled"], r["acks"], strict=True)
        if not math.isnan(s)
    ]
    acked_ids = Counter(i for r in results for i in r["ids"])
    stream_dupes = sum(n - 1 for n in msg_ids.values() if n > 1)
    jobs_two_runs_stream = sum(1 for ids in runs_per_job.values() if len(ids) > 1)
    missed_stream = len(job_ids - runs_per_job.keys())
    out = {
        "replicas": count,
        "processes": "separate OS processes, each with its own asyncpg pool and NATS connection",
        "jobs": jobs,
        "due_spread_s": spread,
        "fired": len(msg_ids),
        "stream_messages": len(messages),
        "per_replica_acked": [r["acked"] for r in results],
        "duplicates": {
            "same_run_id_twice_in_stream": stream_dupes,
            "jobs_with_two_runs_in_stream": jobs_two_runs_stream,
            "jobs_with_two_runs_in_db": multi_run,
            "run_ids_acked_by_two_replicas": sum(1 for n in acked_ids.values() if n > 1),
            "republishes_absorbed_by_stream_dedupe": sum(r["duplicate_acks"] for r in results),
        },
        "missed": {
            "jobs_without_run_in_db": no_run,
            "jobs_without_message_in_stream": missed_stream,
        },
        "runs_by_status": statuses,
        "outbox_left": outbox_left,
        "publish_errors": sum(r["publish_errors"] for r in results),
        "lag_ms": lag_summary(lags),
        "goal": {"duplicates": 0, "missed": 0},
    }
    dupes = stream_dupes + jobs_two_runs_stream + multi_run
    missed = no_run + missed_stream
    out["goal_met"] = dupes == 0 and missed == 0 and len(msg_ids) == jobs
    return out


async def read_stream(broker: Broker) -> list[tuple[str, str]]:
    """(Nats-Msg-Id, origin job id) of every StartWorkflow stored."""
    total = await stream_messages(broker)
    sub = await broker.js.pull_subscribe(
        broker.subjects.all_workflow_start(),
        stream=broker.subjects.stream_name(Stream.WORKFLOWS),
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, max_ack_pending=-1),
    )
    out: list[tuple[str, str]] = []
    try:
        while len(out) < total:
            try:
                msgs = await sub.fetch(1000, timeout=2.0)
            except TimeoutError:
                break
            for msg in msgs:
                body = json.loads(msg.data)
                out.append(
                    ((msg.headers or {}).get("Nats-Msg-Id", ""), body["data"]["origin"]["job_id"])
                )
    finally:
        await sub.unsubscribe()
    return out


# -- main ------------------------------------------------------------------------------


async def run(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    try:
        return await run_scenarios(env, args)
    finally:
        await env.kill_leftovers()


async def run_scenarios(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    admin = await asyncpg.connect(env.admin_dsn)
    try:
        env.info["postgresql"] = await admin.fetchval("SELECT version()")
        env.info["postgresql_settings"] = {
            name: await admin.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
    finally:
        await admin.close()
    async with env.streams() as broker:
        env.info["nats_server"] = broker.nc.connected_server_version.__str__()

    results: dict[str, Any] = {}
    scenarios = args.scenarios.split(",")
    if "burst" in scenarios:
        started = time.time()
        results["burst_2000"] = await burst(env, args.burst_jobs, args.burst_lead, not args.no_peer)
        results["burst_2000"]["wall_s"] = round(time.time() - started, 1)
        _print_burst(results["burst_2000"])
        if args.what_if_window > 0:
            options = {"claim_batch": 250}
            smaller = (await burst(env, args.burst_jobs, args.burst_lead, False, options))["ours"]
            results["burst_2000"]["what_if"] = {
                "claim_batch_250": {
                    "changes": [f"SchedulerOptions {json.dumps(options)} (default 1000)"],
                    **{k: smaller[k] for k in ("fires_per_s", "lag_ms", "claims", "relay_batches")},
                }
            }
            print(
                f"  what-if claim_batch 250: {smaller['fires_per_s']:,} fires/s, "
                f"lag p99 {smaller['lag_ms']['p99']} ms",
                flush=True,
            )
    if "sustained" in scenarios:
        started = time.time()
        results["sustained_100k"] = await sustained(
            env, args.sustained_jobs, args.warmup, args.window, args.profile
        )
        results["sustained_100k"]["wall_s"] = round(time.time() - started, 1)
        _print_sustained(results["sustained_100k"])
        if args.what_if_window > 0:
            results["sustained_100k"]["what_if"] = await what_if(env, args)
    if "replicas" in scenarios:
        started = time.time()
        results["replicas_3"] = await replicas(env, args.replica_jobs, args.replicas, args.spread)
        results["replicas_3"]["wall_s"] = round(time.time() - started, 1)
        _print_replicas(results["replicas_3"])
    return results


WHAT_IF = (("no-definition-cache",),)
WHAT_IF_KEYS = (
    "fires_per_s",
    "stream_stored_per_s",
    "runs_decided_per_s",
    "jobs_claimed_per_s",
    "runs_per_claimed_job",
    "mean_claim_ms",
    "gc_fraction_of_process_wall",
    "event_loop_stall_ms",
    "firer_busy_fraction",
    "relay_busy_fraction",
    "backlog_at_window_end",
    "cpu_seconds_per_s",
)


async def what_if(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """The sustained scenario again, shorter, with changes the scheduler does not ship."""
    out: dict[str, Any] = {}
    shipped = env.experiments
    try:
        for variant in WHAT_IF:
            env.experiments = frozenset(variant)
            profile = 0.0
            warmup = min(args.warmup, 5.0)
            r = await sustained(env, args.sustained_jobs, warmup, args.what_if_window, profile)
            name = "+".join(variant)
            out[name] = {
                "changes": [EXPERIMENTS[v] for v in variant],
                "warmup_s": warmup,
                "window_s": r["window_s"],
                **{k: r[k] for k in WHAT_IF_KEYS},
            }
            if "profile" in r:
                out[name]["profile"] = r["profile"]
            print(
                f"  what-if {name}: {r['fires_per_s']:,} fires/s acked, "
                f"{r['runs_decided_per_s']:,} runs/s decided, outbox left "
                f"{r['backlog_at_window_end']['outbox_rows']:,}",
                flush=True,
            )
    finally:
        env.experiments = shipped
    return out


def _print_burst(r: dict[str, Any]) -> None:
    ours, peer = r["ours"], r.get("peer", {})
    lag = ours["lag_ms"]
    line = (
        f"burst_2000: {ours['fires_per_s']:,} fires/s, lag p50 {lag['p50']} ms p99 {lag['p99']} ms "
        f"max {lag['max']} ms"
    )
    if peer:
        plag = peer.get("lag_ms", {})
        line += (
            f" · APScheduler {peer.get('fires_per_s')} fires/s, lag p99 {plag.get('p99')} ms"
            f" · ratio {r.get('ratio_vs_peer')}x"
        )
    print(line + f" · goals met: {r['goal_met']}", flush=True)


def _print_sustained(r: dict[str, Any]) -> None:
    lag = r["lag_ms_in_window"]
    print(
        f"sustained_100k: {r['fires_per_s']:,} fires/s over {r['window_s']} s "
        f"(offered {r['offered_fires_per_s']:,}/s, stream {r['stream_stored_per_s']:,}/s), "
        f"lag p50 {lag['p50']} ms p99 {lag['p99']} ms, scheduler CPU "
        f"{r['cpu_seconds_per_s']['scheduler_process']} s/s · goal ≥15,000: {r['goal_met']}",
        flush=True,
    )


def _print_replicas(r: dict[str, Any]) -> None:
    d, m = r["duplicates"], r["missed"]
    print(
        f"replicas_3: fired {r['fired']:,}/{r['jobs']:,}, duplicates "
        f"{d['same_run_id_twice_in_stream'] + d['jobs_with_two_runs_in_stream']} (db "
        f"{d['jobs_with_two_runs_in_db']}), missed {m['jobs_without_run_in_db']} (stream "
        f"{m['jobs_without_message_in_stream']}), split {r['per_replica_acked']}, "
        f"dedupe-absorbed {d['republishes_absorbed_by_stream_dedupe']} · goal met: {r['goal_met']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/scheduler.json"))
    parser.add_argument("--scenarios", default="burst,sustained,replicas")
    parser.add_argument("--burst-jobs", type=int, default=2000)
    parser.add_argument("--burst-lead", type=float, default=3.0)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--sustained-jobs", type=int, default=100_000)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument(
        "--profile",
        type=float,
        default=10.0,
        help="seconds of py-spy on the sustained scheduler after its window (0: none)",
    )
    parser.add_argument(
        "--what-if-window",
        type=float,
        default=20.0,
        help="window of the sustained what-if runs (0: skip them)",
    )
    parser.add_argument("--replica-jobs", type=int, default=20_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--spread", type=float, default=10.0)
    parser.add_argument(
        "--scheduler-options",
        type=json.loads,
        default={},
        help="SchedulerOptions JSON for every scheduler process (default: the service's defaults)",
    )
    parser.add_argument(
        "--experiment",
        action="append",
        choices=sorted(EXPERIMENTS),
        default=[],
        help="try a change the scheduler does not ship (for what-if numbers; off by default)",
    )
    parser.add_argument("--database-url", default=os.environ.get("JOBWIRE_BENCH_DATABASE_URL"))
    parser.add_argument("--nats-url", default=os.environ.get("JOBWIRE_BENCH_NATS_URL"))
    args = parser.parse_args()

    started = time.time()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="jobwire-bench-scheduler-"))
    tmp.chmod(0o755)  # PostgreSQL runs as the postgres OS user when we are root
    postgres = nats_server = None
    try:
        if not args.database_url:
            postgres = PostgresServer(tmp / "pg")
            postgres.start()
        if not args.nats_url:
            nats_server = NatsServer(tmp / "nats")
            nats_server.start()
        env = Env(
            admin_dsn=args.database_url or postgres.dsn,  # type: ignore[union-attr]
            nats_url=args.nats_url or nats_server.url,  # type: ignore[union-attr]
            postgres_pid=postgres.pid if postgres else None,
            nats_pid=nats_server.pid if nats_server else None,
            tmp=tmp,
            options=args.scheduler_options,
            experiments=frozenset(args.experiment),
        )
        installed = Path(sys.executable).parent / "py-spy"
        if installed.exists():
            # A private copy: a concurrent `uv sync` without the bench group must not
            # take it away in the middle of the run.
            env.py_spy = tmp / "py-spy"
            shutil.copy2(installed, env.py_spy)
        results = asyncio.run(run(env, args))
    finally:
        if nats_server is not None:
            nats_server.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    document = {
        "benchmark": "scheduler",
        "scheduler_options": args.scheduler_options or "service defaults",
        "experiments": {name: EXPERIMENTS[name] for name in args.experiment} or None,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": __doc__,
        **results,
        "environment": {
            **machine_info(SCHEDULER_PACKAGES),
            **env.info,
            "load_average_1m_before_and_after": [
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
            "postgresql_server": "private (embedded, same machine)"
            if postgres
            else "JOBWIRE_BENCH_DATABASE_URL",
            "nats": "private nats-server, JetStream file storage, same machine"
            if nats_server
            else "JOBWIRE_BENCH_NATS_URL",
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"→ {args.out} ({document['wall_seconds']} s)")


if __name__ == "__main__":
    main()
