"""Search sync benchmark: a `search-full-load` of 500,000 cases vs. a bare bulk loop, then
`search-incremental` every second under 500 changes/s: committed → searchable.

Everything runs on this machine, on private servers this script starts and
stops by PID: PostgreSQL and a nats-server (``private_servers`` of
bench/api.py) and osmem-server (``jobwire.runtime.embedded.SearchServer``, an
in-memory engine speaking the OpenSearch REST API; not OpenSearch: its costs
are not Lucene's). The sync runs as deployed — ``python -m jobwire.cli
search-sync``, its own process, configured by ``JOBWIRE_*`` variables, its
source DSN a secret file — so its CPU and RSS come from /proc alone.

Source: a scratch database with caseapp, ``--cases`` cases with 3 tasks and
2 comments each (and caseapp's one attachment and one email, not indexed),
``ANALYZE``d, then the change capture installed. The document of a case: its
fields, tasks and comments nested, its customer as an object (the profile of
the service's own tests).

1. ``bare`` — the documents read once from PostgreSQL with the sync's own
   SQL (``documents_sql(plan)``) into memory before the clock starts, then
   sent into a fresh index with the same client and port
   (``open_engine(...).bulk``, opensearch-py), in requests cut by the same
   rule as the sync's BulkWriter (``batch_size`` writes, ``max_bulk_bytes``)
   with ``concurrency`` in flight. Then the engine is restarted (empty) for the sync.
2. ``full_load`` — one `search-full-load` run (a JobDue as the scheduler fires
   it): seconds from publishing the JobDue to its RunFinished (index
   creation, the count check, the alias swap included); documents/s; CPU of
   the sync, the engine, PostgreSQL; the sync's RSS every ``--rss-interval``
   (min, max, least-squares slope). Ratio = sync docs/s ÷ bare docs/s (goal ≥ 0.70).
3. ``incremental`` — a `search-incremental` JobDue published every second
   (the benchmark plays the scheduler; the service runs up to its default
   4 at once) while ``Churn.run(rate, seconds, mix)`` writes caseapp's default
   mix (case inserts, updates, closes and deletes; task updates, comment
   inserts and deletes). Every ``--sample-every``-th change is checked: right
   after its commit the expected document is read from the source with the
   sync's SQL (None for a deleted case) and the engine is polled (``_mget``
   by id through the alias, every ``POLL_SECONDS``) until it holds exactly that;
   latency = first seen - ``Change.committed_at``. A later change to a pending
   case re-targets the sample to that change (its commit time, its document:
   ``retargeted``), since the earlier state may never be visible. ``missed``:
   not seen ``MISS_AFTER_SECONDS`` after the churn ended. Then runs are fired
   until one finds no change, and ``stale`` compares every case's document in
   the index with the source's (missing, different, or extra documents).
   Note: ``_mget`` is real-time; searches see a write after the index's
   refresh (1 s by default in OpenSearch) — osmem-server's may differ.

PostgreSQL's CPU: ``postgresql`` is the postmaster with every backend (those
that ended included: the postmaster reaps them). The backends of the sync are
found by ``application_name = 'jobwire-search-sync'`` in ``pg_stat_activity``
and their CPU sampled every ``BACKEND_INTERVAL`` (``sync_backends_sampled``:
a lower bound — a backend loses up to one interval at its end, and an
incremental run's short-lived connection may end unseen); ``attributed_to_sync``
is the total less the benchmark's own connections (churn, checker, monitor,
read exactly) and the other long-lived processes (checkpointer, walwriter …).

``--profile`` records the sync with py-spy for ``PROFILE_SECONDS`` during the full
load (py-spy is in the bench group: run from ``.jobwire/bench-venv``).
``--quick``: 2,000 cases, 10 s of churn at 100/s, for the smoke test
(tests/test_bench_search.py). The machine is
shared: each window records the busy fraction of all CPUs. Run: ``make bench-search``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import opensearchpy
from _measure import (
    RssSampler,
    Window,
    cpu_seconds,
    finish_profile,
    machine_info,
    merge_results,
    percentile,
    rounded,
    start_profile,
)
from api import Env, private_servers

import caseapp
from caseapp.churn import DEFAULT_MIX
from jobwire.contracts.envelope import decode
from jobwire.contracts.runs import RunFinished
from jobwire.contracts.search import DocumentProfile, EngineConfig, SearchFullLoadParams
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import SearchServer, child_options, free_port
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.settings import ServiceSettings
from jobwire.search_sync.adapters import source
from jobwire.search_sync.adapters.engine import SearchEngine, Write, open_engine
from jobwire.search_sync.domain.mapping import mappings
from jobwire.search_sync.domain.plan import Plan, resolve, tables_named
from jobwire.search_sync.domain.sql import documents_of_keys_sql, documents_sql
from jobwire.search_sync.full_load import DEFAULT_SETTINGS
from jobwire.search_sync.sync import _ACTION_BYTES
from jobwire.testing import job_due
from jobwire.testing.databases import scratch_database

PACKAGES = ("jobwire-search-sync", "jobwire-runtime", "opensearch-py", "asyncpg", "osmem-server")
COMMAND = "make bench-search"
GOAL_RATIO = 0.70
GOAL_P99_SECONDS = 2.0
RSS_FLAT_BOUND_MIB = 32
DSN_SECRET = "caseapp-dsn"  # noqa: S105 (the name of a secret, not one)
ALIAS = "cases"
SYNC_APPLICATION = source.APPLICATION_NAME
CHURN_APPLICATION = "jobwire-bench-churn"
CHECKER_APPLICATION = "jobwire-bench-checker"
MONITOR_APPLICATION = "jobwire-bench-monitor"
BACKEND_INTERVAL = 0.2
POLL_SECONDS = 0.05
MGET_CHUNK = 1000
MISS_AFTER_SECONDS = 30.0
INCREMENTAL_EVERY_SECONDS = 1.0
PROFILE_SECONDS = 20.0
ENGINE_RSS_INTERVAL = 2.0
READER_TIMEOUT = 120.0  # osmem-server answered a poll in more than 30 s once, with 500k cases
CHURN_CONNECTIONS = 8

#: The document of a case: its fields, tasks and comments nested, its customer as an object.
CASE_PROFILE: dict[str, Any] = {
    "root": "caseapp.cases",
    "fields": ["id", "reference", "title", "status", "priority", "tags", "amount", "closed_at"],
    "children": [
        {"table": "caseapp.tasks", "fields": ["id", "title", "state"]},
        {"table": "caseapp.comments", "fields": ["id", "author", "body"]},
    ],
    "lookups": [{"table": "caseapp.customers", "field": "customer", "fields": ["id", "name"]}],
}


@dataclass
class Setup:
    env: Env
    engine_server: SearchServer
    dsn: str
    namespace: str
    args: argparse.Namespace
    plan: Plan

    def params(self, **fields: Any) -> dict[str, Any]:
        """Parameters of a search job on the bench's caseapp source into ``ALIAS``."""
        values: dict[str, Any] = {
            "source": {"dsn": DSN_SECRET},
            "engine": {"kind": "opensearch", "urls": [self.engine_server.url]},
            "profile": CASE_PROFILE,
            "index": {"alias": ALIAS},
        }
        for name in ("batch_size", "concurrency", "max_bulk_bytes"):
            if getattr(self.args, name) is not None:
                values[name] = getattr(self.args, name)
        return values | fields


