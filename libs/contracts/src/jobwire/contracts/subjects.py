"""Subject and stream names, defined once.

Every subject starts with a namespace (``jobwire`` by default) so that several
installations — or several test runs — can share one NATS account without
seeing each other's messages. Stream names carry the namespace too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

DEFAULT_NAMESPACE = "jobwire"

# One NATS subject token: no dots (separator), no wildcards, no whitespace.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class Stream(StrEnum):
    """The JetStream streams jobwire owns."""

    JOBS = "JOBS"  # JobDue commands, one subject per job type
    WORKFLOWS = "WORKFLOWS"  # StartWorkflow commands, one subject per workflow
    RUNS = "RUNS"  # run lifecycle events, one subject per run and event
    DLQ = "DLQ"  # dead-letter records, one subject per source
    MAIL = "MAIL"  # SendEmail commands per account, and each email's events


class Bucket(StrEnum):
    """The NATS KV buckets (and the one object store) jobwire owns: ``<namespace>_<name>``."""

    HOSTS = "hosts"  # each instance's heartbeat (HostInfo)
    LISTENERS = "listeners"  # enabled listener definitions, mirrored by the scheduler
    LEASES = "leases"  # who runs which listener slot
    FILE_CHECKPOINTS = "file_checkpoints"  # what each file listener has taken
    EMAIL_CHECKPOINTS = "email_checkpoints"  # each mailbox's UIDVALIDITY and last UID
    DEAD_LETTERS = "dead_letters"  # object store: payloads too big for a dead letter


def bucket_name(namespace: str, bucket: Bucket) -> str:
    return f"{namespace}_{bucket.value}"


class RunEvent(StrEnum):
    """The last token of a run event subject."""

    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"
    SKIPPED = "skipped"
    CANCEL_REQUESTED = "cancel"


def token(value: str, what: str) -> str:
    """Return ``value`` if it is usable as one subject token, else raise naming ``what``."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} cannot be a NATS subject token: use letters, digits, '_' or '-'"
        )
    return value


def _token_of(what: str) -> Callable[[str], str]:
    return lambda value: token(value, what)


# Model fields that end up inside a subject are checked when the message is
# built, so a bad name fails at its producer instead of at publish time. The
# pattern is only published in the JSON Schema; the validator gives the error.
_TOKEN_SCHEMA = Field(json_schema_extra={"pattern": _TOKEN.pattern})
JobTypeName = Annotated[str, AfterValidator(_token_of("job type")), _TOKEN_SCHEMA]
WorkflowName = Annotated[str, AfterValidator(_token_of("workflow name")), _TOKEN_SCHEMA]
RunId = Annotated[str, AfterValidator(_token_of("run id")), _TOKEN_SCHEMA]
DeadLetterSource = Annotated[str, AfterValidator(_token_of("dead-letter source")), _TOKEN_SCHEMA]


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject and stream names under one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        token(self.namespace, "namespace")

    def job_due(self, job_type: str) -> str:
        return f"{self.namespace}.jobs.due.{token(job_type, 'job type')}"

    def workflow_start(self, workflow: str) -> str:
        return f"{self.namespace}.workflows.start.{token(workflow, 'workflow name')}"

    def run_event(self, run_id: str, event: RunEvent) -> str:
        return f"{self.namespace}.runs.{token(run_id, 'run id')}.{event.value}"

    def dlq(self, source: str) -> str:
        return f"{self.namespace}.dlq.{token(source, 'dead-letter source')}"

    def mail_send(self, account: str) -> str:
        return f"{self.namespace}.mail.send.{token(account, 'mail account')}"

    def mail_event(self, email_id: str, event: str) -> str:
        return f"{self.namespace}.mail.events.{token(email_id, 'email id')}.{event}"

    def validate_params(self, job_type: str) -> str:
        """Core NATS request/reply (no stream): the service owning ``job_type`` checks
        a job's params against what only it can reach, e.g. a live database schema."""
        return f"{self.namespace}.validate.{token(job_type, 'job type')}"

    # Wildcards, for consumers and stream definitions.
    def all_job_due(self) -> str:
        return f"{self.namespace}.jobs.due.*"

    def all_workflow_start(self) -> str:
        return f"{self.namespace}.workflows.start.*"

    def all_run_events(self, event: RunEvent | None = None) -> str:
        return f"{self.namespace}.runs.*.{event.value if event else '*'}"

    def all_dlq(self) -> str:
        return f"{self.namespace}.dlq.*"

    def all_mail_send(self) -> str:
        return f"{self.namespace}.mail.send.*"

    def all_mail_events(self) -> str:
        return f"{self.namespace}.mail.events.*.*"

    def stream_name(self, stream: Stream) -> str:
        return f"{self.namespace.upper().replace('-', '_')}_{stream.value}"

    def stream_subjects(self, stream: Stream) -> list[str]:
        return {
            Stream.JOBS: [f"{self.namespace}.jobs.>"],
            Stream.WORKFLOWS: [f"{self.namespace}.workflows.>"],
            Stream.RUNS: [f"{self.namespace}.runs.>"],
            Stream.DLQ: [f"{self.namespace}.dlq.>"],
            Stream.MAIL: [f"{self.namespace}.mail.>"],
        }[stream]
