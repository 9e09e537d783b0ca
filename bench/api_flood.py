"""Admin API flood vs. the firing loop: p99 fire lag of a 2,000-job burst, alone and
while the API is flooded with valid and invalid requests.

The API and the firing loop share the scheduler's event loop, so a request that
makes the service buffer, parse or wait on something big delays every fire. This
measures whether it does.

Everything runs on this machine: a private PostgreSQL and nats-server (unless
``JOBWIRE_BENCH_DATABASE_URL`` / ``JOBWIRE_BENCH_NATS_URL`` point elsewhere), and
the scheduler service as deployed — ``python -m jobwire.cli scheduler`` in its own
process, the kit's uvicorn serving the API. On that one service, ``--rounds``
times, alternating:

1. ``baseline`` — 2,000 one-shot start-workflow jobs due at one instant
   ``--lead`` seconds ahead (inserted as ``PostgresJobStore.create`` writes them,
   then NOTIFY). Fire lag of a job = when JetStream stored its StartWorkflow
   (the message's stream timestamp), minus the due instant.
2. ``flooded`` — the same burst (new jobs) while ``--clients`` concurrent clients
   flood the API from ``--warmup`` seconds before the due instant until the last
   StartWorkflow arrived. Each client cycles through: valid list, create and
   trigger requests; a body that is not JSON (bad JSON), a wrong content type,
   an unauthenticated request, a 900 KB body (refused by validation) and a
   50 MB body announced by Content-Length with only its first 64 KB sent,
   authenticated (413) and not (401). Answers per kind and status are counted.

The result is the median over the rounds of each kind's p99. During every round
``/healthz`` is probed every 50 ms from this process (so under the flood its
latency includes this process's own busy loop) and the service's RSS is read from
/proc before and after.

With ``--split`` (key ``api_flood_split``) the flood goes to a second scheduler
process started with ``JOBWIRE_SCHEDULER__FIRING=false`` — an API-only replica —
and the lag is that of the firing replica beside it: the API separated from the
firing loop, as a deployment would run them. On one small machine both still
share its cores (and PostgreSQL, NATS and the flooding clients) with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _measure import cpu_seconds, machine_info, percentile, rounded
from api import Env, private_servers, service

from jobwire.contracts.subjects import Stream
from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool
from jobwire.runtime.settings import ServiceSettings
from jobwire.scheduler.api.tokens import create_token, ensure_schema
from jobwire.scheduler.domain.definitions import parse_definition

PACKAGES = ("jobwire-scheduler", "fastapi", "starlette", "uvicorn", "asyncpg", "httpx")
GOAL_P99_MS = 250
FLOOD_TARGET = "flood-target"
MiB = 1024 * 1024

_INSERT = """
INSERT INTO scheduler.jobs (id, name, type, definition, enabled, group_name, priority,
                            next_fire_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bool[],
                     $6::text[], $7::int[], $8::timestamptz[])
