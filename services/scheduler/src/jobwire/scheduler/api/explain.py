"""Explain: why a job did or did not run at a given time.

The evidence, in order of authority:

1. the runs table — every slot the scheduler decided has a row, fired or
   skipped with a reason (missed, coalesced, overlap, queue_full …);
2. the schedule of the definition in force then (the audit log keeps each
   version) — is that time a slot at all, inside the job's start/expiry window;
3. the clock — a slot still ahead has not been due yet;
4. the audit log — was the job disabled or paused, or its group disabled, then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from jobwire.scheduler.adapters.store import JobRecord
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.problems import invalid
from jobwire.scheduler.api.schemas import Explanation, RunDetail
from jobwire.scheduler.api.triggers import run_view
from jobwire.scheduler.domain.definitions import JobDefinition
from jobwire.scheduler.domain.schedule import Schedule, next_fire

_MICROSECOND = timedelta(microseconds=1)
_END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)
_SKIPPED = {
    "missed": "the slot passed while no scheduler could fire it (an outage, or firing too "
    "late past misfire.grace_seconds) and the misfire policy recorded it as missed",
    "coalesced": "the slot was missed and folded into one catch-up run (misfire policy fire_once)",
    "overlap": "an earlier run was still active and the overlap policy is skip",
    "queue_full": "earlier runs were active and the overlap queue was full",
    "disabled": "the job was disabled",
    "group_disabled": "the job's group was disabled",
    "paused": "firing was paused",
    "expired": "the job had expired",
}
_JOB_STATE_ACTIONS = ("job.create", "job.update", "job.enable", "job.disable")
_PAUSE_ACTIONS = ("job.create", "job.update", "job.pause", "job.resume")
_DEFINITION_ACTIONS = ("job.create", "job.update")


async def explain(api: ApiContext, job: JobRecord, at: datetime) -> Explanation:
    if not 1 < at.year < 9999:  # slots are searched around ``at``, which must have room
        raise invalid("at", "must be between the years 2 and 9998")
    store = api.store
    now = api.clock()

    def answer(verdict: str, detail: str, **extra: Any) -> Explanation:
        return Explanation(job=job.name, at=at, verdict=verdict, detail=detail, **extra)

    run = await store.run_at(job.id, at)
    if run is not None:
        detail_run = RunDetail.model_validate(run_view(run))
        status = run["status"]
        if status in ("skipped", "missed"):
            reason = run["reason"] or status
            verdict = reason if reason in _SKIPPED else "missed"
            return answer(verdict, _SKIPPED.get(reason, reason), run=detail_run)
        return answer(
            "fired",
            f"a run exists for that time: {status} (trigger {run['trigger']})",
            run=detail_run,
        )

    definition = await _definition_at(api, job, at)
    schedule = definition.schedule
    if schedule is None:
        return answer(
            "not_a_slot", "the job has no schedule: it runs only when triggered or chained"
        )
    before, after = _previous_slot(schedule, at), next_fire(schedule, at)
    if next_fire(schedule, at - _MICROSECOND) != at:
        return answer(
            "not_a_slot",
            "the schedule has no slot at that time; the nearest are "
            f"{_show(before)} (before) and {_show(after)} (after)",
            slot_before=before,
            slot_after=after,
        )
    if definition.start_at is not None and at < definition.start_at:
        return answer("before_start", f"the job starts at {_show(definition.start_at)}")
    created = await _created_at(api, job.name)
    if created is not None and at <= created:
        return answer(
            "before_start",
            f"the job was created at {_show(created)}; its first slot came after that",
        )
    if definition.expires_at is not None and at >= definition.expires_at:
        return answer("expired", f"the job expired at {_show(definition.expires_at)}")
    if job.fault is not None:
        return answer(
            "faulted",
            f"the scheduler set the job aside: {job.fault}. Nothing fires until the "
            "definition is changed, or the job is enabled or resumed again",
        )
    if at > now:
        due = f"the slot is due in {_duration(at - now)}"
        if not job.enabled or job.paused:
            due += f"; the job is {'disabled' if not job.enabled else 'paused'} now"
        return answer("not_yet_due", due)

    state = await _flag_at(api, job.name, _JOB_STATE_ACTIONS, "enabled", at)
    if state is not None and not state[0]:
        return answer("disabled", f"the job was disabled then ({state[1]})")
    paused = await _flag_at(api, job.name, _PAUSE_ACTIONS, "paused", at)
    if paused is not None and paused[0]:
        return answer("paused", f"the job was paused then ({paused[1]})")
    if definition.group is not None:
        group = await store.last_audit(
            "group", definition.group, ("group.enable", "group.disable"), at
        )
        if group is not None and group["action"] == "group.disable":
            return answer(
                "group_disabled",
                f"group {definition.group!r} was disabled then "
                f"({_who(group['actor'], group['at'])})",
            )
    if job.enabled and not job.paused and job.next_fire_at is not None and at >= job.next_fire_at:
        return answer(
            "not_yet_due",
            "the slot is due but no scheduler has fired it yet: is a scheduler running?",
        )
    if at < now - timedelta(days=api.history_days):
        return answer(
            "unknown",
            f"no run is recorded; run history older than {api.history_days:g} days is pruned",
        )
    return answer(
        "unknown",
        "no run is recorded for that slot, and neither the audit log nor the definition "
        "say why (the schedule restarts when a job is changed, enabled or resumed)",
    )


async def _created_at(api: ApiContext, name: str) -> datetime | None:
    """When the job of this name was (last) created: the audit log knows the time
    the API gave it; the table's own column is the fallback."""
    created = await api.store.last_audit("job", name, ("job.create",), _END_OF_TIME)
    if created is not None:
        at: datetime = created["at"]
        return at
    return await api.store.job_created_at(name)


async def _definition_at(api: ApiContext, job: JobRecord, at: datetime) -> JobDefinition:
    change = await api.store.last_audit("job", job.name, _DEFINITION_ACTIONS, at)
    if change is None or not change["after"]:
        return job.definition
    try:
        return JobDefinition.model_validate(change["after"]["definition"])
    except (KeyError, ValueError):
        return job.definition


async def _flag_at(
    api: ApiContext, name: str, actions: tuple[str, ...], flag: str, at: datetime
) -> tuple[bool, str] | None:
    """The value a job's flag had at ``at``, from its last audited change, and who set it."""
    row = await api.store.last_audit("job", name, actions, at)
    if row is None or not row["after"] or flag not in row["after"]:
        return None
    return bool(row["after"][flag]), _who(row["actor"], row["at"], row["action"])


def _previous_slot(schedule: Schedule, at: datetime) -> datetime | None:
    """The last slot before ``at``: search windows doubling back from ``at``
    (schedules only step forward), then step forward inside the window."""
    window = timedelta(seconds=1)
    for _ in range(40):  # 2**40 s: beyond any representable date
        try:
            start = at - window
        except OverflowError:
            return None
        slot = next_fire(schedule, start)
        if slot is not None and slot < at:
            for _ in range(100_000):
                following = next_fire(schedule, slot)
                if following is None or following >= at:
                    return slot
                slot = following
            return slot
        window *= 2
    return None


def _show(value: datetime | None) -> str:
    return "none" if value is None else value.isoformat()


def _who(actor: str, at: datetime, action: str | None = None) -> str:
    what = f"{action} " if action else ""
    return f"{what}by {actor} at {at.isoformat()}"


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} days"
