"""Job definitions: what an operator writes, validated before anything is stored.

A definition is refused as a whole, with every problem named by its field path
(``schedule.cron.expression``, ``params.workflow``, ``type``), so that an API or
CLI can show the user exactly what to fix and nothing half-valid is saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from jobwire.contracts.errors import ContractError
from jobwire.contracts.job_types import JobParams, params_model, validate_params
from jobwire.contracts.listeners import ListenerParams
from jobwire.scheduler.domain.schedule import (
    EARLIEST_INSTANT,
    LATEST_INSTANT,
    CronSchedule,
    OnceSchedule,
    Schedule,
    next_fire,
)


class _Strict(BaseModel):
    # Written by people: a misspelt key is an error, not silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class MisfirePolicy(_Strict):
    """What happens to slots that passed while nothing could fire them (an outage, a pause)."""

    policy: Literal["skip", "fire_once", "fire_all"] = Field(
        "fire_once",
        description="skip: record each missed slot as skipped; fire_once: one run for all "
        "of them; fire_all: one run per missed slot, the latest `max_catch_up` of them",
    )
    max_catch_up: int = Field(10, ge=1, le=1000, description="bound of fire_all")
    grace_seconds: float = Field(
        60.0, ge=0, description="a slot fired later than this counts as missed"
    )


class OverlapPolicy(_Strict):
    """What happens when a slot comes due while earlier runs of the job are still active."""

    policy: Literal["allow", "queue", "skip"] = Field(
        "skip",
        description="allow: run in parallel up to max_parallel; queue: wait for a free slot "
        "(up to max_queued waiting); skip: record the slot as skipped",
    )
    max_parallel: int = Field(1, ge=1, le=1000)
    max_queued: int = Field(10, ge=0, le=10_000)


class After(_Strict):
    """Chaining: fire this job when a run of ``job`` ends the way ``on`` says."""

    job: str = Field(min_length=1, description="name of the upstream job")
    on: Literal["succeeded", "failed", "finished"] = "succeeded"


class JobDefinition(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    type: str = Field(min_length=1, description="a registered job type")
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    group: str | None = Field(None, min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list)
    priority: int = Field(0, ge=-1000, le=1000, description="higher is claimed first")
    schedule: Schedule | None = Field(
        None, description="none: fired only by chaining or a manual trigger (or a listener)"
    )
    start_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    misfire: MisfirePolicy = Field(default_factory=MisfirePolicy)
    overlap: OverlapPolicy = Field(default_factory=OverlapPolicy)
    max_attempts: int = Field(1, ge=1, le=100)
    retry_backoff_seconds: float = Field(10.0, gt=0, le=86_400)
    timeout_seconds: float | None = Field(None, gt=0)
    after: list[After] = Field(default_factory=list)
    replicas: int = Field(
        1,
        ge=1,
        le=64,
        description="listener jobs: 1 = one active instance with failover; more = that many "
        "active consumers sharing the load (kafka-subscriber, servicebus-listener)",
    )

    def first_fire(self, now: datetime) -> datetime | None:
        """The first slot to fire for a definition saved (or re-enabled) at ``now``."""
        if self.schedule is None:
            return None
        after = max(now, self.start_at) if self.start_at else now
        # A slot exactly at start_at counts: step back a microsecond.
        if self.start_at and self.start_at >= now:
            after = self.start_at - _MICROSECOND
        fire = next_fire(self.schedule, after)
        if fire is None or (self.expires_at and fire >= self.expires_at):
            return None
        return fire


class DefinitionError(ValueError):
    """A definition was refused. ``problems`` is a list of (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))


def parse_definition(
    data: Mapping[str, Any],
    now: datetime | None = None,
    previous: JobDefinition | None = None,
) -> JobDefinition:
    """Validate a definition, its parameters included, or raise :class:`DefinitionError`.

    Given ``now`` — the definition is being saved — it is also refused when its
    schedule can never fire again (see :func:`never_fires`); ``previous`` is the
    definition it replaces.
    """
    try:
        definition = JobDefinition.model_validate(dict(data))
    except ValidationError as exc:
        raise DefinitionError(_problems(exc)) from None
    problems = _cross_field_problems(definition)
    if problems:
        raise DefinitionError(problems)
    if now is not None:
        problems = never_fires(definition, now, previous)
        if problems:
            raise DefinitionError(problems)
    try:
        params = validate_params(definition.type, definition.params)
    except ContractError as exc:
        raise DefinitionError([(exc.field, exc.message)]) from None
    except ValidationError as exc:
        raise DefinitionError(_problems(exc, prefix="params")) from None
    problems = _listener_problems(definition, params)
    if problems:
        raise DefinitionError(problems)
    return definition


