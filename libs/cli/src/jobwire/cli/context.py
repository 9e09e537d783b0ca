"""What every API command shares: global options, the client, error reporting.

The root callback stores a :class:`Cli` on the typer context; a command asks
it for a client and for its output format. :func:`command` turns a
:class:`CliError` into one line on stderr and exit code 1, so no command
prints a traceback for a refusal, a bad file or an unreachable server.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ParamSpec, TypeVar

import typer

from jobwire.cli.client import ApiClient, CliError, MailerClient, SearchClient
from jobwire.cli.config import (
    ApiConfig,
    ConfigError,
    load_config,
    load_mailer_config,
    load_search_config,
)
from jobwire.cli.output import OutputFormat, note

P = ParamSpec("P")
R = TypeVar("R")

OutputOption = Annotated[
    OutputFormat | None,
    typer.Option("--output", "-o", help="table, json or yaml (default: the global -o, else table)"),
]


@dataclass
class Cli:
    api_url: str | None = None
    output: OutputFormat = OutputFormat.TABLE

    def format(self, local: OutputFormat | None) -> OutputFormat:
        return local or self.output

    def client(self) -> ApiClient:
        try:
            config = load_config(self.api_url, warn=_warn)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        _needs_token(config)
        return ApiClient(config.api_url, config.token, token_source=config.token_source)

    def mailer_client(self) -> MailerClient:
        """A client of the mailer's API (``--api-url`` is the scheduler's, not this)."""
        config = _service_config(load_mailer_config)
        return MailerClient(config.api_url, config.token, token_source=config.token_source)

    def search_client(self) -> SearchClient:
        """A client of the search sync's API (``--api-url`` is the scheduler's, not this)."""
        config = _service_config(load_search_config)
        return SearchClient(config.api_url, config.token, token_source=config.token_source)


def _service_config(load: Callable[..., ApiConfig]) -> ApiConfig:
    try:
        config = load(warn=_warn)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    _needs_token(config)
    return config


def _warn(message: str) -> None:
    note(f"jobwire: warning: {message}")


def _needs_token(config: ApiConfig) -> None:
    if not config.token:
        raise CliError(
            'no API token: set JOBWIRE_TOKEN, or token = "…" in '
            f"{config.config_path} (an admin makes one with "
            "`jobwire tokens create NAME --role viewer|operator|admin`)"
        )


def cli_of(ctx: typer.Context) -> Cli:
    found = ctx.find_object(Cli)
    return found if found is not None else Cli()


def command(fn: Callable[P, R]) -> Callable[P, R]:
    """Report a :class:`CliError` raised by ``fn`` as ``jobwire: <message>``."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            typer.echo(f"jobwire: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return run
