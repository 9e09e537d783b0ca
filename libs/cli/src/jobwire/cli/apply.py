"""``jobwire apply`` and ``jobwire export``: job definitions kept in a file.

``apply -f jobs.yaml`` makes the server match the file, in five steps:

1. Read the file: a list of definitions, or ``{jobs: [...]}``; YAML or JSON.
   Every entry must be a mapping with a ``name``; names must be unique.
2. Validate every definition with the server, saving nothing
   (``POST /api/v1/preview`` validates a definition whole, its type's params
   included, and names each bad field). If any is refused, each refusal is
   shown with its job and field, and nothing is applied.
3. Plan: compare each definition with the server's, both in their complete
   form (defaults filled in), so a file that leaves out defaults matches what
   the server stores. Each job is to be created, updated or left unchanged;
   with ``--prune`` jobs the file does not name are to be deleted.
4. Show a unified diff per job that changes, and a summary.
5. Unless ``--dry-run``: creates, then updates, then deletes. Updates and
   deletes send the version read in step 3 (``If-Match``), so a change someone
   made in between is refused, not overwritten. The first refusal stops the
   run, which then reports what was applied and what was not (the API changes
   one job per request; a failure there, unlike an invalid file, can leave a
   file half applied — running ``apply`` again finishes it).

``enabled`` is managed only when the file sets it: a file without it leaves
an operator's ``jobs disable`` in place. ``export`` writes it, so an exported
file pins it.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from jobwire.cli.client import ApiClient, ApiError, CliError
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.formats import DocumentError, dump_yaml, load_document
from jobwire.cli.output import OutputFormat, console, note, write

if TYPE_CHECKING:
    from pydantic import BaseModel

Definition = dict[str, Any]


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    DELETE = "delete"


@dataclass(frozen=True)
class Change:
    action: Action
    name: str
    body: Definition | None = None  # what is sent: create, update
    version: int | None = None  # the server's version: update, delete
    diff: tuple[str, ...] = ()


# -- reading a file --------------------------------------------------------------------


# A definitions file is written by people: thousands of jobs fit in far less.
# The limit keeps a wrong file (a log, a disk image) from being read whole.
MAX_FILE_BYTES = 10 * 1024 * 1024


def read_definitions(path: str) -> list[Definition]:
    """The definitions in ``path`` (``-``: stdin), checked for shape, not content."""
    source = "<stdin>" if path == "-" else path
    if path == "-":
        raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    else:
        try:
            with Path(path).open("rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise CliError(f"{path}: cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CliError(
            f"{source}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; "
            "is it a job definitions file? Split it into several"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = load_document(text, source)
    except DocumentError as exc:
        raise CliError(str(exc)) from None
    return definitions_of(data, source)


def _kind(value: object) -> str:
    names = {str: "a string", list: "a list", dict: "a mapping", bool: "a boolean"}
    return names.get(type(value), f"a {type(value).__name__}")


def _not_json(value: Any, where: str) -> str | None:
    """The first place in ``value`` that JSON cannot carry (YAML can write
    ``!!binary``, ``!!set``, ``!!timestamp``, non-string keys, ``.nan``)."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: {value} is not a JSON number"
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _not_json(item, f"{where}[{index}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} must be a string"
            found = _not_json(item, f"{where}.{key}")
            if found:
                return found
        return None
    return f"{where}: {_kind(value)} value is not JSON (write it as a string)"


def definitions_of(data: Any, source: str) -> list[Definition]:
    if data is None:
        # An empty file is more likely a mistake than a wish to delete every
        # job (with --prune): emptiness has to be said.
        raise CliError(f"{source}: the file is empty; write `jobs: []` to mean no jobs")
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"jobs"}, key=str)
        if unknown or "jobs" not in data:
            raise CliError(
                f"{source}: expected a list of job definitions or a mapping with the one key "
                f"`jobs`; found {', '.join(map(str, unknown)) or 'no jobs key'}"
            )
        data = data["jobs"]
        if data is None:
            data = []
    if not isinstance(data, list):
        raise CliError(f"{source}: jobs: must be a list of job definitions, not {_kind(data)}")
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(data):
        where = f"jobs[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping (a job definition), not {_kind(item)}")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: required, a non-empty string")
        elif name in seen:
            problems.append(f"{where}.name: {name!r} is defined twice (also jobs[{seen[name]}])")
        else:
            seen[name] = index
        unfit = _not_json(item, where)
        if unfit:
            problems.append(unfit)
    if len(problems) == 1:
        raise CliError(f"{source}: {problems[0]}; nothing was applied")
    if problems:
        for problem in problems:
            note(f"{source}: {problem}")
        raise CliError(f"{source}: {len(problems)} problem(s); nothing was applied")
    return data


