"""``jobwire tokens …``: API tokens, made in the database directly.

These commands do not go through the API: the first admin token has to come
from somewhere. They need ``JOBWIRE_DATABASE_URL`` (the scheduler's database)
and the scheduler package, whose functions they call; ``create`` applies the
scheduler's migrations first, so it works before any scheduler has started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from jobwire.cli.client import CliError
from jobwire.cli.context import OutputOption, cli_of, command
from jobwire.cli.output import cell, emit, note, table, when

if TYPE_CHECKING:
    import asyncpg

app = typer.Typer(
    help="API tokens (in the database directly; needs JOBWIRE_DATABASE_URL).",
    no_args_is_help=True,
)

T = TypeVar("T")


class RoleName(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


NameArg = Annotated[str, typer.Argument(help="The token's name.", show_default=False)]


def _with_pool(use: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run ``use`` with a pool on ``JOBWIRE_DATABASE_URL``: one attempt, no retries."""
    try:
        import jobwire.scheduler.api.tokens  # noqa: F401 (is the scheduler installed?)
    except ImportError:
        raise CliError("jobwire tokens needs the scheduler package (jobwire-scheduler)") from None
    from jobwire.runtime.db import connect_pool
    from jobwire.runtime.logs import setup_logging
    from jobwire.runtime.settings import ServiceSettings, SettingsError, load_settings
    from jobwire.runtime.waits import Stopped

    try:
        settings = load_settings(ServiceSettings, **_dev_database())
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    if settings.database_url is None:
        raise CliError(
            "JOBWIRE_DATABASE_URL is not set (and no `jobwire dev` runs here): "
            "tokens live in the scheduler's database"
        )
    # Library log lines (a migration applied) go to stderr, never into the
    # token printed on stdout.
    setup_logging("WARNING", settings.log_format)
    dsn = settings.database_url.get_secret_value()

    async def run() -> T:
        stop = asyncio.Event()
        stop.set()  # one attempt only: a CLI should fail fast, not retry forever
        try:
            pool = await connect_pool(dsn, max_size=2, stop=stop)
        except Stopped:
            raise CliError("cannot connect to the database at JOBWIRE_DATABASE_URL") from None
        try:
            return await use(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


@app.command("create")
@command
def create(
    ctx: typer.Context,
    name: NameArg,
    role: Annotated[RoleName, typer.Option(help="What the token may do.", show_default=False)],
    output: OutputOption = None,
) -> None:
    """Create a token and print it, once: only its hash is stored."""
    from jobwire.scheduler.api.tokens import TokenError, create_token, ensure_schema

    async def make(pool: asyncpg.Pool) -> str:
        await ensure_schema(pool)
        try:
            return await create_token(pool, name, role.value, actor="cli")
        except TokenError as exc:
            raise CliError(str(exc)) from None

    secret = _with_pool(make)
    # The token alone on stdout, so that TOKEN=$(jobwire tokens create …) works.
    note(f"token {name!r} ({role.value}) created; it is shown this once:")
    emit(
        {"name": name, "role": role.value, "token": secret},
        cli_of(ctx).format(output),
        lambda: secret,
    )


@app.command("list")
@command
def list_tokens(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    output: OutputOption = None,
) -> None:
    """Tokens by name, role and use (never the secrets)."""
    from jobwire.scheduler.api.tokens import list_tokens as fetch

    async def read(pool: asyncpg.Pool) -> list[dict[str, Any]]:
        try:
            found = await fetch(pool, include_revoked=all_)
        except Exception as exc:
            _no_schema(exc)
            raise
        return [
            {
                "name": t.name,
                "role": t.role.value,
                "created_at": t.created_at.isoformat(),
                "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
            }
            for t in found
        ]

    rows = _with_pool(read)
    columns = ("Name", "Role", "Created", "Last used", "Revoked")
    emit(
        rows,
        cli_of(ctx).format(output),
        lambda: table(
            columns,
            (
                [
                    cell(r["name"]),
                    cell(r["role"]),
                    cell(when(r["created_at"])),
                    cell(when(r["last_used_at"])),
                    cell(when(r["revoked_at"])),
                ]
                for r in rows
            ),
            None,
        ),
    )


@app.command("revoke")
@command
def revoke(ctx: typer.Context, name: NameArg, output: OutputOption = None) -> None:
    """Revoke the active token NAME: it stops working at once."""
    from jobwire.scheduler.api.tokens import TokenNotFound, revoke_token

    async def drop(pool: asyncpg.Pool) -> dict[str, Any]:
        try:
            info = await revoke_token(pool, name, actor="cli")
        except TokenNotFound as exc:
            raise CliError(str(exc)) from None
        except Exception as exc:
            _no_schema(exc)
            raise
        return {
            "name": info.name,
            "role": info.role.value,
            "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
        }

    revoked = _with_pool(drop)
    emit(revoked, cli_of(ctx).format(output), lambda: f"token {name!r} revoked")


def _dev_database() -> dict[str, str]:
    """The database of a running ``jobwire dev`` of this project, unless
    ``JOBWIRE_DATABASE_URL`` names one."""
    import os

    from jobwire.cli import devfile

    if os.environ.get("JOBWIRE_DATABASE_URL"):
        return {}
    dev = devfile.running(os.environ)
    url = dev.string("database_url") if dev else None
    return {"database_url": url} if url else {}


def _no_schema(exc: Exception) -> None:
    import asyncpg

    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
        raise CliError(
            "no tokens in this database yet: `jobwire tokens create` makes the first"
        ) from None
