"""Misfire and overlap decisions, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobwire.contracts.runs import SkipReason
from jobwire.scheduler.domain.definitions import MisfirePolicy, OverlapPolicy
from jobwire.scheduler.domain.planner import MAX_SLOTS_PER_CLAIM, admit, plan_due
from jobwire.scheduler.domain.schedule import IntervalSchedule, OnceSchedule

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EVERY_SECOND = IntervalSchedule(kind="interval", every=timedelta(seconds=1), anchor=T0)


def test_an_on_time_slot_fires_and_the_next_one_is_remembered() -> None:
    plan = plan_due(EVERY_SECOND, T0, T0 + timedelta(milliseconds=3), MisfirePolicy())
    assert [(s.scheduled_for, s.fire) for s in plan.slots] == [(T0, True)]
    assert plan.next_fire_at == T0 + timedelta(seconds=1)


def test_a_huge_outage_is_worked_off_in_bounded_claims_and_nothing_is_lost() -> None:
    now = T0 + timedelta(seconds=2500, milliseconds=10)
    policy = MisfirePolicy(policy="fire_once", grace_seconds=1)
    first = plan_due(EVERY_SECOND, T0, now, policy)
    assert len(first.slots) == MAX_SLOTS_PER_CLAIM
    assert not any(s.fire for s in first.slots)  # the newest slots decide the catch-up
    assert first.next_fire_at == T0 + timedelta(seconds=MAX_SLOTS_PER_CLAIM)
    decided = list(first.slots)
    plan = first
    while plan.next_fire_at is not None and plan.next_fire_at <= now:
        plan = plan_due(EVERY_SECOND, plan.next_fire_at, now, policy)
        decided += plan.slots
    assert [s.scheduled_for for s in decided] == [T0 + timedelta(seconds=i) for i in range(2501)]
    # One run: the on-time slot (2500 s), into which all missed ones were folded.
    fired = [s for s in decided if s.fire]
    assert [s.scheduled_for for s in fired] == [T0 + timedelta(seconds=2500)]
    reasons = {s.reason for s in decided if not s.fire}
    assert reasons == {SkipReason.COALESCED}


def test_fire_once_without_an_on_time_slot_fires_the_newest_missed_one() -> None:
    hourly = IntervalSchedule(kind="interval", every=timedelta(hours=1), anchor=T0)
    now = T0 + timedelta(hours=5, minutes=30)
    plan = plan_due(hourly, T0, now, MisfirePolicy(policy="fire_once"))
    assert [(s.fire, s.late) for s in plan.slots] == [(False, False)] * 5 + [(True, True)]
    assert plan.slots[-1].scheduled_for == T0 + timedelta(hours=5)


def test_expiry_ends_the_schedule() -> None:
    plan = plan_due(
        EVERY_SECOND,
        T0,
        T0 + timedelta(seconds=10),
        MisfirePolicy(grace_seconds=60),
        expires_at=T0 + timedelta(seconds=3),
    )
    assert [s.scheduled_for for s in plan.slots] == [T0 + timedelta(seconds=i) for i in range(3)]
    assert plan.next_fire_at is None


def test_a_one_shot_schedule_ends_after_its_slot() -> None:
    once = OnceSchedule(kind="once", at=T0)
    plan = plan_due(once, T0, T0, MisfirePolicy())
    assert [s.fire for s in plan.slots] == [True]
    assert plan.next_fire_at is None


def test_overlap_admission() -> None:
    assert admit(OverlapPolicy(policy="skip"), active=0, queued=0, fires=2) == [
        "dispatch",
        SkipReason.OVERLAP,
    ]
    assert admit(OverlapPolicy(policy="allow", max_parallel=3), 1, 0, 3) == [
        "dispatch",
        "dispatch",
        SkipReason.OVERLAP,
    ]
    assert admit(OverlapPolicy(policy="queue", max_queued=2), 1, 1, 2) == [
        "queue",
        SkipReason.QUEUE_FULL,
    ]
