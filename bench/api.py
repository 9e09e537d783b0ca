"""Admin API benchmark: the Jobs Management list over 10,000 jobs, and sustained triggers.

Everything runs on this machine: a private PostgreSQL and nats-server (unless
``JOBWIRE_BENCH_DATABASE_URL`` / ``JOBWIRE_BENCH_NATS_URL`` point elsewhere),
and the scheduler service as deployed — ``python -m jobwire.cli scheduler``,
its own process, the kit's uvicorn serving the API, firing loop, outbox relay
and run-event consumers all running. The clients are this process, over real
HTTP/1.1 with keep-alive (httpx), with an admin token.

1. ``list_10k`` — 10,000 start-workflow jobs (20 groups, tags, interval
   schedules next due hours to weeks ahead so nothing fires during the run),
   5 finished runs each (50,000 runs) and a running run on 1 job in 50 (on a
   live host, so status derivation asks the host registry). ``GET
   /api/v1/jobs?limit=100`` — the first page, with status — is requested
   sequentially ``--list-requests`` times after a warm-up; latency percentiles
   are over those requests. Other shapes of the same table (sort by next run,
   text search, a status filter, the last page) are measured the same way, fewer
   times, for context.
2. ``trigger_sustained`` — ``--clients`` concurrent clients each send ``POST
   /api/v1/jobs/bench-trigger/trigger`` back to back for ``--seconds``. Rate =
   201 answers / duration. Afterwards, once the outbox is empty: the job's
   manual runs are counted in PostgreSQL and its StartWorkflow messages in the
   JetStream stream; every accepted trigger must have exactly one of each
   (``exactly_once``). CPU seconds of the service, PostgreSQL and nats-server
   over the window show where the time went; ``--profile`` adds a py-spy
   profile of the service during the window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _measure import BENCH, cpu_seconds, machine_info, percentile, rounded

from jobwire.contracts.subjects import Stream
from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool
from jobwire.runtime.embedded import NatsServer, PostgresServer, child_options, free_port
from jobwire.runtime.settings import ServiceSettings
from jobwire.scheduler.api.tokens import create_token, ensure_schema
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.testing.databases import scratch_database

API_PACKAGES = ("jobwire-scheduler", "fastapi", "starlette", "uvicorn", "asyncpg", "httpx")

TRIGGER_JOB = "bench-trigger"
KINDS = ("nightly", "hourly", "ad hoc")
LIVE_HOST = "bench-live-host"


# -- statistics and processes ------------------------------------------------------------


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in seconds)
    return {
        "requests": len(ms),
        "p50_ms": rounded(percentile(ms, 50)),
        "p90_ms": rounded(percentile(ms, 90)),
        "p99_ms": rounded(percentile(ms, 99)),
        "max_ms": rounded(ms[-1] if ms else None),
        "mean_ms": rounded(sum(ms) / len(ms) if ms else None),
    }


# -- servers and the service -----------------------------------------------------------------


@dataclass
class Env:
    admin_dsn: str
    nats_url: str
    tmp: Path
    postgres_pid: int | None
    nats_pid: int | None

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        async with scratch_database(self.admin_dsn, "jobwire_bench_api_") as dsn:
            yield dsn


@contextlib.contextmanager
def private_servers(database_url: str | None, nats_url: str | None, name: str) -> Iterator[Env]:
    """A private PostgreSQL and nats-server in a temporary folder (unless URLs are
    given), stopped and removed at the end, however the benchmark ends."""
    tmp = Path(tempfile.mkdtemp(prefix=f"jobwire-bench-{name}-"))
    tmp.chmod(0o755)  # PostgreSQL runs as the postgres OS user when we are root
    postgres = nats_server = None
    try:
        if not database_url:
            postgres = PostgresServer(tmp / "pg")
            postgres.start()
        if not nats_url:
            nats_server = NatsServer(tmp / "nats")
            nats_server.start()
        yield Env(
            admin_dsn=database_url or postgres.dsn,  # type: ignore[union-attr]
            nats_url=nats_url or nats_server.url,  # type: ignore[union-attr]
            tmp=tmp,
            postgres_pid=postgres.pid if postgres else None,
            nats_pid=nats_server.pid if nats_server else None,
        )
    finally:
        if nats_server is not None:
            nats_server.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def service(
    env: Env, dsn: str, namespace: str, extra: dict[str, str] | None = None, name: str = "service"
) -> AsyncIterator[tuple[str, int]]:
    """The scheduler service in its own process; yields (base URL, pid)."""
    port = free_port()
    child_env = {
        **os.environ,
        "JOBWIRE_DATABASE_URL": dsn,
        "JOBWIRE_NATS__URL": env.nats_url,
        "JOBWIRE_NAMESPACE": namespace,
        "JOBWIRE_HTTP_HOST": "127.0.0.1",
        "JOBWIRE_HTTP_PORT": str(port),
        "JOBWIRE_HOST": LIVE_HOST,
        "JOBWIRE_LOG_LEVEL": "WARNING",
        "JOBWIRE_LOG_FORMAT": "json",
        **(extra or {}),
    }
    log = (env.tmp / f"{name}.log").open("wb")
    command = ["-m", "jobwire.cli", "scheduler"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        env=child_env,
        stdout=log,
        stderr=log,
        **child_options(),  # dies with the benchmark, however it ends
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the service exited {process.returncode}; see {log.name}")
                with contextlib.suppress(httpx.TransportError):
                    health = await client.get("/api/v1/health")
                    if health.status_code == 200 and health.json()["ready"]:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not become ready in 60 s")
                await asyncio.sleep(0.2)
        yield base, process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


# -- data --------------------------------------------------------------------------------

_INSERT_JOBS = """
INSERT INTO scheduler.jobs (id, name, type, definition, enabled, group_name, priority,
                            next_fire_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bool[],
                     $6::text[], $7::int[], $8::timestamptz[])
