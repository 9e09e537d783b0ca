"""Request and response bodies of the admin API (and so its OpenAPI schemas)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from jobwire.contracts.hosts import HostInfo
from jobwire.scheduler.domain.definitions import JobDefinition
from jobwire.scheduler.domain.schedule import Schedule
from jobwire.scheduler.domain.status import JobStatus


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of the range of representable times") from None


# An aware time, normalised to UTC; one that cannot be (year 1 at +05:00) is refused.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- jobs --------------------------------------------------------------------------


class JobItem(BaseModel):
    """One row of the Jobs Management table."""

    name: str
    description: str
    type: str
    status: JobStatus = Field(description="Derived when asked, from the job and live hosts.")
    last_result: str | None = Field(description="Status of the last run that ended.")
    last_run_at: datetime | None = Field(description="Slot of the last run that ended.")
    next_run_at: datetime | None = Field(description="Next slot; null if none or not runnable.")
    active_hosts: list[str] = Field(description="Hosts a run of the job is running on.")
    enabled: bool
    paused: bool
    group: str | None
    tags: list[str]
    priority: int
    version: int = Field(description="Definition version; send it back to update the job.")
    fault: str | None = Field(
        None,
        description="Status Faulted: why the scheduler set the job aside (its next fire or "
        "its run could not be computed). Cleared by changing the definition, or by "
        "enabling or resuming the job.",
    )
    faulted_at: datetime | None = Field(None, description="When the job was set aside.")


class JobDetail(JobItem):
    definition: JobDefinition


class JobPage(BaseModel):
    items: list[JobItem]
    total: int = Field(description="Jobs matching the filters, on all pages.")
    limit: int
    offset: int


class JobUpdate(JobDefinition):
    """A job definition, with the version it was read at (or send `If-Match`)."""

    version: int | None = Field(
        None, ge=1, le=2**31 - 1, description="Version being replaced; stale → 409."
    )


# -- runs ----------------------------------------------------------------------------


RunStatusName = Literal[
    "queued", "dispatched", "running", "succeeded", "failed", "cancelled", "skipped", "missed"
]


class RunItem(BaseModel):
    id: uuid.UUID
    job: str
    job_id: uuid.UUID
    job_type: str
    scheduled_for: datetime = Field(description="The slot; for a manual run, when it was asked.")
    trigger: str = Field(description="schedule, catch_up, chain, manual or backfill")
    status: RunStatusName
    reason: str | None = Field(description="Why a run was skipped or missed.")
    fired_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    job_version: int = Field(description="Definition version the run was fired with.")
    host: str | None
    requested_by: str | None = Field(description="Token name behind a manual or backfill run.")


class RunDetail(RunItem):
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None
    heartbeat_at: datetime | None
    params: dict[str, Any] | None = Field(description="Parameter overrides of a manual trigger.")
    cancel_requested_at: datetime | None


class RunPage(BaseModel):
    items: list[RunItem]
    total: int = Field(description="Runs matching, counted up to 10,000 (see total_exact).")
    total_exact: bool = Field(description="False: at least `total` runs match.")
    limit: int
    offset: int


class TriggerRequest(_Body):
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides merged into the job's params, validated by the job type's model.",
    )


class BackfillRequest(_Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: UtcDatetime = Field(alias="from", description="First instant of the range (included).")
    to: UtcDatetime = Field(description="End of the range (excluded); not in the future.")
    dry_run: bool = Field(False, description="Only list the slots that would get a run.")
    max_runs: int = Field(1000, ge=1, le=10_000, description="Refuse a range with more slots.")
    rate_per_second: float = Field(10.0, gt=0, le=10_000, description="Runs created per second.")
    # `to` later than `from` is checked by the operation, which names both fields.


class BackfillPlan(BaseModel):
    job: str
    from_: datetime = Field(alias="from")
    to: datetime
    planned: int = Field(description="Slots without a run: the runs a backfill creates.")
    existing: int = Field(description="Slots in the range that have a run already.")
    slots: list[datetime]

    model_config = ConfigDict(populate_by_name=True)


class BackfillStarted(BaseModel):
    backfill_id: uuid.UUID
    planned: int


class BackfillProgress(BaseModel):
    id: uuid.UUID
    job: str
    from_: datetime = Field(alias="from")
    to: datetime
    rate_per_second: float
    planned: int
    created: int = Field(description="Slots handled so far.")
    status: Literal["running", "succeeded", "failed", "interrupted"]
    error: str | None
    requested_by: str
    created_at: datetime
    finished_at: datetime | None

    model_config = ConfigDict(populate_by_name=True)


Verdict = Literal[
    "fired",
    "missed",
    "coalesced",
    "overlap",
    "queue_full",
    "disabled",
    "paused",
    "group_disabled",
    "expired",
    "not_yet_due",
    "not_a_slot",
    "before_start",
    "faulted",
    "unknown",
]


class Explanation(BaseModel):
    job: str
    at: datetime
    verdict: Verdict = Field(
        description="fired: a run exists for the slot (see `run`); missed, coalesced, overlap, "
        "queue_full: the slot was recorded as skipped for that reason; disabled, paused, "
        "group_disabled: the job (or its group) was so at that time; expired / before_start: "
        "outside the job's active window; not_yet_due: the slot has not been fired yet; "
        "not_a_slot: the schedule has no slot at that time (see slot_before/slot_after); "
        "faulted: the scheduler set the job aside (see the job's `fault`); "
        "unknown: no run and no recorded reason (e.g. history pruned)."
    )
    detail: str
    run: RunDetail | None = None
    slot_before: datetime | None = None
    slot_after: datetime | None = None


# -- preview -----------------------------------------------------------------------


class FireTime(BaseModel):
    at: datetime = Field(description="The fire time in UTC.")
    local: str = Field(description="The same instant in the schedule's time zone (ISO 8601).")


class Preview(BaseModel):
    timezone: str
    fires: list[FireTime]
    reason: str | None = Field(
        None,
        description="Set when there are fewer fires than asked for: why the schedule "
        "has no more (a once in the past, an expiry, the end of the supported range).",
    )


class PreviewRequest(_Body):
    definition: dict[str, Any] | None = Field(
        None, description="An unsaved job definition (validated as on create)."
    )
    schedule: Schedule | None = Field(None, description="Or just a schedule.")
    count: int = Field(10, ge=1, le=1000)
    after: UtcDatetime | None = Field(None, description="Preview from this time (default now).")

    @model_validator(mode="after")
    def _one(self) -> PreviewRequest:
        if (self.definition is None) == (self.schedule is None):
            raise ValueError("send either a definition or a schedule")
        return self


# -- groups, hosts, health ---------------------------------------------------------------


class GroupItem(BaseModel):
    name: str
    enabled: bool
    jobs: int


class Health(BaseModel):
    status: Literal["ok", "starting"]
    ready: bool
    version: str
    checks: dict[str, dict[str, Any]]


HostItem = HostInfo


class Identity(BaseModel):
    """Who a token belongs to; other services' APIs ask this to accept the same tokens."""

    name: str
    role: Literal["viewer", "operator", "admin"]


# -- tokens and audit -----------------------------------------------------------------


class TokenItem(BaseModel):
    id: uuid.UUID
    name: str
    role: Literal["viewer", "operator", "admin"]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["viewer", "operator", "admin"]


class TokenCreated(TokenItem):
    token: str = Field(description="The token. Shown this once; only its hash is stored.")


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="Name of the token that made the change.")
    action: str
    target_type: Literal["job", "run", "group", "token"]
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    total: int
    limit: int
    offset: int