def load_params(setup: Setup) -> SearchFullLoadParams:
    """The full load's parameters as the service will read them (defaults filled in)."""
    extra = {"fetch_size": setup.args.fetch_size} if setup.args.fetch_size else {}
    return SearchFullLoadParams.model_validate(setup.params(**extra))


# -- the source ---------------------------------------------------------------------------------


async def prepare_source(dsn: str, cases: int) -> tuple[Plan, dict[str, Any]]:
    """caseapp with ``cases`` cases, analysed, change capture installed; the plan, and timings."""
    await caseapp.install(dsn)
    started = time.perf_counter()
    counts = await caseapp.generate(dsn, cases=cases, tasks_per_case=3, comments_per_case=2)
    generated = time.perf_counter() - started
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("ANALYZE")  # as an application database in use would be
        wanted = DocumentProfile.model_validate(CASE_PROFILE)
        catalog = await source.read_catalog(connection, tables_named(wanted))
        plan = resolve(wanted, catalog)
        await source.install(connection, plan)
    finally:
        await connection.close()
    return plan, {"rows": counts, "generate_seconds": round(generated, 1)}


async def prebuild(dsn: str, plan: Plan, fetch_size: int) -> tuple[list[Write], float]:
    """Every document as the sync would write it, read once with its SQL; and the seconds."""
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    writes: list[Write] = []
    try:
        async with source.snapshot(connection) as snap:
            cursor = await connection.cursor(documents_sql(plan))
            while rows := await cursor.fetch(fetch_size):
                writes.extend(
                    Write("index", r["id"], snap.version, r["document"].encode()) for r in rows
                )
    finally:
        await connection.close()
    return writes, time.perf_counter() - started


def cut(writes: Sequence[Write], batch_size: int, max_bytes: int) -> list[list[Write]]:
    """Requests as BulkWriter cuts them: ``batch_size`` writes, ``max_bytes`` with action lines."""
    requests: list[list[Write]] = []
    batch: list[Write] = []
    size = 0
    for write in writes:
        item = len(write.source or b"") + _ACTION_BYTES
        if batch and (len(batch) >= batch_size or size + item > max_bytes):
            requests.append(batch)
            batch, size = [], 0
        batch.append(write)
        size += item
    if batch:
        requests.append(batch)
    return requests


