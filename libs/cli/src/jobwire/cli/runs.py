"""``jobwire runs …``: run history across jobs, one run, and cancelling one."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from jobwire.cli.client import JSON
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.formats import dump_yaml
from jobwire.cli.inputs import parse_time
from jobwire.cli.output import cell, emit, fields, status_cell, table, when

app = typer.Typer(help="Runs: history, one run's detail, cancel.", no_args_is_help=True)

RunIdArg = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]


class RunStatusName(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    MISSED = "missed"


RUN_COLUMNS = ("Run", "Job", "Slot", "Trigger", "Status", "Reason", "Started", "Finished", "Host")


def run_row(run: JSON) -> list[Text]:
    return [
        cell(run["id"]),
        cell(run.get("job")),
        cell(when(run.get("scheduled_for"))),
        cell(run.get("trigger")),
        status_cell(run.get("status")),
        cell(run.get("reason")),
        cell(when(run.get("started_at"))),
        cell(when(run.get("finished_at"))),
        cell(run.get("host")),
    ]


@app.command("list")
@command
def list_runs(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option(help="Only runs of this job.")] = None,
    status: Annotated[
        list[RunStatusName] | None, typer.Option(help="Only runs with this status (repeatable).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only slots from this time on: ISO 8601 or a time ago (1h, 7d)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many runs.")] = 50,
    output: OutputOption = None,
) -> None:
    """Runs, newest first."""
    start = parse_time(since, "--since") if since else None
    cli = cli_of(ctx)
    with cli.client() as client:
        runs = client.list_runs(
            limit, job=job, status=[s.value for s in status or []], **{"from": start}
        )
    emit(runs, cli.format(output), lambda: table(RUN_COLUMNS, map(run_row, runs), None))


def _run_view(run: JSON) -> RenderableType:
    summary = fields(
        {
            "Run": run["id"],
            "Job": run.get("job"),
            "Type": run.get("job_type"),
            "Status": status_cell(run.get("status")),
            "Reason": run.get("reason"),
            "Trigger": run.get("trigger"),
            "Requested by": run.get("requested_by"),
            "Slot": when(run.get("scheduled_for")),
            "Fired": when(run.get("fired_at")),
            "Started": when(run.get("started_at")),
            "Finished": when(run.get("finished_at")),
            "Heartbeat": when(run.get("heartbeat_at")),
            "Cancel requested": when(run.get("cancel_requested_at")),
            "Attempt": run.get("attempt"),
            "Host": run.get("host"),
            "Job version": run.get("job_version"),
        }
    )
    parts: list[RenderableType] = [summary]
    for key in ("params", "progress", "result", "error"):
        if run.get(key):
            parts += [Text(""), Text(f"{key.capitalize()}:", style="bold")]
            parts.append(Text(dump_yaml(run[key]).rstrip()))
    return Group(*parts)


@app.command("show")
@command
def show_run(ctx: typer.Context, run_id: RunIdArg, output: OutputOption = None) -> None:
    """One run: status, times, host, result, error, progress."""
    cli = cli_of(ctx)
    with cli.client() as client:
        run = client.get_run(run_id)
    emit(run, cli.format(output), lambda: _run_view(run))


@app.command("cancel")
@command
def cancel_run(ctx: typer.Context, run_id: RunIdArg, output: OutputOption = None) -> None:
    """Ask a run to stop: a queued run ends at once, a running one at its next checkpoint."""
    cli = cli_of(ctx)
    with cli.client() as client:
        run = client.cancel_run(run_id)
    emit(
        run,
        cli.format(output),
        lambda: f"run {run['id']} of job {run['job']}: cancel requested; status {run['status']}",
    )