"""


async def insert_jobs(pool: asyncpg.Pool, count: int, now: datetime) -> None:
    """``count`` jobs as ``PostgresJobStore.create`` writes them, plus run history."""
    rng = random.Random(7)
    rows = []
    for i in range(count):
        anchor = now + timedelta(hours=1, seconds=rng.randrange(30 * 86_400))
        definition = parse_definition(
            {
                "name": f"job-{i:05d}",
                "type": "start-workflow",
                "description": f"benchmark job {i} of the {KINDS[i % 3]} kind",
                "group": f"group-{i % 20:02d}",
                "tags": [f"team-{i % 7}", "bench"],
                "priority": rng.randrange(-10, 10),
                "schedule": {
                    "kind": "interval",
                    "every": f"P{rng.randrange(1, 30)}D",
                    "anchor": anchor.isoformat(),
                },
                "params": {"workflow": "bench", "input": {"job": i}},
            }
        )
        rows.append(
            (
                uuid.uuid4(),
                definition.name,
                definition.type,
                definition.model_dump(mode="json"),
                definition.enabled,
                definition.group,
                definition.priority,
                definition.first_fire(now),
            )
        )
    for start in range(0, len(rows), 5_000):
        chunk = rows[start : start + 5_000]
        await pool.execute(_INSERT_JOBS, *([r[i] for r in chunk] for i in range(8)))
    # Five finished runs per job, and a running run on one job in 50 (on the live host).
    await pool.execute(
        """INSERT INTO scheduler.runs (id, job_id, scheduled_for, trigger, status, fired_at,
                                       started_at, finished_at, attempt, host)
           SELECT gen_random_uuid(), j.id, $1::timestamptz - make_interval(hours => k),
                  'schedule', CASE WHEN k % 4 = 0 THEN 'failed' ELSE 'succeeded' END,
                  $1::timestamptz - make_interval(hours => k),
                  $1::timestamptz - make_interval(hours => k),
                  $1::timestamptz - make_interval(hours => k) + interval '5 seconds', 1, $2
           FROM scheduler.jobs j, generate_series(1, 5) k""",
        now,
        LIVE_HOST,
    )
    await pool.execute(
        """INSERT INTO scheduler.runs (id, job_id, scheduled_for, trigger, status, fired_at,
                                       started_at, attempt, host)
           SELECT gen_random_uuid(), j.id, $1::timestamptz - interval '1 minute', 'schedule',
                  'running', $1::timestamptz - interval '1 minute',
                  $1::timestamptz - interval '1 minute', 1, $2
           FROM scheduler.jobs j WHERE j.name ~ '0$' AND (substr(j.name, 5)::int % 50) = 0""",
        now,
        LIVE_HOST,
    )
    # Settled before measuring: autovacuum would otherwise work through the fresh
    # rows during the measurements.
    await pool.execute("VACUUM ANALYZE scheduler.jobs")
    await pool.execute("VACUUM ANALYZE scheduler.runs")


# -- scenarios ---------------------------------------------------------------------------


async def timed_gets(
    client: httpx.AsyncClient, url: str, count: int, warmup: int
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    total = None
    for i in range(warmup + count):
        started = time.perf_counter()
        response = await client.get(url)
        elapsed = time.perf_counter() - started
        if i >= warmup:
            latencies.append(elapsed)
            statuses[response.status_code] += 1
        if total is None and response.status_code == 200:
            total = response.json().get("total")
    return {
        "url": url,
        **latency_summary(latencies),
        "statuses": dict(statuses),
        "total_matching": total,
    }


async def list_scenario(base: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        first = await client.get("/api/v1/jobs?limit=100")
        page = first.json()
        statuses = Counter(item["status"] for item in page["items"])
        main = await timed_gets(
            client, "/api/v1/jobs?limit=100", args.list_requests, args.list_warmup
        )
        others = [
            await timed_gets(client, url, args.other_requests, 5)
            for url in (
                "/api/v1/jobs?limit=100&sort=-next_run_at",
                "/api/v1/jobs?limit=100&q=job-012",
                "/api/v1/jobs?limit=100&group=group-03&tag=team-2",
                "/api/v1/jobs?limit=100&status=Running",
                "/api/v1/jobs?limit=100&offset=9900",
            )
        ]
    return {
        "jobs": args.jobs,
        "runs": args.jobs * 5 + args.jobs // 50,
        "first_page": {
            **main,
            "items": len(page["items"]),
            "statuses_on_page": dict(statuses),
            "goal_p99_ms": 100,
            "goal_met": main["p99_ms"] is not None and main["p99_ms"] <= 100,
        },
        "other_shapes": others,
    }


async def trigger_scenario(
    env: Env,
    base: str,
    pid: int,
    token: str,
    pool: asyncpg.Pool,
    broker: Broker,
    args: argparse.Namespace,
    clients: int,
) -> dict[str, Any]:
    """``clients`` concurrent clients triggering one job (its own, per run)."""
    headers = {"Authorization": f"Bearer {token}"}
    name = f"{TRIGGER_JOB}-{clients}"
    job = {
        "name": name,
        "type": "start-workflow",
        "description": "triggered by bench/api.py",
        "params": {"workflow": name, "input": {}},
    }
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        created = await client.post("/api/v1/jobs", json=job)
        assert created.status_code == 201, created.text

    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    stop_at = 0.0

    async def client_loop() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=30, limits=limits
        ) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                response = await client.post(f"/api/v1/jobs/{name}/trigger")
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

    profile = start_profile(env, pid, args.seconds) if args.profile else None
    cpu_before = _cpu(env, pid)
    began = time.monotonic()
    stop_at = began + args.seconds
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    duration = time.monotonic() - began
    cpu_after = _cpu(env, pid)

    drained_in = await _drain(pool)
    runs = await pool.fetch(
        """SELECT r.status, count(*) AS n FROM scheduler.runs r
           JOIN scheduler.jobs j ON j.id = r.job_id
           WHERE j.name = $1 AND r.trigger = 'manual' GROUP BY r.status""",
        name,
    )
    run_statuses = {r["status"]: r["n"] for r in runs}
    run_count = sum(run_statuses.values())
    subject = broker.subjects.workflow_start(name)
    info = await broker.js.stream_info(
        broker.subjects.stream_name(Stream.WORKFLOWS), subjects_filter=subject
    )
    messages = int((info.state.subjects or {}).get(subject, 0))
    accepted = statuses.get(201, 0)
    cpu = {
        name: rounded(after - before, 2) if before is not None and after is not None else None
        for (name, before), (_, after) in zip(cpu_before.items(), cpu_after.items(), strict=True)
    }
    result = {
        "clients": clients,
        "seconds": round(duration, 2),
        "accepted": accepted,
        "statuses": dict(statuses),
        "triggers_per_second": round(accepted / duration, 1),
        "latency": latency_summary(latencies),
        "runs_in_postgresql": run_count,
        "run_statuses": run_statuses,
        "startworkflow_messages_in_stream": messages,
        "exactly_once": accepted == run_count == messages
        and run_statuses.get("succeeded", 0) == run_count,
        "outbox_drained_after_s": drained_in,
        "cpu_seconds_in_window": cpu,
        "cpu_per_trigger_ms": {
            name: rounded(seconds * 1000 / accepted, 3)
            if seconds is not None and accepted
            else None
            for name, seconds in cpu.items()
        },
        "goal_per_second": 500,
        "goal_met": accepted / duration >= 500,
    }
    if profile is not None:
        result["profile"] = await finish_profile(*profile)
    return result


def _cpu(env: Env, pid: int) -> dict[str, float | None]:
    return {
        "service": cpu_seconds(pid),
        "postgresql": cpu_seconds(env.postgres_pid, children=True),
        "nats_server": cpu_seconds(env.nats_pid),
        "bench_clients": time.process_time(),
    }


async def _drain(pool: asyncpg.Pool, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while await pool.fetchval("SELECT count(*) FROM scheduler.outbox"):
        if time.monotonic() - started > timeout:
            raise RuntimeError("the outbox did not drain")
        await asyncio.sleep(0.1)
    # The relay marks start-workflow runs succeeded in the transaction that deletes
    # their outbox rows, so an empty outbox means every run is settled.
    return round(time.monotonic() - started, 2)


def start_profile(env: Env, pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = env.tmp / "api.pyspy.txt"
    process = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, out


async def finish_profile(process: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    await asyncio.to_thread(process.wait, 60)
    return await asyncio.to_thread(summarize_profile, process, out)


def summarize_profile(process: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    if not out.exists():
        return {"error": f"py-spy exited {process.returncode} without a profile"}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    saved = BENCH / "results" / "api-trigger.pyspy.txt"
    shutil.copy2(out, saved)

    def top(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"frame": frame, "share": round(count / samples, 3)}
            for frame, count in counter.most_common(n)
        ]

    return {
        "samples": samples,
        "raw": str(saved.relative_to(BENCH.parent)),
        "top_self": top(own, 15),
        "top_inclusive": top(inclusive, 40),
    }


async def run(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    return await run_config(env, args)


async def run_config(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """Both scenarios on a fresh database, namespace and service process."""
    async with env.database() as dsn:
        pool = await connect_pool(dsn, max_size=4)
        namespace = f"ba{uuid.uuid4().hex[:8]}"
        broker = Broker(
            ServiceSettings(nats={"url": env.nats_url}, namespace=namespace),
            source="/jobwire/bench-api",
        )
        await broker.connect()
        await broker.ensure_streams()
        try:
            await ensure_schema(pool)
            await insert_jobs(pool, args.jobs, datetime.now(UTC))
            token = await create_token(pool, "bench", "admin")
            async with service(env, dsn, namespace) as (base, pid):
                listed = await list_scenario(base, token, args)
                print(f"  list_10k: p99 {listed['first_page']['p99_ms']} ms")
                triggered = {}
                for clients in args.clients:
                    result = await trigger_scenario(
                        env, base, pid, token, pool, broker, args, clients
                    )
                    triggered[f"{clients}_clients"] = result
                    print(
                        f"  trigger_sustained ({clients} clients): "
                        f"{result['triggers_per_second']}/s, exactly once: {result['exactly_once']}"
                    )
        finally:
            for stream in Stream:
                with contextlib.suppress(Exception):
                    await broker.js.delete_stream(broker.subjects.stream_name(stream))
            await broker.close()
            await pool.close()
    return {"list_10k": listed, "trigger_sustained": triggered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/api.json"))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--list-requests", type=int, default=300)
    parser.add_argument("--list-warmup", type=int, default=20)
    parser.add_argument("--other-requests", type=int, default=50)
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[8, 32],
        help="concurrent clients of the trigger runs, comma separated (one run each)",
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--profile", action="store_true", help="py-spy the service (triggers)")
    parser.add_argument("--database-url", default=os.environ.get("JOBWIRE_BENCH_DATABASE_URL"))
    parser.add_argument("--nats-url", default=os.environ.get("JOBWIRE_BENCH_NATS_URL"))
    args = parser.parse_args()

    started = time.time()
    load_before = os.getloadavg()[0]
    with private_servers(args.database_url, args.nats_url, "api") as env:
        results = asyncio.run(run(env, args))
    document = {
        "benchmark": "api",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": __doc__,
        **results,
        "environment": {
            **machine_info(API_PACKAGES),
            # Other work on the machine shows here: the run has two CPUs to itself
            # only when the load before it was near 0.
            "load_average_1m_before_and_after": [
                round(load_before, 2),
                round(os.getloadavg()[0], 2),
            ],
            "postgresql_server": "JOBWIRE_BENCH_DATABASE_URL"
            if args.database_url
            else "private (embedded, same machine)",
            "nats": "JOBWIRE_BENCH_NATS_URL"
            if args.nats_url
            else "private nats-server, same machine",
            "clients": "this process: httpx over HTTP/1.1 keep-alive, one connection per client",
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    # bench/api_flood.py keeps its figures under a key of its own in the same file.
    if args.out.exists():
        flood = json.loads(args.out.read_text()).get("api_flood")
        if flood is not None:
            document["api_flood"] = flood
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"→ {args.out} ({document['wall_seconds']} s)")


if __name__ == "__main__":
    main()
