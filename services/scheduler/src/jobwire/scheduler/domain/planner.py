"""What to do with a job whose slots have come due: pure decisions, no I/O.

The claim transaction asks two questions per job and acts on the answers:
which due slots fire and which are skipped (misfire policy), and whether each
fire runs now, waits, or is dropped because earlier runs are still active
(overlap policy). Every slot gets an answer; none disappears.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from jobwire.contracts.runs import SkipReason
from jobwire.scheduler.domain.definitions import MisfirePolicy, OverlapPolicy
from jobwire.scheduler.domain.schedule import Schedule, next_fire

# Bounds the work of one claim for one job after a long outage; the job stays
# due and the next claim continues where this one stopped.
MAX_SLOTS_PER_CLAIM = 1000


@dataclass(frozen=True, slots=True)
class Slot:
    scheduled_for: datetime
    fire: bool
    reason: SkipReason | None = None
    late: bool = False  # fired although past its grace: a catch-up


@dataclass(frozen=True, slots=True)
class DuePlan:
    slots: list[Slot]
    # The first slot not handled yet; None when the schedule has ended.
    next_fire_at: datetime | None


def plan_due(
    schedule: Schedule,
    first_due: datetime,
    now: datetime,
    misfire: MisfirePolicy,
    expires_at: datetime | None = None,
) -> DuePlan:
    """Decide every slot from ``first_due`` up to ``now``."""
    due: list[datetime] = []
    slot: datetime | None = first_due
    while slot is not None and slot <= now and len(due) < MAX_SLOTS_PER_CLAIM:
        if expires_at is not None and slot >= expires_at:
            slot = None
            break
        due.append(slot)
        slot = next_fire(schedule, slot)
    if slot is not None and expires_at is not None and slot >= expires_at:
        slot = None
    truncated = slot is not None and slot <= now

    grace = timedelta(seconds=misfire.grace_seconds)
    late = [s for s in due if now - s > grace]
    on_time = [Slot(s, fire=True) for s in due if now - s <= grace]
    # fire_once folds the missed slots into an on-time fire when there is one.
    folded = truncated or bool(on_time)
    return DuePlan(_catch_up(late, misfire, truncated, folded) + on_time, slot)


def _catch_up(
    late: list[datetime], misfire: MisfirePolicy, truncated: bool, folded: bool
) -> list[Slot]:
    if not late:
        return []
    if misfire.policy == "skip":
        return [Slot(s, fire=False, reason=SkipReason.MISSED) for s in late]
    if misfire.policy == "fire_once" and folded:
        return [Slot(s, fire=False, reason=SkipReason.COALESCED) for s in late]
    if truncated:
        # More missed slots follow in the next claim: the catch-up fires, if
        # any, belong to the newest ones, which only the last window sees.
        reason = SkipReason.COALESCED if misfire.policy == "fire_once" else SkipReason.MISSED
        return [Slot(s, fire=False, reason=reason) for s in late]
    if misfire.policy == "fire_once":
        return [Slot(s, fire=False, reason=SkipReason.COALESCED) for s in late[:-1]] + [
            Slot(late[-1], fire=True, late=True)
        ]
    keep = misfire.max_catch_up
    dropped = late[:-keep] if len(late) > keep else []
    return [Slot(s, fire=False, reason=SkipReason.MISSED) for s in dropped] + [
        Slot(s, fire=True, late=True) for s in late[-keep:]
    ]


Admission = Literal["dispatch", "queue"] | SkipReason


def admit(policy: OverlapPolicy, active: int, queued: int, fires: int) -> list[Admission]:
    """For each of ``fires`` new runs, in order: run now, wait in the queue, or skip."""
    limit = 1 if policy.policy == "skip" else policy.max_parallel
    decisions: list[Admission] = []
    for _ in range(fires):
        # A waiting queue goes first: a new run may not overtake queued ones.
        if active < limit and (policy.policy != "queue" or queued == 0):
            active += 1
            decisions.append("dispatch")
        elif policy.policy == "queue" and queued < policy.max_queued:
            queued += 1
            decisions.append("queue")
        elif policy.policy == "queue":
            decisions.append(SkipReason.QUEUE_FULL)
        else:
            decisions.append(SkipReason.OVERLAP)
    return decisions
