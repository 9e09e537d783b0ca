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
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: str | None = Field(None, description="path to a NATS .creds file")
    connect_timeout_seconds: float = Field(2.0, gt=0)
    reconnect_wait_seconds: float = Field(
        2.0, gt=0, description="wait between attempts to (re)connect to a server"
    )

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


class StreamSettings(BaseModel):
    """How jobwire's JetStream streams are provisioned."""

    replicas: int = Field(1, ge=1, le=5)
    storage: Literal["file", "memory"] = "file"
    # Long enough to cover a publisher crash between publish and bookkeeping:
    # a re-publish inside the window is dropped by the server.
    duplicate_window: timedelta = timedelta(minutes=10)
    max_age: dict[Stream, timedelta] = Field(
        default_factory=lambda: {
            Stream.JOBS: timedelta(days=7),
            Stream.WORKFLOWS: timedelta(days=7),
            Stream.RUNS: timedelta(days=7),
            Stream.DLQ: timedelta(days=30),
        }
    )


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
    database_pool_max: int = Field(10, ge=1)
    http_host: str = Field("127.0.0.1", description="bind address of health/admin HTTP")
    http_port: int = Field(8080, ge=0, le=65535, description="0 disables the HTTP server")
    shutdown_grace_seconds: float = Field(
        25.0, gt=0, description="time in-flight work gets after SIGTERM before it is cancelled"
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="host registry heartbeat interval")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = console on a terminal, JSON otherwise"
    )
    host: str = Field(default_factory=socket.gethostname)
    instance_id: str = Field(default_factory=_default_instance_id)


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
