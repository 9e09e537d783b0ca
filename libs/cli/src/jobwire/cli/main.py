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

    from jobwire.runtime.broker import Broker
    from jobwire.runtime.hosts import live_hosts
    from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings

    try:
        settings = load_settings(ServiceSettings)
    except SettingsError as exc:
        typer.echo(f"jobwire hosts: {exc}", err=True)
        raise typer.Exit(SettingsError.exit_code) from None

    async def fetch() -> list[list[str]]:
        broker = Broker(settings, source="/jobwire/cli")
        stop = asyncio.Event()
        stop.set()  # one attempt only: a CLI should fail fast, not retry forever
        await broker.connect(stop)
        try:
            found = await live_hosts(broker.js, settings.namespace)
        finally:
            await broker.close()
        return [
            [
                h.service,
                h.host,
                h.instance_id,
                h.jobwire_version,
                "yes" if h.ready else "no",
                h.started_at.isoformat(timespec="seconds"),
                h.heartbeat_at.isoformat(timespec="seconds"),
            ]
            for h in found
        ]

    from jobwire.runtime.broker import redact
    from jobwire.runtime.waits import Stopped

    try:
        rows = asyncio.run(fetch())
    except Stopped:
        shown = ", ".join(redact(url) for url in settings.nats.servers)
        typer.echo(f"jobwire hosts: NATS unreachable at {shown}", err=True)
        raise typer.Exit(1) from None
    table = Table("service", "host", "instance", "version", "ready", "started", "heartbeat")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
