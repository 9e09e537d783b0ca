"""``jobwire dev``: the whole system on one machine, for trying and developing.

Starts what is missing — an embedded NATS with JetStream, a PostgreSQL
(unless ``JOBWIRE_DATABASE_URL`` points at one) and a development SMTP sink
(unless ``JOBWIRE_DEV_SMTP`` names one) — then every installed service in one
supervised process, the scheduler first (on 8080 when free, so
the page's URL stays put). It records its URLs, a development admin token and
the PIDs of what it started in ``.jobwire/dev.json`` (see
:mod:`jobwire.cli.devfile`), so the CLI run inside the project needs nothing
typed by hand.

Stopping: SIGINT or SIGTERM, whatever disposition was inherited (a script's
background job starts with SIGINT ignored), stops the services gracefully,
then the servers; data stays for the next run. The servers and the example
die with this process even when it is killed (parent-death signal); what a
killed run left behind anyway, the next run stops by its recorded PIDs.

The SMTP sink (:class:`jobwire.runtime.mail_sink.DevMailSink`, in a thread of
this process, on 2525 when free) accepts every message and sends none: each
becomes ``<data dir>/mail/<time>-<n>.eml`` and one ``mail  → …`` line on the
console. Its ``host:port`` is put in ``JOBWIRE_DEV_SMTP`` before the services'
settings are loaded, so a service's ``dev_overrides`` (the mailer's) reads it
with :func:`jobwire.runtime.mail_sink.dev_smtp_address`; the example gets it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import asyncpg
import typer

from jobwire.cli import devfile
from jobwire.runtime.embedded import (
    DEV_API_VARIABLE,
    EmbeddedServerError,
    NatsServer,
    PostgresServer,
    SearchServer,
    child_options,
    free_port,
    is_listening,
    postgres_data_dir,
    terminate,
)
from jobwire.runtime.logs import setup_logging
from jobwire.runtime.mail_sink import DEV_SMTP_VARIABLE, DevMailSink, StoredMessage
from jobwire.runtime.service import (
    VERSION,
    ServiceSpec,
    install_signal_handlers,
    run_services,
    tune_garbage_collector,
)
from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings
from jobwire.runtime.telemetry import setup_telemetry, shutdown_telemetry

# Fixed ports make the printed URLs stable between runs; a taken port (say a
# system NATS on 4222) falls back to any free one.
PREFERRED = {"nats": 14222, "postgres": 15432, "http": 8080, "search": 19200}
#: Where `jobwire dev` tells the examples its search engine listens.
DEV_SEARCH_VARIABLE = "JOBWIRE_DEV_SEARCH"
DATABASE = "jobwire"
DEV_TOKEN_NAME = "jobwire-dev"  # noqa: S105 (the name of a token, not one)
# The service that serves the page and the admin API starts first and takes 8080.
FIRST = "scheduler"
# The service whose sample needs a search engine.
SEARCH_SERVICE = "search-sync"
STOP_TIMEOUT = 10.0


def _port(preferred: int, taken: set[int]) -> int:
    port = preferred
    if port in taken or is_listening("127.0.0.1", port):
        port = free_port()
    taken.add(port)
    return port


class _Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the event loop: unwind, stopping what started."""


class _Signals:
    """SIGINT/SIGTERM outside the event loop (while starting and stopping).

    The first raises :class:`_Stop`, which unwinds the start-up and stops in
    order what had started. Later ones are noted and ignored: the servers stop
    within seconds, each bounded by a timeout.
    """

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        raise _Stop


@contextlib.contextmanager
def _embedded_nats(data: Path, record: devfile.DevFile) -> Iterator[tuple[str, Path]]:
    server = NatsServer(data / "nats", port=_port(PREFERRED["nats"], set()))
    server.start()
    record.record("nats-server", server.pid)
    try:
        yield server.url, server.store_dir
    finally:
        server.stop()


