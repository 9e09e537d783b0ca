"""``jobwire watch``: the Jobs Management table, refreshed in place until Ctrl-C."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from jobwire.cli.client import ApiClient, ApiError, ApiUnreachable
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.formats import dump_yaml
from jobwire.cli.jobs import (
    GroupOption,
    JobSort,
    SearchOption,
    SortOption,
    StatusOption,
    TagOption,
    TypeOption,
    fetch_jobs,
    job_filters,
    jobs_page,
)
from jobwire.cli.output import OutputFormat, console, jobs_table


@command
def watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
    type_: TypeOption = None,
    group: GroupOption = None,
    status: StatusOption = None,
    tag: TagOption = None,
    search: SearchOption = None,
    sort: SortOption = JobSort.NAME,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many jobs.")] = 100,
    output: OutputOption = None,
) -> None:
    """A live Jobs Management table; Ctrl-C stops it. With -o json or yaml, the
    jobs page document at every refresh instead (JSON: one line each)."""
    filters = job_filters(type_, group, status, tag, search, sort)
    cli = cli_of(ctx)
    fmt = cli.format(output)
    if fmt is not OutputFormat.TABLE:
        with cli.client() as client:
            try:
                while True:
                    items, total = fetch_jobs(client, filters, limit)
                    page = jobs_page(items, total, limit)
                    if fmt is OutputFormat.JSON:
                        typer.echo(json.dumps(page, ensure_ascii=False))
                    else:
                        typer.echo("---\n" + dump_yaml(page), nl=False)
                    time.sleep(interval)
            except KeyboardInterrupt:
                return
    with cli.client() as client, Live(console=console(), auto_refresh=False) as live:
        frame = Frame(client, filters, limit, interval)
        try:
            while True:
                live.update(frame.next(), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends: exit 0, the last table left on screen


class Frame:
    """One refresh of the table. While the API is away (a restart, a network
    blip) the last table stays, marked stale: a watch outlives a restart."""

    def __init__(
        self, client: ApiClient, filters: dict[str, Any], limit: int, interval: float
    ) -> None:
        self.client = client
        self.filters = filters
        self.limit = limit
        self.interval = interval
        self.last: tuple[list[dict[str, Any]], int] = ([], 0)

    def next(self) -> Table:
        stamp = datetime.now().strftime("%H:%M:%S")
        footer = f"{stamp} · every {self.interval:g}s · Ctrl-C to stop"
        try:
            self.last = fetch_jobs(self.client, self.filters, self.limit)
        except ApiUnreachable as exc:
            return self._render(f"{footer} · STALE: {exc}")
        except ApiError as exc:
            if exc.status < 500:
                raise  # a bad token or filter does not get better by waiting
            return self._render(f"{footer} · STALE: {exc}")
        return self._render(footer)

    def _render(self, footer: str) -> Table:
        items, total = self.last
        grid = jobs_table(items, total)
        counted = f"{len(items)} of {total} jobs · " if total != len(items) else ""
        grid.caption = counted + footer
        return grid