# -- PostgreSQL backends ---------------------------------------------------------------------------


class BackendSampler:
    """CPU of PostgreSQL's processes by ``application_name`` (or backend type), sampled.

    Each process's CPU is counted from its first sample (0 if it started after
    the sampler did) to its last; what it used after its last sample is lost.
    """

    def __init__(self, pool: asyncpg.Pool, interval: float) -> None:
        self.pool = pool
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._sample(initial=True)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._sample(initial=False)

    async def _sample(self, initial: bool) -> None:
        rows = await self.pool.fetch(
            "SELECT pid, application_name, backend_type FROM pg_stat_activity"
        )
        for row in rows:
            pid = row["pid"]
            used = cpu_seconds(pid)
            if used is None:
                continue
            if pid not in self.first:
                self.first[pid] = used if initial else 0.0
                self.group[pid] = row["application_name"] or row["backend_type"] or "?"
            self.last[pid] = used

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._sample(initial=False)
        used: defaultdict[str, float] = defaultdict(float)
        for pid, first in self.first.items():
            used[self.group[pid]] += self.last[pid] - first
        return {name: round(seconds, 2) for name, seconds in sorted(used.items())}


def postgres_split(window: dict[str, Any], backends: dict[str, float]) -> dict[str, Any]:
    """PostgreSQL's CPU: total, the sync's backends as sampled, and what is left for the sync
    once the benchmark's own connections and the long-lived background processes are taken off."""
    total = window["cpu_seconds"].get("postgresql")
    ours = sum(v for k, v in backends.items() if k.startswith("jobwire-bench-"))
    sampled = backends.get(SYNC_APPLICATION, 0.0)
    background = sum(
        v for k, v in backends.items() if k != SYNC_APPLICATION and not k.startswith("jobwire-")
    )
    return {
        "total": total,
        "sync_backends_sampled": round(sampled, 2),
        "attributed_to_sync": None if total is None else round(total - ours - background, 2),
        "benchmark_connections": round(ours, 2),
        "background_processes_sampled": round(background, 2),
        "by_application_or_type": backends,
    }


