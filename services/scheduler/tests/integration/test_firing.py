"""Claims on a real PostgreSQL, decided at a chosen instant: every slot gets an answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobwire.contracts.envelope import decode
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunSkipped
from jobwire.contracts.subjects import Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.scheduler.domain.definitions import parse_definition

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def every_second(name: str = "tick", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "start-workflow",
        "schedule": {"kind": "interval", "every": "PT1S", "anchor": T0.isoformat()},
        "params": {"workflow": "tick", "input": {"n": 1}},
        **extra,
    }


async def runs_of(harness, name: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return sorted(await harness.store.runs(name, limit=10_000), key=lambda r: r["scheduled_for"])


async def outbox(harness) -> list[Any]:  # type: ignore[no-untyped-def]
    return await harness.store.pool.fetch("SELECT * FROM scheduler.outbox ORDER BY id")


async def test_a_due_slot_fires_one_start_workflow_and_the_relay_completes_the_run(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler()
    job = await h.store.create(parse_definition(every_second()), now=T0)
    assert job.next_fire_at == T0 + timedelta(seconds=1)

    assert await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=5)) == 1
    [run] = await runs_of(h, "tick")
    assert run["status"] == "dispatched"
    assert run["scheduled_for"] == T0 + timedelta(seconds=1)
    [row] = await outbox(h)
    command = decode(row["payload"], StartWorkflow).data
    assert command.workflow == "tick"
    assert command.idempotency_key == str(run["id"])
    assert command.origin.run_id == str(run["id"])
    assert row["subject"] == h.broker.subjects.workflow_start("tick")

    assert await h.scheduler.relay.relay_once() == (1, 1)
    assert await outbox(h) == []
    [run] = await runs_of(h, "tick")
    assert run["status"] == "succeeded"
    stored = await h.broker.js.get_last_msg(
        h.broker.subjects.stream_name(Stream.WORKFLOWS),
        h.broker.subjects.workflow_start("tick"),
    )
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == str(run["id"])
    # Not due again until the next slot.
    assert await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=500)) == 0


@pytest.mark.parametrize(
    ("misfire", "fired", "skipped"),
    [
        ({"policy": "skip"}, 0, {"missed": 10}),
        ({"policy": "fire_once"}, 1, {"coalesced": 9}),
        ({"policy": "fire_all", "max_catch_up": 3}, 3, {"missed": 7}),
    ],
)
async def test_slots_missed_during_an_outage_follow_the_misfire_policy(
    make_scheduler,  # type: ignore[no-untyped-def]
    misfire: dict[str, Any],
    fired: int,
    skipped: dict[str, int],
) -> None:
    h = await make_scheduler()
    await h.store.create(
        parse_definition(every_second(misfire={**misfire, "grace_seconds": 0.5})), now=T0
    )
    # Nothing ran for 10.2 s: slots T0+1 … T0+10 are all more than 0.5 s late.
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=10, milliseconds=700))
    runs = await runs_of(h, "tick")
    assert len(runs) == 10, "every slot is recorded"
    assert sum(r["status"] == "dispatched" for r in runs) == fired
    reasons: dict[str, int] = {}
    for r in runs:
        if r["status"] in ("skipped", "missed"):
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    assert reasons == skipped
    if fired:
        # The catch-up runs are the newest slots.
        newest = [r for r in runs if r["status"] == "dispatched"]
        assert newest == runs[-fired:]
        assert all(r["trigger"] == "catch_up" for r in newest)
    # Each skip is published too, with its reason.
    rows = await outbox(h)
    events = [decode(r["payload"], RunSkipped).data for r in rows if ".skipped" in r["subject"]]
    assert sorted(e.reason.value for e in events) == sorted(
        reason for reason, n in skipped.items() for _ in range(n)
    )
    job = await h.store.get("tick")
    assert job.next_fire_at == T0 + timedelta(seconds=11)


async def test_overlap_skip_queue_and_allow(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler()
    for name, overlap in [
        ("skipper", {"policy": "skip"}),
        ("queuer", {"policy": "queue", "max_queued": 1}),
        ("parallel", {"policy": "allow", "max_parallel": 2}),
    ]:
        await h.store.create(
            parse_definition(
                {
                    "name": name,
                    "type": "test-work",
                    "schedule": {"kind": "interval", "every": "PT1S", "anchor": T0.isoformat()},
                    "overlap": overlap,
                }
            ),
            now=T0,
        )
    for second in (1, 2, 3):
        await h.scheduler.firer.fire_due(T0 + timedelta(seconds=second, milliseconds=1))

    def statuses(runs: list[dict[str, Any]]) -> list[str]:
        return [r["reason"] or r["status"] for r in runs]

    assert statuses(await runs_of(h, "skipper")) == ["dispatched", "overlap", "overlap"]
    assert statuses(await runs_of(h, "queuer")) == ["dispatched", "queued", "queue_full"]
    assert statuses(await runs_of(h, "parallel")) == ["dispatched", "dispatched", "overlap"]


async def test_priority_decides_who_is_claimed_first(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler(claim_batch=2)
    for name, priority in [("low", -5), ("high", 50), ("mid", 0)]:
        await h.store.create(parse_definition(every_second(name, priority=priority)), now=T0)
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1))
    claimed = {name for name in ("low", "high", "mid") if await h.store.runs(name)}
    assert claimed == {"high", "mid"}


async def test_disabled_jobs_and_groups_do_not_fire_and_resume_without_catch_up(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler()
    await h.store.create(parse_definition(every_second("a", group="nightly")), now=T0)
    await h.store.create(parse_definition(every_second("b")), now=T0)
    await h.store.set_group_enabled("nightly", False, now=T0)
    await h.store.set_enabled("b", False, now=T0)
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=30))
    assert await h.store.runs("a") == []
    assert await h.store.runs("b") == []
    await h.store.set_group_enabled("nightly", True, now=T0 + timedelta(seconds=30))
    await h.store.set_enabled("b", True, now=T0 + timedelta(seconds=30))
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=31))
    # Only the slot after re-enabling fires: disabled time is not an outage.
    assert [r["scheduled_for"] for r in await h.store.runs("a")] == [T0 + timedelta(seconds=31)]
    assert [r["scheduled_for"] for r in await h.store.runs("b")] == [T0 + timedelta(seconds=31)]


async def test_a_job_due_in_400_days_is_stored_and_fires_then(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler()
    at = T0 + timedelta(days=400)
    await h.store.create(
        parse_definition(
            {
                "name": "far",
                "type": "test-work",
                "schedule": {"kind": "once", "at": at.isoformat()},
            }
        ),
        now=T0,
    )
    assert (await h.store.get("far")).next_fire_at == at
    await h.scheduler.firer.fire_due(at - timedelta(seconds=1))
    assert await h.store.runs("far") == []
    await h.scheduler.firer.fire_due(at)
    [run] = await h.store.runs("far")
    [row] = await outbox(h)
    due = decode(row["payload"], JobDue).data
    assert due.scheduled_for == at
    assert due.run_id == str(run["id"])
    assert (await h.store.get("far")).next_fire_at is None


async def test_the_overview_shows_last_result_next_run_and_status(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    from jobwire.scheduler.domain.status import JobStatus, job_status

    h = await make_scheduler()
    await h.store.create(parse_definition(every_second("shown")), now=T0)
    await h.store.create(
        parse_definition(
            {
                "name": "worked",
                "type": "test-work",
                "schedule": {"kind": "interval", "every": "PT1S", "anchor": T0.isoformat()},
            }
        ),
        now=T0,
    )
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1))
    await h.scheduler.relay.relay_once()
    rows = {row.name: row for row in await h.store.overview()}
    assert rows["shown"].last_result == "succeeded"
    assert rows["shown"].last_run_at == T0 + timedelta(seconds=1)
    assert rows["shown"].next_run_at == T0 + timedelta(seconds=2)
    assert job_status(rows["shown"].facts, frozenset()) == JobStatus.READY
    assert rows["worked"].last_result is None
    assert job_status(rows["worked"].facts, frozenset()) == JobStatus.RUNNING
    await h.store.set_enabled("shown", False, now=T0)
    [row] = await h.store.overview(["shown"])
    assert job_status(row.facts, frozenset()) == JobStatus.DISABLED
    assert row.next_run_at is None


async def test_an_unpublishable_message_fails_its_run_and_blocks_nothing(make_scheduler) -> None:  # type: ignore[no-untyped-def]
    h = await make_scheduler()
    huge = {"workflow": "tick", "input": {"blob": "x" * 1_100_000}}  # over NATS max_payload
    await h.store.create(parse_definition(every_second("huge", params=huge)), now=T0)
    await h.store.create(parse_definition(every_second("small")), now=T0)
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1))
    assert await h.scheduler.relay.relay_once() == (2, 2)
    assert await outbox(h) == []
    [big] = await runs_of(h, "huge")
    assert big["status"] == "failed"
    assert big["error"]["type"] == "unpublishable"
    assert "MaxPayload" in big["error"]["message"]
    [small] = await runs_of(h, "small")
    assert small["status"] == "succeeded"


async def test_an_api_only_replica_fires_nothing_and_a_firing_one_fires_all(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    """JOBWIRE_SCHEDULER__FIRING=false: the API apart from the firing loop."""
    from jobwire.contracts.envelope import utcnow
    from jobwire.testing.waiting import wait_for

    api_only = await make_scheduler(start=True, firing=False, max_idle_seconds=0.2)
    now = utcnow()
    schedule = {"kind": "interval", "every": "PT1S", "anchor": now.isoformat()}
    await api_only.store.create(parse_definition(every_second(schedule=schedule)), now=now)
    await wait_for(lambda: utcnow() > now + timedelta(seconds=2.5), timeout=10)
    assert await runs_of(api_only, "tick") == []
    await make_scheduler(start=True, max_idle_seconds=0.2)

    async def fired() -> bool:
        return bool(await runs_of(api_only, "tick"))

    await wait_for(fired, timeout=20)
