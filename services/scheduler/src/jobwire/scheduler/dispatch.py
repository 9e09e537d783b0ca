"""What the scheduler publishes for a run, built once for every path that fires one
(schedule, catch-up, chaining, the overlap queue): the outbox rows.

Messages are encoded when the run is decided, inside the same transaction, so
the relay only moves bytes and a crash anywhere re-publishes the same bytes
under the same ``Nats-Msg-Id`` (dropped by the stream as a duplicate).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from jobwire.contracts.job_types import StartWorkflowParams
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunSkipped, SkipReason
from jobwire.contracts.subjects import RunEvent
from jobwire.contracts.workflows import Origin, StartWorkflow
from jobwire.runtime.broker import Broker, PublishContext
from jobwire.scheduler.adapters.store import JobRecord, OutboxRow

START_WORKFLOW = "start-workflow"
_RUN_IDS = uuid.UUID("6f1d2c8e-2f4b-4c4e-9a59-6a0c1d7f3e21")


def run_id_for(job_id: uuid.UUID, scheduled_for: datetime) -> uuid.UUID:
    """One id per job and slot, on every replica: a slot fired twice would carry the
    same id, and so the same ``Nats-Msg-Id``, and be dropped by the stream."""
    return uuid.uuid5(_RUN_IDS, f"{job_id}/{scheduled_for.isoformat()}")


class Dispatcher:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.subjects = broker.subjects

    def fire(
        self,
        job: JobRecord,
        run_id: uuid.UUID,
        scheduled_for: datetime,
        fired_at: datetime,
        context: PublishContext,
        attempt: int = 1,
    ) -> OutboxRow:
        """The message that starts a run: StartWorkflow for start-workflow jobs
        (the scheduler is their whole execution), JobDue for the rest."""
        definition = job.definition
        msg_id = str(run_id)
        if definition.type == START_WORKFLOW:
            params = StartWorkflowParams.model_validate(definition.params)
            command = StartWorkflow(
                workflow=params.workflow,
                input=params.input,
                idempotency_key=msg_id,
                origin=Origin(kind="job", job_id=str(job.id), job_name=job.name, run_id=msg_id),
                correlation_id=params.correlation_id,
            )
            subject = self.subjects.workflow_start(params.workflow)
            payload, headers = self.broker.encode(command, msg_id=msg_id, context=context)
            return OutboxRow(subject, payload, headers, completes=run_id)
        due = JobDue(
            run_id=msg_id,
            job_id=str(job.id),
            job_name=job.name,
            job_type=definition.type,
            scheduled_for=scheduled_for,
            fired_at=fired_at,
            attempt=attempt,
            max_attempts=definition.max_attempts,
            timeout_seconds=definition.timeout_seconds,
            retry_backoff_seconds=definition.retry_backoff_seconds,
            params=definition.params,
            state=job.state,
        )
        subject = self.subjects.job_due(definition.type)
        payload, headers = self.broker.encode(due, msg_id=msg_id, context=context)
        return OutboxRow(subject, payload, headers)

    def skip(
        self,
        job: JobRecord,
        run_id: uuid.UUID,
        scheduled_for: datetime,
        reason: SkipReason,
        now: datetime,
        context: PublishContext,
    ) -> OutboxRow:
        event = RunSkipped(
            run_id=str(run_id),
            job_id=str(job.id),
            job_name=job.name,
            job_type=job.definition.type,
            scheduled_for=scheduled_for,
            reason=reason,
            skipped_at=now,
        )
        subject = self.subjects.run_event(str(run_id), RunEvent.SKIPPED)
        payload, headers = self.broker.encode(event, msg_id=f"{run_id}:skipped", context=context)
        return OutboxRow(subject, payload, headers)