"""


def lag_summary(lags_s: list[float]) -> dict[str, float | None]:
    ms = sorted(x * 1000 for x in lags_s)
    return {
        "p50": rounded(percentile(ms, 50)),
        "p90": rounded(percentile(ms, 90)),
        "p99": rounded(percentile(ms, 99)),
        "max": rounded(ms[-1] if ms else None),
    }


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def insert_burst(
    pool: asyncpg.Pool, label: str, workflow: str, count: int, due: datetime
) -> None:
    """``count`` one-shot jobs due at ``due``, as ``PostgresJobStore.create`` writes them."""
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        definition = parse_definition(
            {
                "name": f"{label}-{i}",
                "type": "start-workflow",
                "schedule": {"kind": "once", "at": due.isoformat()},
                "params": {"workflow": workflow, "input": {"job": i}},
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
    await pool.execute(_INSERT, *([r[i] for r in rows] for i in range(8)))
    await pool.execute("SELECT pg_notify('jobwire_scheduler_jobs', '')")


# -- fire times, as JetStream stored them ------------------------------------------------


async def wait_stored(broker: Broker, subject: str, count: int, timeout: float) -> None:
    stream = broker.subjects.stream_name(Stream.WORKFLOWS)
    deadline = time.monotonic() + timeout
    while True:
        info = await broker.js.stream_info(stream, subjects_filter=subject)
        if (info.state.subjects or {}).get(subject, 0) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} messages on {subject} after {timeout} s")
        await asyncio.sleep(0.05)


async def stored_at(broker: Broker, subject: str, count: int) -> list[float]:
    """When the stream stored each message on ``subject`` (the server's clock, so the
    flood's clients in this process do not delay the reading)."""
    stream = broker.subjects.stream_name(Stream.WORKFLOWS)
    psub = await broker.js.pull_subscribe(subject, stream=stream)
    times: list[float] = []
    try:
        while len(times) < count:
            for msg in await psub.fetch(min(500, count - len(times)), timeout=5):
                times.append(msg.metadata.timestamp.timestamp())
                await msg.ack()
    finally:
        await psub.unsubscribe()
    return times


# -- the flood -------------------------------------------------------------------------------


class Flood:
    """``clients`` concurrent clients cycling through valid and invalid requests."""

    def __init__(self, base: str, port: int, token: str, clients: int) -> None:
        self.base, self.port, self.token, self.clients = base, port, token, clients
        self.answers: Counter[str] = Counter()  # "kind status" → count
        self.latencies: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self._made = 0

    def _kinds(self, client: httpx.AsyncClient) -> list[tuple[str, Callable[[], Awaitable[int]]]]:
        auth = {"Authorization": f"Bearer {self.token}"}
        json_type = {"Content-Type": "application/json"}
        huge_name = json.dumps({"name": "n" * (900 * 1024), "type": "start-workflow"}).encode()

        async def listed() -> int:
            return (await client.get("/api/v1/jobs?limit=100", headers=auth)).status_code

        async def create() -> int:
            self._made += 1
            job = {
                "name": f"flood-{uuid.uuid4().hex[:12]}",
                "type": "start-workflow",
                "schedule": {"kind": "cron", "expression": "0 3 1 1 *"},
                "params": {"workflow": "flood", "input": {"n": self._made}},
            }
            return (await client.post("/api/v1/jobs", json=job, headers=auth)).status_code

        async def trigger() -> int:
            url = f"/api/v1/jobs/{FLOOD_TARGET}/trigger"
            return (await client.post(url, headers=auth)).status_code

        async def bad_json() -> int:
            body = b'{"name": "x", "type": '
            return (
                await client.post("/api/v1/jobs", content=body, headers={**auth, **json_type})
            ).status_code

        async def wrong_type() -> int:
            body = b'{"name": "x"}'
            headers = {**auth, "Content-Type": "text/plain"}
            return (await client.post("/api/v1/jobs", content=body, headers=headers)).status_code

        async def unauthenticated() -> int:
            return (await client.post("/api/v1/jobs", json={"name": "x"})).status_code

        async def body_900k() -> int:
            headers = {**auth, **json_type}
            return (
                await client.post("/api/v1/jobs", content=huge_name, headers=headers)
            ).status_code

        async def body_50m() -> int:
            return await self._announced(50 * MiB, authenticated=True)

        async def unauthenticated_50m() -> int:
            return await self._announced(50 * MiB, authenticated=False)

        return [
            ("list", listed),
            ("create", create),
            ("trigger", trigger),
            ("bad_json", bad_json),
            ("wrong_content_type", wrong_type),
            ("unauthenticated", unauthenticated),
            ("body_900k", body_900k),
            ("body_50m", body_50m),
            ("unauthenticated_50m", unauthenticated_50m),
        ]

    async def _announced(self, length: int, *, authenticated: bool) -> int:
        """A POST announcing ``length`` bytes, of which only the first 64 KB are sent."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            auth = f"Authorization: Bearer {self.token}\r\n" if authenticated else ""
            head = (
                f"POST /api/v1/jobs HTTP/1.1\r\nHost: bench\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            )
            writer.write(head.encode() + b"[" * 65536)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), timeout=30)
            return int(status_line.split()[1]) if status_line else 0
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _client(self, index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=self.base, timeout=30, limits=limits) as client:
            kinds = self._kinds(client)
            i = index
            while not self.stopping.is_set():
                name, call = kinds[i % len(kinds)]
                i += 1
                started = time.perf_counter()
                try:
                    status = await call()
                except (httpx.HTTPError, OSError, TimeoutError) as exc:
                    self.errors[f"{name} {type(exc).__name__}"] += 1
                    continue
                self.latencies.setdefault(name, []).append(time.perf_counter() - started)
                self.answers[f"{name} {status}"] += 1

    async def run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    def summary(self, seconds: float) -> dict[str, Any]:
        kinds: dict[str, Any] = {}
        for key, count in sorted(self.answers.items()):
            name, status = key.rsplit(" ", 1)
            kinds.setdefault(name, {"statuses": {}})["statuses"][status] = count
        for name, values in self.latencies.items():
            ms = sorted(v * 1000 for v in values)
            kinds[name]["p50_ms"] = rounded(percentile(ms, 50))
            kinds[name]["p99_ms"] = rounded(percentile(ms, 99))
        total = sum(self.answers.values())
        return {
            "clients": self.clients,
            "seconds": round(seconds, 1),
            "requests": total,
            "requests_per_s": round(total / seconds) if seconds else None,
            "by_kind": kinds,
            "transport_errors": dict(self.errors),
        }


# -- a round ---------------------------------------------------------------------------------


async def probe_health(base: str, stop: asyncio.Event) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/healthz")
                latencies.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    return latencies


async def burst_round(
    label: str,
    pool: asyncpg.Pool,
    broker: Broker,
    base: str,
    pid: int,
    args: argparse.Namespace,
    flood: Flood | None,
) -> dict[str, Any]:
    workflow = f"burst-{label}"  # a subject of its own per round
    subject = broker.subjects.workflow_start(workflow)
    stop_probe = asyncio.Event()
    probe = asyncio.create_task(probe_health(base, stop_probe))
    flooding = asyncio.create_task(flood.run()) if flood is not None else None
    rss_before, cpu_before = rss_mib(pid), cpu_seconds(pid)
    began = time.monotonic()
    try:
        if flood is not None:
            await asyncio.sleep(args.warmup)  # the flood at full strength before the burst
        due = (datetime.now(UTC) + timedelta(seconds=args.lead)).replace(microsecond=0)
        await insert_burst(pool, f"{label}-burst", workflow, args.jobs, due)
        if datetime.now(UTC) > due - timedelta(seconds=0.5):
            raise RuntimeError("burst setup overran the due instant; raise --lead")
        await wait_stored(broker, subject, args.jobs, timeout=args.lead + 120)
    finally:
        if flood is not None:
            flood.stopping.set()
        stop_probe.set()
        health = await probe
        if flooding is not None:
            await flooding
    seconds = time.monotonic() - began
    arrivals = await stored_at(broker, subject, args.jobs)
    lags = lag_summary([a - due.timestamp() for a in arrivals])
    health_ms = sorted(h * 1000 for h in health)
    result: dict[str, Any] = {
        "jobs": args.jobs,
        "fired": len(arrivals),
        "lag_ms": lags,
        "healthz_ms": {
            "probes": len(health_ms),
            "p99": rounded(percentile(health_ms, 99)),
            "max": rounded(health_ms[-1] if health_ms else None),
        },
        "service_rss_mib": {"before": rss_before, "after": rss_mib(pid)},
        "service_cpu_s": rounded((cpu_seconds(pid) or 0) - (cpu_before or 0), 2),
    }
    if flood is not None:
        result["flood"] = flood.summary(seconds)
    return result


async def run(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    async with env.database() as dsn:
        pool = await connect_pool(dsn, max_size=4)
        namespace = f"bf{uuid.uuid4().hex[:8]}"
        broker = Broker(
            ServiceSettings(nats={"url": env.nats_url}, namespace=namespace),
            source="/jobwire/bench-api-flood",
        )
        await broker.connect()
        await broker.ensure_streams()
        try:
            await ensure_schema(pool)
            token = await create_token(pool, "bench", "admin")
            async with contextlib.AsyncExitStack() as services:
                base, pid = await services.enter_async_context(
                    service(env, dsn, namespace, name="firing")
                )
                api_base = base
                if args.split:  # the flood goes to an API-only replica beside the firing one
                    api_base, _ = await services.enter_async_context(
                        service(env, dsn, namespace, {"JOBWIRE_SCHEDULER__FIRING": "false"}, "api")
                    )
                port = int(api_base.rsplit(":", 1)[1])
                headers = {"Authorization": f"Bearer {token}"}
                async with httpx.AsyncClient(base_url=api_base, headers=headers) as client:
                    target = {
                        "name": FLOOD_TARGET,
                        "type": "start-workflow",
                        "params": {"workflow": "flood", "input": {}},
                    }
                    created = await client.post("/api/v1/jobs", json=target)
                    assert created.status_code == 201, created.text
                # Alternated, so that other load on the machine weighs on both alike.
                baselines, floods = [], []
                for n in range(args.rounds):
                    baseline = await burst_round(f"b{n}", pool, broker, base, pid, args, None)
                    baselines.append(baseline)
                    flood = Flood(api_base, port, token, args.clients)
                    flooded = await burst_round(f"f{n}", pool, broker, base, pid, args, flood)
                    floods.append(flooded)
                    print(
                        f"  round {n}: baseline lag p99 {baseline['lag_ms']['p99']} ms; flooded "
                        f"({args.clients} clients, {flooded['flood']['requests_per_s']} req/s) "
                        f"lag p99 {flooded['lag_ms']['p99']} ms"
                    )
        finally:
            for stream in Stream:
                with contextlib.suppress(Exception):
                    await broker.js.delete_stream(broker.subjects.stream_name(stream))
            await broker.close()
            await pool.close()

    def median_p99(rounds: list[dict[str, Any]]) -> float | None:
        values = sorted(r["lag_ms"]["p99"] for r in rounds if r["lag_ms"]["p99"] is not None)
        return values[len(values) // 2] if values else None

    flooded_p99 = median_p99(floods)
    return {
        "api": "an API-only replica (JOBWIRE_SCHEDULER__FIRING=false) beside the firing one"
        if args.split
        else "the firing replica itself",
        "max_concurrent_requests": int(
            os.environ.get("JOBWIRE_SCHEDULER__MAX_CONCURRENT_REQUESTS", "4")
        ),
        "lag_p99_ms_median": {"baseline": median_p99(baselines), "flooded": flooded_p99},
        "rounds": [{"baseline": b, "flooded": f} for b, f in zip(baselines, floods, strict=True)],
        "goal": {"flooded_lag_p99_ms_max": GOAL_P99_MS},
        "goal_met": flooded_p99 is not None
        and flooded_p99 <= GOAL_P99_MS
        and all(f["fired"] == args.jobs for f in floods),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/api.json"))
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--lead", type=float, default=3.0, help="seconds from insert to due")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of flood before")
    parser.add_argument("--rounds", type=int, default=3, help="baseline/flooded pairs")
    parser.add_argument(
        "--split", action="store_true", help="flood an API-only replica, not the firing one"
    )
    parser.add_argument("--database-url", default=os.environ.get("JOBWIRE_BENCH_DATABASE_URL"))
    parser.add_argument("--nats-url", default=os.environ.get("JOBWIRE_BENCH_NATS_URL"))
    args = parser.parse_args()

    started = time.time()
    load_before = os.getloadavg()[0]
    with private_servers(args.database_url, args.nats_url, "flood") as env:
        results = asyncio.run(run(env, args))
    # The flood's figures go under their own key of api.json, next to bench/api.py's.
    document: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    document["api_flood_split" if args.split else "api_flood"] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/api_flood.py " + " ".join(sys.argv[1:]),
        "how": __doc__,
        **results,
        "environment": {
            **machine_info(PACKAGES),
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
            "clients": "this process: httpx over "
            "HTTP/1.1 keep-alive, one connection per client; raw sockets for the 50 MB bodies",
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"→ {args.out} ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    main()
