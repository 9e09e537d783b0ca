"""Events in the life of one run, published on ``jobwire.runs.{runId}.{event}``.

The scheduler records them as run history; anyone may watch one run by
subscribing to ``jobwire.runs.<run id>.*``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import AwareDatetime, Field, model_validator

from jobwire.contracts.envelope import Contract, Versioned
from jobwire.contracts.subjects import JobTypeName, RunEvent, RunId

RunStatus = Literal["succeeded", "failed", "cancelled"]


class RunError(Versioned):
    """Why an attempt failed."""

    type: str = Field(
        min_length=1,
        description="Error class or code, e.g. `TimeoutError` or `smtp.rejected`.",
    )
    message: str = Field(description="Human-readable explanation.")
    traceback: str | None = Field(
        default=None, description="Stack trace, for operators; null if not available."
    )


class RunStarted(Contract):
    """A worker has taken an attempt of a run and begun it.

    Sent once per attempt, before the job's work starts.
    """

    event_type = "io.jobwire.run.started"

    run_id: RunId = Field(description="The run, as in its JobDue.")
    job_id: str = Field(min_length=1, description="Stable id of the job definition.")
    job_name: str = Field(min_length=1, description="Name of the job.")
    job_type: JobTypeName = Field(description="Type of the job.")
    attempt: int = Field(ge=1, description="Attempt number, 1 for the first try.")
    host: str = Field(min_length=1, description="Host name (or pod name) running the attempt.")
    instance_id: str = Field(
        min_length=1,
        description="Id of the worker process on that host, unique among live workers.",
    )
    started_at: AwareDatetime = Field(description="When the attempt began.")


class RunProgress(Contract):
    """How far a running attempt has come.

    Sent by long runs now and then; also serves as their heartbeat. Counters are
    totals so far, not increments, so the latest event alone is the current
    picture and a lost or repeated event does no harm.
    """

    event_type = "io.jobwire.run.progress"

    run_id: RunId = Field(description="The run reporting progress.")
    attempt: int = Field(ge=1, description="Attempt number the progress belongs to.")
    at: AwareDatetime = Field(description="When the progress was measured.")
    message: str | None = Field(
        default=None, description="Short human-readable status, e.g. `indexing cases`."
    )
    percent: float | None = Field(
        default=None, ge=0, le=100, description="Estimated completion; null if unknown."
    )
    counters: dict[str, int] = Field(
        default_factory=dict,
        description='Running totals by name, e.g. `{"archived": 120, "failed": 2}`.',
    )


class RunFinished(Contract):
    """A run has ended: its final outcome.

    Sent once per run, by the attempt that ended it (the message id is
    ``<run id>:finished``). A failed attempt with attempts left is not
    finished: the worker reports it as RunProgress and retries after a
    backoff; only the last attempt's failure is sent here.
    """

    event_type = "io.jobwire.run.finished"

    run_id: RunId = Field(description="The run that finished.")
    job_id: str = Field(min_length=1, description="Stable id of the job definition.")
    job_type: JobTypeName = Field(description="Type of the job.")
    attempt: int = Field(ge=1, description="Attempt number that finished.")
    status: RunStatus = Field(
        description="`succeeded`, `failed` (see `error`; a timeout is a failure of type "
        "`timeout`), or `cancelled` (on request)."
    )
    finished_at: AwareDatetime = Field(description="When the attempt ended.")
    result: dict[str, Any] | None = Field(
        default=None, description="Summary of what the run did, shown in run history."
    )
    error: RunError | None = Field(
        default=None, description="Why the attempt failed; present exactly when failed."
    )
    state: dict[str, Any] | None = Field(
        default=None,
        description="The job's new persisted state, handed to its next run; null "
        "leaves the stored state unchanged.",
    )

    @model_validator(mode="after")
    def _error_iff_failed(self) -> Self:
        if self.status == "failed" and self.error is None:
            raise ValueError("error is required when status is 'failed'")
        if self.status == "succeeded" and self.error is not None:
            raise ValueError("error must be null when status is 'succeeded'")
        return self


class SkipReason(StrEnum):
    """Why a due run was not run.

    - `missed`: the slot passed while nothing was running and the misfire policy drops it.
    - `coalesced`: several missed slots were folded into one run; this slot is one left out.
    - `overlap`: the previous run was still running and the overlap policy is skip.
    - `queue_full`: the previous run was still running and the overlap queue was full.
    - `disabled`: the job was disabled.
    - `group_disabled`: the job's group was disabled.
    - `paused`: firing was paused by an operator.
    - `expired`: the job's expiry date passed before the run could start.
    """

    MISSED = "missed"
    COALESCED = "coalesced"
    OVERLAP = "overlap"
    QUEUE_FULL = "queue_full"
    DISABLED = "disabled"
    GROUP_DISABLED = "group_disabled"
    PAUSED = "paused"
    EXPIRED = "expired"


class RunSkipped(Contract):
    """A schedule slot came due but no run was started for it.

    Sent by the scheduler instead of a JobDue, so that run history shows every
    slot and why it did not run.
    """

    event_type = "io.jobwire.run.skipped"

    run_id: RunId = Field(description="Id recorded for the skipped slot.")
    job_id: str = Field(min_length=1, description="Stable id of the job definition.")
    job_name: str = Field(min_length=1, description="Name of the job.")
    job_type: JobTypeName = Field(description="Type of the job.")
    scheduled_for: AwareDatetime = Field(description="The schedule slot that was skipped.")
    reason: SkipReason = Field(description="Why the slot was skipped.")
    detail: str | None = Field(default=None, description="Human-readable detail, if any.")
    skipped_at: AwareDatetime = Field(description="When the scheduler decided to skip.")


class RunCancelRequested(Contract):
    """Someone asked for a run to stop.

    Sent by the admin API on the run's own subject. The worker running the
    attempt stops at its next checkpoint and sends RunFinished with status
    ``cancelled``. Requests are idempotent; one for a run that already ended
    is ignored.
    """

    event_type = "io.jobwire.run.cancel_requested"

    run_id: RunId = Field(description="The run to cancel.")
    job_id: str = Field(min_length=1, description="Stable id of the job definition.")
    requested_at: AwareDatetime = Field(description="When cancellation was requested.")
    requested_by: str | None = Field(
        default=None, description="Who asked: a user or client name, for the audit trail."
    )
    reason: str | None = Field(default=None, description="Why, in the requester's words.")


RUN_EVENT_MODELS: dict[RunEvent, type[Contract]] = {
    RunEvent.STARTED: RunStarted,
    RunEvent.PROGRESS: RunProgress,
    RunEvent.FINISHED: RunFinished,
    RunEvent.SKIPPED: RunSkipped,
    RunEvent.CANCEL_REQUESTED: RunCancelRequested,
}
"""The model carried on each ``jobwire.runs.{runId}.{event}`` subject."""
