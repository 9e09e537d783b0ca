"""``jobwire dev``: the whole system on one machine, for trying and developing.

Starts what is missing — an embedded NATS with JetStream and, unless
``JOBWIRE_DATABASE_URL`` points at one, a PostgreSQL in a local folder — then
every installed service in one supervised process. Ctrl-C stops the services
gracefully, then the servers; data stays in the folder for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import typer

from jobwire.runtime.embedded import (
    EmbeddedServerError,
    NatsServer,
    PostgresServer,
    free_port,
    is_listening,
    terminate,
)
from jobwire.runtime.logs import setup_logging
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
PREFERRED = {"nats": 14222, "postgres": 15432, "http": 8080}
DATABASE = "jobwire"


def _port(name: str) -> int:
    preferred = PREFERRED[name]
    return free_port() if is_listening("127.0.0.1", preferred) else preferred


@contextlib.contextmanager
def _embedded_nats(data: Path) -> Iterator[str]:
    server = NatsServer(data / "nats", port=_port("nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def _embedded_postgres(data: Path) -> Iterator[str]:
    server = PostgresServer(data / "postgres", port=_port("postgres"))
    server.start()
    try:
        asyncio.run(_create_database(server.dsn, DATABASE))
        yield server.dsn.rsplit("/", 1)[0] + f"/{DATABASE}"
    finally:
        server.stop()


@contextlib.contextmanager
def _example(script: str, nats_url: str, namespace: str) -> Iterator[None]:
    """An example app beside the system, as a child process stopped by PID at exit."""
    env = {**os.environ, "JOBWIRE_NATS__URL": nats_url, "JOBWIRE_NAMESPACE": namespace}
    # Its own session: Ctrl-C reaches jobwire dev, which stops it in order.
    child = subprocess.Popen([sys.executable, script], env=env, start_new_session=True)
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


def run_dev(data_dir: str, examples: list[str]) -> int:
    from jobwire.cli.main import installed_services

    data = Path(data_dir).absolute()
    data.mkdir(parents=True, exist_ok=True)
    services = installed_services()
    try:
        return _run(data, services, examples)
    except EmbeddedServerError as exc:
        typer.echo(f"jobwire dev: {exc}", err=True)
        return 1


def _run(data: Path, services: dict[str, ServiceSpec], examples: list[str]) -> int:
    with contextlib.ExitStack() as stack:
        if os.environ.get("JOBWIRE_NATS__URL"):
            nats_url = os.environ["JOBWIRE_NATS__URL"]
            nats_shown = "from JOBWIRE_NATS__URL"
        else:
            nats_url = stack.enter_context(_embedded_nats(data))
            nats_shown = f"{nats_url} (embedded, data in {data / 'nats'})"
        if os.environ.get("JOBWIRE_DATABASE_URL"):
            database_url = os.environ["JOBWIRE_DATABASE_URL"]
            db_shown = "from JOBWIRE_DATABASE_URL"
        else:
            database_url = stack.enter_context(_embedded_postgres(data))
            db_shown = f"{database_url} (embedded, data in {data / 'postgres'})"

        try:
            configured = []
            http_port = _port("http")
            for offset, (name, spec) in enumerate(services.items()):
                settings = load_settings(
                    spec.settings,
                    **spec.dev_overrides(data),
                    nats={"url": nats_url},
                    database_url=database_url,
                    http_port=http_port + offset,
                    instance_id=f"dev-{name}-{os.getpid()}",
                )
                configured.append((spec, settings))
            base = load_settings(ServiceSettings, nats={"url": nats_url})
        except SettingsError as exc:
            typer.echo(f"jobwire dev: {exc}", err=True)
            return SettingsError.exit_code

        typer.echo(f"jobwire {VERSION} — local system")
        typer.echo(f"  NATS        {nats_shown}")
        typer.echo(f"  PostgreSQL  {db_shown}")
        for spec, settings in configured:
            typer.echo(
                f"  {spec.name:<11} http://{settings.http_host}:{settings.http_port}"
                " (/healthz, /readyz)"
            )
        if not configured:
            typer.echo("  no services installed yet: servers only")
        for script in examples:
            stack.enter_context(_example(script, nats_url, base.namespace))
            typer.echo(f"  example     {script}")

        setup_logging(base.log_level, base.log_format, service="dev")
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
            return 130
        finally:
            shutdown_telemetry()
    typer.echo("jobwire dev: stopped")
    return 0
