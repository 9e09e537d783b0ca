"""The Quartz cron dialect, and the standard dialect's refusal of Quartz look-alikes.

Expected fire times come from the examples in Quartz's CronTrigger tutorial and
CronExpression javadoc, worked out by hand on a calendar of the months involved
(2026: 1 January is a Thursday, 1 March a Sunday, 1 May a Friday).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobwire.scheduler.domain.cron import CronError, CronExpression
from jobwire.scheduler.domain.definitions import DefinitionError, parse_definition
from jobwire.scheduler.domain.schedule import CronSchedule, next_fire, preview

D = datetime


def quartz(expression: str, after: datetime, count: int) -> list[datetime]:
    cron = CronExpression.parse(expression, "quartz")
    times: list[datetime] = []
    current: datetime | None = after
    while len(times) < count:
        assert current is not None
        current = cron.next_local(current)
        if current is None:
            break
        times.append(current)
    return times


THU = D(2026, 5, 14, 13, 7)  # a Thursday afternoon


# --- Quartz's own examples ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # CronTrigger tutorial, "Example Cron Expressions".
        ("0 0 12 * * ?", THU, [D(2026, 5, 15, 12), D(2026, 5, 16, 12)]),
        ("0 15 10 ? * *", D(2026, 5, 14, 10, 15), [D(2026, 5, 15, 10, 15), D(2026, 5, 16, 10, 15)]),
        ("0 15 10 * * ?", D(2026, 5, 14, 10, 15), [D(2026, 5, 15, 10, 15), D(2026, 5, 16, 10, 15)]),
        ("0 15 10 * * ? *", D(2026, 5, 14, 10, 15), [D(2026, 5, 15, 10, 15)]),
        ("0 15 10 * * ? 2005", D(2004, 12, 31, 12), [D(2005, 1, 1, 10, 15), D(2005, 1, 2, 10, 15)]),
        ("0 15 10 * * ? 2005", D(2005, 12, 31, 10, 15), []),
        ("0 15 10 * * ? 2005", THU, []),
        ("0 * 14 * * ?", D(2026, 5, 14, 14, 58, 30), [D(2026, 5, 14, 14, 59), D(2026, 5, 15, 14)]),
        ("0 0/5 14 * * ?", D(2026, 5, 14, 14, 52), [D(2026, 5, 14, 14, 55), D(2026, 5, 15, 14)]),
        (
            "0 0/5 14,18 * * ?",
            D(2026, 5, 14, 14, 55),
            [D(2026, 5, 14, 18), D(2026, 5, 14, 18, 5)],
        ),
        ("0 0/5 14,18 * * ?", D(2026, 5, 14, 18, 55), [D(2026, 5, 15, 14)]),
        ("0 0-5 14 * * ?", D(2026, 5, 14, 14, 4), [D(2026, 5, 14, 14, 5), D(2026, 5, 15, 14)]),
        # Wednesdays in March: 4, 11, 18, 25 in 2026; then 3 March 2027.
        (
            "0 10,44 14 ? 3 WED",
            D(2026, 1, 1),
            [D(2026, 3, 4, 14, 10), D(2026, 3, 4, 14, 44), D(2026, 3, 11, 14, 10)],
        ),
        ("0 10,44 14 ? 3 WED", D(2026, 3, 25, 14, 44), [D(2027, 3, 3, 14, 10)]),
        # Friday 15 May -> Monday 18th.
        (
            "0 15 10 ? * MON-FRI",
            D(2026, 5, 15, 10, 15),
            [D(2026, 5, 18, 10, 15), D(2026, 5, 19, 10, 15)],
        ),
        (
            "0 15 10 15 * ?",
            D(2026, 5, 15, 10, 15),
            [D(2026, 6, 15, 10, 15), D(2026, 7, 15, 10, 15)],
        ),
        (
            "0 15 10 L * ?",
            D(2026, 1, 31, 10, 15),
            [D(2026, 2, 28, 10, 15), D(2026, 3, 31, 10, 15), D(2026, 4, 30, 10, 15)],
        ),
        # L-2: two days before the last day (31 - 2, 28 - 2, 31 - 2).
        (
            "0 15 10 L-2 * ?",
            D(2026, 1, 1),
            [D(2026, 1, 29, 10, 15), D(2026, 2, 26, 10, 15), D(2026, 3, 29, 10, 15)],
        ),
        # 6L: the last *Friday* (6 = FRI): 30 January, 27 February, 27 March 2026.
        (
            "0 15 10 ? * 6L",
            D(2026, 1, 1),
            [D(2026, 1, 30, 10, 15), D(2026, 2, 27, 10, 15), D(2026, 3, 27, 10, 15)],
        ),
        # Last Friday of January 2002 is the 25th, of December 2005 the 30th; then no more.
        ("0 15 10 ? * 6L 2002-2005", D(2001, 6, 1), [D(2002, 1, 25, 10, 15)]),
        ("0 15 10 ? * 6L 2002-2005", D(2005, 12, 1), [D(2005, 12, 30, 10, 15)]),
        ("0 15 10 ? * 6L 2002-2005", D(2005, 12, 30, 10, 15), []),
        # 6#3: the third Friday: 16 January, 20 February, 20 March 2026.
        (
            "0 15 10 ? * 6#3",
            D(2026, 1, 1),
            [D(2026, 1, 16, 10, 15), D(2026, 2, 20, 10, 15), D(2026, 3, 20, 10, 15)],
        ),
        # 1/5: every five days from the 1st: ..., 26, 31, then 1, 6 of the next month.
        (
            "0 0 12 1/5 * ?",
            D(2026, 1, 26, 12),
            [D(2026, 1, 31, 12), D(2026, 2, 1, 12), D(2026, 2, 6, 12)],
        ),
        ("0 11 11 11 11 ?", THU, [D(2026, 11, 11, 11, 11), D(2027, 11, 11, 11, 11)]),
        # CronTrigger tutorial, "Example 1-4" and the long example under "Format".
        ("0 0/5 * * * ?", THU, [D(2026, 5, 14, 13, 10), D(2026, 5, 14, 13, 15)]),
        ("10 0/5 * * * ?", THU, [D(2026, 5, 14, 13, 10, 10), D(2026, 5, 14, 13, 15, 10)]),
        (
            "0 30 10-13 ? * WED,FRI",
            THU,
            [
                D(2026, 5, 15, 10, 30),
                D(2026, 5, 15, 11, 30),
                D(2026, 5, 15, 12, 30),
                D(2026, 5, 15, 13, 30),
                D(2026, 5, 20, 10, 30),
            ],
        ),
        (
            "0 0/30 8-9 5,20 * ?",
            THU,
            [
                D(2026, 5, 20, 8),
                D(2026, 5, 20, 8, 30),
                D(2026, 5, 20, 9),
                D(2026, 5, 20, 9, 30),
                D(2026, 6, 5, 8),
            ],
        ),
        # Tuesday 1 January 2002: minute 3 is the first of 3-39, 14, 18, 52.
        (
            "0/5 14,18,3-39,52 * ? JAN,MAR,SEP MON-FRI 2002-2010",
            D(2002, 1, 1),
            [D(2002, 1, 1, 0, 3), D(2002, 1, 1, 0, 3, 5)],
        ),
        # Thursday 30 September 2010 is the last matching day.
        (
            "0/5 14,18,3-39,52 * ? JAN,MAR,SEP MON-FRI 2002-2010",
            D(2010, 9, 30, 23, 52, 50),
            [D(2010, 9, 30, 23, 52, 55)],
        ),
        ("0/5 14,18,3-39,52 * ? JAN,MAR,SEP MON-FRI 2002-2010", D(2010, 9, 30, 23, 52, 55), []),
        ("0 0 12 ? * WED", THU, [D(2026, 5, 20, 12)]),
        (
            "0,30 * * ? * SAT,SUN",
            D(2026, 5, 15, 23, 59, 59),
            [D(2026, 5, 16), D(2026, 5, 16, 0, 0, 30)],
        ),
        # FLEXCUBE's job screen example.
        (
            "0 0/15 11-23 * * ?",
            D(2026, 5, 14, 23, 45),
            [D(2026, 5, 15, 11), D(2026, 5, 15, 11, 15)],
        ),
        # CronExpression javadoc on W, LW and #.
        # 15W: Sunday 15 February -> Monday 16th; Saturday 15 August -> Friday 14th.
        ("0 0 12 15W * ?", D(2026, 2, 1), [D(2026, 2, 16, 12), D(2026, 3, 16, 12)]),
        ("0 0 12 15W * ?", D(2026, 8, 1), [D(2026, 8, 14, 12)]),
        # 1W on Saturday 1 August: Monday the 3rd, not Friday 31 July.
        ("0 0 12 1W * ?", D(2026, 7, 31), [D(2026, 8, 3, 12)]),
        # LW: Saturday 28 February -> Friday 27th; Sunday 31 May -> Friday 29th.
        ("0 0 15 LW 2,5 ?", D(2026, 1, 1), [D(2026, 2, 27, 15), D(2026, 5, 29, 15)]),
        # 2#1 the first Monday: 5 January, 2 February.
        ("0 0 12 ? * 2#1", D(2026, 1, 1), [D(2026, 1, 5, 12), D(2026, 2, 2, 12)]),
        # 4#5 the fifth Wednesday: none in January-March 2026; 29 April.
        ("0 0 12 ? * 4#5", D(2026, 1, 1), [D(2026, 4, 29, 12)]),
        # The 2#5, the fifth Monday: 30 March 2026 (and not a Tuesday).
        ("0 0 12 ? * 2#5", D(2026, 1, 1), [D(2026, 3, 30, 12)]),
        # L alone in day-of-week is 7, every Saturday.
        ("0 0 12 ? * L", D(2026, 1, 1), [D(2026, 1, 3, 12), D(2026, 1, 10, 12)]),
    ],
)
def test_quartz_documentation_examples(
    expression: str, after: datetime, expected: list[datetime]
) -> None:
    assert quartz(expression, after, max(len(expected), 1)) == expected


# --- Quartz's numbering and rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "first"),
    [
        # Thursday 1 January 2026: Sunday the 4th, Monday the 5th, ..., Saturday the 3rd.
        ("0 0 12 ? * 1", D(2026, 1, 4, 12)),
        ("0 0 12 ? * SUN", D(2026, 1, 4, 12)),
        ("0 0 12 ? * 2", D(2026, 1, 5, 12)),
        ("0 0 12 ? * 5", D(2026, 1, 1, 12)),
        ("0 0 12 ? * 6", D(2026, 1, 2, 12)),
        ("0 0 12 ? * 7", D(2026, 1, 3, 12)),
        ("0 0 12 ? * sat", D(2026, 1, 3, 12)),
        # Last Saturday of January 2026 is the 31st; last Sunday the 25th.
        ("0 0 12 ? * 7L", D(2026, 1, 31, 12)),
        ("0 0 12 ? * 1L", D(2026, 1, 25, 12)),
        ("0 0 12 ? * FRIL", D(2026, 1, 30, 12)),
        ("0 0 12 ? * fri#3", D(2026, 1, 16, 12)),
    ],
)
def test_day_of_week_one_is_sunday(expression: str, first: datetime) -> None:
    assert quartz(expression, D(2026, 1, 1), 1) == [first]


def test_the_same_text_means_other_days_in_the_two_dialects() -> None:
    # Five fields, so the standard dialect takes the numbers: 6L is the last Saturday
    # there, the last Friday in Quartz; 2#5 the fifth Tuesday, the fifth Monday.
    standard = CronExpression.parse("0 12 * * 6L")
    assert standard.next_local(D(2026, 1, 1)) == D(2026, 1, 31, 12)
    assert quartz("0 0 12 ? * 6L", D(2026, 1, 1), 1) == [D(2026, 1, 30, 12)]
    assert CronExpression.parse("0 12 * * 2#5").next_local(D(2026, 1, 1)) == D(2026, 3, 31, 12)
    assert quartz("0 0 12 ? * 2#5", D(2026, 1, 1), 1) == [D(2026, 3, 30, 12)]
    assert CronExpression.parse("0 0 12 ? * MON", "quartz") != CronExpression.parse(
        "0 0 12 ? * MON"
    )


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # Ranges wrap in Quartz: 22-2 is 22, 23, 0, 1, 2.
        (
            "0 0 22-2 * * ?",
            D(2026, 5, 14, 21),
            [
                D(2026, 5, 14, 22),
                D(2026, 5, 14, 23),
                D(2026, 5, 15, 0),
                D(2026, 5, 15, 1),
                D(2026, 5, 15, 2),
                D(2026, 5, 15, 22),
            ],
        ),
        # FRI-MON after Thursday 14 May: Friday to Monday, then Friday again.
        (
            "0 0 12 ? * FRI-MON",
            THU,
            [
                D(2026, 5, 15, 12),
                D(2026, 5, 16, 12),
                D(2026, 5, 17, 12),
                D(2026, 5, 18, 12),
                D(2026, 5, 22, 12),
            ],
        ),
        ("0 0 12 ? * 6-2", THU, [D(2026, 5, 15, 12), D(2026, 5, 16, 12), D(2026, 5, 17, 12)]),
        ("0 0 12 1 NOV-FEB ?", D(2026, 2, 1, 12), [D(2026, 11, 1, 12), D(2026, 12, 1, 12)]),
        (
            "0 0 12 30-2 * ?",
            D(2026, 2, 27),
            [D(2026, 3, 1, 12), D(2026, 3, 2, 12), D(2026, 3, 30, 12), D(2026, 3, 31, 12)],
        ),
        (
            "0 50-10/10 * * * ?",
            D(2026, 5, 14, 13, 0),
            [D(2026, 5, 14, 13, 10), D(2026, 5, 14, 13, 50)],
        ),
        # Steps on day-of-week count from Sunday (1): 1/2 is SUN, TUE, THU, SAT.
        ("0 0 12 ? * 1/2", D(2026, 5, 16, 12), [D(2026, 5, 17, 12), D(2026, 5, 19, 12)]),
        # L-nW: the weekday nearest to n days before the last day. Saturday 28 March ->
        # Friday 27th; Monday 27 April stays; Thursday 28 May stays.
        (
            "0 0 12 L-3W * ?",
            D(2026, 3, 1),
            [D(2026, 3, 27, 12), D(2026, 4, 27, 12), D(2026, 5, 28, 12)],
        ),
        # Sunday 24 May 2026 (L-7) -> Monday 25th.
        ("0 0 12 L-7W 5 ?", D(2026, 1, 1), [D(2026, 5, 25, 12)]),
        ("0 0 12 l * ?", D(2026, 2, 1), [D(2026, 2, 28, 12)]),
        # Years: a list, a step from 2030 to the last year 2099.
        ("0 0 12 1 1 ? 2027,2029", THU, [D(2027, 1, 1, 12), D(2029, 1, 1, 12)]),
        ("0 0 12 1 1 ? 2030/5", D(2090, 6, 1), [D(2095, 1, 1, 12)]),
        ("0 0 0 31 12 ? 2099", D(2099, 12, 30), [D(2099, 12, 31)]),
        ("0 0 0 31 12 ? 2099", D(2099, 12, 31), []),
        # Without a year field nothing ends in 2099.
        ("0 0 12 * * ?", D(2150, 1, 1), [D(2150, 1, 1, 12)]),
        ("0 0 12 * * ? *", D(2150, 1, 1), [D(2150, 1, 1, 12)]),
    ],
)
def test_quartz_rules(expression: str, after: datetime, expected: list[datetime]) -> None:
    assert quartz(expression, after, max(len(expected), 1)) == expected


def test_a_year_field_searches_only_its_years() -> None:
    # No 29 February in 2097-2099, nor in 2100 (no leap year), which is out of range anyway.
    assert quartz("0 0 0 29 2 ? 2097-2099", D(1970, 1, 1), 1) == []
    assert quartz("0 0 0 29 2 ? 2096-2099", D(1970, 1, 1), 1) == [D(2096, 2, 29)]
    # From far before 1970, and far after the last year.
    assert quartz("0 0 0 1 1 ? 2099", D(1, 1, 1), 1) == [D(2099, 1, 1)]
    assert quartz("0 0 0 1 1 ? 1970", D(9000, 1, 1), 1) == []


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("0 0 12 * * *", "needs '?' in exactly one of day-of-month and day-of-week"),
        ("0 0 12 ? * ?", "needs '?' in exactly one"),
        ("0 0 12 15 * MON", "needs '?' in exactly one"),
        ("0 12 * * ?", "a Quartz expression has 6 or 7 fields"),
        ("0 0 0 12 * * ? 2026", "got 8"),
        ("@daily", "Quartz has no nicknames"),
        ("0 0 12 ? * 0", "day-of-week: 0 is out of range 1-7"),
        ("0 0 12 ? * 8", "day-of-week: 8 is out of range 1-7"),
        ("0 0 12 ? * 0L", "day-of-week: 0 is out of range 1-7"),
        ("0 0 12 ? * 6#6", "day-of-week: '6#6': the number after '#' must be 1-5"),
        ("0 0 12 ? * #2", "day-of-week: '#2': '#' needs a weekday"),
        ("0 0 12 ? * 3#1,6#3", "day-of-week: '3#1,6#3': Quartz takes nL and n#k as the whole"),
        ("0 0 12 ? * 6L,MON", "day-of-week: '6L,MON': Quartz takes nL and n#k"),
        ("0 0 12 ? * L,MON", "day-of-week: 'L,MON': Quartz takes nL and n#k"),
        ("0 0 12 ? * 15W", "day-of-week: '15W': W belongs in day-of-month"),
        ("0 0 12 L,15 * ?", "day-of-month: 'L,15': expected L, L-n, LW or L-nW, as the whole"),
        ("0 0 12 15L * ?", "day-of-month: '15L': expected L, L-n, LW or L-nW"),
        ("0 0 12 1-5W * ?", "day-of-month: '1-5W': W takes a single day"),
        ("0 0 12 1,15W * ?", "day-of-month: '1,15W': W takes a single day"),
        ("0 0 12 32W * ?", "day-of-month: 32 is out of range 1-31"),
        ("0 0 12 L-31 * ?", "day-of-month: 'L-31': offset 31 is out of range 0-30"),
        ("0 0 12 6#3 * ?", "day-of-month: '6#3': '#' belongs in day-of-week"),
        ("0 0 12 * * ? 1969", "year: 1969 is out of range 1970-2099"),
        ("0 0 12 * * ? 2100", "year: 2100 is out of range 1970-2099"),
        ("0 0 12 * * ? 2010-2005", "year: range '2010-2005' runs backwards"),
        ("0 0/60 * * * ?", "minute: step in '0/60' must be at most 59"),
        ("0 0 */24 * * ?", "hour: step in '*/24' must be at most 23"),
        ("0 0 12 ? * */8", "day-of-week: step in '*/8' must be at most 7"),
        ("0 0 12 1/32 * ?", "day-of-month: step in '1/32' must be at most 31"),
        ("0 0 12 ? 1/13 *", "month: step in '1/13' must be at most 12"),
        ("0 0 L * * ?", "hour: 'L': L, W and # are only allowed in the day fields"),
        ("? 0 12 * * ?", "second: '?' is only allowed in day-of-month and day-of-week"),
    ],
)
def test_quartz_errors_name_the_field(expression: str, fragment: str) -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse(expression, "quartz")
    assert fragment in str(caught.value)
    field = fragment.split(":")[0]
    expected_field = field if field in _FIELDS else None
    assert caught.value.field_name == expected_field


_FIELDS = {"second", "minute", "hour", "day-of-month", "month", "day-of-week", "year"}


def test_an_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown cron dialect 'unix'"):
        CronExpression.parse("* * * * *", "unix")  # type: ignore[arg-type]


# --- the standard dialect refuses what reads differently in Quartz ---------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 12 ? * 6L",
        "0 0 12 ? * 2#5",
        "0 15 10 ? * 2-6",
        "0 0 12 ? * 1",
        "0 0 12 ? * MON,5",
        "0 0 12 ? * 1/2",
        "0 0 12 ? * L",
        "0 0 12 ? * 6l",
    ],
)
def test_standard_refuses_a_quartz_lookalike_naming_the_dialect(expression: str) -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse(expression)
    assert caught.value.field_name == "day-of-week"
    message = str(caught.value)
    assert "looks like a Quartz expression" in message
    assert "1 = Sunday" in message
    assert "dialect: quartz" in message
    # The same text is a valid Quartz expression (bar L alone with '?' rules met).
    CronExpression.parse(expression, "quartz")


def test_standard_refuses_a_year_field_naming_the_dialect() -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse("0 15 10 ? * 6L 2002-2005")
    assert "a year field (7th field) is not supported" in str(caught.value)
    assert "dialect: quartz" in str(caught.value)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 12 ? * MON-FRI",  # names mean the same in both dialects
        "0 0 12 ? * FRIL",
        "0 0 12 ? * FRI#3",
        "0 0 12 ? * *",
        "0 0 12 ? * */2",  # SUN, TUE, THU, SAT in both numberings
        "0 0 12 15 * ?",
        "0 0 12 L * ?",
        "0 0 12 * * 6L",  # no '?': a standard six-field expression
        "0 12 ? * 6L",  # five fields: not Quartz
    ],
)
def test_standard_accepts_what_means_the_same(expression: str) -> None:
    CronExpression.parse(expression)


def test_day_names_mean_the_same_in_both_dialects() -> None:
    for standard, in_quartz in [
        ("0 0 12 ? * MON-FRI", "0 0 12 ? * MON-FRI"),
        ("0 0 12 ? * FRIL", "0 0 12 ? * 6L"),
        ("0 0 12 ? * FRI#3", "0 0 12 ? * 6#3"),
        ("0 0 12 ? * */2", "0 0 12 ? * */2"),
    ]:
        after = D(2026, 1, 1)
        assert quartz(in_quartz, after, 12) == [t for t in _standard_times(standard, after, 12)], (
            standard
        )


def _standard_times(expression: str, after: datetime, count: int) -> list[datetime]:
    cron = CronExpression.parse(expression)
    times = []
    current: datetime | None = after
    for _ in range(count):
        assert current is not None
        current = cron.next_local(current)
        assert current is not None
        times.append(current)
    return times


# --- a Quartz weekday n is standard weekday n - 1 ---------------------------------------------


@st.composite
def _quartz_and_standard_dow(draw: st.DrawFn) -> tuple[str, str]:
    """A Quartz day-of-week field and the standard field for the same days."""
    kind = draw(st.sampled_from(["list", "range", "last", "nth"]))
    if kind == "list":
        days = draw(st.sets(st.integers(1, 7), min_size=1, max_size=4))
        return ",".join(map(str, sorted(days))), ",".join(str(d - 1) for d in sorted(days))
    if kind == "range":
        start = draw(st.integers(1, 7))
        end = draw(st.integers(start, 7))
        return f"{start}-{end}", f"{start - 1}-{end - 1}"
    day = draw(st.integers(1, 7))
    if kind == "last":
        return f"{day}L", f"{day - 1}L"
    k = draw(st.integers(1, 5))
    return f"{day}#{k}", f"{day - 1}#{k}"


@settings(deadline=None, max_examples=200)
@given(
    _quartz_and_standard_dow(),
    st.sampled_from(["0 12", "30 8-9", "*/20 23"]),
    st.sampled_from(["*", "2,3", "11"]),
    st.datetimes(min_value=D(1990, 1, 1), max_value=D(2090, 1, 1)),
)
def test_quartz_weekday_numbers_are_standard_ones_plus_one(
    dow: tuple[str, str], time: str, month: str, after: datetime
) -> None:
    in_quartz, standard = dow
    # Five standard fields with '*' for day-of-month: the standard dialect's own
    # numbering, checked against a brute-force scan in test_cron.py.
    expected = CronExpression.parse(f"{time} * {month} {standard}").next_local(after)
    assert (
        CronExpression.parse(f"0 {time} ? {month} {in_quartz}", "quartz").next_local(after)
        == expected
    )


# --- the schedule model ---------------------------------------------------------------------


def cron(expression: str, **extra: Any) -> CronSchedule:
    return CronSchedule(kind="cron", expression=expression, **extra)


def test_the_dialect_defaults_to_standard() -> None:
    assert cron("0 9 * * MON-FRI").dialect == "standard"
    assert cron("0 0 12 ? * 6L", dialect="quartz").dialect == "quartz"


def test_next_fire_reads_the_schedule_in_its_dialect() -> None:
    last_friday = cron("0 15 10 ? * 6L", dialect="quartz", timezone="Europe/Berlin")
    # Friday 30 January 2026, 10:15 CET = 09:15 UTC.
    assert next_fire(last_friday, D(2026, 1, 1, tzinfo=UTC)) == D(2026, 1, 30, 9, 15, tzinfo=UTC)
    ended = cron("0 15 10 ? * 6L 2002-2005", dialect="quartz")
    assert next_fire(ended, D(2026, 1, 1, tzinfo=UTC)) is None
    assert next_fire(ended, D(1970, 1, 1, tzinfo=UTC)) == D(2002, 1, 25, 10, 15, tzinfo=UTC)


def test_quartz_schedules_keep_the_dst_rules() -> None:
    # Sunday 29 March 2026 02:30 does not exist in Berlin: it fires at 03:00 CEST, the
    # end of the gap, as in the standard dialect.
    sundays = cron("0 30 2 ? * 1", dialect="quartz", timezone="Europe/Berlin")
    standard = cron("30 2 * * SUN", timezone="Europe/Berlin")
    after = D(2026, 3, 20, tzinfo=UTC)
    assert preview(sundays, after, 3) == preview(standard, after, 3)
    assert preview(sundays, after, 2) == [
        D(2026, 3, 22, 1, 30, tzinfo=UTC),
        D(2026, 3, 29, 1, tzinfo=UTC),
    ]


def test_the_model_refuses_on_expression_and_on_dialect() -> None:
    with pytest.raises(ValidationError) as caught:
        cron("0 0 12 ? * 6L")
    [error] = caught.value.errors()
    assert error["loc"] == ("expression",)
    assert "dialect: quartz" in error["msg"]
    with pytest.raises(ValidationError) as caught:
        cron("0 0 12 * * *", dialect="quartz")
    assert caught.value.errors()[0]["loc"] == ("expression",)
    with pytest.raises(ValidationError) as caught:
        cron("0 0 12 ? * 6L", dialect="unix")
    # Only the dialect is at fault: the expression is not read in a dialect that is not one.
    assert [e["loc"] for e in caught.value.errors()] == [("dialect",)]


def _definition(schedule: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "quartz",
        "type": "start-workflow",
        "params": {"workflow": "hello"},
        "schedule": {"kind": "cron", **schedule},
    }


def test_a_definition_names_the_expression_field() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(_definition({"expression": "0 0 12 ? * 2#5"}))
    [(field, message)] = caught.value.problems
    assert field == "schedule.cron.expression"
    assert "looks like a Quartz expression" in message
    assert "dialect: quartz" in message
    definition = parse_definition(
        _definition({"expression": "0 0 12 ? * 2#5", "dialect": "quartz"})
    )
    assert definition.first_fire(D(2026, 1, 1, tzinfo=UTC)) == D(2026, 3, 30, 12, tzinfo=UTC)


def test_a_quartz_expression_whose_years_have_no_match_is_refused() -> None:
    # The never-matching check (next fire from 1970) works with the year field.
    with pytest.raises(DefinitionError) as caught:
        parse_definition(_definition({"expression": "0 0 0 29 2 ? 2097-2099", "dialect": "quartz"}))
    assert caught.value.problems == [
        ("schedule.cron.expression", "the cron expression never matches a date")
    ]
