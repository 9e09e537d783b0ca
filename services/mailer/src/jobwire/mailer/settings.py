"""Settings of the mailer (``JOBWIRE_MAILER__*`` plus the kit's).

Accounts are deployment configuration, like a database URL: which SMTP
server to use and as whom. A command names an account; the secrets an
account names (user, password, CA) are resolved where the mailer runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from jobwire.contracts.secrets import SecretName
from jobwire.contracts.storage import StorageConfig
from jobwire.runtime.settings import ServiceSettings

MIB = 1024 * 1024

Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS: dict[Security, int] = {"starttls": 587, "tls": 465, "none": 25}


class SmtpAccount(BaseModel):
    """One way of sending: an SMTP server, a login, and the sender it speaks for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="SMTP server host")
    port: int | None = Field(
        None, ge=1, le=65_535, description="empty = 587 (starttls), 465 (tls), 25 (none)"
    )
    security: Security = Field(
        "starttls",
        description="starttls: upgrade after connecting (refused if the server cannot); "
        "tls: TLS from the first byte; none: plain (loopback and tests only)",
    )
    username: SecretName | None = Field(None, description="secret holding the login name")
    password: SecretName | None = Field(None, description="secret holding the password")
    ca: SecretName | None = Field(None, description="secret holding CA certificate(s), PEM")
    from_address: str = Field(min_length=3, description="the From of email that names none")
    from_name: str | None = Field(None, description="display name of that From")
    domain: str | None = Field(
        None, description="domain of the Message-IDs; empty = from_address's domain"
    )
    max_connections: int = Field(2, ge=1, le=100, description="open SMTP connections at most")
    max_per_second: float | None = Field(
        None, gt=0, description="emails per second at most over all connections; empty = no cap"
    )
    timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="limit of every step: connect, TLS, AUTH, MAIL, RCPT"
    )
    data_timeout_seconds: float = Field(
        120.0, gt=0, le=3600, description="limit of sending the message data and its reply"
    )
    max_message_bytes: int = Field(
        25 * MIB, ge=1024, description="a larger message is failed before it is sent"
    )

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    @property
    def message_id_domain(self) -> str:
        return self.domain or self.from_address.rpartition("@")[2]

    @model_validator(mode="after")
    def _login_pairs(self) -> SmtpAccount:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password are set together or not at all")
        return self


class MailerOptions(BaseModel):
    accounts: dict[str, SmtpAccount] = Field(
        default_factory=dict,
        description='accounts by name, JSON, e.g. {"default": {"host": "smtp.example.com", '
        '"from_address": "cases@example.com", "username": "smtp-user", "password": "smtp-pw"}}',
    )
    storages: list[StorageConfig] = Field(
        default_factory=list,
        description="storages attachments may be read from (matched by kind and bucket)",
    )
    secrets_dir: Path | None = Field(
        Path("/var/run/secrets/jobwire"),
        description="secret files; a secret `x` is the file `<dir>/x`, else JOBWIRE_SECRET_X",
    )
    max_attachment_bytes: int = Field(
        10 * MIB, ge=1, description="an attachment larger than this is refused"
    )
    lease_seconds: float = Field(
        300.0,
        gt=0,
        description="a claimed email whose sender vanished is taken again this long after "
        "the claim; must exceed the longest send (4 x timeout_seconds + data_timeout_seconds)",
    )
    retry_base_seconds: float = Field(60.0, gt=0, description="first wait after a deferral")
    retry_max_seconds: float = Field(3600.0, gt=0, description="cap of the wait between attempts")
    max_defer_seconds: float = Field(
        2 * 86_400.0,
        gt=0,
        description="an email still deferred this long after it was queued is failed",
    )
    keep_rendered_bytes: int = Field(
        1 * MIB,
        ge=0,
        description="an email is rendered when queued and kept up to this size for every "
        "attempt to send; a larger one is rendered (its attachments read) at each attempt",
    )
    intake_batch: int = Field(100, ge=1, le=10_000, description="commands taken per step")
    scheduler_url: HttpUrl | None = Field(
        None,
        description="the admin API that knows the API tokens; the mail REST API asks it "
        "who a token belongs to (empty = the REST API refuses every request)",
    )
    token_cache_seconds: float = Field(
        30.0, ge=0, description="how long a checked token is trusted without asking again"
    )
    relay_batch: int = Field(500, ge=1, le=10_000, description="events published per round")
    relay_poll_seconds: float = Field(
        1.0, gt=0, description="longest wait before the outbox is looked at again"
    )

    @model_validator(mode="after")
    def _lease_outlasts_a_send(self) -> MailerOptions:
        for name, account in self.accounts.items():
            # connect + TLS + AUTH + MAIL + RCPTs, each bounded, then DATA.
            longest = account.timeout_seconds * 4 + account.data_timeout_seconds
            if self.lease_seconds <= longest:
                raise ValueError(
                    f"lease_seconds ({self.lease_seconds:g}) must exceed the longest send of "
                    f"account {name!r} ({longest:g} s: 4 x timeout_seconds + "
                    "data_timeout_seconds), "
                    "or a slow send is taken by a second sender"
                )
        locals_ = [c for c in self.storages if c.kind == "local"]
        if len(locals_) > 1:
            raise ValueError("storages: at most one local storage (a FileObject names no root)")
        return self


class MailerSettings(ServiceSettings):
    mailer: MailerOptions = Field(default_factory=MailerOptions)
