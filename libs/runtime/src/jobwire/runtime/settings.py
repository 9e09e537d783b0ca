"""Settings every jobwire service shares, read from ``JOBWIRE_*`` variables.

Nothing else in a service reads ``os.environ``: a service subclasses
:class:`ServiceSettings`, adds its own fields, and loads it once in ``main``
with :func:`load_settings`.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobwire.contracts.subjects import DEFAULT_NAMESPACE, Stream, token

ENV_PREFIX = "JOBWIRE_"
NESTED_DELIMITER = "__"


def _namespace(value: str) -> str:
    return token(value, "namespace")


class NatsSettings(BaseModel):
    url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma separated for a cluster"
    )
    user: str | None = Field(None, description="user name, with a password")
    password: SecretStr | None = Field(None, description="password (secret)")
    token: SecretStr | None = Field(None, description="authentication token (secret)")
    creds_file: str | None = Field(None, description="path to a NATS .creds file")
    connect_timeout_seconds: int = Field(2, gt=0, description="timeout of one connection attempt")
    reconnect_wait_seconds: int = Field(
        2, gt=0, description="wait between attempts to (re)connect to a server"
    )

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


DEFAULT_MAX_AGE = {
    Stream.JOBS: timedelta(days=7),
    Stream.WORKFLOWS: timedelta(days=7),
    Stream.RUNS: timedelta(days=7),
    Stream.DLQ: timedelta(days=30),
    Stream.MAIL: timedelta(days=7),
}


class StreamSettings(BaseModel):
    """How jobwire's JetStream streams are provisioned."""

    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of each stream (cluster)")
    storage: Literal["file", "memory"] = Field("file", description="stream storage: file or memory")
    # Long enough to cover a publisher crash between publish and bookkeeping:
    # a re-publish inside the window is dropped by the server.
    duplicate_window: timedelta = Field(
        timedelta(minutes=10),
        description="how long a Nats-Msg-Id is remembered for de-duplication (ISO 8601 or s)",
    )
    max_age: dict[Stream, timedelta] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_AGE),
        description='retention per stream, JSON, e.g. {"DLQ": "P90D"}; unnamed streams keep theirs',
    )

    def retention(self, stream: Stream) -> timedelta:
        return self.max_age.get(stream, DEFAULT_MAX_AGE[stream])


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ServiceSettings(BaseSettings):
    """Settings of the service kit. Services subclass this to add their own."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="ignore",
        validate_default=True,
    )

    namespace: Annotated[str, AfterValidator(_namespace)] = Field(
        DEFAULT_NAMESPACE, description="prefix of every subject, stream and KV bucket"
    )
    nats: NatsSettings = Field(default_factory=NatsSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL DSN, e.g. postgresql://user:pw@host:5432/jobwire"
    )
    database_pool_max: int = Field(10, ge=1, description="connections per instance, at most")
    http_host: str = Field("127.0.0.1", description="bind address of health/admin HTTP")
    http_port: int = Field(8080, ge=0, le=65535, description="0 disables the HTTP server")
    shutdown_grace_seconds: float = Field(
        25.0, gt=0, description="time in-flight work gets after SIGTERM before it is cancelled"
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="host registry heartbeat interval")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = console on a terminal, JSON otherwise"
    )
    host: str = Field(
        default_factory=socket.gethostname, description="host (pod) name shown to operators"
    )
    instance_id: str = Field(
        default_factory=_default_instance_id,
        description="unique id of this process (default: host-pid-random)",
    )


class SettingsError(Exception):
    """Settings could not be loaded. ``str()`` is one line naming each variable."""

    exit_code = 2


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Load ``cls`` from the environment; raise :class:`SettingsError` on bad input."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line: ``JOBWIRE_NATS__URL: <problem>; JOBWIRE_X: <problem>``.

    The offending value is left out on purpose: it may be a secret.
    """
    parts = []
    for error in exc.errors():
        variable = ENV_PREFIX + NESTED_DELIMITER.join(str(p).upper() for p in error["loc"])
        parts.append(f"{variable}: {error['msg']}")
    return "invalid settings: " + "; ".join(parts)


def settings_table(cls: type[BaseModel], prefix: str = ENV_PREFIX) -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, nested ones flattened.

    The README's configuration table is generated from this, so it cannot
    fall behind the code.
    """
    rows: list[tuple[str, str, str]] = []
    for name, field in cls.model_fields.items():
        variable = prefix + name.upper()
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += settings_table(annotation, variable + NESTED_DELIMITER)
            continue
        if field.default_factory is not None:
            default = (
                "(per process)"
                if name in {"host", "instance_id"}
                else _show(field.get_default(call_default_factory=True))
            )
        else:
            default = _show(field.default)
        rows.append((variable, default, field.description or ""))
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, timedelta):
        days, seconds = value.days, value.seconds
        return f"{days} d" if days and not seconds else f"{value.total_seconds():g} s"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    return str(value)


if __name__ == "__main__":
    print("| variable | default | meaning |\n|---|---|---|")
    for variable, default, description in settings_table(ServiceSettings):
        print(f"| `{variable}` | {default} | {description} |")
