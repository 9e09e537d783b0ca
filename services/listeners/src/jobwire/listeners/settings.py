"""Settings of the listeners service (``JOBWIRE_LISTENERS__*`` plus the kit's)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from jobwire.runtime.settings import ServiceSettings


class ListenerOptions(BaseModel):
    lease_ttl_seconds: float = Field(
        10.0,
        ge=1,
        description="a listener slot's lease expires this long after its holder's last "
        "renewal: with poll_seconds, the longest takeover after a crash",
    )
    poll_seconds: float = Field(
        2.0,
        gt=0,
        description="how often leases are renewed, free slots taken and definitions re-read",
    )
    receive_timeout_seconds: float = Field(
        1.0, gt=0, description="longest wait of one receive from a source"
    )
    open_timeout_seconds: float = Field(
        30.0, gt=0, description="connecting to a source longer than this counts as a failure"
    )
    retry_max_seconds: float = Field(
        30.0, gt=0, description="cap of the backoff between retries (connect, publish, ack)"
    )
    publish_timeout_seconds: float = Field(
        10.0, gt=0, description="wait for JetStream's acks of one batch"
    )
    secrets_dir: Path | None = Field(
        Path("/var/run/secrets/jobwire"),
        description="secret files; a secret `x` is the file `<dir>/x`, else JOBWIRE_SECRET_X",
    )

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> ListenerOptions:
        if self.poll_seconds * 2 > self.lease_ttl_seconds:
            raise ValueError("poll_seconds must be at most half of lease_ttl_seconds")
        return self


class ListenersSettings(ServiceSettings):
    listeners: ListenerOptions = Field(default_factory=ListenerOptions)
