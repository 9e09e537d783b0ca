"""``jobwire search status|install <job>``: the search sync's API for one search job.

A search job's parameters name its source, engine and alias, and the secrets to
reach them, which only the search sync can resolve. So both commands fetch the
job from the admin API and post its type and parameters to the search sync
(its own URL, see :mod:`jobwire.cli.config`), which opens the source and the
engine and answers.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import RenderableType

from jobwire.cli.client import JSON, ApiClient, CliError
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.output import emit, fields, when

app = typer.Typer(
    help="Search sync: status and change capture of a search job.", no_args_is_help=True
)

FULL_LOAD = "search-full-load"
SEARCH_TYPES = (FULL_LOAD, "search-incremental")

JobArg = Annotated[
    str,
    typer.Argument(help="A search-full-load or search-incremental job.", show_default=False),
]


def search_job(client: ApiClient, name: str) -> tuple[str, dict[str, Any]]:
    """The type and parameters of job ``name``; refused unless it is a search job."""
    job = client.get_job(name)
    job_type = job.get("type")
    if job_type not in SEARCH_TYPES:
        raise CliError(
            f"job {name!r} is of type {job_type!r}: `jobwire search` takes a "
            f"{' or '.join(SEARCH_TYPES)} job"
        )
    definition = job.get("definition") or {}
    return str(job_type), dict(definition.get("params") or {})


def _full_load_jobs(client: ApiClient, alias: str) -> list[str]:
    """Names of the full-load jobs that build ``alias``: where an install's next step is."""
    return [
        job["name"]
        for job in client.all_jobs(type=FULL_LOAD)
        if _alias(client.get_job(job["name"]).get("definition", {}).get("params")) == alias
    ]


def _alias(params: Any) -> str | None:
    index = params.get("index") if isinstance(params, dict) else None
    alias = index.get("alias") if isinstance(index, dict) else None
    return alias if isinstance(alias, str) else None


@app.command("status")
@command
def status(ctx: typer.Context, job: JobArg, output: OutputOption = None) -> None:
    """Alias → index, documents in source and index, watermark, lag, change capture."""
    cli = cli_of(ctx)
    with cli.client() as admin:
        job_type, params = search_job(admin, job)
    with cli.search_client() as search:
        answer = search.status(job_type, params)
    emit(answer, cli.format(output), lambda: status_view(job, answer))


def status_view(job: str, status: JSON) -> RenderableType:
    consumer = status.get("consumer")
    aliased = status.get("aliased") or []
    source, index = status.get("source_documents"), status.get("index_documents")
    documents = f"{source} in the source, " + (
        "no index behind the alias" if index is None else f"{index} in the index"
    )
    if index is not None and index != source:
        documents += f" ({_difference(source, index)})"
    missing = status.get("capture_missing") or []
    if status.get("capture_installed"):
        capture = "installed"
    else:
        # Missing names the captured tables without their trigger; none: the schema is.
        where = f" on {', '.join(missing)}" if missing else ""
        capture = f"not installed{where}: run `jobwire search install {job}`"
    lag = status.get("lag_seconds")
    view: dict[str, object] = {
        "Alias": f"{status['alias']} → {', '.join(aliased) if aliased else '(no index yet)'}",
        "Indices": status.get("indices"),
        "Documents": documents,
        "Watermark": None,
        "Pending changes": status.get("pending_changes"),
        "Lag": None if lag is None else f"{lag:.1f} s",
        "Capture": capture,
        "Profile": None,
    }
    if consumer is None:
        view["Watermark"] = "none: no full load has built the index yet"
    else:
        view["Watermark"] = (
            f"{consumer['watermark']} into {consumer['index']} (loaded "
            f"{when(consumer.get('loaded_at'))}, updated {when(consumer.get('updated_at'))})"
        )
        view["Profile"] = (
            "current"
            if consumer.get("profile_current")
            else "changed since the full load: run the full load again"
        )
    return fields(view)


def _difference(source: object, index: int) -> str:
    if not isinstance(source, int):
        return "counts differ"
    more = index - source
    return f"{abs(more)} {'more' if more > 0 else 'fewer'} in the index"


@app.command("install")
@command
def install(
    ctx: typer.Context,
    job: JobArg,
    sql: Annotated[
        bool,
        typer.Option(
            "--sql",
            help="Only print the SQL statements (for a DBA to read or run); install nothing.",
        ),
    ] = False,
    output: OutputOption = None,
) -> None:
    """Install the change capture of the job's profile in its source (or print its SQL).

    The jobwire_search schema and a trigger pair per captured table; needs the admin role."""
    cli = cli_of(ctx)
    with cli.client() as admin:
        job_type, params = search_job(admin, job)
        full_loads = [job] if job_type == FULL_LOAD else None
        if not sql and full_loads is None:
            full_loads = _full_load_jobs(admin, _alias(params) or "")
    with cli.search_client() as search:
        answer = search.install(job_type, params, apply=not sql)
    fmt = cli.format(output)
    if sql:
        emit(answer, fmt, lambda: "\n\n".join(_statement(s) for s in answer["statements"]))
    else:
        emit(answer, fmt, lambda: installed_view(answer, _alias(params), full_loads or []))


def _statement(text: str) -> str:
    text = text.strip()
    return text if text.endswith(";") else text + ";"


def installed_view(answer: JSON, alias: str | None, full_loads: list[str]) -> str:
    triggers = answer.get("triggers") or []
    lines = [f"change capture installed: {len(triggers)} triggers"]
    lines += [f"  {trigger}" for trigger in triggers]
    if full_loads:
        runs = " or ".join(f"`jobwire jobs trigger {name}`" for name in full_loads)
        lines.append(f"next: run the full load: {runs}")
    else:
        lines.append(
            f"next: run the full load: create a {FULL_LOAD} job for alias {alias!r} "
            "with the same profile, then `jobwire jobs trigger <that job>`"
        )
    return "\n".join(lines)
