"""Runs asked for by a person: trigger now, and cancel.

A manual run takes the same path as a scheduled one — ``Dispatcher.fire``
encodes its message, the outbox carries it, the relay publishes it with
``Nats-Msg-Id`` = run id — so it is exactly-once in the same way.

Its ``scheduled_for`` is the time of the request, to the microsecond. Runs are
unique per job and ``scheduled_for``, so two triggers in the same microsecond
(or one landing on a schedule slot, which belongs to the schedule) move on by
a microsecond; any number of triggers per second per job each get their run.

An ``Idempotency-Key`` makes the run id ``uuid5(job id, key)``: a retried
request finds the run the first one made and returns it instead of a second.
The runs table is the idempotency record (kept as long as run history).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from jobwire.contracts.job_types import validate_params
from jobwire.contracts.runs import RunCancelRequested, SkipReason
from jobwire.contracts.subjects import RunEvent
from jobwire.runtime.broker import PublishContext
from jobwire.scheduler.adapters.store import (
    Audit,
    JobRecord,
    NewRun,
    OutboxRow,
    RunNotFound,
)
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.payloads import check_publishable
from jobwire.scheduler.api.problems import ProblemError, validation_problems
from jobwire.scheduler.api.schemas import RunDetail
from jobwire.scheduler.dispatch import START_WORKFLOW
from jobwire.scheduler.domain.definitions import is_listener
from jobwire.scheduler.domain.planner import admit
from jobwire.scheduler.domain.schedule import next_fire

_MANUAL_RUN_IDS = uuid.UUID("3b0c5f4e-8a6d-4f4b-b1f0-2c9e7d6a5e10")
_MICROSECOND = timedelta(microseconds=1)
_MAX_SHIFTS = 1000


def manual_run_id(job_id: uuid.UUID, key: str) -> uuid.UUID:
    return uuid.uuid5(_MANUAL_RUN_IDS, f"{job_id}/{key}")


async def trigger(
    api: ApiContext,
    name: str,
    overrides: dict[str, Any],
    key: str | None,
    actor: str,
) -> tuple[RunDetail, bool]:
    """Start a run of job ``name`` now; returns the run and whether it is new."""
    store = api.store
    job = await store.get(name)
    if is_listener(job.definition.type):
        raise ProblemError(
            409,
            "Listener jobs have no runs",
            f"{name!r} starts a workflow for each message, file or email it receives; "
            "it cannot be triggered",
        )
    if not job.enabled:
        raise ProblemError(409, "Job is disabled", f"enable job {name!r} to trigger it")
    if job.definition.group is not None and not await store.group_enabled(job.definition.group):
        raise ProblemError(
            409, "Group is disabled", f"enable group {job.definition.group!r} to trigger this job"
        )
    params = overrides or None
    if overrides:
        merged = {**job.definition.params, **overrides}
        try:
            validate_params(job.definition.type, merged)
        except ValidationError as exc:
            problems = [(f"params.{f}", m) for f, m in validation_problems(exc)]
            raise ProblemError(
                422,
                "Invalid parameters",
                "; ".join(f"{f}: {m}" for f, m in problems),
                errors=problems,
            ) from None
        job = replace(job, definition=job.definition.model_copy(update={"params": merged}))
    # Before any run exists: one that could not be published would only fail.
    check_publishable(api, job, api.clock())

    run_id = manual_run_id(job.id, key) if key is not None else uuid.uuid4()
    if key is not None:
        existing = await _existing(api, run_id, params)
        if existing is not None:
            return existing, False
    now = api.clock()
    slot = _off_schedule(job, now)
    audit = Audit(actor, "job.trigger")
    context = PublishContext.current()
    for _ in range(_MAX_SHIFTS):
        if job.definition.type == START_WORKFLOW:
            # Nothing to admit: the run is complete once its StartWorkflow is out.
            run = NewRun(run_id, job.id, slot, "manual", "dispatched", None, now, job.version)
            message = api.dispatcher.fire(job, run_id, slot, now, context)
            inserted = await store.insert_manual_run(job.name, run, message, params, audit)
        else:
            inserted, run = await _admitted(api, job, run_id, slot, now, params, audit, context)
        if inserted:
            if run.status in ("dispatched", "skipped"):
                api.on_outbox()
            return _detail(job, run, params, actor), True
        if key is not None:
            existing = await _existing(api, run_id, params)
            if existing is not None:  # the same key, concurrently
                return existing, False
        slot = _off_schedule(job, slot + _MICROSECOND)
    raise ProblemError(503, "Busy", f"could not find a free instant for a run of {name!r}")


async def _admitted(
    api: ApiContext,
    job: JobRecord,
    run_id: uuid.UUID,
    slot: datetime,
    now: datetime,
    params: dict[str, Any] | None,
    audit: Audit,
    context: PublishContext,
) -> tuple[bool, NewRun]:
    """A worker job's run, admitted by its overlap policy like a scheduled one.
    The job row is locked so that concurrent triggers count each other's runs."""
    store = api.store
    async with store.pool.acquire() as conn, conn.transaction():
        await store.get_for_update(conn, job.id)
        active, queued = (await store.active_counts(conn, [job.id])).get(job.id, (0, 0))
        decision = admit(job.definition.overlap, active, queued, 1)[0]
        message: OutboxRow | None
        if decision == "dispatch":
            status, reason = "dispatched", None
            message = api.dispatcher.fire(job, run_id, slot, now, context)
        elif decision == "queue":
            if params is not None:
                # A queued run is started later from the stored definition.
                raise ProblemError(
                    409,
                    "Job is busy",
                    "the overlap policy would queue this run, and a queued run starts with "
                    "the job's own parameters: trigger it without overrides, or when idle",
                )
            status, reason, message = "queued", None, None
        else:
            reason_enum = SkipReason(str(decision))
            status, reason = "skipped", reason_enum.value
            message = api.dispatcher.skip(job, run_id, slot, reason_enum, now, context)
        run = NewRun(run_id, job.id, slot, "manual", status, reason, now, job.version)
        inserted = await store.insert_manual_run(job.name, run, message, params, audit, conn=conn)
    return inserted, run


