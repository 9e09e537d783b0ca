"""The ``jobwire`` command.

Each installed service registers itself under the ``jobwire.services`` entry
point group and becomes a subcommand (``jobwire scheduler`` …); ``jobwire dev``
runs all of them in one process on embedded servers. ``jobs``, ``runs``,
``watch``, ``apply`` and ``export`` talk to the admin API; ``mail`` and
``contacts`` to the mailer's API; ``search`` to the admin API for the job, then to
the search sync's API; ``tokens`` makes API tokens in the database directly.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from jobwire.cli import apply, jobs, mail, runs, search, tokens, watch
from jobwire.cli.context import Cli, OutputOption, cli_of
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
app.add_typer(mail.app, name="mail")
app.command("contacts")(mail.contacts)
app.add_typer(search.app, name="search")
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
    print_token: Annotated[
        bool,
        typer.Option(
            "--print-token", help="print the development admin token it recorded, and exit"
        ),
    ] = False,
) -> None:
    """Run the whole system on this machine: embedded NATS and PostgreSQL, every service.

    It records its URLs, a development admin token and the PIDs it started in
    DATA_DIR/dev.json (mode 0600); the other commands, run inside the project,
    use them while it runs. SIGINT or SIGTERM stops everything."""
    from jobwire.cli.dev import print_token as show_token
    from jobwire.cli.dev import run_dev

    if print_token:
        raise typer.Exit(show_token(data_dir))
    raise typer.Exit(run_dev(data_dir, example or []))


@app.command()
def hosts(ctx: typer.Context, output: OutputOption = None) -> None:
    """List live service instances from the host registry."""
    from jobwire.cli.output import emit, table
    from jobwire.contracts.hosts import HostInfo
    from jobwire.contracts.listeners import ListenerSlotStatus
    from jobwire.runtime.broker import Broker, redact
    from jobwire.runtime.hosts import live_hosts
    from jobwire.runtime.logs import setup_logging
    from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings
    from jobwire.runtime.waits import Stopped

    try:
        settings = load_settings(ServiceSettings, **_dev_nats())
    except SettingsError as exc:
        typer.echo(f"jobwire hosts: {exc}", err=True)
        raise typer.Exit(SettingsError.exit_code) from None
    # Only the result goes to stdout: library log lines (connected…) go to
    # stderr, and only warnings.
    setup_logging("WARNING", settings.log_format)

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

    shown = ", ".join(redact(url) for url in settings.nats.servers)
    try:
        found = asyncio.run(fetch())
    except Stopped:
        typer.echo(f"jobwire hosts: NATS unreachable at {shown}", err=True)
        raise typer.Exit(1) from None
    documents = [h.model_dump(mode="json") for h in found]

    def view() -> Group:
        grid = table(
            ("service", "host", "instance", "version", "ready", "started", "heartbeat"),
            (
                [
                    Text(h.service),
                    Text(h.host),
                    Text(h.instance_id),
                    Text(h.jobwire_version),
                    Text("yes" if h.ready else "no"),
                    Text(h.started_at.isoformat(timespec="seconds")),
                    Text(h.heartbeat_at.isoformat(timespec="seconds")),
                ]
                for h in found
            ),
            None if found else f"no live instances in namespace {settings.namespace!r} at {shown}",
        )
        parts: list[Table] = [grid]
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
            for h, slot in sorted(slots, key=lambda hs: (hs[1].job_name, hs[1].slot or -1)):
                listeners.add_row(
                    slot.job_name,
                    "-" if slot.slot is None else str(slot.slot),
                    slot.state,
                    h.host,
                    str(slot.received),
                    str(slot.published),
                    str(slot.dead_lettered),
                    str(slot.errors),
                    "-" if slot.lag is None else str(slot.lag),
                    slot.last_error or "",
                )
            parts.append(listeners)
        return Group(*parts)

    emit(documents, cli_of(ctx).format(output), view)


def _dev_nats() -> dict[str, object]:
    """NATS and namespace of a running ``jobwire dev`` of this project, for what
    the environment does not set."""
    import os

    from jobwire.cli import devfile

    dev = devfile.running(os.environ)
    if dev is None:
        return {}
    overrides: dict[str, object] = {}
    url = dev.string("nats_url")
    if url and not any(k.startswith("JOBWIRE_NATS__") for k in os.environ):
        overrides["nats"] = {"url": url}
    namespace = dev.string("namespace")
    if namespace and "JOBWIRE_NAMESPACE" not in os.environ:
        overrides["namespace"] = namespace
    return overrides
