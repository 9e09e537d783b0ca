"""Schedules and their fire times.

Time zones and daylight saving time
-----------------------------------
* A cron schedule matches local wall-clock times in its IANA time zone
  (``timezone``, default ``UTC``), read in its ``dialect`` (``standard`` or
  ``quartz``, see :mod:`jobwire.scheduler.domain.cron`). In one rule: each matching wall-clock time
  fires at the first instant at which the zone's clock shows that time or later.
* A matching local time that does not exist, because the clocks jump forward
  over it, fires once, at the first valid instant after the gap. In
  Europe/Berlin ``30 2 * * *`` fires on 2026-03-29 at 03:00 local (01:00 UTC).
  All slots that fall into one gap (every 15 minutes: 02:00, 02:15, 02:30,
  02:45) collapse into that single fire, also when the first instant after the
  gap (03:00) is a slot itself.
* A matching local time that occurs twice, because the clocks fall back, fires
  once, at its first occurrence. The repeated hour does not fire again.
* Fire times are strictly increasing and never two at the same instant. No slot
  is lost: every matching wall-clock time is represented by exactly one fire,
  at its own instant or at the end of the gap it fell into.
* The same rules hold for every offset change in the time-zone database, not
  just DST: 30-minute shifts (Australia/Lord_Howe), negative DST (Europe/Dublin),
  a whole day skipped (Pacific/Apia, 2011-12-30: its slots fire at 00:00 on the 31st).
* Interval schedules count elapsed time, ``anchor + k * every`` (k = 0, 1, …;
  anchor defaults to the Unix epoch), and ignore DST: ``every: 1 day`` is 24
  hours, so its local time moves when the clocks change. No horizon limit:
  a schedule next due in ten years works.
* Once schedules fire once, at their ``at`` instant.
* Every fire time is an aware UTC datetime, earlier than ``LATEST_INSTANT``
  (year 9000): a schedule whose next fire would be later has ended. The margin
  to Python's and PostgreSQL's year 9999 keeps every computation on a fire time
  (a time zone's offset, a grace period, a timestamp column) in range.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from jobwire.scheduler.domain.cron import CronExpression, Dialect

__all__ = [
    "EARLIEST_INSTANT",
    "LATEST_INSTANT",
    "CronSchedule",
    "IntervalSchedule",
    "OnceSchedule",
    "Schedule",
    "next_fire",
    "preview",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The instants a definition may name and a schedule may fire at.
EARLIEST_INSTANT: Final = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_INSTANT: Final = datetime(9000, 1, 1, tzinfo=UTC)
_ONE_SECOND: Final = timedelta(seconds=1)
# Names that zoneinfo loads but that are not portable IANA zones.
_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "Factory"})


class CronSchedule(BaseModel):
    """Fires at the local wall-clock times matched by a cron expression."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["cron"]
    # Declared before ``expression``: its validator reads the dialect.
    dialect: Dialect = Field(
        default="standard",
        description="How the expression reads. 'standard': Unix cron, day-of-week 0 and 7 "
        "are Sunday. 'quartz': Quartz's CronExpression, 6 or 7 fields "
        "(second ... day-of-week [year]), day-of-week 1 = Sunday to 7 = Saturday, '?' in "
        "exactly one of day-of-month and day-of-week.",
        examples=["standard", "quartz"],
    )
    expression: str = Field(
        description="Cron expression. Standard dialect: 5 fields 'minute hour day-of-month "
        "month day-of-week' or 6 with seconds first; day-of-week 0 and 7 are Sunday; a "
        "6-field expression with '?' and a weekday number is refused as Quartz-like. "
        "Quartz dialect: see 'dialect'.",
        examples=["0 9 * * MON-FRI", "0 0 12 L * ?"],
    )
    timezone: str = Field(
        default="UTC",
        description="IANA time zone whose wall-clock time the expression matches.",
        examples=["Europe/Berlin"],
    )

    @field_validator("expression")
    @classmethod
    def _valid_expression(cls, value: str, info: ValidationInfo) -> str:
        dialect = info.data.get("dialect")
        if dialect is not None:  # None: the dialect was refused, and that is the error
            _compiled(value, dialect)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        _zone(value)
        return value


class IntervalSchedule(BaseModel):
    """Fires every ``every`` of elapsed time, at ``anchor + k * every`` for k = 0, 1, 2, …"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["interval"]
    every: timedelta = Field(description="Time between fires; at least one second.")
    anchor: AwareDatetime | None = Field(
        default=None,
        description="First fire time; the grid is anchor + k * every. "
        "Defaults to the Unix epoch (1970-01-01T00:00:00Z).",
    )

    @field_validator("every")
    @classmethod
    def _at_least_one_second(cls, value: timedelta) -> timedelta:
        if value < _ONE_SECOND:
            raise ValueError("must be at least one second")
        return value


class OnceSchedule(BaseModel):
    """Fires once, at ``at``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["once"]
    at: AwareDatetime = Field(description="The instant to fire at.")


