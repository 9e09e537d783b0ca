"""Settings of the scheduler service (``JOBWIRE_SCHEDULER__*`` plus the kit's)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from jobwire.runtime.settings import ServiceSettings


class SchedulerOptions(BaseModel):
    claim_batch: int = Field(1000, ge=1, le=10_000, description="jobs claimed per transaction")
    relay_batch: int = Field(2000, ge=1, le=20_000, description="outbox rows published per batch")
    relay_poll_seconds: float = Field(
        0.5, gt=0, description="how often the relay looks for rows another replica left behind"
    )
    max_idle_seconds: float = Field(
        30.0, gt=0, description="longest sleep of the firing loop when nothing is due"
    )
    history_days: float = Field(30.0, gt=0, description="finished runs are kept this long")
    listener_sync_seconds: float = Field(
        10.0,
        gt=0,
        description="how often listener jobs are mirrored to NATS KV besides on every change",
    )
    max_request_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="largest admin API request body; a larger one gets 413 before it is read",
    )
    max_concurrent_requests: int = Field(
        4,
        ge=1,
        le=1000,
        description="admin API requests handled at once; more wait their turn, unread",
    )
    live_check_seconds: float = Field(
        3.0,
        ge=0,
        le=60,
        description="how long a job save waits for the service owning the job type to check "
        "its params (e.g. against a live database schema); no answer: saved unchecked; 0: off",
    )
    firing: bool = Field(
        True,
        description="fire jobs here (the firing loop, run events, listener mirror, history "
        "pruning); false: an API-only replica, which publishes only what its requests write",
    )
    sample_job: bool = Field(
        False, description="create a sample start-workflow job (used by `jobwire dev`)"
    )
    sample_mail: bool = Field(
        False, description="create the sample mail jobs (`jobwire dev`, when the mailer runs)"
    )
    sample_inbox: str | None = Field(
        None, description="create a sample file listener on this folder (used by `jobwire dev`)"
    )


class SchedulerSettings(ServiceSettings):
    scheduler: SchedulerOptions = Field(default_factory=SchedulerOptions)
