"""Search sync tests: the engine port on both clients, a front server for faults and TLS,
and the whole service on a caseapp database.

``engine`` is the port opened on ``search_engine_url`` (osmem-server unless one
is configured), once per client: OpenSearch's as it is, Elasticsearch's
through the harness's ``ElasticsearchCompatNode``. ``index`` is a name prefix
of the test's own; indices starting with it are deleted after the test.

``engine_on(kind, url, ...)`` opens the port on another URL (a front server, a
private engine), closed after the test. ``front(tls=None)`` starts a
:class:`FrontServer`: a real HTTP(S) server in this process that forwards
every request to the engine, records what it saw (headers, bodies) and answers
bulk requests with the faults it is given, so 429s and TLS can be tested with
the real clients.

``search_sync(**options)`` starts the whole service in this process on the
test's NATS namespace, with the test's database holding the caseapp schema
as its source (secret ``caseapp-dsn``); ``alias`` is an alias of the test's
own. ``service.full_load(alias)`` and ``service.incremental(alias)`` fire
one run each, as the scheduler would, and return its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

import caseapp
from jobwire.contracts.search import DocumentProfile, EngineConfig
from jobwire.runtime.broker import Broker
from jobwire.runtime.embedded import free_port
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.service import run_service
from jobwire.search_sync.adapters import source
from jobwire.search_sync.adapters.engine import SearchEngine, open_engine
from jobwire.search_sync.domain.plan import resolve, tables_named
from jobwire.search_sync.main import spec
from jobwire.search_sync.settings import SearchSyncSettings
from jobwire.testing import run_job
from jobwire.testing.search_engine import ElasticsearchCompatNode

KINDS = ["opensearch", "elasticsearch"]
LOOPBACK = "127.0.0.1"
BUSY = {"type": "es_rejected_execution_exception", "reason": "rejected: the write queue is full"}


def open_test_engine(
    kind: str,
    url: str,
    secrets: Secrets | None = None,
    retry_seconds: float = 10.0,
    **config: Any,
) -> SearchEngine:
    """The port on ``url`` with the client of ``kind`` (Elasticsearch's made to talk to osmem)."""
    return open_engine(
        EngineConfig(kind=kind, urls=[url], **config),
        secrets or Secrets(None, {}),
        node_class=ElasticsearchCompatNode if kind == "elasticsearch" else None,
        retry_seconds=retry_seconds,
    )


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(kind: str, search_engine_url: str) -> AsyncIterator[SearchEngine]:
    opened = open_test_engine(kind, search_engine_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture(loop_scope="session")
async def index(search_engine_url: str) -> AsyncIterator[str]:
    """A prefix for this test's index names; its indices are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    cleaner = open_test_engine("opensearch", search_engine_url)
    try:
        for name in await cleaner.indices(prefix):
            await cleaner.delete_index(name)
    finally:
        await cleaner.close()


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FrontServer:
    """Forwards to ``upstream``; records requests; answers bulk requests with ``faults``.

    Faults, taken one per bulk request in order: ``"busy"`` answers the whole
    request 429; ``"busy-last-item"`` forwards all items but the last and
    answers that one 429 in the engine's answer, as an overloaded node does.
    """

    def __init__(self, upstream: str, tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.tls = tls
        self.port = free_port()
        self.faults: list[str] = []
        self.down = False  # answer every request 503, as an engine that is going away
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    def bulks(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.path.split("?")[0].endswith("/_bulk")]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port, ssl_context=self.tls).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        content_type = request.headers.get("content-type")
        if self.down:
            return web.json_response({"error": "unavailable", "status": 503}, status=503)
        if request.path.endswith("/_bulk") and self.faults:
            fault = self.faults.pop(0)
            if fault == "busy":
                return web.json_response({"error": BUSY, "status": 429}, status=429)
            if fault == "busy-last-item":
                return await self._last_item_busy(request.path_qs, content_type, body)
            raise AssertionError(f"unknown fault {fault!r}")
        status, answer = await self._forward(request.method, request.path_qs, content_type, body)
        return _answer(status, answer)

    async def _forward(
        self, method: str, path: str, content_type: str | None, body: bytes
    ) -> tuple[int, bytes]:
        assert self._session is not None
        headers = {"content-type": content_type} if content_type else {}
        async with self._session.request(
            method, self.upstream + path, data=body or None, headers=headers
        ) as response:
            return response.status, await response.read()

    async def _last_item_busy(
        self, path: str, content_type: str | None, body: bytes
    ) -> web.Response:
        items = _bulk_items(body)
        *forwarded, (last_action, _) = items
        rest = b"".join(b"\n".join([action, *source]) + b"\n" for action, source in forwarded)
        status, raw = await self._forward("POST", path, content_type, rest)
        answer = json.loads(raw)
        op, meta = next(iter(json.loads(last_action).items()))
        answer["items"].append({op: {"_id": meta["_id"], "status": 429, "error": BUSY}})
        answer["errors"] = True
        return _answer(status, json.dumps(answer).encode())


def _answer(status: int, body: bytes) -> web.Response:
    # The Elasticsearch client refuses a 2xx answer without this header.
    return web.Response(
        status=status,
        body=body,
        headers={"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"},
    )


def _bulk_items(body: bytes) -> list[tuple[bytes, list[bytes]]]:
    """A bulk body as (action line, [source line]) pairs; a delete has no source line."""
    lines = [line for line in body.split(b"\n") if line]
    items: list[tuple[bytes, list[bytes]]] = []
    position = 0
    while position < len(lines):
        action = lines[position]
        has_source = next(iter(json.loads(action))) != "delete"
        items.append((action, lines[position + 1 : position + 2] if has_source else []))
        position += 2 if has_source else 1
    return items


Front = Callable[..., Awaitable[FrontServer]]
EngineOn = Callable[..., SearchEngine]


@pytest_asyncio.fixture(loop_scope="session")
async def engine_on() -> AsyncIterator[EngineOn]:
    """``engine_on(kind, url, secrets=None, retry_seconds=10, **config)``: the port opened
    with :func:`open_test_engine`, closed after the test."""
    opened: list[SearchEngine] = []

    def open_on(kind: str, url: str, *args: Any, **options: Any) -> SearchEngine:
        engine = open_test_engine(kind, url, *args, **options)
        opened.append(engine)
        return engine

    try:
        yield open_on
    finally:
        for engine in opened:
            await engine.close()


@pytest_asyncio.fixture(loop_scope="session")
async def front(search_engine_url: str) -> AsyncIterator[Front]:
    """``await front(tls=None)``: a started :class:`FrontServer` before the engine."""
    started: list[FrontServer] = []

    async def start(tls: ssl.SSLContext | None = None) -> FrontServer:
        server = FrontServer(search_engine_url, tls)
        started.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


# ---------------------------------------------------------------- the whole service

ES_NODE = "jobwire.testing.search_engine:ElasticsearchCompatNode"
DSN_SECRET = "caseapp-dsn"

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


class SearchSync:
    """One running search-sync service, a client broker, and the test's source database."""

    def __init__(
        self, settings: SearchSyncSettings, broker: Broker, source_url: str, engine_url: str
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.source_url = source_url
        self.engine_url = engine_url
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # What searches see, read with a client of the test's own.
        self.reader = open_test_engine("opensearch", engine_url)

    async def install(self, profile: dict[str, Any] | None = None) -> None:
        """Install the change capture of ``profile`` (the case profile) in the source."""
        connection = await asyncpg.connect(self.source_url)
        try:
            wanted = DocumentProfile.model_validate(profile or CASE_PROFILE)
            catalog = await source.read_catalog(connection, tables_named(wanted))
            await source.install(connection, resolve(wanted, catalog))
        finally:
            await connection.close()

    async def document(self, alias: str, id: int | str) -> dict[str, Any] | None:
        return await self.reader.get(alias, str(id))

    async def execute(self, sql: str, *args: Any) -> str:
        """One statement on the source, committed."""
        connection = await asyncpg.connect(self.source_url)
        try:
            return str(await connection.execute(sql, *args))
        finally:
            await connection.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        connection = await asyncpg.connect(self.source_url)
        try:
            return await connection.fetchval(sql, *args)
        finally:
            await connection.close()

    def params(self, alias: str, kind: str = "opensearch", **fields: Any) -> dict[str, Any]:
        """Parameters of a search job on the caseapp source, into ``alias``."""
        values: dict[str, Any] = {
            "source": {"dsn": DSN_SECRET},
            "engine": {"kind": kind, "urls": [self.engine_url]},
            "profile": CASE_PROFILE,
            "index": {"alias": alias},
            "batch_size": 100,
        }
        return values | fields

    async def run(self, job_type: str, params: dict[str, Any], timeout: float = 60.0) -> Any:
        """One run (a single attempt) of ``job_type``; its RunFinished."""
        return await run_job(self.broker, job_type, params, timeout=timeout, max_attempts=1)

    async def full_load(self, alias: str, **fields: Any) -> dict[str, Any]:
        return await self.succeeded("search-full-load", self.params(alias, **fields))

    async def incremental(self, alias: str, **fields: Any) -> dict[str, Any]:
        return await self.succeeded("search-incremental", self.params(alias, **fields))

    async def succeeded(self, job_type: str, params: dict[str, Any]) -> dict[str, Any]:
        finished = await self.run(job_type, params)
        assert finished.status == "succeeded", finished.error
        assert finished.result is not None
        return dict(finished.result)


Start = Callable[..., Awaitable[SearchSync]]


@pytest_asyncio.fixture(loop_scope="session")
async def caseapp_url(database_url: str) -> str:
    """The test's database with the caseapp schema installed (no rows)."""
    await caseapp.install(database_url)
    return database_url


@pytest_asyncio.fixture(loop_scope="session")
async def search_sync(
    caseapp_url: str, nats_url: str, namespace: str, tmp_path: Path, search_engine_url: str
) -> AsyncIterator[Start]:
    """``await search_sync(engine_url=None, **options)``: the service on this test's caseapp
    database (the secret ``caseapp-dsn``), NATS namespace and the harness's engine."""
    started: list[SearchSync] = []
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / DSN_SECRET).write_text(caseapp_url)

    async def start(engine_url: str | None = None, **options: Any) -> SearchSync:
        settings = SearchSyncSettings(
            nats={"url": nats_url},
            namespace=namespace,
            http_port=free_port(),
            instance_id=f"search-test-{len(started) + 1}",
            host="search-test",
            shutdown_grace_seconds=5,
            search={
                "secrets_dir": str(secrets),
                "engine_retry_seconds": 2,
                "elasticsearch_node_class": ES_NODE,
                **options,
            },
        )
        broker = Broker(settings, source="/tests/search-client")
        await broker.connect()
        await broker.ensure_streams()
        service = SearchSync(settings, broker, caseapp_url, engine_url or search_engine_url)
        service.task = asyncio.create_task(run_service(spec, settings, service.stop))
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop.set()
    for service in started:
        assert service.task is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service.task, timeout=15)
        await service.broker.close()
        await service.reader.close()


@pytest_asyncio.fixture(loop_scope="session")
async def alias(search_engine_url: str) -> AsyncIterator[str]:
    """An alias of this test's own; its indices are deleted afterwards."""
    name = f"a{uuid.uuid4().hex[:12]}"
    yield name
    cleaner = open_test_engine("opensearch", search_engine_url)
    try:
        for index in await cleaner.indices(f"{name}-"):
            await cleaner.delete_index(index)
    finally:
        await cleaner.close()