# -- validating ------------------------------------------------------------------------


def validate_all(client: ApiClient, definitions: Sequence[Definition], source: str) -> None:
    """Have the server validate every definition; report every refusal, then fail."""
    refused = 0
    for definition in definitions:
        try:
            client.check_definition(definition)
        except ApiError as exc:
            if exc.status != 422:
                raise
            refused += 1
            for field, message in exc.errors or [("definition", exc.reason)]:
                note(f"job {definition['name']}: {field}: {message}")
    if refused:
        raise CliError(
            f"{source}: {refused} of {len(definitions)} job definition(s) refused; "
            "nothing was applied"
        )


# -- planning ----------------------------------------------------------------------------


def _definition_model() -> type[BaseModel] | None:
    # The scheduler's own model knows the defaults. The CLI is installed with
    # the scheduler (tokens need it too); without it, see comparable().
    try:
        from jobwire.scheduler.domain.definitions import JobDefinition
    except ImportError:
        return None
    return JobDefinition


def comparable(desired: Definition, current: Definition) -> tuple[Definition, Definition]:
    """Both definitions in a form where equal means "the same job"."""
    model = _definition_model()
    if model is not None:
        try:
            return (
                model.model_validate(desired).model_dump(mode="json"),
                model.model_validate(current).model_dump(mode="json"),
            )
        except ValueError:
            pass  # a server of another version: fall back
    # Defaults unknown: compare what the file sets (a default the file leaves
    # out is then not noticed when the server holds another value).
    return dict(desired), {key: current.get(key) for key in desired}


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _lines(definition: Definition | None) -> list[str]:
    if definition is None:
        return []
    # Fields in the definition's own order; inside them keys sorted, because
    # the server stores params as JSONB, which keeps no order: a diff shows
    # changed values, not moved keys.
    return dump_yaml({key: _sorted(value) for key, value in definition.items()}).splitlines()


def unified_diff(name: str, before: Definition | None, after: Definition | None) -> tuple[str, ...]:
    old, new = _lines(before), _lines(after)
    return tuple(
        difflib.unified_diff(
            old,
            new,
            fromfile=f"{name} (server)" if before is not None else "/dev/null",
            tofile=f"{name} (file)" if after is not None else "/dev/null",
            lineterm="",
        )
    )


def plan(
    desired: Sequence[Definition],
    current: Mapping[str, Mapping[str, Any]],
    others: Mapping[str, int],
    prune: bool,
) -> list[Change]:
    """What to do to make the server match ``desired``.

    ``current``: the server's job (as ``GET /api/v1/jobs/{name}``) for each
    desired name it has; ``others``: name → version of the server's jobs the
    file does not name.
    """
    changes: list[Change] = []
    for definition in desired:
        name = definition["name"]
        job = current.get(name)
        if job is None:
            changes.append(
                Change(Action.CREATE, name, definition, diff=unified_diff(name, None, definition))
            )
            continue
        body = dict(definition)
        if "enabled" not in body:
            body["enabled"] = job["definition"].get("enabled", True)
        want, have = comparable(body, job["definition"])
        if want == have:
            changes.append(Change(Action.UNCHANGED, name, version=job["version"]))
        else:
            changes.append(
                Change(Action.UPDATE, name, body, job["version"], unified_diff(name, have, want))
            )
    if prune:
        changes += [Change(Action.DELETE, name, version=v) for name, v in sorted(others.items())]
    return changes