Schedule = Annotated[CronSchedule | IntervalSchedule | OnceSchedule, Field(discriminator="kind")]


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after`` (aware), in UTC; ``None`` if none.

    ``None`` also when the next fire would fall at or after ``LATEST_INSTANT``.
    """
    fire = _next_fire(schedule, after)
    return fire if fire is not None and fire < LATEST_INSTANT else None


def _next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    # Everything in UTC: Python adds, subtracts and compares two datetimes that share
    # a tzinfo as wall-clock times, which is wrong across DST changes.
    after = after.astimezone(UTC)
    try:
        match schedule:
            case CronSchedule():
                expression = _compiled(schedule.expression, schedule.dialect)
                return _next_cron(expression, _zone(schedule.timezone), after)
            case IntervalSchedule():
                anchor = _EPOCH if schedule.anchor is None else schedule.anchor.astimezone(UTC)
                return _next_interval(schedule.every, anchor, after)
            case OnceSchedule():
                at = schedule.at.astimezone(UTC)
                return at if at > after else None
    except OverflowError:
        return None


def preview(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``after``; fewer if the schedule ends."""
    if count < 0:
        raise ValueError("count must not be negative")
    fires: list[datetime] = []
    current = after
    while len(fires) < count:
        fire = next_fire(schedule, current)
        if fire is None:
            break
        fires.append(fire)
        current = fire
    return fires


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str, dialect: Dialect) -> CronExpression:
    return CronExpression.parse(expression, dialect)


@functools.lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_ZONES


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    # Checked against the list of zones, not just loaded: ZoneInfo also opens files
    # such as "localtime" (the host's zone) and "right/…" (leap-second clocks, 27 s off).
    if name not in _zone_names():
        hint = next(
            (f"; did you mean {z!r}?" for z in _zone_names() if z.lower() == name.lower()), ""
        )
        raise ValueError(
            f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin'{hint}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {name!r}") from error


def _next_interval(every: timedelta, anchor: datetime, after: datetime) -> datetime:
    if after < anchor:
        return anchor
    # Integer arithmetic on timedeltas (microseconds): exact at any distance.
    steps = (after - anchor) // every + 1
    return anchor + steps * every


def _next_cron(expression: CronExpression, zone: ZoneInfo, after: datetime) -> datetime | None:
    local = after.astimezone(zone)
    if local.fold:
        # ``after`` lies in the repeated hour of a fall-back, second time round. The
        # slots still ahead in that hour already fired at their first occurrence,
        # before ``after``: continue from the end of the repeated hour.
        first_pass = _utcoffset(local.replace(fold=0))
        change = _offset_change(zone, after - (first_pass - _utcoffset(local)), after)
        start = (change + first_pass).replace(tzinfo=None) - timedelta(microseconds=1)
    else:
        start = local.replace(tzinfo=None)
    slot = expression.next_local(start)
    # Slots map monotonically to instants, so the first slot at or after ``start``
    # normally fires after ``after``; the loop only guards that invariant.
    while slot is not None:
        fire = _instant(slot, zone)
        if fire > after:
            return fire
        slot = expression.next_local(slot)
    return None


def _instant(local: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant at which the naive wall-clock time ``local`` in ``zone`` fires."""
    # fold=0 is the first occurrence of an ambiguous time.
    instant = local.replace(tzinfo=zone).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == local:
        return instant
    # ``local`` does not exist. With fold=0 zoneinfo reads it with the offset from
    # before the gap (an instant after the jump), with fold=1 with the offset from
    # after it (an instant before the jump); the jump lies between the two.
    before_jump = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _offset_change(zone, before_jump, instant)


def _offset_change(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The first whole second in (low, high] with a different UTC offset than ``low``.

    Binary search: time-zone transitions happen on whole UTC seconds.
    """
    low_s = (low - _EPOCH) // _ONE_SECOND
    high_s = -((_EPOCH - high) // _ONE_SECOND)  # ceiling
    offset = _offset_at(zone, low_s)
    while high_s - low_s > 1:
        middle = (low_s + high_s) // 2
        if _offset_at(zone, middle) == offset:
            low_s = middle
        else:
            high_s = middle
    return _EPOCH + timedelta(seconds=high_s)


def _offset_at(zone: ZoneInfo, epoch_seconds: int) -> timedelta:
    return _utcoffset((_EPOCH + timedelta(seconds=epoch_seconds)).astimezone(zone))


def _utcoffset(moment: datetime) -> timedelta:
    offset = moment.utcoffset()
    if offset is None:  # never for ZoneInfo; keeps the types honest
        raise ValueError(f"{moment!r} has no UTC offset")
    return offset