def _cross_field_problems(definition: JobDefinition) -> list[tuple[str, str]]:
    """What no single field's validator can see; each problem names its field.

    These checks live here rather than in a model validator: pydantic reports a
    model validator's error at the model's own location, the whole body.
    """
    problems: list[tuple[str, str]] = []
    for field, value in _instants(definition).items():
        if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
            problems.append(
                (
                    field,
                    f"must lie between {EARLIEST_INSTANT:%Y-%m-%d} and "
                    f"{LATEST_INSTANT:%Y-%m-%d} (UTC), the range of times jobwire schedules",
                )
            )
    if problems:
        return problems  # the checks below compare these times
    start, expires = definition.start_at, definition.expires_at
    if start is not None and expires is not None and expires <= start:
        problems.append(("expires_at", "must be later than start_at"))
    if any(a.job == definition.name for a in definition.after):
        problems.append(("after", "a job cannot be chained to itself"))
    schedule = definition.schedule
    if isinstance(schedule, CronSchedule) and next_fire(schedule, EARLIEST_INSTANT) is None:
        # e.g. "0 0 30 2 *": valid syntax, but a job that would never run.
        problems.append(("schedule.cron.expression", "the cron expression never matches a date"))
    return problems


def _instants(definition: JobDefinition) -> dict[str, datetime]:
    """Every instant a definition holds, by field path, in UTC (paths as pydantic
    names them, with the schedule's kind: ``schedule.once.at``)."""
    schedule = definition.schedule
    found = {
        "start_at": definition.start_at,
        "expires_at": definition.expires_at,
        "schedule.once.at": getattr(schedule, "at", None),
        "schedule.interval.anchor": getattr(schedule, "anchor", None),
    }
    instants = {}
    for field, value in found.items():
        if value is None:
            continue
        try:
            instants[field] = value.astimezone(UTC)
        except OverflowError:  # 9999-12-31T23:00-05:00 is valid ISO 8601, not a UTC time
            instants[field] = LATEST_INSTANT
    return instants


# The parts of a definition that decide when it fires.
_TIMING = ("schedule", "start_at", "expires_at")


def never_fires(
    definition: JobDefinition, now: datetime, previous: JobDefinition | None = None
) -> list[tuple[str, str]]:
    """The policy for schedules that can never fire again, the same for every kind:
    a definition is refused when it is saved with a schedule that has no fire
    left (a ``once`` in the past, an ``expires_at`` that has passed, a window no
    slot falls into, a cron that matches no future date), naming the field that
    makes it so. Saving a job whose timing is unchanged is not refused: a
    ``once`` job that has fired can still be edited, and shows as Ended.
    """
    if definition.schedule is None or definition.first_fire(now) is not None:
        return []
    if previous is not None and all(
        getattr(previous, f) == getattr(definition, f) for f in _TIMING
    ):
        return []
    schedule = definition.schedule
    when = f"{now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
    if definition.expires_at is not None and definition.expires_at <= now:
        return [("expires_at", f"has passed ({when} now): the job could never fire")]
    if isinstance(schedule, OnceSchedule):
        if schedule.at <= now:
            return [("schedule.once.at", f"is in the past ({when} now): the job could never fire")]
        return [("expires_at", "is before schedule.once.at: the job could never fire")]
    if definition.expires_at is not None:
        return [("expires_at", "no fire of the schedule falls before it: the job could never fire")]
    return [("schedule", "has no fire after now: the job could never fire")]


def is_listener(job_type: str) -> bool:
    """Whether jobs of this type listen (run while enabled) rather than fire."""
    try:
        return issubclass(params_model(job_type), ListenerParams)
    except ContractError:
        return False


def _listener_problems(definition: JobDefinition, params: JobParams) -> list[tuple[str, str]]:
    if not isinstance(params, ListenerParams):
        if definition.replicas != 1:
            return [("replicas", "only listener jobs have replicas")]
        return []
    problems = []
    if definition.schedule is not None:
        problems.append(("schedule", "a listener job runs while enabled: it has no schedule"))
    if definition.after:
        problems.append(("after", "a listener job cannot be chained: it has no runs"))
    if definition.replicas > 1 and not params.scalable:
        problems.append(
            (
                "replicas",
                f"{definition.type} cannot share its work between replicas: use 1 "
                "(one active instance, the others on standby)",
            )
        )
    return problems


def describe_error(exc: Exception) -> str:
    """An error as an operator reads it, without the values involved: a job's
    params may hold what a viewer of the Jobs Management page should not see."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    return f"{type(exc).__name__}: {exc}"


def _problems(exc: ValidationError, prefix: str | None = None) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        path = [prefix] if prefix else []
        path += [str(p) for p in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        problems.append((".".join(path) or "definition", message))
    return problems


_MICROSECOND = timedelta(microseconds=1)
