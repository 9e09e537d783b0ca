"""Preview: the next fire times of a schedule, of a definition saved or not."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from jobwire.scheduler.api.schemas import FireTime, Preview
from jobwire.scheduler.domain.definitions import JobDefinition, never_fires
from jobwire.scheduler.domain.schedule import CronSchedule, Schedule, preview

_MICROSECOND = timedelta(microseconds=1)


def preview_schedule(schedule: Schedule | None, after: datetime, count: int) -> Preview:
    """``count`` fire times after ``after``, each also in the schedule's time zone
    (a cron schedule's ``timezone``; UTC for intervals and one-shots)."""
    zone = schedule.timezone if isinstance(schedule, CronSchedule) else "UTC"
    fires = preview(schedule, after, count) if schedule is not None else []
    result = _rendered(zone, fires)
    if len(fires) < count:
        result.reason = _why_no_more(schedule, fires, after)
    return result


def preview_definition(definition: JobDefinition, after: datetime, count: int) -> Preview:
    """As :func:`preview_schedule`, inside the definition's start/expiry window."""
    if definition.start_at is not None and definition.start_at > after:
        after = definition.start_at - _MICROSECOND  # a slot at start_at counts
    result = preview_schedule(definition.schedule, after, count)
    if definition.expires_at is not None:
        expires = definition.expires_at
        result.fires = [f for f in result.fires if f.at < expires]
        if len(result.fires) < count and (result.fires or expires <= after):
            result.reason = f"the job expires at {expires.isoformat()}"
    if not result.fires:
        problems = never_fires(definition, after)
        if problems:
            result.reason = "; ".join(f"{field} {message}" for field, message in problems)
    return result


def _why_no_more(schedule: Schedule | None, fires: list[datetime], after: datetime) -> str:
    if schedule is None:
        return "the job has no schedule: it runs only when triggered or chained"
    last = fires[-1] if fires else after
    if schedule.kind == "once":
        return f"a once schedule fires only at {schedule.at.isoformat()}"
    return (
        f"the schedule has no fire after {last.isoformat()} (the supported range ends at year 9000)"
    )


def _rendered(zone: str, fires: list[datetime]) -> Preview:
    tz = ZoneInfo(zone)
    return Preview(
        timezone=zone,
        fires=[FireTime(at=fire, local=fire.astimezone(tz).isoformat()) for fire in fires],
    )