async def _existing(
    api: ApiContext, run_id: uuid.UUID, params: dict[str, Any] | None
) -> RunDetail | None:
    try:
        row = await api.store.run(run_id)
    except RunNotFound:
        return None
    if row["params"] != params:
        raise ProblemError(
            422,
            "Idempotency key reused",
            "this Idempotency-Key was used for a trigger with other parameters",
            errors=[("Idempotency-Key", "was used for a trigger with other parameters")],
        )
    return RunDetail.model_validate(run_view(row))


def _off_schedule(job: JobRecord, at: datetime) -> datetime:
    """``at``, or the next microsecond that is not one of the job's schedule slots:
    a slot's run belongs to the schedule, which would otherwise find it taken."""
    schedule = job.definition.schedule
    while schedule is not None and next_fire(schedule, at - _MICROSECOND) == at:
        at += _MICROSECOND
    return at


def _detail(job: JobRecord, run: NewRun, params: dict[str, Any] | None, actor: str) -> RunDetail:
    return RunDetail(
        id=run.id,
        job=job.name,
        job_id=job.id,
        job_type=job.definition.type,
        scheduled_for=run.scheduled_for,
        trigger=run.trigger,
        status=run.status,
        reason=run.reason,
        fired_at=run.fired_at,
        started_at=None,
        finished_at=None,
        attempt=0,
        job_version=run.job_version,
        host=None,
        requested_by=actor,
        result=None,
        error=None,
        progress=None,
        heartbeat_at=None,
        params=params,
        cancel_requested_at=None,
    )


def run_view(row: Any) -> dict[str, Any]:
    """A runs row (with job_name and job_type) as RunItem/RunDetail fields."""
    values = dict(row)
    values["job"] = values.pop("job_name")
    return values


async def cancel(api: ApiContext, run_id: uuid.UUID, actor: str) -> RunDetail:
    """Ask a run to stop: RunCancelRequested on the run's subject, through the outbox."""
    now = api.clock()
    context = PublishContext.current()
    broker = api.broker

    def message(run: Any) -> OutboxRow:
        event = RunCancelRequested(
            run_id=str(run["id"]),
            job_id=str(run["job_id"]),
            requested_at=now,
            requested_by=actor,
        )
        subject = broker.subjects.run_event(str(run["id"]), RunEvent.CANCEL_REQUESTED)
        payload, headers = broker.encode(event, msg_id=f"{run['id']}:cancel", context=context)
        return OutboxRow(subject, payload, headers)

    row = await api.store.request_cancel(run_id, now, message, Audit(actor, "run.cancel"))
    api.on_outbox()
    return RunDetail.model_validate(run_view(row))
