"""Schedules: validation, and fire times across DST transitions and other offset changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter, ValidationError

from jobwire.scheduler.domain.schedule import (
    CronSchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    next_fire,
    preview,
)

SCHEDULE: TypeAdapter[Schedule] = TypeAdapter(Schedule)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def cron(expression: str, timezone: str = "UTC") -> CronSchedule:
    return CronSchedule(kind="cron", expression=expression, timezone=timezone)


def local_times(fires: list[datetime], zone: str) -> list[str]:
    return [f.astimezone(ZoneInfo(zone)).isoformat() for f in fires]


# --- Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET ---


def test_berlin_slot_in_the_spring_gap_fires_at_the_end_of_the_gap() -> None:
    fires = preview(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 27, 12), 3)
    assert fires == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
    assert local_times(fires, "Europe/Berlin")[1] == "2026-03-29T03:00:00+02:00"


def test_berlin_slots_in_the_gap_collapse_into_one_fire_with_the_slot_after_it() -> None:
    # 02:00, 02:15, 02:30, 02:45 do not exist; they and 03:00 fire once, at 03:00 CEST.
    fires = preview(cron("*/15 * * * *", "Europe/Berlin"), utc(2026, 3, 29, 0, 30), 4)
    assert local_times(fires, "Europe/Berlin") == [
        "2026-03-29T01:45:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:15:00+02:00",
        "2026-03-29T03:30:00+02:00",
    ]


def test_berlin_gap_slot_and_the_slot_at_the_gap_end_fire_once() -> None:
    fires = preview(cron("0 2,3 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), 3)
    assert fires == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0), utc(2026, 3, 30, 1)]


def test_berlin_ambiguous_slot_fires_at_its_first_occurrence_only() -> None:
    fires = preview(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), 2)
    assert local_times(fires, "Europe/Berlin") == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_berlin_repeated_hour_does_not_fire_again() -> None:
    fires = preview(cron("*/30 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 23, 15), 5)
    assert local_times(fires, "Europe/Berlin") == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T03:00:00+01:00",  # 02:00 and 02:30 CET are skipped: already fired
        "2026-10-25T03:30:00+01:00",
    ]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2026, 10, 25, 0, 10), utc(2026, 10, 25, 0, 30)),  # 02:10 CEST, first pass
        (utc(2026, 10, 25, 0, 59, 59, 999999), utc(2026, 10, 25, 2)),  # 02:59:59.9 CEST
        (utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)),  # 02:00 CET, second pass begins
        (utc(2026, 10, 25, 1, 10), utc(2026, 10, 25, 2)),  # 02:10 CET
        (utc(2026, 10, 25, 1, 59, 59), utc(2026, 10, 25, 2)),  # 02:59:59 CET
        (utc(2026, 10, 25, 2), utc(2026, 10, 25, 2, 30)),  # 03:00 CET
    ],
)
def test_berlin_next_fire_from_inside_the_repeated_hour(
    after: datetime, expected: datetime
) -> None:
    assert next_fire(cron("*/30 * * * *", "Europe/Berlin"), after) == expected


def test_every_second_from_the_second_pass_skips_to_the_end_of_the_repeated_hour() -> None:
    # 3600 slots of the repeated hour already fired the first time round.
    schedule = cron("* * * * * *", "Europe/Berlin")
    assert next_fire(schedule, utc(2026, 10, 25, 1, 0, 0, 1)) == utc(2026, 10, 25, 2)


# --- America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST --


def test_new_york_spring_forward() -> None:
    fires = preview(cron("30 2 * * *", "America/New_York"), utc(2026, 3, 7, 12), 3)
    assert local_times(fires, "America/New_York") == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]
    assert fires[0] == utc(2026, 3, 8, 7)


def test_new_york_fall_back() -> None:
    fires = preview(cron("30 1 * * *", "America/New_York"), utc(2026, 10, 31, 12), 2)
    assert fires == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]
    hourly = preview(cron("0 * * * *", "America/New_York"), utc(2026, 11, 1, 3, 30), 4)
    assert local_times(hourly, "America/New_York") == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T02:00:00-05:00",  # two hours after the previous fire
        "2026-11-01T03:00:00-05:00",
    ]


def test_weekday_schedule_keeps_local_time_across_dst() -> None:
    fires = preview(cron("0 9 * * MON-FRI", "America/New_York"), utc(2026, 3, 5, 12), 3)
    assert fires == [utc(2026, 3, 5, 14), utc(2026, 3, 6, 14), utc(2026, 3, 9, 13)]


# --- Australia/Lord_Howe: half-hour DST. 2026-10-04 02:00 -> 02:30 (+10:30 -> +11);
# --- 2026-04-05 02:00 -> 01:30 (+11 -> +10:30) ------------------------------------------


def test_lord_howe_half_hour_gap() -> None:
    fires = preview(cron("*/10 * * * *", "Australia/Lord_Howe"), utc(2026, 10, 3, 15, 15), 3)
    assert local_times(fires, "Australia/Lord_Howe") == [
        "2026-10-04T01:50:00+10:30",
        "2026-10-04T02:30:00+11:00",  # 02:00, 02:10, 02:20 and 02:30 itself
        "2026-10-04T02:40:00+11:00",
    ]
    assert next_fire(cron("15 2 * * *", "Australia/Lord_Howe"), utc(2026, 10, 3)) == utc(
        2026, 10, 3, 15, 30
    )


def test_lord_howe_half_hour_overlap() -> None:
    fires = preview(cron("45 1 * * *", "Australia/Lord_Howe"), utc(2026, 4, 4, 12), 2)
    assert fires == [utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]
    quarter = preview(cron("*/15 * * * *", "Australia/Lord_Howe"), utc(2026, 4, 4, 14, 20), 4)
    assert local_times(quarter, "Australia/Lord_Howe") == [
        "2026-04-05T01:30:00+11:00",
        "2026-04-05T01:45:00+11:00",
        "2026-04-05T02:00:00+10:30",  # 01:30 and 01:45 at +10:30 do not fire again
        "2026-04-05T02:15:00+10:30",
    ]


# --- Pacific/Apia skipped 2011-12-30 entirely: 2011-12-29 23:59:59 -10 -> 2011-12-31 00:00 +14


def test_apia_skipped_day_fires_once_at_the_start_of_the_next_day() -> None:
    daily = preview(cron("0 9 * * *", "Pacific/Apia"), utc(2011, 12, 29), 3)
    assert local_times(daily, "Pacific/Apia") == [
        "2011-12-29T09:00:00-10:00",
        "2011-12-31T00:00:00+14:00",  # the 30th's 09:00, at the first instant after the gap
        "2011-12-31T09:00:00+14:00",
    ]


def test_apia_all_slots_of_the_skipped_day_collapse_into_one_fire() -> None:
    hourly = preview(cron("0 * * * *", "Pacific/Apia"), utc(2011, 12, 30, 8, 30), 3)
    assert hourly == [utc(2011, 12, 30, 9), utc(2011, 12, 30, 10), utc(2011, 12, 30, 11)]
    assert local_times(hourly, "Pacific/Apia")[1] == "2011-12-31T00:00:00+14:00"


def test_apia_date_that_never_existed() -> None:
    fires = preview(cron("0 12 30 12 *", "Pacific/Apia"), utc(2011, 1, 1), 2)
    assert fires == [utc(2011, 12, 30, 10), utc(2012, 12, 29, 22)]


# --- other zones ---------------------------------------------------------------------------


def test_dublin_negative_dst_behaves_like_any_other_shift() -> None:
    # Irish Standard Time is the summer time; winter is "negative DST". Wall clocks move
    # like London's: 2026-03-29 01:00 -> 02:00 and 2026-10-25 02:00 -> 01:00.
    schedule = cron("30 1 * * *", "Europe/Dublin")
    assert preview(schedule, utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 0, 30),
    ]
    assert preview(schedule, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
    ]


def test_utc_is_the_default_zone() -> None:
    schedule = cron("0 12 * * *")
    assert schedule.timezone == "UTC"
    assert next_fire(schedule, utc(2026, 3, 29)) == utc(2026, 3, 29, 12)


def test_after_may_be_in_any_zone_and_fires_are_utc() -> None:
    schedule = cron("0 12 * * *", "Europe/Berlin")
    tokyo = datetime(2026, 6, 1, 20, tzinfo=ZoneInfo("Asia/Tokyo"))  # 11:00 UTC
    fire = next_fire(schedule, tokyo)
    assert fire == utc(2026, 6, 2, 10)
    assert fire is not None
    assert fire.tzinfo is UTC


def test_never_matching_cron_gives_none() -> None:
    assert next_fire(cron("0 0 30 2 *", "Europe/Berlin"), utc(2026, 1, 1)) is None
    assert preview(cron("0 0 30 2 *"), utc(2026, 1, 1), 3) == []


# --- interval ------------------------------------------------------------------------------


def interval(every: timedelta, anchor: datetime | None = None) -> IntervalSchedule:
    return IntervalSchedule(kind="interval", every=every, anchor=anchor)


def test_interval_counts_elapsed_time_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    schedule = interval(timedelta(days=1), datetime(2026, 3, 28, 9, tzinfo=berlin))
    fires = preview(schedule, utc(2026, 3, 28, 8), 2)
    assert fires == [utc(2026, 3, 29, 8), utc(2026, 3, 30, 8)]
    assert [f.astimezone(berlin).hour for f in fires] == [10, 10]  # 24 h later, an hour later


def test_interval_and_once_do_not_use_wall_clock_arithmetic() -> None:
    # Python adds, subtracts and compares datetimes sharing a tzinfo on the wall clock.
    new_york = ZoneInfo("America/New_York")
    first_130 = datetime(2026, 11, 1, 1, 30, tzinfo=new_york)  # EDT, 05:30 UTC
    second_130 = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=new_york)  # EST, 06:30 UTC
    once = OnceSchedule(kind="once", at=second_130)
    assert next_fire(once, datetime(2026, 11, 1, 1, 45, tzinfo=new_york)) == utc(2026, 11, 1, 6, 30)
    hourly = interval(timedelta(hours=1), first_130)
    assert next_fire(hourly, first_130) == utc(2026, 11, 1, 6, 30)
    assert next_fire(hourly, second_130) == utc(2026, 11, 1, 7, 30)


def test_interval_without_anchor_is_aligned_to_the_unix_epoch() -> None:
    schedule = interval(timedelta(minutes=5))
    assert next_fire(schedule, utc(2026, 1, 1, 0, 2, 30)) == utc(2026, 1, 1, 0, 5)
    assert next_fire(schedule, utc(2026, 1, 1, 0, 5)) == utc(2026, 1, 1, 0, 10)
    assert next_fire(interval(timedelta(minutes=90)), utc(2026, 1, 1)) == utc(2026, 1, 1, 1, 30)
    assert next_fire(schedule, utc(1960, 1, 1)) == utc(1970, 1, 1)


def test_interval_starts_at_a_future_anchor() -> None:
    schedule = interval(timedelta(hours=1), utc(2026, 6, 1, 9, 30))
    assert preview(schedule, utc(2026, 5, 1), 2) == [
        utc(2026, 6, 1, 9, 30),
        utc(2026, 6, 1, 10, 30),
    ]


def test_interval_with_fractional_seconds_is_exact_far_from_its_anchor() -> None:
    schedule = interval(timedelta(seconds=1.5), utc(2000, 1, 1))
    fire = next_fire(schedule, utc(2030, 1, 1))
    assert fire is not None
    assert (fire - utc(2000, 1, 1)) % timedelta(seconds=1.5) == timedelta(0)
    assert utc(2030, 1, 1) < fire <= utc(2030, 1, 1) + timedelta(seconds=1.5)


# --- once ----------------------------------------------------------------------------------


def test_once_fires_once() -> None:
    at = datetime(2026, 7, 1, 9, tzinfo=timezone(timedelta(hours=2)))
    schedule = OnceSchedule(kind="once", at=at)
    assert next_fire(schedule, utc(2026, 6, 1)) == utc(2026, 7, 1, 7)
    assert next_fire(schedule, at) is None
    assert next_fire(schedule, utc(2026, 8, 1)) is None
    assert preview(schedule, utc(2026, 1, 1), 5) == [utc(2026, 7, 1, 7)]


# --- far horizons --------------------------------------------------------------------------


def test_fires_far_in_the_future() -> None:
    now = utc(2026, 5, 14, 13, 7)
    assert next_fire(
        OnceSchedule(kind="once", at=now + timedelta(days=400)), now
    ) == now + timedelta(days=400)
    assert next_fire(interval(timedelta(days=400), now), now) == now + timedelta(days=400)
    assert next_fire(interval(timedelta(days=3653), now), now) == now + timedelta(days=3653)
    leap_day = next_fire(cron("0 0 29 2 *", "Europe/Berlin"), now)
    assert leap_day == utc(2028, 2, 28, 23)
    yearly = preview(cron("0 0 1 1 *", "America/New_York"), now, 12)
    assert yearly[-1] == utc(2038, 1, 1, 5)


def test_no_fire_after_year_9999() -> None:
    assert next_fire(cron("0 0 1 1 *", "America/New_York"), utc(9999, 6, 1)) is None
    assert next_fire(cron("0 0 * * *", "Pacific/Kiritimati"), utc(9999, 12, 31, 10)) is None
    assert next_fire(interval(timedelta(days=1)), utc(9999, 12, 31, 1)) is None


# --- preview and arguments -----------------------------------------------------------------


def test_preview_counts() -> None:
    schedule = cron("*/5 * * * *")
    assert preview(schedule, utc(2026, 1, 1), 0) == []
    assert len(preview(schedule, utc(2026, 1, 1), 100)) == 100
    with pytest.raises(ValueError, match="count"):
        preview(schedule, utc(2026, 1, 1), -1)


def test_after_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(cron("* * * * *"), datetime(2026, 1, 1))


# --- validation ----------------------------------------------------------------------------


def error_of(data: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as caught:
        SCHEDULE.validate_python(data)
    errors = caught.value.errors()
    assert len(errors) == 1
    return errors[0]["loc"], errors[0]["msg"]


@pytest.mark.parametrize(
    ("timezone_name", "fragment"),
    [
        ("Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("europe/berlin", "did you mean 'Europe/Berlin'?"),
        ("", "unknown time zone ''"),
        ("localtime", "unknown time zone"),  # the host's zone: not portable
        ("right/UTC", "unknown time zone"),  # leap-second clock
        ("posixrules", "unknown time zone"),
        ("../../etc/passwd", "unknown time zone"),
        ("/etc/localtime", "unknown time zone"),
    ],
)
def test_unknown_time_zone_is_an_error_on_timezone(timezone_name: str, fragment: str) -> None:
    loc, message = error_of({"kind": "cron", "expression": "* * * * *", "timezone": timezone_name})
    assert loc == ("cron", "timezone")
    assert fragment in message
    with pytest.raises(ValidationError) as caught:
        cron("* * * * *", timezone_name)
    assert caught.value.errors()[0]["loc"] == ("timezone",)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("0 25 * * *", "hour: 25 is out of range 0-23"),
        ("0 0 W * *", "day-of-month: W needs a day number"),
        ("0 0 12 * * ? 2026", "year field"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid_expression_is_an_error_on_expression(expression: str, fragment: str) -> None:
    loc, message = error_of({"kind": "cron", "expression": expression})
    assert loc == ("cron", "expression")
    assert fragment in message


def test_other_validation_errors() -> None:
    assert error_of({"kind": "interval", "every": "PT0.5S"})[0] == ("interval", "every")
    assert error_of({"kind": "interval", "every": "-PT1H"})[0] == ("interval", "every")
    assert error_of({"kind": "interval", "every": 60, "anchor": "2026-01-01T00:00:00"})[0] == (
        "interval",
        "anchor",
    )
    assert error_of({"kind": "once", "at": "2026-01-01T00:00:00"})[0] == ("once", "at")
    assert error_of({"kind": "once", "at": "2026-01-01T00:00:00Z", "x": 1})[0] == ("once", "x")
    assert error_of({"kind": "weekly"})[0] == ()
    assert error_of({"expression": "* * * * *"})[0] == ()


def test_schedules_parse_from_json_and_are_frozen() -> None:
    schedule = SCHEDULE.validate_json('{"kind": "interval", "every": "PT1H"}')
    assert schedule == interval(timedelta(hours=1))
    assert SCHEDULE.validate_json(SCHEDULE.dump_json(schedule)) == schedule
    berlin = SCHEDULE.validate_json(
        '{"kind": "cron", "expression": "0 9 * * MON-FRI", "timezone": "Europe/Berlin"}'
    )
    assert isinstance(berlin, CronSchedule)
    assert hash(berlin) == hash(cron("0 9 * * MON-FRI", "Europe/Berlin"))
    with pytest.raises(ValidationError):
        berlin.timezone = "UTC"  # type: ignore[misc]
