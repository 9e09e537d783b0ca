"""The command that makes a job run."""

from __future__ import annotations

from typing import Any, Self

from pydantic import AwareDatetime, Field, model_validator

from jobwire.contracts.envelope import Contract
from jobwire.contracts.subjects import JobTypeName, RunId


class JobDue(Contract):
    """A run of a job is due: do it now.

    Sent by the scheduler on ``jobwire.jobs.due.{jobType}`` once per run, when
    a schedule fires or an operator triggers the job. Workers for that job type
    share one durable consumer, so exactly one of them takes the run; retries
    are redeliveries of this same message (the worker naks a failed attempt
    with a backoff), so ``attempt`` here is the first attempt's number. The run
    id is the JetStream de-duplication key, so a re-published JobDue never
    runs twice.
    """

    event_type = "io.jobwire.job.due"

    run_id: RunId = Field(description="Id of this run; the same across its attempts.")
    job_id: str = Field(min_length=1, description="Stable id of the job definition.")
    job_name: str = Field(min_length=1, description="Name of the job, as operators see it.")
    job_type: JobTypeName = Field(
        description="Type of the job, e.g. `start-workflow`; selects the worker and the "
        "schema of `params`."
    )
    scheduled_for: AwareDatetime = Field(
        description="The schedule slot this run belongs to (the time it was planned for)."
    )
    fired_at: AwareDatetime = Field(
        description="When the scheduler released the run; later than `scheduled_for` "
        "if it was delayed or is a retry."
    )
    attempt: int = Field(ge=1, description="Attempt number, 1 for the first try.")
    max_attempts: int = Field(
        default=1, ge=1, description="Attempts allowed in total; 1 means no retry."
    )
    retry_backoff_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Delay before the second attempt; each further retry waits twice as "
        "long (capped by the worker). Null: the worker's default.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Time the worker allows one attempt before cancelling it; null for no limit.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The job's parameters; their schema depends on `job_type` "
        "(see the job-params schemas).",
    )
    state: dict[str, Any] | None = Field(
        default=None,
        description="The job's persisted state as left by its last finished run "
        "(e.g. a sync watermark); null if it has none yet.",
    )

    @model_validator(mode="after")
    def _attempt_within_max(self) -> Self:
        if self.attempt > self.max_attempts:
            raise ValueError(f"attempt {self.attempt} exceeds max_attempts {self.max_attempts}")
        return self
