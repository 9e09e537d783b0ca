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
    assert problems == ["definition"]


def test_start_at_and_expiry_bound_the_first_fire() -> None:
    start = datetime(2026, 4, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST exactly
    definition = parse_definition(job(start_at=start.isoformat()))
    assert definition.first_fire(NOW) == start
    expired = parse_definition(job(expires_at=(NOW + timedelta(hours=1)).isoformat()))
    assert expired.first_fire(NOW) is None


def test_a_cron_expression_that_never_matches_is_refused() -> None:
    with pytest.raises(DefinitionError, match="never matches"):
        parse_definition(job(schedule={"kind": "cron", "expression": "0 0 30 2 *"}))


def test_a_job_cannot_follow_itself() -> None:
    assert fields(job(after=[{"job": "invoices"}])) == ["definition"]


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