def server_state(
    client: ApiClient, definitions: Sequence[Definition]
) -> tuple[dict[str, Any], dict[str, int]]:
    on_server = {job["name"]: job["version"] for job in client.all_jobs()}
    names = [d["name"] for d in definitions]
    current = {name: client.get_job(name) for name in names if name in on_server}
    others = {name: v for name, v in on_server.items() if name not in set(names)}
    return current, others


# -- showing and doing -----------------------------------------------------------------

_STYLES = {"+": "green", "-": "red", "@": "cyan"}
_VERBS = {
    Action.CREATE: ("to create", "created"),
    Action.UPDATE: ("to update", "updated"),
    Action.DELETE: ("to delete", "deleted"),
    Action.UNCHANGED: ("unchanged", "unchanged"),
}


def show(changes: Sequence[Change]) -> None:
    out = console()
    for change in changes:
        if change.action is Action.UNCHANGED:
            continue
        out.print(Text(f"{change.action} job {change.name}", style="bold"))
        for line in change.diff:
            style = "bold" if line.startswith(("+++", "---")) else _STYLES.get(line[:1])
            out.print(Text(line, style=style or ""))


def summary(changes: Sequence[Change], done: bool) -> str:
    counts = {action: 0 for action in Action}
    for change in changes:
        counts[change.action] += 1
    return ", ".join(f"{counts[a]} {_VERBS[a][1 if done else 0]}" for a in Action)


def execute(client: ApiClient, changes: Sequence[Change]) -> None:
    order = [Action.CREATE, Action.UPDATE, Action.DELETE]
    todo = sorted((c for c in changes if c.action in order), key=lambda c: order.index(c.action))
    for index, change in enumerate(todo):
        try:
            if change.action is Action.CREATE:
                assert change.body is not None
                client.create_job(change.body)
            elif change.action is Action.UPDATE:
                assert change.body is not None
                assert change.version is not None
                client.update_job(change.name, change.body, change.version)
            else:
                client.delete_job(change.name, change.version)
        except CliError as exc:  # refused, or the server went away
            applied = [f"{c.action} {c.name}" for c in todo[:index]]
            left = [f"{c.action} {c.name}" for c in todo[index + 1 :]]
            note(f"applied: {', '.join(applied) or 'nothing'}")
            note(f"not applied: {', '.join(left) or 'nothing else'}")
            raise CliError(f"{change.action} job {change.name} refused: {exc}") from None


@command
def apply(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Option(
            "--file",
            "-f",
            help="Job definitions, YAML or JSON: a list, or {jobs: [...]}; - reads stdin.",
            show_default=False,
        ),
    ],
    prune: Annotated[
        bool, typer.Option(help="Also delete every job on the server that the file lacks.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Show what would change; change nothing.")] = False,
    output: OutputOption = None,
) -> None:
    """Make the server's jobs match a file: show a diff, then create, update (and prune)."""
    definitions = read_definitions(file)
    source = "<stdin>" if file == "-" else file
    cli = cli_of(ctx)
    fmt = cli.format(output)
    with cli.client() as client:
        validate_all(client, definitions, source)
        current, others = server_state(client, definitions)
        changes = plan(definitions, current, others, prune)
        if fmt is OutputFormat.TABLE:
            show(changes)
        if not dry_run:
            execute(client, changes)
    if fmt is OutputFormat.TABLE:
        typer.echo(("dry run: " if dry_run else "") + summary(changes, done=not dry_run))
    else:
        report = [
            {
                "name": c.name,
                "action": c.action.value,
                "applied": not dry_run and c.action is not Action.UNCHANGED,
                "diff": "\n".join(c.diff),
            }
            for c in changes
        ]
        write(report, fmt)


@command
def export(
    ctx: typer.Context,
    job: Annotated[
        list[str] | None, typer.Option(help="Only this job (repeatable); default: every job.")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Print job definitions as a file `jobwire apply -f` takes (YAML unless -o json)."""
    cli = cli_of(ctx)
    fmt = cli.format(output)
    with cli.client() as client:
        names = job or [j["name"] for j in client.all_jobs()]
        document = {"jobs": [client.get_job(name)["definition"] for name in names]}
    write(document, fmt)  # a table is no file format: YAML then
