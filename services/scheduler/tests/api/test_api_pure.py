"""The API's pure parts: slot arithmetic, input checks, problem documents. No servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobwire.scheduler.api.backfills import schedule_slots
from jobwire.scheduler.api.explain import _previous_slot
from jobwire.scheduler.api.inputs import check_json, parse_etag
from jobwire.scheduler.api.previews import preview_definition
from jobwire.scheduler.api.problems import ProblemError
from jobwire.scheduler.api.tokens import Role
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.scheduler.domain.schedule import CronSchedule, IntervalSchedule

T0 = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)


def definition(**extra: object) -> object:
    return parse_definition(
        {"name": "j", "type": "start-workflow", "params": {"workflow": "w"}, **extra}
    )


@pytest.mark.parametrize(
    ("schedule", "at", "expected"),
    [
        # Every second: the slot just before.
        (
            IntervalSchedule(kind="interval", every=timedelta(seconds=1)),
            T0,
            T0 - timedelta(seconds=1),
        ),
        # Yearly: found by widening the window back.
        (
            CronSchedule(kind="cron", expression="0 0 1 1 *"),
            T0,
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        # Across the DST gap in Berlin: 02:30 on 2026-03-29 fires at 03:00 local (01:00 UTC).
        (
            CronSchedule(kind="cron", expression="30 2 * * *", timezone="Europe/Berlin"),
            datetime(2026, 3, 29, 1, 0, 1, tzinfo=UTC),
            datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        ),
    ],
)
def test_the_previous_slot_is_found_for_any_schedule(schedule, at, expected) -> None:  # type: ignore[no-untyped-def]
    assert _previous_slot(schedule, at) == expected


def test_an_interval_has_no_slot_before_its_anchor() -> None:
    schedule = IntervalSchedule(kind="interval", every=timedelta(hours=1), anchor=T0)
    assert _previous_slot(schedule, T0) is None
    assert _previous_slot(schedule, T0 + timedelta(minutes=1)) == T0


def test_backfill_slots_are_half_open_and_bounded() -> None:
    job = definition(schedule={"kind": "interval", "every": "PT1M", "anchor": T0.isoformat()})
    slots = schedule_slots(job, T0, T0 + timedelta(minutes=5), limit=100)  # type: ignore[arg-type]
    assert slots == [T0 + timedelta(minutes=i) for i in range(5)]
    assert len(schedule_slots(job, T0, T0 + timedelta(days=1), limit=10)) == 10  # type: ignore[arg-type]
    assert schedule_slots(definition(), T0, T0 + timedelta(days=1), limit=10) == []  # type: ignore[arg-type]


def test_a_preview_stays_inside_the_start_and_expiry_window() -> None:
    job = definition(
        schedule={"kind": "cron", "expression": "0 12 * * *", "timezone": "America/New_York"},
        start_at="2026-04-01T00:00:00Z",
        expires_at="2026-04-03T16:00:00Z",  # 12:00 in New York: that fire is out
    )
    result = preview_definition(job, T0, 10)  # type: ignore[arg-type]
    assert result.timezone == "America/New_York"
    assert [f.local for f in result.fires] == [
        "2026-04-01T12:00:00-04:00",
        "2026-04-02T12:00:00-04:00",
    ]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"a": {"b": ["ok", "n\x00l"]}}, "a.b.1"),
        ({"k\x00": 1}, "k\x00"),
        ({"x": float("nan")}, "x"),
        ({"x": [1.0, float("inf")]}, "x.1"),
    ],
)
def test_unstorable_json_is_refused_naming_the_field(value: object, field: str) -> None:
    with pytest.raises(ProblemError) as refused:
        check_json(value, "")
    assert refused.value.status == 422
    assert refused.value.errors[0][0] == field


def test_storable_json_passes() -> None:
    check_json({"a": [1, 2.5, "text", None, True, {"b": -1e308}]}, "")


@pytest.mark.parametrize(("header", "version"), [('"3"', 3), ('W/"12"', 12), ("7", 7)])
def test_an_entity_tag_carries_the_version(header: str, version: int) -> None:
    assert parse_etag(header) == version


@pytest.mark.parametrize("header", ["*", '"abc"', '"-1"', '"99999999999"', ""])
def test_a_bad_entity_tag_is_refused(header: str) -> None:
    with pytest.raises(ProblemError) as refused:
        parse_etag(header)
    assert refused.value.errors == [("If-Match", refused.value.errors[0][1])]


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.ADMIN)
