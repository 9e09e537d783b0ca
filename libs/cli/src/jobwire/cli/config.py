"""Where the CLI finds the admin API and its token.

The API URL: ``--api-url``, else ``JOBWIRE_API_URL``, else the URL a running
``jobwire dev`` of this project recorded (``.jobwire/dev.json``, see
:mod:`jobwire.cli.devfile`), else ``api_url`` in the config file, else
http://127.0.0.1:8080. The token: ``JOBWIRE_TOKEN``, else the development
token ``jobwire dev`` recorded (only ever sent to the URL it recorded with
it), else ``token`` in the config file. There is no ``--token`` option on purpose: a
command line is visible to every user of the machine (``ps``) and stays in
shell history. The config file is ``$JOBWIRE_CONFIG``, else
``$XDG_CONFIG_HOME/jobwire/config.toml`` (``~/.config/jobwire/config.toml``).

Another service's API is found the same way under its own names
(:func:`load_service_config`): the mailer's (``jobwire mail``, ``jobwire
contacts``) is ``JOBWIRE_MAILER_URL``, else the mailer's URL a running ``jobwire
dev`` recorded (``services.mailer``), else ``mailer_url`` in the config file; the
search sync's (``jobwire search``) is ``JOBWIRE_SEARCH_URL``, else
``services.search-sync``, else ``search_url``. They have no default, as no port is
theirs by convention. They take the same token (their APIs ask the scheduler
about it): the development token only goes with the URL ``jobwire dev`` recorded
beside it.

This is the only module of the API commands that reads the environment.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from jobwire.cli import devfile

DEFAULT_API_URL = "http://127.0.0.1:8080"
MAILER_URL_VARIABLE = "JOBWIRE_MAILER_URL"
SEARCH_URL_VARIABLE = "JOBWIRE_SEARCH_URL"
_KEYS = ("api_url", "mailer_url", "search_url", "token")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ApiConfig:
    api_url: str
    token: str | None = field(repr=False)
    token_source: str | None  # where the token came from, for error messages
    config_path: Path


def config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("JOBWIRE_CONFIG"):
        return Path(environ["JOBWIRE_CONFIG"]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jobwire" / "config.toml"


def load_config(
    api_url: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> ApiConfig:
    """Where the admin API (the scheduler) is, and the token to send it."""
    return _load(
        api_url,
        "JOBWIRE_API_URL",
        "api_url",
        lambda dev: dev.string("api_url"),
        DEFAULT_API_URL,
        environ,
        warn,
    )


def load_service_config(
    service: str,
    variable: str,
    key: str,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> ApiConfig:
    """Where the API of ``service`` (as ``jobwire dev`` records it) is, and the token to
    send it: ``variable``, else the running ``jobwire dev``'s record, else ``key`` in the
    config file."""
    return _load(
        None,
        variable,
        key,
        lambda dev: dev.service_url(service),
        None,
        environ,
        warn,
    )


def load_mailer_config(
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> ApiConfig:
    """Where the mailer's API is, and the token to send it."""
    return load_service_config(
        "mailer", MAILER_URL_VARIABLE, "mailer_url", environ=environ, warn=warn
    )


def load_search_config(
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> ApiConfig:
    """Where the search sync's API is, and the token to send it."""
    return load_service_config(
        "search-sync", SEARCH_URL_VARIABLE, "search_url", environ=environ, warn=warn
    )


def _load(
    option: str | None,
    variable: str,
    key: str,
    recorded: Callable[[devfile.DevFile], str | None],
    default: str | None,
    environ: Mapping[str, str] | None,
    warn: Callable[[str], None],
) -> ApiConfig:
    env = os.environ if environ is None else environ
    path = config_path(env)
    values = _read_file(path, warn)
    dev = devfile.running(env)
    dev_url = recorded(dev) if dev else None
    url = option or env.get(variable) or dev_url or values.get(key) or default
    if url is None:
        raise ConfigError(
            f'no URL for {key.removesuffix("_url")}: set {variable}, or {key} = "…" in '
            f"{path}, or run `jobwire dev` in this project"
        )
    token, source = None, None
    dev_token = dev.string("token") if dev else None
    if env.get("JOBWIRE_TOKEN"):
        token, source = env["JOBWIRE_TOKEN"].strip(), "JOBWIRE_TOKEN"
    elif dev is not None and dev_token and dev_url and url.rstrip("/") == dev_url.rstrip("/"):
        token, source = dev_token, f"jobwire dev ({dev.path})"
    elif values.get("token"):
        token, source = values["token"].strip(), str(path)
    return ApiConfig(_checked_url(url), token, source, path)


def _read_file(path: Path, warn: Callable[[str], None]) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in _KEYS:
            warn(f"{path}: unknown key {key!r} ignored (known: {', '.join(_KEYS)})")
        elif not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string")
        else:
            values[key] = value
    if "token" in values:
        _check_private(path, warn)
    return values


def _check_private(path: Path, warn: Callable[[str], None]) -> None:
    # Writable by others matters as much as readable: whoever can change
    # api_url can have the token sent to a server of theirs.
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        warn(
            f"{path} holds a token and is open to other users (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def _checked_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if valid and (parts.username is not None or parts.password is not None):
        # httpx would send them as Basic auth in place of the bearer token.
        raise ConfigError(
            f"API URL {shown_url(url)!r} must not carry a user or password: "
            "the token is the credential"
        )
    if not valid:
        raise ConfigError(
            f"API URL {shown_url(url)!r} must be http(s)://host[:port], e.g. {DEFAULT_API_URL}"
        )
    return url.rstrip("/")


def shown_url(url: str) -> str:
    """``url`` without a user or password in it: URLs may carry credentials."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))
