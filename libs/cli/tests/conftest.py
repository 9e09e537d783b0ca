"""The CLI against a real scheduler and its admin API, over real HTTP.

``api_server`` runs a scheduler (PostgreSQL + NATS from the ``jobwire.testing``
plugin) and serves its API with the kit's uvicorn server on a free port, in
the test's event loop. ``jobwire`` runs the CLI against it: with typer's
CliRunner in a worker thread (the CLI is synchronous; the loop must keep
serving meanwhile), or as a real process with ``jobwire.process``.

``mail_system`` runs the scheduler and the mailer as whole services
(``run_service``), the mailer sending to the test SMTP server and checking
tokens with the scheduler; ``jobwire_mail`` runs the CLI on both.
``search_system`` runs the scheduler and the search sync the same way, the
test's database holding the caseapp schema as the source (secret
``caseapp-dsn``) and the harness's search engine; ``jobwire_search`` runs the
CLI on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import structlog
from cli_harness import ROLES, ApiServer, Jobwire, MailSystem, SearchSystem, create_job
from starlette.routing import Mount

import caseapp
from jobwire.contracts.search import EngineConfig
from jobwire.mailer.main import spec as mailer_spec
from jobwire.mailer.settings import MailerSettings
from jobwire.runtime.broker import Broker
from jobwire.runtime.db import connect_pool, load_migrations, migrate
from jobwire.runtime.embedded import free_port
from jobwire.runtime.health import HttpServer, Readiness
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.service import ServiceContext
from jobwire.scheduler.api import ApiContext, create_app
from jobwire.scheduler.api.tokens import create_token
from jobwire.scheduler.main import Scheduler, spec
from jobwire.scheduler.settings import SchedulerSettings
from jobwire.search_sync.adapters.engine import open_engine
from jobwire.search_sync.main import spec as search_spec
from jobwire.search_sync.settings import SearchSyncSettings
from jobwire.testing import wait_for
from jobwire.testing.admin_api import running_scheduler
from jobwire.testing.services import InProcessService


@pytest.fixture(autouse=True)
def logs_to_stderr() -> Iterator[None]:
    """The services running in this process log where the CLI's output is not.

    Unconfigured, structlog prints to whatever ``sys.stdout`` is when a line is
    logged — inside CliRunner, the command's captured output. (Configured by
    ``setup_logging``, it writes to the stderr of that moment: left as it is.)
    """
    if structlog.is_configured():
        yield
        return
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    try:
        yield
    finally:
        structlog.reset_defaults()


@pytest_asyncio.fixture(loop_scope="session")
async def api_server(database_url: str, nats_url: str, namespace: str) -> AsyncIterator[ApiServer]:
    settings = SchedulerSettings(
        nats={"url": nats_url},
        namespace=namespace,
        database_url=database_url,
        scheduler={"relay_poll_seconds": 0.1},
    )
    readiness = Readiness()
    broker = Broker(settings, source="/jobwire/cli/tests", readiness=readiness)
    await broker.connect()
    await broker.ensure_streams()
    pool = await connect_pool(database_url, max_size=8)
    assert spec.migrations is not None
    await migrate(pool, "scheduler", load_migrations(spec.migrations))
    stop = asyncio.Event()
    scheduler = Scheduler(ServiceContext("scheduler", settings, broker, readiness, stop, db=pool))
    task = asyncio.create_task(scheduler.run())
    api = ApiContext(
        pool=lambda: pool,
        broker=broker,
        stopping=stop,
        namespace=namespace,
        on_outbox=scheduler.relay.wake.set,
    )
    http = HttpServer("127.0.0.1", 0, readiness, routes=[Mount("", app=create_app(api))])
    await http.start()
    tokens = {role: await create_token(pool, f"{role}-token", role) for role in ROLES}
    try:
        yield ApiServer(f"http://127.0.0.1:{http.port}", database_url, pool, tokens)
    finally:
        await http.stop()
        stop.set()
        await api.backfills.wait_stopped()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        await broker.close()
        await pool.close()


@pytest.fixture
def jobwire(api_server: ApiServer, tmp_path: Path) -> Jobwire:
    return Jobwire(api_server, tmp_path)


@pytest.fixture
def jobwire_no_server(tmp_path: Path) -> Jobwire:
    """For commands that need no API (tokens): its URL leads nowhere."""
    nowhere = ApiServer("http://127.0.0.1:9", "", None, {})
    return Jobwire(nowhere, tmp_path)


@pytest_asyncio.fixture(loop_scope="session")
async def mail_system(
    database_url: str, nats_url: str, namespace: str, smtp_server: Any
) -> AsyncIterator[MailSystem]:
    common: dict[str, Any] = {
        "nats": {"url": nats_url},
        "namespace": namespace,
        "database_url": database_url,
        "host": "cli-test",
        "shutdown_grace_seconds": 5,
    }
    scheduler = InProcessService(
        spec,
        SchedulerSettings(
            **common,
            http_port=free_port(),
            instance_id="cli-test-scheduler",
            scheduler={"relay_poll_seconds": 0.1},
        ),
    )
    await scheduler.start()
    mailer: InProcessService | None = None
    pool = await connect_pool(database_url, max_size=2)
    try:
        tokens = {role: await create_token(pool, f"{role}-token", role) for role in ROLES}
        account = {
            "host": "127.0.0.1",
            "port": smtp_server.port,
            "security": "none",
            "from_address": "cases@mailer.test",
        }
        settings = MailerSettings(
            **common,
            http_port=free_port(),
            instance_id="cli-test-mailer",
            mailer={
                "accounts": {"default": account},
                "scheduler_url": scheduler.url,
                "secrets_dir": None,
                "relay_poll_seconds": 0.1,
            },
        )
        mailer = await InProcessService(mailer_spec, settings).start()
        async with httpx.AsyncClient(
            base_url=mailer.url, headers={"Authorization": f"Bearer {tokens['viewer']}"}
        ) as client:

            async def serving() -> bool:
                return (await client.get("/api/v1/mail/stats")).status_code == 200

            await wait_for(serving, timeout=20, description="the mail API serving")
        server = ApiServer(scheduler.url, database_url, pool, tokens)
        for job_type in ("email-send", "address-book-populate"):
            await create_job(
                server,
                {
                    "name": job_type,
                    "type": job_type,
                    "schedule": {"kind": "cron", "expression": "0 3 1 1 *", "timezone": "UTC"},
                    "params": {},
                },
            )
        yield MailSystem(server, mailer.url, smtp_server)
    finally:
        if mailer is not None:
            await mailer.stop()
        await scheduler.stop()
        await pool.close()


@pytest.fixture
def jobwire_mail(mail_system: MailSystem, tmp_path: Path) -> Jobwire:
    return Jobwire(mail_system.scheduler, tmp_path, {"JOBWIRE_MAILER_URL": mail_system.mailer_url})


#: A case with its tasks: what the search jobs of the CLI tests index.
CASE_PROFILE: dict[str, Any] = {
    "root": "caseapp.cases",
    "fields": ["id", "reference", "title", "status"],
    "children": [{"table": "caseapp.tasks", "fields": ["id", "title", "state"]}],
}


@pytest_asyncio.fixture(loop_scope="session")
async def search_system(
    database_url: str, nats_url: str, namespace: str, search_engine_url: str, tmp_path: Path
) -> AsyncIterator[SearchSystem]:
    await caseapp.install(database_url)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "caseapp-dsn").write_text(database_url)
    alias = f"a{uuid.uuid4().hex[:12]}"
    params = {
        "source": {"dsn": "caseapp-dsn"},
        "engine": {"kind": "opensearch", "urls": [search_engine_url]},
        "profile": CASE_PROFILE,
        "index": {"alias": alias},
    }
    async with running_scheduler(database_url, nats_url, namespace) as scheduler:
        settings = SearchSyncSettings(
            nats={"url": nats_url},
            namespace=namespace,
            http_port=free_port(),
            instance_id="cli-test-search",
            host="cli-test",
            shutdown_grace_seconds=5,
            search={
                "scheduler_url": scheduler.url,
                "secrets_dir": str(secrets),
                "engine_retry_seconds": 2,
            },
        )
        search = await InProcessService(search_spec, settings).start()
        try:
            headers = {"Authorization": f"Bearer {scheduler.tokens['viewer']}"}
            async with httpx.AsyncClient(base_url=search.url, headers=headers) as client:

                async def serving() -> bool:
                    # 503 until its main has run; an empty job is then refused (422).
                    return (await client.post("/api/v1/search/status", json={})).status_code == 422

                await wait_for(serving, timeout=20, description="the search API serving")
            server = ApiServer(scheduler.url, database_url, None, scheduler.tokens)
            yield SearchSystem(server, search.url, database_url, alias, params)
        finally:
            await search.stop()
            engine = open_engine(
                EngineConfig(kind="opensearch", urls=[search_engine_url]),
                Secrets(None, {}),
                node_class=None,
                retry_seconds=2,
            )
            try:
                for index in await engine.indices(f"{alias}-"):
                    await engine.delete_index(index)
            finally:
                await engine.close()


@pytest.fixture
def jobwire_search(search_system: SearchSystem, tmp_path: Path) -> Jobwire:
    return Jobwire(
        search_system.scheduler, tmp_path, {"JOBWIRE_SEARCH_URL": search_system.search_url}
    )
