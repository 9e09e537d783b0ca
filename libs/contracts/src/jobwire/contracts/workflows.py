"""The command jobwire sends to workflow engines and external apps."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, JsonValue, WithJsonSchema, model_validator

from jobwire.contracts.envelope import Contract, Versioned
from jobwire.contracts.subjects import WorkflowName

OriginKind = Literal["job", "listener", "api"]


class Origin(Versioned):
    """What caused a workflow start, so the engine can trace it back."""

    kind: OriginKind = Field(
        description="`job`: a scheduled start-workflow job; `listener`: a listener job "
        "that received a message, email or file; `api`: a call to the admin API."
    )
    job_id: str | None = Field(
        default=None, description="The job (scheduled or listener); set unless `kind` is `api`."
    )
    job_name: str | None = Field(default=None, description="Name of that job.")
    run_id: str | None = Field(default=None, description="The run that sent it, for `job`.")
    coordinates: dict[str, str | int] = Field(
        default_factory=dict,
        description="Where a listener found the trigger in its source, e.g. "
        '`{"topic": "orders", "partition": 3, "offset": 1042}` (Kafka), '
        '`{"mailbox": "INBOX", "uidvalidity": 17, "uid": 4711}` (IMAP), '
        '`{"bucket": "in", "path": "a/b.pdf", "etag": "9b2c"}` (file storage).',
    )

    @model_validator(mode="after")
    def _job_for_job_kinds(self) -> Self:
        if self.kind != "api" and self.job_id is None:
            raise ValueError(f"job_id is required when kind is {self.kind!r}")
        return self


class StartWorkflow(Contract):
    """Start one instance of a workflow.

    Sent on ``jobwire.workflows.start.{workflow}`` by start-workflow jobs and by
    listeners, one command per trigger. The receiver (a workflow engine or an
    external app) should start at most one instance per ``idempotency_key``:
    jobwire may send a command again after a crash, and JetStream only drops
    duplicates within its de-duplication window.
    """

    event_type = "io.jobwire.workflow.start"

    workflow: WorkflowName = Field(
        description="Name of the workflow to start; also the last token of the subject."
    )
    # An empty schema is JSON Schema's "any value"; without the override it
    # would be published as a `JsonValue` definition that says the same.
    input: Annotated[JsonValue, WithJsonSchema({})] = Field(
        default=None, description="Input handed to the workflow instance: any JSON value."
    )
    idempotency_key: str = Field(
        min_length=1,
        description="Same for every re-send of one trigger: derived from the run id for "
        "jobs and from the source coordinates for listeners. Also the `Nats-Msg-Id`.",
    )
    origin: Origin = Field(description="What caused this start.")
    correlation_id: str | None = Field(
        default=None,
        description="Business correlation key the engine can match instances on, "
        "e.g. an order number.",
    )
