"""``jobwire jobs …``: the Jobs Management table and what an operator does to a job."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from jobwire.cli.client import JSON, ApiClient
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.formats import dump_yaml
from jobwire.cli.inputs import parse_params, parse_time
from jobwire.cli.output import (
    cell,
    emit,
    fields,
    jobs_table,
    status_cell,
    table,
    when,
)

app = typer.Typer(
    help="Jobs: list, show, enable/disable, pause/resume, trigger, explain, preview, delete.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The job's name.", show_default=False)]


class JobStatusName(StrEnum):
    DISABLED = "Disabled"
    PAUSED = "Paused"
    READY = "Ready"
    QUEUED = "Queued"
    RUNNING = "Running"
    RECYCLE_PENDING = "RecyclePending"
    UNKNOWN = "Unknown"
    SUSPENDED = "Suspended"
    FAILING = "Failing"
    FAULTED = "Faulted"
    ENDED = "Ended"


class JobSort(StrEnum):
    NAME = "name"
    NAME_DESC = "-name"
    NEXT_RUN = "next_run_at"
    NEXT_RUN_DESC = "-next_run_at"
    LAST_RUN = "last_run_at"
    LAST_RUN_DESC = "-last_run_at"
    PRIORITY = "priority"
    PRIORITY_DESC = "-priority"


def job_filters(
    type_: str | None,
    group: str | None,
    status: list[JobStatusName] | None,
    tag: list[str] | None,
    search: str | None,
    sort: JobSort,
) -> dict[str, Any]:
    return {
        "type": type_,
        "group": group,
        "status": [s.value for s in status or []],
        "tag": list(tag or []),
        "q": search,
        "sort": sort.value,
    }


def fetch_jobs(client: ApiClient, filters: dict[str, Any], limit: int) -> tuple[list[JSON], int]:
    """Up to ``limit`` jobs, page by page, and how many match in all."""
    items: list[JSON] = []
    total = 0
    while len(items) < limit:
        wanted = min(500, limit - len(items))
        page = client.list_jobs(limit=wanted, offset=len(items), **filters)
        total = page["total"]
        items.extend(page["items"])
        if len(page["items"]) < wanted:
            break
    return items, total


TypeOption = Annotated[str | None, typer.Option("--type", help="Only jobs of this job type.")]
GroupOption = Annotated[str | None, typer.Option(help="Only jobs in this group.")]
StatusOption = Annotated[
    list[JobStatusName] | None, typer.Option(help="Only jobs with this status (repeatable).")
]
TagOption = Annotated[list[str] | None, typer.Option(help="Only jobs with every tag given.")]
SearchOption = Annotated[
    str | None, typer.Option(help="Only jobs with this text in their name or description.")
]
SortOption = Annotated[JobSort, typer.Option(help="Order; a leading - sorts descending.")]


@app.command("list")
@command
def list_jobs(
    ctx: typer.Context,
    type_: TypeOption = None,
    group: GroupOption = None,
    status: StatusOption = None,
    tag: TagOption = None,
    search: SearchOption = None,
    sort: SortOption = JobSort.NAME,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many jobs.")] = 100,
    output: OutputOption = None,
) -> None:
    """The Jobs Management table: status, last and next run, active host."""
    cli = cli_of(ctx)
    with cli.client() as client:
        items, total = fetch_jobs(
            client, job_filters(type_, group, status, tag, search, sort), limit
        )
    emit(jobs_page(items, total, limit), cli.format(output), lambda: jobs_table(items, total))


def jobs_page(items: list[JSON], total: int, limit: int) -> JSON:
    """The API's page document (``GET /api/v1/jobs``), for scripts: the pages
    the CLI fetched, as one page from offset 0."""
    return {"items": items, "total": total, "limit": limit, "offset": 0}


@app.command("show")
@command
def show_job(ctx: typer.Context, name: NameArg, output: OutputOption = None) -> None:
    """A job: its row of the Jobs Management table and its definition."""
    cli = cli_of(ctx)
    with cli.client() as client:
        job = client.get_job(name)
    emit(job, cli.format(output), lambda: _job_view(job))


def _job_view(job: JSON) -> RenderableType:
    summary = fields(
        {
            "Name": job["name"],
            "Description": job.get("description"),
            "Type": job.get("type"),
            "Status": status_cell(job.get("status")),
            "Fault": job.get("fault"),
            "Enabled": "yes" if job.get("enabled") else "no",
            "Paused": "yes" if job.get("paused") else "no",
            "Group": job.get("group"),
            "Tags": job.get("tags"),
            "Priority": job.get("priority"),
            "Last Run Result": status_cell(job.get("last_result")),
            "Last Run Time": when(job.get("last_run_at")),
            "Next Run Time": when(job.get("next_run_at")),
            "Active on Host": job.get("active_hosts"),
            "Version": job.get("version"),
        }
    )
    definition = Text(dump_yaml(job.get("definition")).rstrip())
    return Group(summary, Text(""), Text("Definition:", style="bold"), definition)


def _action(action: str, done: str, doc: str) -> None:
    @command
    def run(ctx: typer.Context, name: NameArg, output: OutputOption = None) -> None:
        cli = cli_of(ctx)
        with cli.client() as client:
            job = client.job_action(name, action)
        emit(job, cli.format(output), lambda: f"job {job['name']} {done}; status {job['status']}")

    run.__doc__ = doc
    app.command(action)(run)


_action("enable", "enabled", "Enable a job: it fires again, from now on (nothing catches up).")
_action("disable", "disabled", "Disable a job: it stops firing.")
_action("pause", "paused", "Pause a job's firing; its definition stays as it is.")
_action("resume", "resumed", "Resume a paused job, from now on.")


@app.command("trigger")
@command
def trigger_job(
    ctx: typer.Context,
    name: NameArg,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A parameter override, key=value (repeatable); the value is read as JSON "
            'when it is JSON (3, true, {"n": 1}), else as a string.'
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Send again with the same key and get the same run, not another."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Run a job now, optionally with parameter overrides."""
    params = parse_params(param or [])
    cli = cli_of(ctx)
    with cli.client() as client:
        run, created = client.trigger(name, params, idempotency_key)

    def line() -> str:
        text = f"run {run['id']} of job {run['job']}: {run['status']}"
        return text if created else text + " (made earlier with this idempotency key)"

    emit(run, cli.format(output), line)


