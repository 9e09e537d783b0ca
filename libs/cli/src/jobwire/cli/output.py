"""What commands print: a rich table for people, JSON or YAML for scripts.

JSON and YAML carry the API's own documents unchanged (UTC times in ISO 8601,
every field), so a script gets exactly what the API returned; tables are for
reading and may shorten or format values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from jobwire.cli.formats import dump_json, dump_yaml


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr). Off a terminal it is wide, so a piped
    table keeps one line per row for grep and friends."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=max(probe.width, 1000))


def write(data: Any, fmt: OutputFormat) -> None:
    """Print ``data`` as JSON, else as YAML."""
    if fmt is OutputFormat.JSON:
        typer.echo(dump_json(data))
    else:
        typer.echo(dump_yaml(data), nl=False)


def emit(data: Any, fmt: OutputFormat, table: Callable[[], RenderableType | str]) -> None:
    """Print ``data`` as JSON or YAML, or what ``table`` renders for people."""
    if fmt is not OutputFormat.TABLE:
        write(data, fmt)
    else:
        rendered = table()
        if isinstance(rendered, str):
            typer.echo(rendered)
        else:
            console().print(rendered)


def note(message: str) -> None:
    """A line for people on stderr, out of the way of what a script reads."""
    typer.echo(message, err=True)


def cell(value: object) -> Text:
    """A table cell; never read as rich markup (a job named ``[x]`` stays so)."""
    if value is None or value == "" or value == []:
        return Text("-", style="dim")
    if isinstance(value, list | tuple):
        return Text(", ".join(str(v) for v in value))
    return Text(str(value))


def when(value: str | None) -> str:
    """An API time (ISO 8601) as ``2026-03-29 01:00:00Z``: UTC, to the second."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


_STATUS_STYLES = {
    "Ready": "green",
    "Running": "cyan",
    "Queued": "cyan",
    "Paused": "yellow",
    "Disabled": "dim",
    "RecyclePending": "magenta",
    "Unknown": "red",
    "Suspended": "yellow",
    "Failing": "red",
    "Faulted": "bold red",
    "Ended": "dim",
    "succeeded": "green",
    "running": "cyan",
    "dispatched": "cyan",
    "queued": "cyan",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "missed": "yellow",
    "sent": "green",
    "sending": "cyan",
    "deferred": "yellow",
}


def status_cell(value: str | None) -> Text:
    text = cell(value)
    if value in _STATUS_STYLES:
        text.stylize(_STATUS_STYLES[value])
    return text


def table(columns: Sequence[str], rows: Iterable[Sequence[Text]], caption: str | None) -> Table:
    grid = Table(*columns, caption=caption, caption_justify="left")
    for row in rows:
        grid.add_row(*row)
    return grid


def fields(pairs: Mapping[str, object]) -> Text:
    """A key/value view of one object, a line per field, no padding after values."""
    width = max((len(key) for key in pairs), default=0) + 2
    lines = [
        Text.assemble((key.ljust(width), "bold"), value if isinstance(value, Text) else cell(value))
        for key, value in pairs.items()
    ]
    return Text("\n").join(lines)


# The Jobs Management table, shared by `jobs list` and `watch`.
JOB_COLUMNS = (
    "Name",
    "Description",
    "Type",
    "Status",
    "Last Run Result",
    "Last Run Time",
    "Next Run Time",
    "Active on Host",
)


def job_row(job: Mapping[str, Any]) -> list[Text]:
    return [
        cell(job["name"]),
        cell(job.get("description")),
        cell(job.get("type")),
        status_cell(job.get("status")),
        status_cell(job.get("last_result")),
        cell(when(job.get("last_run_at"))),
        cell(when(job.get("next_run_at"))),
        cell(job.get("active_hosts")),
    ]


def jobs_table(jobs: Sequence[Mapping[str, Any]], total: int | None) -> Table:
    shown = len(jobs)
    caption = f"{shown} of {total} jobs" if total is not None and total != shown else None
    return table(JOB_COLUMNS, (job_row(j) for j in jobs), caption)