@contextlib.contextmanager
def _embedded_postgres(data: Path, record: devfile.DevFile) -> Iterator[tuple[str, Path]]:
    # As root the server runs as `postgres`, which may not reach the project
    # (a clone in root's 0700 home): its data then lives under /var/tmp.
    folder = postgres_data_dir(data / "postgres", data)
    server = PostgresServer(folder, port=_port(PREFERRED["postgres"], set()))
    server.start()
    record.record("postgres", server.pid)
    try:
        asyncio.run(_create_database(server.dsn, DATABASE))
        yield server.dsn.rsplit("/", 1)[0] + f"/{DATABASE}", folder
    finally:
        server.stop()


@contextlib.contextmanager
def _embedded_search(data: Path, record: devfile.DevFile) -> Iterator[str]:
    """An in-memory search engine for the search sync's sample, announced in
    ``JOBWIRE_DEV_SEARCH``; yields the banner text. One named there already is used as is."""
    configured = os.environ.get(DEV_SEARCH_VARIABLE)
    if configured:
        record.values["search"] = configured
        record.save()
        yield f"{configured} (from {DEV_SEARCH_VARIABLE})"
        return
    server = SearchServer(data / "search", port=_port(PREFERRED["search"], set()))
    server.start()
    record.record("osmem-server", server.pid)
    os.environ[DEV_SEARCH_VARIABLE] = server.url
    record.values["search"] = server.url
    record.save()
    try:
        yield f"{server.url} (osmem-server: OpenSearch API, in memory — a restart empties it)"
    finally:
        os.environ.pop(DEV_SEARCH_VARIABLE, None)
        server.stop()


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when inside it (shorter on a console)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def mail_line(directory: Path, stored: StoredMessage) -> str:
    """The console line of one message the sink took."""
    subject = (stored.subject or "(no subject)").replace('"', "'")
    return f'mail  → {", ".join(stored.rcpt_tos)}  "{subject}"  {_shown(directory / stored.file)}'


@contextlib.contextmanager
def _embedded_smtp(data: Path, record: devfile.DevFile) -> Iterator[str]:
    """The development mail sink, announced in ``JOBWIRE_DEV_SMTP``; yields the banner text.

    A ``JOBWIRE_DEV_SMTP`` already set names a sink of the user's: none is started.
    """
    configured = os.environ.get(DEV_SMTP_VARIABLE)
    if configured:
        record.values["smtp"] = configured
        record.save()
        yield f"{configured} (from {DEV_SMTP_VARIABLE})"
        return
    folder = data / "mail"
    sink = DevMailSink(folder, on_stored=lambda stored: typer.echo(mail_line(folder, stored)))
    sink.start()
    os.environ[DEV_SMTP_VARIABLE] = sink.address
    record.values.update({"smtp": sink.address, "mail_dir": str(sink.directory)})
    record.save()
    try:
        yield f"{sink.address} → {_shown(sink.directory)}/ (development sink: keeps, never sends)"
    finally:
        os.environ.pop(DEV_SMTP_VARIABLE, None)
        sink.stop()


@contextlib.contextmanager
def _example(
    script: str, nats_url: str, namespace: str, database_url: str, record: devfile.DevFile
) -> Iterator[None]:
    """An example app beside the system, as a child process stopped by PID at exit.

    It is told where NATS, the namespace, the database server and the project's
    dev folder are (``JOBWIRE_DEV_DIR``: the CLI run from it finds the system).
    """
    env = {
        **os.environ,
        "JOBWIRE_NATS__URL": nats_url,
        "JOBWIRE_NAMESPACE": namespace,
        "JOBWIRE_DATABASE_URL": database_url,
        devfile.DIR_VARIABLE: str(record.path.parent),
    }
    # Its own session (Ctrl-C reaches jobwire dev, which stops it in order),
    # and it dies with jobwire dev.
    child = subprocess.Popen([sys.executable, script], env=env, **child_options())
    record.record(f"example {script}", child.pid)
    try:
        yield
    finally:
        terminate(child, timeout=5)


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _dev_token(database_url: str, previous: str | None) -> str | None:
    """An admin token for the CLI and the page: the recorded one while it still
    works, else a new one (the old one revoked). None without the scheduler."""
    try:
        from jobwire.scheduler.api.tokens import (
            TokenNotFound,
            authenticate,
            create_token,
            ensure_schema,
            revoke_token,
        )
    except ImportError:
        return None
    from jobwire.runtime.db import connect_pool

    pool = await connect_pool(database_url, max_size=2)
    try:
        await ensure_schema(pool)
        if previous and await authenticate(pool, previous) is not None:
            return previous
        with contextlib.suppress(TokenNotFound):
            await revoke_token(pool, DEV_TOKEN_NAME, actor="jobwire dev")
        return await create_token(pool, DEV_TOKEN_NAME, "admin", actor="jobwire dev")
    finally:
        await pool.close()


