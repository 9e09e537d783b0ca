"""The ``jobwire`` command.

Each installed service registers itself under the ``jobwire.services`` entry
point group and becomes a subcommand (``jobwire scheduler`` …); ``jobwire dev``
runs all of them in one process on embedded servers. ``jobs``, ``runs``,
``watch``, ``apply`` and ``export`` talk to the admin API; ``tokens`` makes
API tokens in the database directly.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from typing import Annotated

import typer

from jobwire.cli import apply, jobs, runs, tokens, watch
from jobwire.cli.context import Cli
from jobwire.cli.output import OutputFormat
from jobwire.runtime.service import ServiceSpec, serve

app = typer.Typer(
    help="jobwire: job execution on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def options(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(
            help="The admin API (default: JOBWIRE_API_URL, else api_url in the config file, "
            "else http://127.0.0.1:8080). The token comes from JOBWIRE_TOKEN or the config "
            "file ~/.config/jobwire/config.toml.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="How commands print their results.")
    ] = OutputFormat.TABLE,
) -> None:
    """jobwire: job execution on NATS JetStream."""
    ctx.obj = Cli(api_url=api_url, output=output)


app.add_typer(jobs.app, name="jobs")
app.add_typer(runs.app, name="runs")
app.add_typer(tokens.app, name="tokens")
app.command("watch")(watch.watch)
app.command("apply")(apply.apply)
app.command("export")(apply.export)

SERVICE_GROUP = "jobwire.services"


def installed_services() -> dict[str, ServiceSpec]:
    """The services installed in this environment, by name."""
    specs = {}
    for ep in sorted(entry_points(group=SERVICE_GROUP), key=lambda e: e.name):
        spec = ep.load()
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"entry point {ep.value} is not a ServiceSpec")
        specs[ep.name] = spec
    return specs


def _add_service_command(name: str) -> None:
    def command() -> None:
        raise typer.Exit(serve(installed_services()[name]))

    app.command(name, help=f"Run the {name} service (configured by JOBWIRE_* variables).")(command)


for _ep in entry_points(group=SERVICE_GROUP):
    _add_service_command(_ep.name)


@app.command()
def dev(
    data_dir: Annotated[
        str, typer.Option(envvar="JOBWIRE_DEV_DIR", help="where embedded servers keep data")
    ] = ".jobwire",
    example: Annotated[
        list[str] | None,
        typer.Option(help="a script to run beside the system, e.g. examples/workflow_printer.py"),
    ] = None,
) -> None:
    """Run the whole system on this machine: embedded NATS and PostgreSQL, every service."""
    from jobwire.cli.dev import run_dev

    raise typer.Exit(run_dev(data_dir, example or []))


@app.command()
def hosts() -> None:
    """List live service instances from the host registry."""
    from rich.console import Console
    from rich.table import Table

    from jobwire.contracts.hosts import HostInfo
    from jobwire.contracts.listeners import ListenerSlotStatus
    from jobwire.runtime.broker import Broker
    from jobwire.runtime.hosts import live_hosts
    from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings

    try:
        settings = load_settings(ServiceSettings)
    except SettingsError as exc:
        typer.echo(f"jobwire hosts: {exc}", err=True)
        raise typer.Exit(SettingsError.exit_code) from None

    async def fetch() -> list[HostInfo]:
        broker = Broker(settings, source="/jobwire/cli")
        stop = asyncio.Event()
        # A CLI should fail fast, not retry forever: give up once one attempt
        # could have finished (a stop set before connecting would not even try).
        limit = settings.nats.connect_timeout_seconds + 0.5
        asyncio.get_running_loop().call_later(limit, stop.set)
        await broker.connect(stop)
        try:
            return await live_hosts(broker.js, settings.namespace)
        finally:
            await broker.close()

    from jobwire.runtime.broker import redact
    from jobwire.runtime.waits import Stopped

    try:
        found = asyncio.run(fetch())
    except Stopped:
        shown = ", ".join(redact(url) for url in settings.nats.servers)
        typer.echo(f"jobwire hosts: NATS unreachable at {shown}", err=True)
        raise typer.Exit(1) from None
    table = Table("service", "host", "instance", "version", "ready", "started", "heartbeat")
    for h in found:
        table.add_row(
            h.service,
            h.host,
            h.instance_id,
            h.jobwire_version,
            "yes" if h.ready else "no",
            h.started_at.isoformat(timespec="seconds"),
            h.heartbeat_at.isoformat(timespec="seconds"),
        )
    console = Console()
    console.print(table)
    slots = [
        (h, ListenerSlotStatus.model_validate(raw))
        for h in found
        for raw in h.status.get("listeners", [])
    ]
    if slots:
        listeners = Table(
            "listener",
            "slot",
            "state",
            "host",
            "received",
            "published",
            "dead",
            "errors",
            "lag",
            "last error",
            title="listener slots",
        )
        for h, s in sorted(slots, key=lambda hs: (hs[1].job_name, hs[1].slot or -1)):
            listeners.add_row(
                s.job_name,
                "-" if s.slot is None else str(s.slot),
                s.state,
                h.host,
                str(s.received),
                str(s.published),
                str(s.dead_lettered),
                str(s.errors),
                "-" if s.lag is None else str(s.lag),
                s.last_error or "",
            )
        console.print(listeners)