# -- the sync process -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sync_process(setup: Setup) -> AsyncIterator[int]:
    """``jobwire search-sync`` in its own process, ready; yields its pid."""
    port = free_port()
    secrets = setup.env.tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / DSN_SECRET).write_text(setup.dsn)
    child_env = {
        **os.environ,
        "JOBWIRE_NATS__URL": setup.env.nats_url,
        "JOBWIRE_NAMESPACE": setup.namespace,
        "JOBWIRE_HTTP_HOST": "127.0.0.1",
        "JOBWIRE_HTTP_PORT": str(port),
        "JOBWIRE_HOST": "bench-search",
        "JOBWIRE_LOG_LEVEL": setup.args.log_level,
        "JOBWIRE_LOG_FORMAT": "json",
        "JOBWIRE_SEARCH__SECRETS_DIR": str(secrets),
    }
    log = (setup.env.tmp / "search-sync.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobwire.cli",
        "search-sync",
        env=child_env,
        stdout=log,
        stderr=log,
        **child_options(),  # dies with the benchmark, however it ends
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the sync exited {process.returncode}; see {log.name}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the sync did not become ready in 60 s")
                await asyncio.sleep(0.2)
        yield process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


class Runs:
    """Fires runs as the scheduler does and collects their RunFinished (a core subscription
    sees each the moment JetStream stores it)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.finished: dict[str, tuple[float, RunFinished]] = {}
        self._waiting: dict[str, asyncio.Future[tuple[float, RunFinished]]] = {}
        self._sub: Any = None

    async def start(self) -> None:
        subject = f"{self.broker.subjects.namespace}.runs.*.finished"
        self._sub = await self.broker.nc.subscribe(subject, cb=self._on_finished)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_finished(self, msg: Any) -> None:
        result = decode(msg.data, RunFinished).data
        entry = (time.perf_counter(), result)
        self.finished[result.run_id] = entry
        waiting = self._waiting.pop(result.run_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(entry)

    async def fire(self, job_type: str, params: dict[str, Any], timeout: float) -> str:
        due = job_due(job_type, params, timeout_seconds=timeout)
        self._waiting[due.run_id] = asyncio.get_running_loop().create_future()
        await self.broker.publish(self.broker.subjects.job_due(job_type), due, msg_id=due.run_id)
        return due.run_id

    async def wait(self, run_id: str, timeout: float) -> tuple[float, RunFinished]:
        if run_id in self.finished:
            return self.finished[run_id]
        return await asyncio.wait_for(self._waiting[run_id], timeout)


# -- 1. the bare loop ------------------------------------------------------------------------------


def open_port(setup: Setup) -> SearchEngine:
    return open_engine(
        EngineConfig(kind="opensearch", urls=[setup.engine_server.url]), Secrets(None, {})
    )


async def bare_load(
    setup: Setup, writes: Sequence[Write], params: SearchFullLoadParams, pids: dict[str, int | None]
) -> dict[str, Any]:
    """``writes`` into a fresh index, ``concurrency`` requests in flight; the index is deleted."""
    requests = cut(writes, params.batch_size, params.max_bulk_bytes)
    engine = open_port(setup)
    name = f"bare-{uuid.uuid4().hex[:8]}"
    outcomes: Counter[str] = Counter()
    try:
        await engine.create_index(name, DEFAULT_SETTINGS, mappings(setup.plan))
        pending = iter(requests)

        async def sender() -> None:
            for request in pending:
                for result in await engine.bulk(name, request):
                    outcomes[result.outcome] += 1

        window = Window(pids)
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(params.concurrency):
                tasks.create_task(sender())
        seconds = time.perf_counter() - started
        cost = window.close()
        await engine.refresh(name)
        indexed = await engine.count(name)
    finally:
        with contextlib.suppress(Exception):
            await engine.delete_index(name)
        await engine.close()
    if indexed != len(writes) or outcomes["written"] != len(writes):
        raise RuntimeError(f"bare loop: {outcomes} written, the index holds {indexed}")
    return {
        "seconds": round(seconds, 2),
        "documents_per_s": round(len(writes) / seconds, 1),
        "requests": len(requests),
        "outcomes": dict(outcomes),
        "window": cost,
    }


# -- 2. the full load ------------------------------------------------------------------------------


async def full_load(
    setup: Setup, runs: Runs, monitor: asyncpg.Pool, pid: int, pids: dict[str, int | None]
) -> dict[str, Any]:
    n_source = setup.args.cases
    extra = {"fetch_size": setup.args.fetch_size} if setup.args.fetch_size else {}
    rss = RssSampler(pid, setup.args.rss_interval, RSS_FLAT_BOUND_MIB)
    engine_rss = engine_sampler(setup)
    backends = BackendSampler(monitor, BACKEND_INTERVAL)
    await backends.start()
    rss.start()
    engine_rss.start()
    window = Window(pids)
    started = time.perf_counter()
    run_id = await runs.fire("search-full-load", setup.params(**extra), timeout=7200)
    profile = None
    if setup.args.profile:
        profile = asyncio.create_task(profile_for(setup, pid, PROFILE_SECONDS, delay=5.0))
    ended, result = await runs.wait(run_id, 7200)
    cost = window.close(ended)
    memory = await rss.stop()
    engine_memory = summary_of(await engine_rss.stop())
    pg = postgres_split(cost, await backends.stop())
    if result.status != "succeeded" or (result.result or {}).get("indexed") != n_source:
        raise RuntimeError(f"the full load ended {result.status}: {result.result} {result.error}")
    seconds = ended - started
    output = {
        "seconds": round(seconds, 2),
        "documents_per_s": round(n_source / seconds, 1),
        "run_result": result.result,
        "window": cost,
        "postgresql_cpu_seconds": pg,
        "rss": memory,
        "engine_rss": engine_memory,
    }
    if profile is not None:
        output["profile"] = await profile
    return output


def engine_sampler(setup: Setup) -> RssSampler:
    """osmem-server's RSS (it holds every index in memory), every few seconds."""
    assert setup.engine_server.pid is not None
    return RssSampler(setup.engine_server.pid, ENGINE_RSS_INTERVAL, RSS_FLAT_BOUND_MIB)


def summary_of(memory: dict[str, Any]) -> dict[str, Any]:
    """An RSS record without its samples and flatness (the engine grows with its index)."""
    keep = ("min_mib", "max_mib", "first_mib", "last_mib", "slope_mib_per_minute")
    return {key: memory[key] for key in keep} | {"interval_seconds": memory["interval_seconds"]}


async def profile_for(setup: Setup, pid: int, seconds: float, delay: float) -> dict[str, Any]:
    await asyncio.sleep(delay)
    out = setup.env.tmp / "search-sync.pyspy.txt"
    spy = start_profile(pid, out)
    await asyncio.sleep(seconds)
    summary: dict[str, Any] = await finish_profile(spy, out, "search-full-load.pyspy.txt")
    return summary


# -- 3. incremental: committed → searchable --------------------------------------------------------


class ObservedChurn(caseapp.Churn):
    """caseapp's churn, telling ``on_change`` of each change as it commits."""

    def __init__(
        self, pool: asyncpg.Pool, on_change: Callable[[caseapp.Change], None], seed: int
    ) -> None:
        super().__init__(pool, seed=seed)
        self.on_change = on_change

    async def step(self, kind: caseapp.ChangeKind | str) -> caseapp.Change:
        change = await super().step(kind)
        self.on_change(change)
        return change


@dataclass
class Sample:
    case_id: int
    kind: str
    committed_at: datetime
    expected: dict[str, Any] | None = None
    read: bool = False  # the expected document of the latest target was read
    target: int = 0  # how many times a later change re-targeted it


@dataclass
class Checker:
    """Polls the engine for each sampled change's expected document; records latencies."""

    plan: Plan
    pool: asyncpg.Pool  # the checker's own connections to the source
    reader: opensearchpy.AsyncOpenSearch
    every: int
    pending: dict[int, Sample] = field(default_factory=dict)
    latencies: list[tuple[str, float]] = field(default_factory=list)
    changes: Counter[str] = field(default_factory=Counter)
    retargeted: int = 0
    poll_errors: list[str] = field(default_factory=list)
    poll_round_trips: list[float] = field(default_factory=list)
    _seen_changes: int = 0
    _reads: set[asyncio.Task[None]] = field(default_factory=set)

    def on_change(self, change: caseapp.Change) -> None:
        self._seen_changes += 1
        self.changes[change.kind.value] += 1
        for case_id in change.case_ids:
            sample = self.pending.get(case_id)
            if sample is not None:
                # The earlier state may never be visible: wait for this change's instead.
                sample.committed_at, sample.kind = change.committed_at, change.kind.value
                sample.target += 1
                sample.read = False
                self.retargeted += 1
            elif self._seen_changes % self.every == 0:
                sample = self.pending[case_id] = Sample(
                    case_id, change.kind.value, change.committed_at
                )
            else:
                continue
            task = asyncio.create_task(self._expect(sample, sample.target))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _expect(self, sample: Sample, target: int) -> None:
        """Read the document ``sample`` should show, unless a later change re-targets it first
        (reads may end out of order)."""
        rows = await self.pool.fetch(documents_of_keys_sql(self.plan), [f"[{sample.case_id}]"])
        document = rows[0]["document"] if rows else None
        if sample.target == target:
            sample.expected = None if document is None else json.loads(document)
            sample.read = True

    async def poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    async def check_once(self) -> None:
        ready = [s for s in self.pending.values() if s.read]
        for offset in range(0, len(ready), MGET_CHUNK):
            chunk = ready[offset : offset + MGET_CHUNK]
            asked = time.perf_counter()
            try:
                answer = await self.reader.mget(
                    index=ALIAS, body={"ids": [str(s.case_id) for s in chunk]}
                )
            except (opensearchpy.ConnectionError, opensearchpy.TransportError) as exc:
                # A slow or failing poll is a finding, not the end of the benchmark.
                self.poll_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            # Seen at the answer's arrival: the latency includes the poll's round trip.
            now = datetime.now(UTC)
            self.poll_round_trips.append(time.perf_counter() - asked)
            for sample, doc in zip(chunk, answer["docs"], strict=True):
                held = doc.get("_source") if doc.get("found") else None
                if (
                    sample.read
                    and held == sample.expected
                    and self.pending.get(sample.case_id) is sample
                ):
                    del self.pending[sample.case_id]
                    seconds = (now - sample.committed_at).total_seconds()
                    self.latencies.append((sample.kind, seconds))

    def summary(self) -> dict[str, Any]:
        values = sorted(s for _, s in self.latencies)
        trips = sorted(self.poll_round_trips)
        by_kind: dict[str, list[float]] = defaultdict(list)
        for kind, seconds in self.latencies:
            by_kind[kind].append(seconds)
        p99 = percentile(values, 99)
        return {
            "sampled_every": self.every,
            "seen": len(values),
            "missed": len(self.pending),
            "missed_cases": sorted(self.pending)[:20],
            "retargeted": self.retargeted,
            "p50_seconds": rounded(percentile(values, 50), 3),
            "p90_seconds": rounded(percentile(values, 90), 3),
            "p99_seconds": rounded(p99, 3),
            "max_seconds": rounded(values[-1] if values else None, 3),
            "min_seconds": rounded(values[0] if values else None, 3),
            "p99_by_kind_seconds": {
                kind: rounded(percentile(sorted(v), 99), 3) for kind, v in sorted(by_kind.items())
            },
            "samples_by_kind": {kind: len(v) for kind, v in sorted(by_kind.items())},
            "goal_p99_seconds": GOAL_P99_SECONDS,
            "goal_met": p99 is not None and p99 <= GOAL_P99_SECONDS and not self.pending,
            "polls": len(self.poll_round_trips),
            "poll_round_trip_p50_seconds": rounded(percentile(trips, 50), 3),
            "poll_round_trip_p99_seconds": rounded(percentile(trips, 99), 3),
            "poll_round_trip_max_seconds": rounded(trips[-1] if trips else None, 3),
            "poll_errors": len(self.poll_errors),
            "poll_error_examples": self.poll_errors[:5],
        }


async def fire_every(
    runs: Runs, params: dict[str, Any], stop: asyncio.Event, fired: list[str]
) -> None:
    """A `search-incremental` JobDue every second until ``stop``, on an absolute schedule."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not stop.is_set():
        fired.append(await runs.fire("search-incremental", params, timeout=600))
        delay = start + len(fired) * INCREMENTAL_EVERY_SECONDS - loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, delay))


async def incremental(
    setup: Setup, runs: Runs, monitor: asyncpg.Pool, pids: dict[str, int | None]
) -> dict[str, Any]:
    args = setup.args
    churn_pool = await asyncpg.create_pool(
        setup.dsn,
        min_size=CHURN_CONNECTIONS,
        max_size=CHURN_CONNECTIONS,
        server_settings={"application_name": CHURN_APPLICATION},
    )
    checker_pool = await asyncpg.create_pool(
        setup.dsn, min_size=2, max_size=2, server_settings={"application_name": CHECKER_APPLICATION}
    )
    reader = opensearchpy.AsyncOpenSearch([setup.engine_server.url], timeout=READER_TIMEOUT)
    checker = Checker(setup.plan, checker_pool, reader, args.sample_every)
    churn = ObservedChurn(churn_pool, checker.on_change, seed=7)
    params = setup.params()
    fired: list[str] = []
    stop_firing, stop_polling = asyncio.Event(), asyncio.Event()
    try:
        backends = BackendSampler(monitor, BACKEND_INTERVAL)
        await backends.start()
        engine_rss = engine_sampler(setup)
        engine_rss.start()
        window = Window(pids)
        firing = asyncio.create_task(fire_every(runs, params, stop_firing, fired))
        polling = asyncio.create_task(checker.poll(stop_polling))
        started = time.perf_counter()
        changes = await churn.run(rate=args.churn_rate, seconds=args.churn_seconds, mix=MIX)
        churned = time.perf_counter() - started
        drained = await _drain(checker, MISS_AFTER_SECONDS)
        stop_firing.set()
        await firing
        stop_polling.set()
        await polling
        cost = window.close()
        engine_memory = summary_of(await engine_rss.stop())
        pg = postgres_split(cost, await backends.stop())
        tail = await _until_quiet(runs, params, fired)
        results = _run_results(runs, fired)
        stale = await stale_check(setup, reader)
    finally:
        stop_firing.set()
        stop_polling.set()
        await reader.close()
        await churn_pool.close()
        await checker_pool.close()
    return {
        "rate_asked": args.churn_rate,
        "seconds_asked": args.churn_seconds,
        "mix": MIX,
        "changes": len(changes),
        "changes_by_kind": dict(checker.changes),
        "rate_reached": round(len(changes) / churned, 1),
        "churn_seconds": round(churned, 2),
        "drain_seconds_after_churn": round(drained, 2),
        "latency": checker.summary(),
        "runs": results,
        "runs_after_drain": tail,
        "stale": stale,
        "window": cost,
        "cpu_per_second": {
            name: rounded(seconds / cost["seconds"], 3) if seconds is not None else None
            for name, seconds in cost["cpu_seconds"].items()
        },
        "postgresql_cpu_seconds": pg,
        "engine_rss": engine_memory,
    }


MIX: dict[str, float] = {kind.value: share for kind, share in DEFAULT_MIX.items()}


async def _drain(checker: Checker, limit: float) -> float:
    """Seconds until every sample was seen (at most ``limit``)."""
    started = time.perf_counter()
    while checker.pending and time.perf_counter() - started < limit:  # noqa: ASYNC110 (a poll)
        await asyncio.sleep(POLL_SECONDS)
    return time.perf_counter() - started


async def _until_quiet(runs: Runs, params: dict[str, Any], fired: list[str]) -> list[Any]:
    """Wait for every fired run, then fire runs one at a time until one finds no change."""
    for run_id in fired:
        await runs.wait(run_id, 600)
    tail = []
    for _ in range(10):
        run_id = await runs.fire("search-incremental", params, timeout=600)
        _, result = await runs.wait(run_id, 600)
        tail.append(result.result if result.status == "succeeded" else result.error)
        if result.status == "succeeded" and (result.result or {}).get("changes") == 0:
            break
    return tail


def _run_results(runs: Runs, fired: Sequence[str]) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    seconds: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    for run_id in fired:
        _, result = runs.finished[run_id]
        statuses[result.status] += 1
        if result.status != "succeeded":
            errors.append(str(result.error))
            continue
        values = result.result or {}
        for name in ("changes", "documents", "indexed", "deleted", "stale", "rejected"):
            totals[name] += int(values.get(name) or 0)
        seconds.append(float(values.get("seconds") or 0))
        lags.append(float(values.get("lag_seconds") or 0))
    seconds.sort()
    lags.sort()
    return {
        "fired": len(fired),
        "statuses": dict(statuses),
        "totals": dict(totals),
        "run_seconds_p50": rounded(percentile(seconds, 50), 3),
        "run_seconds_max": rounded(seconds[-1] if seconds else None, 3),
        "lag_seconds_max": rounded(lags[-1] if lags else None, 3),
        "errors": errors[:5],
    }


async def stale_check(setup: Setup, reader: opensearchpy.AsyncOpenSearch) -> dict[str, Any]:
    """Every case's document in the index vs. the source's, built by the documents SQL."""
    started = time.perf_counter()
    missing = different = compared = 0
    examples: list[str] = []
    await reader.indices.refresh(index=ALIAS)
    connection = await asyncpg.connect(setup.dsn)
    try:
        async with source.snapshot(connection):
            cursor = await connection.cursor(documents_sql(setup.plan))
            while rows := await cursor.fetch(MGET_CHUNK):
                answer = await reader.mget(index=ALIAS, body={"ids": [r["id"] for r in rows]})
                for row, doc in zip(rows, answer["docs"], strict=True):
                    compared += 1
                    if not doc.get("found"):
                        missing += 1
                        examples.append(f"{row['id']}: missing")
                    elif doc["_source"] != json.loads(row["document"]):
                        different += 1
                        examples.append(f"{row['id']}: different")
    finally:
        await connection.close()
    held = (await reader.count(index=ALIAS))["count"]
    extra = held - (compared - missing)
    return {
        "compared": compared,
        "missing": missing,
        "different": different,
        "extra_in_index": extra,
        "stale": missing + different + extra,
        "examples": examples[:10],
        "seconds": round(time.perf_counter() - started, 1),
    }


# -- the whole run ---------------------------------------------------------------------------------


async def run(env: Env, engine_server: SearchServer, args: argparse.Namespace) -> dict[str, Any]:
    async with scratch_database(env.admin_dsn, "jobwire_bench_search_") as dsn:
        print(f"  generating {args.cases:,} cases …", flush=True)
        plan, generated = await prepare_source(dsn, args.cases)
        print(f"  generated in {generated['generate_seconds']} s", flush=True)
        setup = Setup(env, engine_server, dsn, f"bs{uuid.uuid4().hex[:8]}", args, plan)
        params = load_params(setup)
        writes, read_seconds = await prebuild(dsn, plan, params.fetch_size)
        sizes = sorted(len(w.source or b"") for w in writes)
        print(
            f"  {len(writes):,} documents read in {read_seconds:.1f} s "
            f"({sum(sizes) / 1e6:.0f} MB, median {sizes[len(sizes) // 2]:,} bytes)",
            flush=True,
        )
        monitor = await asyncpg.create_pool(
            dsn, min_size=1, max_size=1, server_settings={"application_name": MONITOR_APPLICATION}
        )
        broker = Broker(
            ServiceSettings(nats={"url": env.nats_url}, namespace=setup.namespace),
            source="/jobwire/bench-search",
        )
        await broker.connect()
        await broker.ensure_streams()
        runs = Runs(broker)
        await runs.start()
        base_pids = {
            "bench_process": os.getpid(),
            "engine": engine_server.pid,
            "postgresql": env.postgres_pid,
            "nats_server": env.nats_pid,
        }
        try:
            bare = await bare_load(setup, writes, params, base_pids)
            print(f"  bare: {bare['seconds']} s ({bare['documents_per_s']:,}/s)", flush=True)
            del writes
            gc.collect()
            # A fresh engine for the sync, as the bare loop had: osmem-server holds every
            # index in memory (~33 KB a case here: 16.8 GB for 500,000) and gave a deleted
            # one back over minutes (to 3.6 GB in 2.5) while the next load was filling it.
            engine_server.stop()
            engine_server.start()
            base_pids["engine"] = engine_server.pid
            async with sync_process(setup) as pid:
                pids = {"sync": pid, **base_pids}
                loaded = await full_load(setup, runs, monitor, pid, pids)
                print(
                    f"  full load: {loaded['seconds']} s ({loaded['documents_per_s']:,}/s), "
                    f"RSS {loaded['rss']['min_mib']}..{loaded['rss']['max_mib']} MiB",
                    flush=True,
                )
                try:
                    followed = await incremental(setup, runs, monitor, pids)
                except Exception as exc:
                    # The load took long: keep its figures, say why the rest is missing.
                    followed = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"  incremental failed: {followed['error']}", flush=True)
                else:
                    latency = followed["latency"]
                    print(
                        f"  incremental: {followed['changes']:,} changes at "
                        f"{followed['rate_reached']}/s, p50 {latency['p50_seconds']} s, "
                        f"p99 {latency['p99_seconds']} s, missed {latency['missed']}, "
                        f"stale {followed['stale']['stale']}",
                        flush=True,
                    )
        finally:
            await runs.stop()
            await broker.close()
            await monitor.close()
    ratio = loaded["documents_per_s"] / bare["documents_per_s"]
    return {
        "cases": args.cases,
        "profile": CASE_PROFILE,
        "source": generated,
        "load_params": params.model_dump(include={"batch_size", "concurrency", "max_bulk_bytes"})
        | {"fetch_size": params.fetch_size},
        "documents": {
            "count": len(sizes),
            "bytes_total": sum(sizes),
            "bytes_median": sizes[len(sizes) // 2],
            "bytes_max": sizes[-1],
            "bare_read_seconds": round(read_seconds, 2),
        },
        "bare": bare,
        "full_load": loaded,
        "ratio": round(ratio, 3),
        "ratio_by_run_own_rate": rounded(
            (loaded["run_result"].get("documents_per_second") or 0) / bare["documents_per_s"], 3
        ),
        "goal_ratio": GOAL_RATIO,
        "goal_ratio_met": ratio >= GOAL_RATIO,
        "rss_flat": loaded["rss"]["flat"],
        "incremental": followed,
        **_incremental_figures(followed),
    }


def _incremental_figures(followed: dict[str, Any]) -> dict[str, Any]:
    if "error" in followed:
        names = ("latency_p50_seconds", "latency_p99_seconds", "missed", "stale")
        return dict.fromkeys(names) | {"goal_latency_met": False}
    latency = followed["latency"]
    return {
        "latency_p50_seconds": latency["p50_seconds"],
        "latency_p99_seconds": latency["p99_seconds"],
        "missed": latency["missed"],
        "stale": followed["stale"]["stale"],
        "goal_latency_met": latency["goal_met"] and followed["stale"]["stale"] == 0,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 cases, 10 s churn at 100/s")
    parser.add_argument("--cases", type=int, default=None, help="default 500,000 (quick: 2,000)")
    parser.add_argument("--churn-rate", type=float, default=None, help="default 500/s (quick 100)")
    parser.add_argument("--churn-seconds", type=float, default=None, help="default 60 (quick 10)")
    parser.add_argument("--sample-every", type=int, default=10, help="check every N-th change")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the job's")
    parser.add_argument("--concurrency", type=int, default=None, help="default: the job's")
    parser.add_argument("--max-bulk-bytes", type=int, default=None, help="default: the job's")
    parser.add_argument("--fetch-size", type=int, default=None, help="default: the job's")
    parser.add_argument("--rss-interval", type=float, default=0.5)
    parser.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    parser.add_argument(
        "--profile", action="store_true", help=f"py-spy the sync {PROFILE_SECONDS:g} s in its load"
    )
    parser.add_argument("--database-url", default=os.environ.get("JOBWIRE_BENCH_DATABASE_URL"))
    parser.add_argument("--nats-url", default=os.environ.get("JOBWIRE_BENCH_NATS_URL"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/search.json"))
    args = parser.parse_args(argv)
    quick = args.quick
    if args.cases is None:
        args.cases = 2_000 if quick else 500_000
    if args.churn_rate is None:
        args.churn_rate = 100.0 if quick else 500.0
    if args.churn_seconds is None:
        args.churn_seconds = 10.0 if quick else 60.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with private_servers(args.database_url, args.nats_url, "search") as env:
        engine_server = SearchServer(env.tmp / "osmem")
        engine_server.start()
        try:
            result = asyncio.run(run(env, engine_server, args))
        finally:
            engine_server.stop()
    machine = machine_info(PACKAGES)
    machine["load"] = {
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "note": "per-window busy fractions are in each window",
    }
    output = {
        "benchmark": "search",
        "command": COMMAND + (" (--quick)" if args.quick else ""),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": __doc__,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        **result,
    }
    merge_results(args.out, output)
    print(
        f"full load {result['full_load']['documents_per_s']:,}/s vs bare "
        f"{result['bare']['documents_per_s']:,}/s: ratio {result['ratio']:.2f} "
        f"(goal ≥ {GOAL_RATIO}); incremental p50 {result['latency_p50_seconds']} s, "
        f"p99 {result['latency_p99_seconds']} s (goal ≤ {GOAL_P99_SECONDS}), "
        f"missed {result['missed']}, stale {result['stale']}"
    )
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
