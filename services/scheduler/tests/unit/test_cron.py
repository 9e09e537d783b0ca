"""Cron expressions: parsing, error messages and next matching wall-clock times."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobwire.scheduler.domain.cron import CronError, CronExpression

D = datetime


def next_times(expression: str, after: datetime, count: int) -> list[datetime]:
    cron = CronExpression.parse(expression)
    times: list[datetime] = []
    current: datetime | None = after
    while len(times) < count:
        assert current is not None
        current = cron.next_local(current)
        if current is None:
            break
        times.append(current)
    return times


def days(expression: str, year: int, month: int) -> list[int]:
    """The days of a month on which ``expression`` (at midnight) matches."""
    start = datetime(year, month, 1) - timedelta(seconds=1)
    end = datetime(year + month // 12, month % 12 + 1, 1)
    return [t.day for t in next_times(expression, start, 40) if t < end]


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "minutes"),
    [
        ("* * * * *", tuple(range(60))),
        ("7 * * * *", (7,)),
        ("07 * * * *", (7,)),
        ("1,2,40-42 * * * *", (1, 2, 40, 41, 42)),
        ("*/15 * * * *", (0, 15, 30, 45)),
        ("10-30/10 * * * *", (10, 20, 30)),
        ("5/20 * * * *", (5, 25, 45)),
        ("*/90 * * * *", (0,)),
        ("59,0,30 * * * *", (0, 30, 59)),
    ],
)
def test_parses_numbers_ranges_steps_and_lists(expression: str, minutes: tuple[int, ...]) -> None:
    assert CronExpression.parse(expression).minutes == minutes


def test_five_fields_fire_on_second_zero_and_six_fields_start_with_seconds() -> None:
    five = CronExpression.parse("1 2 3 4 *")
    six = CronExpression.parse("*/20 1 2 3 4 *")
    assert (five.seconds, five.minutes, five.hours, five.months) == ((0,), (1,), (2,), (4,))
    assert (six.seconds, six.minutes, six.hours, six.months) == ((0, 20, 40), (1,), (2,), (4,))


def test_month_and_day_names_are_case_insensitive() -> None:
    assert CronExpression.parse("0 0 * jan,Mar-MAY,dec *").months == (1, 3, 4, 5, 12)
    assert days("0 0 * * mon-Wed", 2026, 2) == days("0 0 * * 1-3", 2026, 2)
    assert days("0 0 * * SUN", 2026, 2) == [1, 8, 15, 22]


def test_day_of_week_zero_and_seven_are_sunday() -> None:
    sundays = [1, 8, 15, 22]
    assert days("0 0 * * 0", 2026, 2) == sundays
    assert days("0 0 * * 7", 2026, 2) == sundays
    assert days("0 0 * * 1-7", 2026, 2) == list(range(1, 29))
    assert days("0 0 * * MON-SUN", 2026, 2) == list(range(1, 29))
    assert days("0 0 * * FRI-SUN", 2026, 2) == [1, 6, 7, 8, 13, 14, 15, 20, 21, 22, 27, 28]
    # Not Quartz: 1 is Monday, not Sunday.
    assert days("0 0 ? * 1", 2026, 2) == [2, 9, 16, 23]


def test_question_mark_means_any_in_day_fields() -> None:
    assert days("0 0 ? * *", 2026, 2) == list(range(1, 29))
    assert days("0 0 * * ?", 2026, 2) == list(range(1, 29))
    assert days("0 0 12 15 * ?", 2026, 2) == [15]


@pytest.mark.parametrize(
    ("nickname", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@MIDNIGHT", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_nicknames(nickname: str, equivalent: str) -> None:
    after = D(2026, 5, 14, 13, 7)
    assert next_times(nickname, after, 3) == next_times(equivalent, after, 3)


def test_expression_is_frozen_hashable_and_keeps_its_text() -> None:
    text = "0 0 12 ? * MON-FRI"
    cron = CronExpression.parse(text)
    assert cron.text == text
    assert str(cron) == text
    assert cron == CronExpression.parse(text)
    assert hash(cron) == hash(CronExpression.parse(text))
    cron.next_local(D(2026, 1, 1))  # fills the per-month cache, which is no part of the value
    assert cron == CronExpression.parse(text)
    assert len({cron, CronExpression.parse(text), CronExpression.parse("0 0 * * *")}) == 2
    with pytest.raises(AttributeError):
        cron.text = "* * * * *"  # type: ignore[misc]


def test_whitespace_between_fields_is_free() -> None:
    assert CronExpression.parse("  0\t12  * * *\n").hours == (12,)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("61 * * * * *", "second: 61 is out of range 0-59"),
        ("* 25 * * *", "hour: 25 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month: 32 is out of range 1-31"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * 0 *", "month: 0 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("x * * * *", "minute: 'x' is not a number"),
        ("* * * FOO *", "month: 'FOO' is not a number (or a name JAN-DEC)"),
        ("* * * * FUN", "day-of-week: 'FUN' is not a number (or a name SUN-SAT)"),
        ("* * * JAN-FOO *", "month: 'FOO' is not a number"),
        ("* -1 * * *", "hour: empty value"),
        ("1,,2 * * * *", "minute: empty list item"),
        ("1, * * * *", "minute: empty list item"),
        ("*/0 * * * *", "minute: step in '*/0' must be at least 1"),
        ("*/x * * * *", "minute: step in '*/x' must be a positive number"),
        ("* 1-2/ * * *", "hour: step in '1-2/' must be a positive number"),
        ("30-10 * * * *", "minute: range '30-10' runs backwards (30 > 10)"),
        ("* * * DEC-JAN *", "month: range 'DEC-JAN' runs backwards (12 > 1)"),
        ("* * * * 7/2", "day-of-week: '7/2' matches no value"),
        ("? * * * *", "minute: '?' is only allowed in day-of-month and day-of-week"),
        ("* * * ? *", "month: '?' is only allowed"),
        ("* * 1,? * *", "day-of-month: '?' must be the whole field"),
        ("* * * * MON,?", "day-of-week: '?' must be the whole field"),
        ("L * * * *", "minute: 'L': L, W and # are only allowed in the day fields"),
        ("* 5W * * *", "hour: '5W': L, W and # are only allowed"),
        ("* * * 3L *", "month: '3L': L, W and # are only allowed"),
        ("* 1#2 * * *", "hour: '1#2': L, W and # are only allowed"),
        ("* * W * *", "day-of-month: W needs a day number"),
        ("* * 1-5W * *", "day-of-month: '1-5W': W needs a single day number"),
        ("* * 32W * *", "day-of-month: 32 is out of range 1-31"),
        ("* * L-31 * *", "day-of-month: 'L-31': offset 31 is out of range 0-30"),
        ("* * L3 * *", "day-of-month: 'L3': expected L, L-n or LW"),
        ("* * 1#2 * *", "day-of-month: '1#2': '#' belongs in day-of-week"),
        ("* * * * L", "day-of-week: L needs a weekday before it"),
        ("* * * * 8L", "day-of-week: 8 is out of range 0-7"),
        ("* * * * #2", "day-of-week: '#2': '#' needs a weekday before it"),
        ("* * * * FRI#6", "day-of-week: 'FRI#6': the number after '#' must be 1-5"),
        ("* * * * FRI#0", "day-of-week: 'FRI#0': the number after '#' must be 1-5"),
        ("* * * * FRI#x", "day-of-week: 'FRI#x': the number after '#' must be 1-5"),
        ("* * * * 15W", "day-of-week: '15W': W belongs in day-of-month"),
    ],
)
def test_field_errors_name_the_field(expression: str, fragment: str) -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse(expression)
    assert fragment in str(caught.value)
    assert caught.value.field_name == fragment.split(":")[0]
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("", "expected 5 fields"),
        ("* * * *", "got 4"),
        ("0 0 12 * * ? 2026", "a year field (7th field) is not supported"),
        ("* * * * * * * *", "got 8"),
        ("@reboot", "unknown cron nickname '@reboot'"),
    ],
)
def test_shape_errors(expression: str, fragment: str) -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse(expression)
    assert fragment in str(caught.value)
    assert caught.value.field_name is None


# --- next times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # Weekdays at noon: Friday noon -> Monday noon.
        (
            "0 0 12 ? * MON-FRI",
            D(2026, 5, 15, 12),
            [D(2026, 5, 18, 12), D(2026, 5, 19, 12)],
        ),
        # Last day of the month, across February and a leap year.
        (
            "0 15 10 L * ?",
            D(2026, 1, 31, 10, 15),
            [D(2026, 2, 28, 10, 15), D(2026, 3, 31, 10, 15), D(2026, 4, 30, 10, 15)],
        ),
        ("0 15 10 L * ?", D(2028, 2, 1), [D(2028, 2, 29, 10, 15)]),
        # Nearest weekday to the 15th: Sun 2026-02-15 -> Mon 16th, Sat 2026-08-15 -> Fri 14th,
        # Fri 2026-05-15 stays.
        (
            "0 0 12 15W * ?",
            D(2026, 2, 1),
            [D(2026, 2, 16, 12), D(2026, 3, 16, 12), D(2026, 4, 15, 12), D(2026, 5, 15, 12)],
        ),
        ("0 0 12 15W * ?", D(2026, 8, 1), [D(2026, 8, 14, 12)]),
        # 1W never leaves the month: Sat 2026-08-01 -> Mon 3rd; Sun 2026-03-01 -> Mon 2nd.
        ("0 0 12 1W * ?", D(2026, 7, 31), [D(2026, 8, 3, 12)]),
        ("0 0 12 1W * ?", D(2026, 2, 28), [D(2026, 3, 2, 12)]),
        # Last day on a Sunday: 2026-05-31 -> Fri 29th; 30W on Sat 2026-05-30 -> Fri 29th too.
        ("0 0 12 31W * ?", D(2026, 5, 1), [D(2026, 5, 29, 12)]),
        ("0 0 12 30W * ?", D(2026, 5, 1), [D(2026, 5, 29, 12)]),
        # 31W does not fire in months without a 31st (like plain 31).
        ("0 0 12 31W * ?", D(2026, 4, 1), [D(2026, 5, 29, 12), D(2026, 7, 31, 12)]),
        # Third Saturday (6 = Saturday in cron numbering, not Quartz's Friday). Five
        # fields: with six and '?' a weekday number is refused as Quartz-like.
        ("0 12 * * 6#3", D(2026, 1, 1), [D(2026, 1, 17, 12), D(2026, 2, 21, 12)]),
        ("0 0 12 ? * SAT#3", D(2026, 1, 1), [D(2026, 1, 17, 12), D(2026, 2, 21, 12)]),
        # Fifth Friday only exists in some months.
        ("0 0 12 ? * FRI#5", D(2026, 1, 1), [D(2026, 1, 30, 12), D(2026, 5, 29, 12)]),
        # Last Friday of the month.
        (
            "0 12 * * 5L",
            D(2026, 1, 1),
            [D(2026, 1, 30, 12), D(2026, 2, 27, 12), D(2026, 3, 27, 12)],
        ),
        ("0 0 12 ? * friL", D(2026, 1, 1), [D(2026, 1, 30, 12)]),
        ("0 12 * * 7L", D(2026, 1, 1), [D(2026, 1, 25, 12)]),
        # Last weekday of the month: Sat 2026-02-28 -> Fri 27th; Sun 2026-05-31 -> Fri 29th.
        (
            "0 0 18 LW * ?",
            D(2026, 1, 31, 18),
            [D(2026, 2, 27, 18), D(2026, 3, 31, 18), D(2026, 4, 30, 18), D(2026, 5, 29, 18)],
        ),
        # Two days before the last day.
        ("0 0 L-2 * *", D(2026, 1, 31), [D(2026, 2, 26), D(2026, 3, 29)]),
        ("0 0 L-30 * *", D(2026, 1, 1), [D(2026, 3, 1), D(2026, 5, 1)]),
        # Every 15 minutes, after a time with seconds and microseconds.
        (
            "*/15 * * * *",
            D(2026, 1, 1, 23, 37, 3, 500),
            [D(2026, 1, 1, 23, 45), D(2026, 1, 2), D(2026, 1, 2, 0, 15)],
        ),
        # Seconds field.
        (
            "*/20 * * * * *",
            D(2026, 1, 1, 0, 0, 50),
            [D(2026, 1, 1, 0, 1), D(2026, 1, 1, 0, 1, 20)],
        ),
        # Leap day: the next 29 February, skipping 2100 (not a leap year).
        ("0 0 29 2 *", D(2026, 5, 14), [D(2028, 2, 29), D(2032, 2, 29)]),
        ("0 0 29 2 *", D(2096, 3, 1), [D(2104, 2, 29)]),
        # Year rollover.
        ("0 0 1 1 *", D(2026, 12, 31, 23, 59, 59), [D(2027, 1, 1)]),
        # 31st skips short months.
        ("0 0 31 * *", D(2026, 1, 31), [D(2026, 3, 31), D(2026, 5, 31)]),
    ],
)
def test_known_next_times(expression: str, after: datetime, expected: list[datetime]) -> None:
    assert next_times(expression, after, len(expected)) == expected


def test_next_is_strictly_after() -> None:
    cron = CronExpression.parse("0 12 * * *")
    assert cron.next_local(D(2026, 1, 1, 12)) == D(2026, 1, 2, 12)
    assert cron.next_local(D(2026, 1, 1, 11, 59, 59, 999999)) == D(2026, 1, 1, 12)
    assert cron.next_local(D(2026, 1, 1, 12, 0, 0, 1)) == D(2026, 1, 2, 12)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: every 13th and every Monday.
    assert days("0 0 13 * MON", 2026, 2) == [2, 9, 13, 16, 23]
    # Only one restricted: that one decides.
    assert days("0 0 13 * *", 2026, 2) == [13]
    assert days("0 0 13 * ?", 2026, 2) == [13]
    assert days("0 0 * * MON", 2026, 2) == [2, 9, 16, 23]
    assert days("0 0 ? * MON", 2026, 2) == [2, 9, 16, 23]
    # A step counts as a restriction.
    assert days("0 0 */10 * MON", 2026, 2) == [1, 2, 9, 11, 16, 21, 23]
    # Extensions take part in the same OR.
    assert days("0 0 L * FRI#1", 2026, 2) == [6, 28]
    assert days("0 0 15W * 5L", 2026, 2) == [16, 27]


def test_list_items_of_different_kinds_combine() -> None:
    assert days("0 0 1,L * *", 2026, 2) == [1, 28]
    assert days("0 0 1W,LW * *", 2026, 2) == [2, 27]
    assert days("0 0 ? * MON#1,FRIL,WED", 2026, 2) == [2, 4, 11, 18, 25, 27]


@pytest.mark.parametrize(
    "expression",
    ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30,31 2 ?", "0 0 0 31 FEB ?"],
)
def test_an_expression_that_never_matches_gives_none(expression: str) -> None:
    assert CronExpression.parse(expression).next_local(D(2026, 1, 1)) is None


def test_no_time_after_year_9999() -> None:
    cron = CronExpression.parse("* * * * * *")
    assert cron.next_local(D(9999, 12, 31, 23, 59, 58)) == D(9999, 12, 31, 23, 59, 59)
    assert cron.next_local(D(9999, 12, 31, 23, 59, 59)) is None
    assert CronExpression.parse("0 0 1 1 *").next_local(D(9999, 6, 1)) is None


def test_aware_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        CronExpression.parse("* * * * *").next_local(D(2026, 1, 1, tzinfo=UTC))


# --- against a brute-force oracle -------------------------------------------------------


def _values(draw: st.DrawFn, low: int, high: int) -> tuple[str, set[int]]:
    """A random field: its text and the values it stands for."""
    kind = draw(st.sampled_from(["star", "list", "range", "step"]))
    if kind == "star":
        return "*", set(range(low, high + 1))
    if kind == "list":
        values = draw(st.sets(st.integers(low, high), min_size=1, max_size=4))
        return ",".join(map(str, sorted(values))), values
    start = draw(st.integers(low, high))
    end = draw(st.integers(start, high))
    if kind == "range":
        return f"{start}-{end}", set(range(start, end + 1))
    step = draw(st.integers(1, 25))
    return f"{start}-{end}/{step}", set(range(start, end + 1, step))


def _last_day(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def _weekday(day: date) -> int:
    return day.isoweekday() % 7  # Sunday = 0


DayRule = Callable[[date], bool]


def _dom_item(draw: st.DrawFn) -> tuple[str, DayRule]:
    kind = draw(st.sampled_from(["L", "L-n", "W", "LW"]))
    # Month edges are where W and L-n are easiest to get wrong.
    edges = st.sampled_from([1, 2, 27, 28, 29, 30, 31] if kind == "W" else [0, 1, 27, 28, 30])
    n = draw(edges | st.integers(1, 31) if kind == "W" else edges | st.integers(0, 30))

    def nearest_weekday(day: date, n: int) -> int:
        last = _last_day(day)
        weekday = _weekday(day.replace(day=n))
        if weekday == 6:
            return 3 if n == 1 else n - 1
        if weekday == 0:
            return n - 2 if n == last else n + 1
        return n

    def matches(day: date) -> bool:
        last = _last_day(day)
        if kind == "L":
            return day.day == last
        if kind == "L-n":
            return day.day == last - n
        if kind == "LW":
            weekdays = [d for d in range(1, last + 1) if _weekday(day.replace(day=d)) not in (0, 6)]
            return day.day == weekdays[-1]
        return n <= last and day.day == nearest_weekday(day, n)

    text = {"L": "L", "L-n": f"L-{n}", "W": f"{n}W", "LW": "LW"}[kind]
    return text, matches


def _dow_item(draw: st.DrawFn) -> tuple[str, DayRule]:
    weekday = draw(st.integers(0, 7)) % 7
    name = draw(
        st.sampled_from([str(weekday), ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"][weekday]])
    )
    if draw(st.booleans()):
        k = draw(st.integers(1, 5))

        def nth(day: date) -> bool:
            return _weekday(day) == weekday and (day.day - 1) // 7 + 1 == k

        return f"{name}#{k}", nth

    def last(day: date) -> bool:
        return _weekday(day) == weekday and day.day + 7 > _last_day(day)

    return f"{name}L", last


def _day_field(
    draw: st.DrawFn,
    plain: tuple[str, set[int]],
    special: Callable[[st.DrawFn], tuple[str, DayRule]],
) -> tuple[str, set[int], list[DayRule]]:
    """A day field: plain values, optionally with an extension item, or the extension alone."""
    text, values = plain
    if not draw(st.booleans()):
        return text, values, []
    item, rule = special(draw)
    if draw(st.booleans()):
        return item, set(), [rule]
    return f"{item},{text}", values, [rule]


@st.composite
def expressions(draw: st.DrawFn) -> tuple[str, Callable[[datetime], datetime | None]]:
    """A random expression and a brute-force scan for its next time."""
    seconds_text, seconds = draw(st.sampled_from([("", {0}), ("*/20 ", {0, 20, 40})]))
    minute_text, minutes = _values(draw, 0, 59)
    hour_text, hours = _values(draw, 0, 23)
    month_text, months = _values(draw, 1, 12)
    dom_text, dom, dom_rules = _day_field(draw, _values(draw, 1, 31), _dom_item)
    dow_text, dow, dow_rules = _day_field(draw, _values(draw, 0, 7), _dow_item)
    dow = {d % 7 for d in dow}
    dom_any, dow_any = dom_text == "*", dow_text == "*"

    def day_matches(day: date) -> bool:
        in_dom = day.day in dom or any(rule(day) for rule in dom_rules)
        in_dow = _weekday(day) in dow or any(rule(day) for rule in dow_rules)
        if dom_any and dow_any:
            return True
        if dom_any or dow_any:
            return in_dow if dom_any else in_dom
        return in_dom or in_dow

    def scan(after: datetime) -> datetime | None:
        day = after.date()
        for _ in range(366 * 9):
            if day.month in months and day_matches(day):
                for h, m, s in sorted(product(hours, minutes, seconds)):
                    candidate = datetime(day.year, day.month, day.day, h, m, s)
                    if candidate > after:
                        return candidate
            day += timedelta(days=1)
        return None

    text = f"{seconds_text}{minute_text} {hour_text} {dom_text} {month_text} {dow_text}"
    return text, scan


@settings(deadline=None, max_examples=300)
@given(
    expressions(),
    st.datetimes(min_value=D(1990, 1, 1), max_value=D(2090, 1, 1)),
)
def test_next_local_agrees_with_a_brute_force_scan(
    case: tuple[str, Callable[[datetime], datetime | None]], after: datetime
) -> None:
    text, scan = case
    expected = scan(after)
    actual = CronExpression.parse(text).next_local(after)
    if expected is None:
        # The scan gives up after nine years; the real search goes on.
        assert actual is None or actual > after + timedelta(days=366 * 8)
    else:
        assert actual == expected
