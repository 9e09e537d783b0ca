"""Nothing about one job stops firing for the others (issue: hardening, defect 1).

Each test puts one poisoned job next to a healthy one — a stored time asyncpg
reads back as a naive ``datetime.max``, a stored definition the code refuses, a
run PostgreSQL refuses to store, an outbox row the broker refuses, a run event
that cannot be recorded — and checks that the healthy one fires, the poisoned
one is set aside as Faulted with its error, and fixing it clears the fault.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.runs import RunFinished
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.testing.waiting import wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def every_second(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "start-workflow",
        "schedule": {"kind": "interval", "every": "PT1S", "anchor": T0.isoformat()},
        "params": {"workflow": "tick"},
        **extra,
    }


async def fault_of(h, name: str) -> str | None:  # type: ignore[no-untyped-def]
    value: str | None = await h.store.pool.fetchval(
        "SELECT fault FROM scheduler.jobs WHERE name = $1", name
    )
    return value


async def statuses(h, *names: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = await h.store.overview(list(names))
    from jobwire.scheduler.domain.status import job_status

    return {o.name: job_status(o.facts, frozenset()).value for o in rows}


async def fired(h, name: str) -> int:  # type: ignore[no-untyped-def]
    return len(await h.store.runs(name, limit=10_000))


@pytest.mark.parametrize("stored", ["infinity", "-infinity"])
async def test_a_stored_infinite_next_fire_faults_its_job_and_the_rest_fire(
    make_scheduler,  # type: ignore[no-untyped-def]
    stored: str,
) -> None:
    """asyncpg writes datetime.max as `infinity` and reads it back naive: the
    firing loop used to die on `can't subtract offset-naive and offset-aware`."""
    h = await make_scheduler()
    await h.store.create(parse_definition(every_second("healthy")), now=T0)
    await h.store.create(parse_definition(every_second("poisoned")), now=T0)
    await h.store.pool.execute(
        f"UPDATE scheduler.jobs SET next_fire_at = '{stored}' WHERE name = 'poisoned'"
    )
    now = T0 + timedelta(seconds=1, milliseconds=5)
    await h.scheduler.firer.fire_due(now)
    assert await fired(h, "healthy") == 1
    if stored == "-infinity":  # always due: claimed, and faulted
        assert "out of the supported range" in (await fault_of(h, "poisoned") or "")
        assert (await statuses(h, "poisoned"))["poisoned"] == "Faulted"
    # +infinity is never due; either way the API never shows a naive time.
    [view] = await h.store.overview(["poisoned"])
    assert view.next_run_at is None or view.next_run_at.tzinfo is not None


async def test_a_stored_definition_the_code_refuses_faults_its_job_until_it_is_replaced(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler()
    await h.store.create(parse_definition(every_second("healthy")), now=T0)
    record = await h.store.create(parse_definition(every_second("broken")), now=T0)
    broken = record.definition.model_dump(mode="json")
    broken["schedule"]["every"] = "not a duration"  # as if an upgrade tightened a rule
    await h.store.pool.execute(
        "UPDATE scheduler.jobs SET definition = $1, version = version + 1 WHERE name = 'broken'",
        json.loads(json.dumps(broken)),
    )
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=5))
    assert await fired(h, "healthy") == 1
    assert "stored definition is invalid" in (await fault_of(h, "broken") or "")

    # Fixing the definition clears the fault and the job fires again.
    current = await h.store.pool.fetchval("SELECT version FROM scheduler.jobs WHERE name='broken'")
    now = T0 + timedelta(seconds=2)
    await h.store.update("broken", parse_definition(every_second("broken")), current, now)
    assert await fault_of(h, "broken") is None
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=3, milliseconds=5))
    assert await fired(h, "broken") == 1


async def test_a_run_that_cannot_be_built_faults_only_its_job(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler()
    await h.store.create(parse_definition(every_second("healthy")), now=T0)
    await h.store.create(parse_definition(every_second("unbuildable")), now=T0)
    # Params its type no longer accepts: the StartWorkflow cannot be built.
    await h.store.pool.execute(
        """UPDATE scheduler.jobs SET definition = jsonb_set(definition, '{params}', '{}'),
               version = version + 1 WHERE name = 'unbuildable'"""
    )
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=5))
    assert await fired(h, "healthy") == 1
    assert await fired(h, "unbuildable") == 0
    assert "cannot be built" in (await fault_of(h, "unbuildable") or "")
    # An operator's enable after a disable (a retry) clears it too.
    await h.store.set_enabled("unbuildable", False, T0 + timedelta(seconds=2))
    await h.store.set_enabled("unbuildable", True, T0 + timedelta(seconds=2))
    assert await fault_of(h, "unbuildable") is None


async def test_a_run_postgresql_refuses_faults_its_job_and_the_claim_goes_on(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    """A claim is one transaction: one refused row used to fail every claim, for ever."""
    h = await make_scheduler()
    await h.store.create(parse_definition(every_second("healthy")), now=T0)
    await h.store.create(parse_definition(every_second("refused")), now=T0)
    # A trigger standing for any row PostgreSQL refuses (a value out of range, a
    # constraint an operator added): runs of this one job cannot be inserted.
    await h.store.pool.execute(
        """CREATE FUNCTION scheduler.refuse_run() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.job_id = (SELECT id FROM scheduler.jobs WHERE name = 'refused') THEN
               RAISE EXCEPTION 'value out of range' USING ERRCODE = '22003';
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_run BEFORE INSERT ON scheduler.runs
               FOR EACH ROW EXECUTE FUNCTION scheduler.refuse_run();"""
    )
    h2 = await make_scheduler(start=True, max_idle_seconds=0.2)
    await wait_for(lambda: fault_of(h2, "refused"), timeout=20)
    assert "cannot be stored" in (await fault_of(h2, "refused") or "")
    # The loop is alive and fires the healthy job in real time.
    before = await fired(h2, "healthy")
    await wait_for(lambda: _more(h2, "healthy", before), timeout=20)


async def _more(h, name: str, than: int) -> bool:  # type: ignore[no-untyped-def]
    return await fired(h, name) > than


async def test_an_outbox_row_the_broker_keeps_refusing_is_given_up_and_its_run_failed(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler()
    await h.store.create(
        parse_definition(every_second("stray", type="test-work", params={})), now=T0
    )
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=5))
    [run] = await h.store.runs("stray")
    # A subject no stream captures: JetStream has no responder for it, every time.
    await h.store.pool.execute("UPDATE scheduler.outbox SET subject = 'nowhere.at.all'")
    from jobwire.runtime.outbox import MAX_ROW_ATTEMPTS

    for _ in range(MAX_ROW_ATTEMPTS + 1):
        await h.scheduler.relay.relay_once()
        await h.store.create(parse_definition(every_second(f"more-{uuid.uuid4().hex[:6]}")), now=T0)
        await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=5))
    await h.scheduler.relay.relay_once()
    left = await h.store.pool.fetchval("SELECT count(*) FROM scheduler.outbox")
    assert left == 0
    failed = await h.store.pool.fetchrow(
        "SELECT status, error FROM scheduler.runs WHERE id = $1", run["id"]
    )
    assert failed["status"] == "failed"
    assert "no response from stream" in failed["error"]["message"]
    # The rows fired meanwhile all went out.
    assert (
        await h.store.pool.fetchval(
            "SELECT count(*) FROM scheduler.runs WHERE status = 'succeeded'"
        )
        == MAX_ROW_ATTEMPTS + 1
    )


async def test_a_run_event_that_cannot_be_recorded_is_dead_lettered_and_the_rest_are(
    make_scheduler,  # type: ignore[no-untyped-def]
) -> None:
    h = await make_scheduler()
    for name in ("poisoned", "healthy"):
        await h.store.create(
            parse_definition(every_second(name, type="test-work", params={})), now=T0
        )
    await h.scheduler.firer.fire_due(T0 + timedelta(seconds=1, milliseconds=5))
    [poisoned] = await h.store.runs("poisoned")
    [healthy] = await h.store.runs("healthy")
    await make_scheduler(start=True)  # records the run events

    def finished(run: dict[str, Any], result: dict[str, Any]) -> RunFinished:
        return RunFinished(
            run_id=str(run["id"]),
            job_id=str(run["job_id"]),
            job_type="test-work",
            status="succeeded",
            attempt=1,
            finished_at=utcnow(),
            result=result,
        )

    subjects = h.broker.subjects
    # PostgreSQL's jsonb refuses \u0000: this event can never be recorded.
    await h.broker.publish(
        subjects.run_event(str(poisoned["id"]), RunEvent.FINISHED),
        finished(poisoned, {"note": "nul \x00 inside"}),
        msg_id=f"{poisoned['id']}:finished",
    )
    await h.broker.publish(
        subjects.run_event(str(healthy["id"]), RunEvent.FINISHED),
        finished(healthy, {"ok": True}),
        msg_id=f"{healthy['id']}:finished",
    )

    async def healthy_recorded() -> bool:
        status = await h.store.pool.fetchval(
            "SELECT status FROM scheduler.runs WHERE id = $1", healthy["id"]
        )
        return bool(status == "succeeded")

    await wait_for(healthy_recorded, timeout=20)

    async def dead_lettered() -> bool:
        info = await h.broker.js.stream_info(subjects.stream_name(Stream.DLQ))
        return bool(info.state.messages >= 1)

    await wait_for(dead_lettered, timeout=20)
    # The poisoned run stays as it was: nothing half-recorded.
    status = await h.store.pool.fetchval(
        "SELECT status FROM scheduler.runs WHERE id = $1", poisoned["id"]
    )
    assert status != "succeeded"