@app.command("explain")
@command
def explain_job(
    ctx: typer.Context,
    name: NameArg,
    at: Annotated[
        str,
        typer.Option(
            help="The time asked about: ISO 8601 (local time without an offset), "
            "a time ago (15m, 2h, 7d) or now.",
            show_default=False,
        ),
    ],
    output: OutputOption = None,
) -> None:
    """Why a run of a job did or did not happen at a time."""
    moment = parse_time(at, "--at")
    cli = cli_of(ctx)
    with cli.client() as client:
        answer = client.explain(name, moment)

    def view() -> RenderableType:
        run = answer.get("run")
        return fields(
            {
                "Job": answer["job"],
                "At": when(answer.get("at")),
                "Verdict": Text(answer["verdict"], style="bold"),
                "Detail": answer.get("detail"),
                "Run": f"{run['id']} ({run['status']})" if run else None,
                "Slot before": when(answer.get("slot_before")),
                "Slot after": when(answer.get("slot_after")),
            }
        )

    emit(answer, cli.format(output), view)


@app.command("preview")
@command
def preview_job(
    ctx: typer.Context,
    name: NameArg,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000)] = 10,
    after: Annotated[
        str | None, typer.Option(help="Start from this time instead of now (as --at).")
    ] = None,
    output: OutputOption = None,
) -> None:
    """The next fire times of a job, in UTC and in its schedule's time zone."""
    start = parse_time(after, "--after") if after else None
    cli = cli_of(ctx)
    with cli.client() as client:
        preview = client.preview_job(name, count, start)

    def view() -> RenderableType:
        rows = [
            [cell(i), cell(when(f["at"])), cell(f["local"])]
            for i, f in enumerate(preview["fires"], 1)
        ]
        caption = None if rows else "no fire times: no schedule, or none left before expiry"
        return table(("#", "UTC", f"Local ({preview['timezone']})"), rows, caption)

    emit(preview, cli.format(output), view)


@app.command("delete")
@command
def delete_job(ctx: typer.Context, name: NameArg, output: OutputOption = None) -> None:
    """Delete a job and its run history."""
    cli = cli_of(ctx)
    with cli.client() as client:
        client.delete_job(name)
    emit({"name": name, "deleted": True}, cli.format(output), lambda: f"job {name} deleted")