def stop_leftovers(previous: devfile.DevFile) -> list[str]:
    """Stop what an earlier, killed ``jobwire dev`` left running, by recorded PID.

    A PID counts only with its recorded start time: a reused PID belongs to
    someone else and is never signalled. Returns what was stopped, for the user.
    """
    stopped = []
    for name, process in previous.processes().items():
        if not process.alive():
            continue
        # PostgreSQL's fast shutdown is SIGINT (its SIGTERM waits for clients).
        signum = signal.SIGINT if name == "postgres" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        deadline = time.monotonic() + STOP_TIMEOUT
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        stopped.append(f"{name} (pid {process.pid})")
    return stopped


def print_token(data_dir: str) -> int:
    found = devfile.read(Path(data_dir).absolute() / devfile.FILE_NAME)
    token = found.string("token")
    if not token:
        typer.echo(f"jobwire dev: no token recorded in {found.path}; run `make run`", err=True)
        return 1
    typer.echo(token)
    return 0


def run_dev(data_dir: str, examples: list[str]) -> int:
    from jobwire.cli.main import installed_services

    signals = _Signals()
    signals.install()
    try:
        data = Path(data_dir).absolute()
        data.mkdir(parents=True, exist_ok=True)
        previous = devfile.read(data / devfile.FILE_NAME)
        if previous.running():
            owner = previous.owner
            assert owner is not None
            typer.echo(
                f"jobwire dev: already running for {data} (pid {owner.pid}); stop it first",
                err=True,
            )
            return 1
        for name in stop_leftovers(previous):
            typer.echo(f"jobwire dev: stopped {name}, left running by an earlier run")
        services = installed_services()
        return _run(data, services, examples, previous, signals)
    except EmbeddedServerError as exc:
        typer.echo(f"jobwire dev: {exc}", err=True)
        return 1
    except _Stop:
        typer.echo("jobwire dev: stopped")
        return 0


def _ordered(services: dict[str, ServiceSpec]) -> list[tuple[str, ServiceSpec]]:
    return sorted(services.items(), key=lambda item: (item[0] != FIRST, item[0]))


