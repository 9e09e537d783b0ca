"""Bad definitions are refused with the field named; good ones normalise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobwire.scheduler.domain.definitions import DefinitionError, parse_definition

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def job(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "invoices",
        "type": "start-workflow",
        "schedule": {"kind": "cron", "expression": "0 30 2 * * *", "timezone": "Europe/Berlin"},
        "params": {"workflow": "invoice-run"},
    }
    return base | overrides


def fields(data: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(data)
    return [field for field, _ in caught.value.problems]


def test_a_good_definition_parses_and_knows_its_first_fire() -> None:
    definition = parse_definition(job())
    # 02:30 in Berlin on 29 March 2026 does not exist (spring forward): 03:00 CEST.
    assert definition.first_fire(NOW) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"schedule": {"kind": "cron", "expression": "0 61 * * *"}}, "schedule.cron.expression"),
        (
            {"schedule": {"kind": "cron", "expression": "* * * * *", "timezone": "Mars/Olympus"}},
            "schedule.cron.timezone",
        ),
        ({"type": "no-such-type"}, "type"),
        ({"params": {"workflow": "bad.name"}}, "params.workflow"),
        ({"params": {"workflow": "ok", "wokrflow": "typo"}}, "params.wokrflow"),
        ({"params": {}}, "params.workflow"),
        ({"schedule": {"kind": "weekly"}}, "schedule"),
        ({"misfire": {"policy": "sometimes"}}, "misfire.policy"),
        ({"overlap": {"policy": "queue", "max_queued": -1}}, "overlap.max_queued"),
        ({"name": ""}, "name"),
        ({"priority": 5000}, "priority"),
        ({"sheduel": "typo"}, "sheduel"),
    ],
)
def test_bad_input_is_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    assert field in fields(job(**overrides))


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(job(type="mystery"))
    assert "start-workflow" in str(caught.value)


def test_expiry_must_follow_start() -> None:
    start = NOW + timedelta(days=1)
    problems = fields(job(start_at=start.isoformat(), expires_at=NOW.isoformat()))
    assert problems == ["expires_at"]  # named, not the whole body (it was "definition")


def test_start_at_and_expiry_bound_the_first_fire() -> None:
    start = datetime(2026, 4, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST exactly
    definition = parse_definition(job(start_at=start.isoformat()))
    assert definition.first_fire(NOW) == start
    expired = parse_definition(job(expires_at=(NOW + timedelta(hours=1)).isoformat()))
    assert expired.first_fire(NOW) is None


def test_a_cron_expression_that_never_matches_is_refused() -> None:
    with pytest.raises(DefinitionError, match="never matches") as caught:
        parse_definition(job(schedule={"kind": "cron", "expression": "0 0 30 2 *"}))
    assert [f for f, _ in caught.value.problems] == ["schedule.cron.expression"]


def test_a_job_cannot_follow_itself() -> None:
    assert fields(job(after=[{"job": "invoices"}])) == ["after"]


LISTENER = {
    "name": "orders from kafka",
    "type": "kafka-subscriber",
    "params": {"workflow": "order", "bootstrap_servers": ["k:9092"], "topics": ["orders"]},
}


def test_a_listener_job_has_no_schedule_and_may_scale_where_its_source_can() -> None:
    definition = parse_definition({**LISTENER, "replicas": 3})

    assert definition.replicas == 3
    assert definition.schedule is None


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"schedule": {"kind": "cron", "expression": "* * * * *"}}, "schedule", "no schedule"),
        ({"after": [{"job": "x"}]}, "after", "cannot be chained"),
        ({"replicas": 0}, "replicas", "greater than or equal to 1"),
        ({"params": {"workflow": "w", "bootstrap_servers": ["k"]}}, "params", "topics"),
    ],
)
def test_listener_definitions_are_refused_naming_the_field(
    overrides: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition({**LISTENER, **overrides})

    [(where, what)] = caught.value.problems
    assert where == field
    assert message in what


def test_only_scalable_listeners_take_more_than_one_replica() -> None:
    files = {
        "name": "inbox",
        "type": "file-listener",
        "params": {"workflow": "w", "storage": {"kind": "local", "root": "/in"}},
        "replicas": 2,
    }
    with pytest.raises(DefinitionError, match="replicas: file-listener cannot share"):
        parse_definition(files)
    with pytest.raises(DefinitionError, match="replicas: only listener jobs"):
        parse_definition(
            {"name": "x", "type": "start-workflow", "params": {"workflow": "w"}, "replicas": 2}
        )


def test_a_storage_of_an_unknown_kind_is_named() -> None:
    bad = {
        "name": "inbox",
        "type": "file-listener",
        "params": {"workflow": "w", "storage": {"kind": "ftp", "root": "/in"}},
    }
    with pytest.raises(DefinitionError) as caught:
        parse_definition(bad)

    assert caught.value.problems[0][0] == "params.storage"


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        # The probe's crash: asyncpg stores datetime.max as `infinity`.
        ("schedule.once.at", {"schedule": {"kind": "once", "at": "9999-12-31T23:59:59.999999Z"}}),
        ("schedule.once.at", {"schedule": {"kind": "once", "at": "0001-01-01T00:00:00Z"}}),
        (
            "schedule.interval.anchor",
            {"schedule": {"kind": "interval", "every": "PT1S", "anchor": "0001-01-01T00:00Z"}},
        ),
        ("start_at", {"start_at": "9999-12-31T23:00:00-05:00"}),  # past UTC's year 9999
        ("expires_at", {"expires_at": "9500-01-01T00:00:00Z"}),
    ],
)
def test_instants_outside_the_scheduled_range_are_refused_naming_the_field(
    field: str, overrides: dict[str, Any]
) -> None:
    assert fields(job(**overrides)) == [field]


def test_no_fire_is_ever_computed_past_the_latest_instant() -> None:
    from jobwire.scheduler.domain.schedule import LATEST_INSTANT, next_fire

    definition = parse_definition(
        job(schedule={"kind": "interval", "every": "P3650D", "anchor": "8990-01-01T00:00:00Z"})
    )
    assert definition.schedule is not None
    assert next_fire(definition.schedule, datetime(8999, 12, 31, tzinfo=UTC)) is None  # 9009
    assert next_fire(definition.schedule, datetime(8995, 1, 1, tzinfo=UTC)) is not None
    assert next_fire(definition.schedule, LATEST_INSTANT) is None


def never(data: dict[str, Any], previous: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(data, now=NOW, previous=parse_definition(previous) if previous else None)
    return [field for field, _ in caught.value.problems]


def test_a_schedule_that_can_never_fire_is_refused_for_every_kind_naming_the_field() -> None:
    past = (NOW - timedelta(hours=1)).isoformat()
    assert never(job(schedule={"kind": "once", "at": past})) == ["schedule.once.at"]
    assert never(job(expires_at=past)) == ["expires_at"]
    interval = {"kind": "interval", "every": "P1D", "anchor": NOW.isoformat()}
    window = {
        "schedule": interval,
        "start_at": (NOW + timedelta(hours=1)).isoformat(),
        "expires_at": (NOW + timedelta(hours=2)).isoformat(),
    }
    assert never(job(**window)) == ["expires_at"]  # no slot falls into the window
    once_after_expiry = {
        "schedule": {"kind": "once", "at": (NOW + timedelta(days=2)).isoformat()},
        "expires_at": (NOW + timedelta(days=1)).isoformat(),
    }
    assert never(job(**once_after_expiry)) == ["expires_at"]


def test_a_job_whose_schedule_ran_out_can_still_be_edited_when_its_timing_is_unchanged() -> None:
    fired = job(schedule={"kind": "once", "at": (NOW - timedelta(hours=1)).isoformat()})
    edited = {**fired, "description": "a once job that fired: still editable"}
    assert parse_definition(edited, now=NOW, previous=parse_definition(fired)).description
    moved = {**fired, "schedule": {"kind": "once", "at": (NOW - timedelta(minutes=5)).isoformat()}}
    assert never(moved, previous=fired) == ["schedule.once.at"]
    future = {**fired, "schedule": {"kind": "once", "at": (NOW + timedelta(hours=1)).isoformat()}}
    assert parse_definition(future, now=NOW, previous=parse_definition(fired)).schedule