def _run(
    data: Path,
    services: dict[str, ServiceSpec],
    examples: list[str],
    previous: devfile.DevFile,
    signals: _Signals,
) -> int:
    me = devfile.Recorded.of(os.getpid())
    record = devfile.DevFile(data / devfile.FILE_NAME, {"pid": me.pid, "start": me.start})
    record.save()
    with contextlib.ExitStack() as stack:
        if os.environ.get("JOBWIRE_NATS__URL"):
            nats_url = os.environ["JOBWIRE_NATS__URL"]
            nats_shown = "from JOBWIRE_NATS__URL"
        else:
            nats_url, nats_dir = stack.enter_context(_embedded_nats(data, record))
            nats_shown = f"{nats_url} (embedded, data in {nats_dir})"
        if os.environ.get("JOBWIRE_DATABASE_URL"):
            database_url = os.environ["JOBWIRE_DATABASE_URL"]
            db_shown = "from JOBWIRE_DATABASE_URL"
        else:
            database_url, pg_dir = stack.enter_context(_embedded_postgres(data, record))
            db_shown = f"{database_url} (embedded, data in {pg_dir})"
            record.values["postgres_data"] = str(pg_dir)
        # Before the services' settings: the mailer's dev_overrides read its address.
        smtp_shown = stack.enter_context(_embedded_smtp(data, record))
        search_shown = (
            stack.enter_context(_embedded_search(data, record))
            if SEARCH_SERVICE in services
            else None
        )

        try:
            configured = []
            taken: set[int] = set()
            for offset, (name, spec) in enumerate(_ordered(services)):
                settings = load_settings(
                    spec.settings,
                    **spec.dev_overrides(data),
                    nats={"url": nats_url},
                    database_url=database_url,
                    http_port=_port(PREFERRED["http"] + offset, taken),
                    instance_id=f"dev-{name}-{os.getpid()}",
                )
                configured.append((spec, settings))
                if name == FIRST:
                    # Before the other services' settings: the mailer's dev_overrides
                    # read where the admin API (which checks its tokens) listens.
                    os.environ[DEV_API_VARIABLE] = (
                        f"http://{settings.http_host}:{settings.http_port}"
                    )
            base = load_settings(ServiceSettings, nats={"url": nats_url})
        except SettingsError as exc:
            typer.echo(f"jobwire dev: {exc}", err=True)
            return SettingsError.exit_code

        # Before anything logs (migrations do): logs go to stderr, as configured.
        setup_logging(base.log_level, base.log_format, service="dev")
        api = next((s for spec, s in configured if spec.name == FIRST), None)
        api_url = f"http://{api.http_host}:{api.http_port}" if api else None
        token = asyncio.run(_dev_token(database_url, previous.string("token"))) if api else None
        record.values.update(
            {
                "api_url": api_url,
                "token": token,
                "nats_url": nats_url,
                "namespace": base.namespace,
                "database_url": database_url,
                # Each service's own API (the mailer's): the CLI finds them here.
                "services": {
                    spec.name: f"http://{settings.http_host}:{settings.http_port}"
                    for spec, settings in configured
                },
            }
        )
        record.save()

        typer.echo(f"jobwire {VERSION} — local system (data in {data})")
        typer.echo(f"  NATS        {nats_shown}")
        typer.echo(f"  PostgreSQL  {db_shown}")
        typer.echo(f"  SMTP        {smtp_shown}")
        if search_shown:
            typer.echo(f"  Search      {search_shown}")
        for spec, settings in configured:
            role = " — the page and the admin API" if spec.name == FIRST else ""
            typer.echo(
                f"  {spec.name:<11} http://{settings.http_host}:{settings.http_port}"
                f" (/healthz, /readyz){role}"
            )
        if not configured:
            typer.echo("  no services installed yet: servers only")
        for script in examples:
            stack.enter_context(_example(script, nats_url, base.namespace, database_url, record))
            typer.echo(f"  example     {script}")
        _next_steps(data, api_url, token, services)

        setup_telemetry("jobwire-dev", VERSION, f"dev-{os.getpid()}", base.host)
        tune_garbage_collector()

        async def main() -> None:
            stop = asyncio.Event()
            install_signal_handlers(stop)
            # Said only once it is true: from here a Ctrl-C stops in order.
            typer.echo("Ctrl-C stops everything.")
            if configured:
                await run_services(configured, stop)
            else:
                await stop.wait()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            return 130  # a forced stop (a second signal): said by the exit code
        finally:
            # The loop's handlers are gone with it; the servers stop next, and
            # a signal now must not kill us half way (see _Signals).
            signals.requested = True
            signals.install()
            shutdown_telemetry()
    typer.echo("jobwire dev: stopped")
    return 0


def _next_steps(
    data: Path, api_url: str | None, token: str | None, services: dict[str, ServiceSpec]
) -> None:
    if api_url is None:
        return
    typer.echo(f"Jobs Management page and admin API: {api_url}/")
    # The CLI finds .jobwire/ from the project's folders by itself; elsewhere
    # it has to be told.
    found = devfile.locate({}, Path.cwd())
    prefix = "uv run jobwire"
    if data.name != devfile.DEFAULT_DIR or found != data / devfile.FILE_NAME:
        prefix = f"JOBWIRE_DEV_DIR={shlex.quote(str(data))} {prefix}"
    if token:
        typer.echo(f"  sign in to the page with the token `{prefix} dev --print-token` prints")
    typer.echo("Next, in another terminal in this folder:")
    commands = ["jobs list", "runs list", "hosts", "watch"]
    if "mailer" in services:
        commands.append("mail list")
    if SEARCH_SERVICE in services:
        # The job examples/caseapp_sample.py saves, a few seconds after the start.
        commands.append("search status sample-cases")
    for command in commands:
        typer.echo(f"  {prefix} {command}")
