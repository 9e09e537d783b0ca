"""Cron expressions, evaluated on naive local wall-clock time.

Syntax
------
Five fields ``minute hour day-of-month month day-of-week``, or six with seconds
first (Quartz style): ``second minute hour day-of-month month day-of-week``.
A seventh (year) field is rejected. The nicknames ``@yearly`` (``@annually``),
``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and ``@hourly`` are accepted.

Each field is a comma-separated list of items:

* ``*`` every value; ``?`` is the same as ``*`` and allowed in day-of-month and
  day-of-week only;
* ``n``, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (from ``a`` to the
  field's maximum);
* month names ``JAN``-``DEC`` and day names ``SUN``-``SAT``, case-insensitive,
  anywhere a number is allowed.

Day-of-week numbers follow Unix cron: 0-7, where both 0 and 7 are Sunday
(``MON-SUN`` and ``1-7`` are Monday to Sunday). Quartz's numbering (1 = Sunday,
7 = Saturday) is **not** used, so ``5L`` is the last *Friday* here but the last
Thursday in Quartz; day names mean the same everywhere.

Extensions:

* day-of-month ``L`` last day of the month, ``L-n`` n days before it, ``nW`` the
  weekday (Mon-Fri) nearest to day n without leaving the month (Quartz rules:
  a Saturday moves to Friday, a Sunday to Monday, ``1W`` on a Saturday is
  Monday the 3rd, and the last day on a Sunday is the Friday before), ``LW``
  the last weekday of the month. ``nW`` does not fire in a month that has no
  day n, just like plain ``n``.
* day-of-week ``nL`` / ``FRIL`` the last such weekday of the month, ``n#k`` /
  ``FRI#2`` the k-th (1-5) such weekday of the month.

Day matching: when both day-of-month and day-of-week are restricted (neither is
a bare ``*`` or ``?``), a day matches if it matches *either* field (Vixie cron
semantics): ``0 0 13 * FRI`` fires on every 13th and on every Friday. When only
one is restricted, that one decides. ``*/2`` counts as restricted.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Self

__all__ = ["CronError", "CronExpression"]

# Every date pattern repeats after 400 Gregorian years (146097 days, a whole number
# of weeks), so a search that finds nothing in 400 years will never find anything.
_SEARCH_YEARS: Final = 400
_MAX_YEAR: Final = 9999

_MONTH_NAMES: Final = {
    name.upper(): number for number, name in enumerate(calendar.month_abbr) if name
}
_DAY_NAMES: Final = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}

_NICKNAMES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_NUMBER: Final = re.compile(r"[0-9]+")
_L_OFFSET: Final = re.compile(r"L-([0-9]+)")
_NEAREST_WEEKDAY: Final = re.compile(r"[0-9]+W")
_DAY_EXTENSION: Final = re.compile(r"L(-[0-9]+)?|LW|[0-9]+[LW]", re.IGNORECASE)


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message names the field at fault."""

    def __init__(self, field_name: str | None, message: str) -> None:
        self.field_name = field_name
        super().__init__(f"{field_name}: {message}" if field_name else message)


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None
    names_hint: str = ""
    # Largest number accepted as input; day-of-week takes 7 for Sunday, stored as 0.
    input_high: int | None = None

    def error(self, message: str) -> CronError:
        return CronError(self.name, message)

    def value(self, token: str) -> int:
        """A single number or name, checked against the field's range."""
        high = self.high if self.input_high is None else self.input_high
        if self.names is not None and token.upper() in self.names:
            return self.names[token.upper()]
        if not _NUMBER.fullmatch(token):
            if not token:
                raise self.error("empty value")
            raise self.error(f"{token!r} is not a number{self.names_hint}")
        number = int(token)
        if not self.low <= number <= high:
            raise self.error(f"{number} is out of range {self.low}-{high}")
        return number

    def values(self, item: str) -> set[int]:
        """The values of one list item: ``*``, ``n``, ``a-b``, with an optional ``/step``."""
        base, slash, step_text = item.partition("/")
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise self.error(f"step in {item!r} must be a positive number")
            step = int(step_text)
            if step == 0:
                raise self.error(f"step in {item!r} must be at least 1")
        else:
            step = 1
        if base == "*":
            start, end = self.low, self.high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = self.value(first), self.value(last)
            if self.input_high is not None and end == self.low and start > end:
                end = self.input_high  # a range may end on Sunday: FRI-SUN is 5-7
            if start > end:
                raise self.error(f"range {base!r} runs backwards ({start} > {end})")
        else:
            start = self.value(base)
            end = self.high if slash else start
        values = set(range(start, end + 1, step))
        if not values:
            raise self.error(f"{item!r} matches no value")
        return values


_SECOND: Final = _Field("second", 0, 59)
_MINUTE: Final = _Field("minute", 0, 59)
_HOUR: Final = _Field("hour", 0, 23)
_DOM: Final = _Field("day-of-month", 1, 31)
_MONTH: Final = _Field("month", 1, 12, _MONTH_NAMES, " (or a name JAN-DEC)")
_DOW: Final = _Field("day-of-week", 0, 6, _DAY_NAMES, " (or a name SUN-SAT)", input_high=7)


@dataclass(frozen=True, slots=True)
class _DayRule:
    """Which days of a month match: the day-of-month and day-of-week fields together."""

    dom_any: bool
    dow_any: bool
    dom_days: frozenset[int] = frozenset()  # plain days 1-31
    dom_before_last: frozenset[int] = frozenset()  # L (0) and L-n (n)
    dom_nearest_weekday: frozenset[int] = frozenset()  # nW
    dom_last_weekday: bool = False  # LW
    dow_days: frozenset[int] = frozenset()  # 0-6, Sunday = 0
    dow_last: frozenset[int] = frozenset()  # nL
    dow_nth: frozenset[tuple[int, int]] = frozenset()  # n#k as (weekday, k)

    def days(self, year: int, month: int) -> tuple[int, ...]:
        """The matching days of a month, ascending."""
        monday_based, last = calendar.monthrange(year, month)
        first_dow = (monday_based + 1) % 7  # cron numbering: Sunday = 0
        if self.dom_any and self.dow_any:
            return tuple(range(1, last + 1))
        found: set[int] = set()
        if not self.dom_any:
            found.update(d for d in self.dom_days if d <= last)
            found.update(last - n for n in self.dom_before_last if last - n >= 1)
            for n in self.dom_nearest_weekday:
                if n <= last:
                    found.add(_nearest_weekday(n, (first_dow + n - 1) % 7, last))
            if self.dom_last_weekday:
                last_dow = (first_dow + last - 1) % 7
                found.add(last - 1 if last_dow == 6 else last - 2 if last_dow == 0 else last)
        if not self.dow_any:
            for weekday in self.dow_days:
                found.update(range(1 + (weekday - first_dow) % 7, last + 1, 7))
            last_dow = (first_dow + last - 1) % 7
            found.update(last - (last_dow - weekday) % 7 for weekday in self.dow_last)
            for weekday, k in self.dow_nth:
                day = 1 + (weekday - first_dow) % 7 + 7 * (k - 1)
                if day <= last:
                    found.add(day)
        return tuple(sorted(found))


def _nearest_weekday(day: int, dow: int, last: int) -> int:
    if dow == 6:  # Saturday: Friday before, unless that leaves the month
        return day + 2 if day == 1 else day - 1
    if dow == 0:  # Sunday: Monday after, unless that leaves the month
        return day - 2 if day == last else day + 1
    return day


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron expression; see the module docstring for the syntax.

    Immutable and hashable; ``text`` is the source as written.
    """

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    day_rule: _DayRule
    # Matching days per (year, month); a cache, not part of the value.
    _month_days: dict[tuple[int, int], tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``text``; raises :class:`CronError` naming the offending field."""
        fields = text.split()
        if len(fields) == 1 and fields[0].startswith("@"):
            nickname = fields[0].lower()
            if nickname not in _NICKNAMES:
                known = ", ".join(_NICKNAMES)
                raise CronError(None, f"unknown cron nickname {fields[0]!r} (known: {known})")
            fields = _NICKNAMES[nickname].split()
        if len(fields) == 7:
            raise CronError(
                None,
                "a year field (7th field) is not supported; use 5 fields "
                "'minute hour day-of-month month day-of-week' or 6 with seconds first",
            )
        if len(fields) == 5:
            fields = ["0", *fields]
        elif len(fields) != 6:
            raise CronError(
                None,
                f"expected 5 fields 'minute hour day-of-month month day-of-week' or 6 "
                f"with seconds first, got {len(fields)}",
            )
        second, minute, hour, dom, month, dow = fields
        return cls(
            text=text,
            seconds=_parse_plain(_SECOND, second),
            minutes=_parse_plain(_MINUTE, minute),
            hours=_parse_plain(_HOUR, hour),
            months=_parse_plain(_MONTH, month),
            day_rule=_parse_days(dom, dow),
        )

    def __str__(self) -> str:
        return self.text

    def next_local(self, after: datetime) -> datetime | None:
        """The first wall-clock time strictly after ``after`` that matches, or ``None``.

        Works on naive datetimes and knows nothing of time zones: every wall-clock
        time exists here. Returns ``None`` when nothing matches before year 10000
        (e.g. ``0 0 30 2 *``). Skips whole months, days, hours and minutes at once.
        """
        if after.tzinfo is not None:
            raise ValueError("next_local works on naive wall-clock times; got an aware datetime")
        if after >= datetime(_MAX_YEAR, 12, 31, 23, 59, 59):
            return None
        start = after.replace(microsecond=0) + timedelta(seconds=1)
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        months, hours, minutes, seconds = self.months, self.hours, self.minutes, self.seconds
        last_year = min(year + _SEARCH_YEARS, _MAX_YEAR)
        # Each failed step carries into the next larger unit and resets the smaller
        # ones to 0; bisect then jumps straight to the next allowed value.
        while year <= last_year:
            i = bisect_left(months, month)
            if i == len(months):
                year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                continue
            if months[i] != month:
                month, day, hour, minute, second = months[i], 1, 0, 0, 0
            days = self._days(year, month)
            i = bisect_left(days, day)
            if i == len(days):
                month, day, hour, minute, second = month + 1, 1, 0, 0, 0
                continue
            if days[i] != day:
                day, hour, minute, second = days[i], 0, 0, 0
            i = bisect_left(hours, hour)
            if i == len(hours):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if hours[i] != hour:
                hour, minute, second = hours[i], 0, 0
            i = bisect_left(minutes, minute)
            if i == len(minutes):
                hour, minute, second = hour + 1, 0, 0
                continue
            if minutes[i] != minute:
                minute, second = minutes[i], 0
            i = bisect_left(seconds, second)
            if i == len(seconds):
                minute, second = minute + 1, 0
                continue
            return datetime(year, month, day, hour, minute, seconds[i])
        return None

    def _days(self, year: int, month: int) -> tuple[int, ...]:
        key = (year, month)
        days = self._month_days.get(key)
        if days is None:
            if len(self._month_days) >= 1024:
                self._month_days.clear()
            days = self._month_days[key] = self.day_rule.days(year, month)
        return days


def _items(spec: _Field, text: str) -> list[str]:
    items = text.split(",")
    if "" in items:
        raise spec.error(f"empty list item in {text!r}")
    return items


def _parse_plain(spec: _Field, text: str) -> tuple[int, ...]:
    if text == "?":
        raise spec.error("'?' is only allowed in day-of-month and day-of-week")
    values: set[int] = set()
    for item in _items(spec, text):
        if "#" in item or _DAY_EXTENSION.fullmatch(item):
            raise spec.error(f"{item!r}: L, W and # are only allowed in the day fields")
        values |= spec.values(item)
    return tuple(sorted(values))


def _parse_days(dom: str, dow: str) -> _DayRule:
    dom_any = dom in ("*", "?")
    dow_any = dow in ("*", "?")
    dom_days: set[int] = set()
    before_last: set[int] = set()
    nearest: set[int] = set()
    last_weekday = False
    if not dom_any:
        for item in _items(_DOM, dom):
            upper = item.upper()
            if upper == "?":
                raise _DOM.error("'?' must be the whole field")
            if upper == "L":
                before_last.add(0)
            elif upper == "LW":
                last_weekday = True
            elif upper.startswith("L"):
                match = _L_OFFSET.fullmatch(upper)
                if match is None:
                    raise _DOM.error(f"{item!r}: expected L, L-n or LW")
                offset = int(match.group(1))
                if offset > 30:
                    raise _DOM.error(f"{item!r}: offset {offset} is out of range 0-30")
                before_last.add(offset)
            elif upper.endswith("W"):
                day_text = upper[:-1]
                if not day_text:
                    raise _DOM.error("W needs a day number, e.g. 15W")
                if not _NUMBER.fullmatch(day_text):
                    raise _DOM.error(f"{item!r}: W needs a single day number, e.g. 15W")
                nearest.add(_DOM.value(day_text))
            elif "#" in upper:
                raise _DOM.error(f"{item!r}: '#' belongs in day-of-week")
            else:
                dom_days |= _DOM.values(item)
    dow_days: set[int] = set()
    dow_last: set[int] = set()
    dow_nth: set[tuple[int, int]] = set()
    if not dow_any:
        for item in _items(_DOW, dow):
            upper = item.upper()
            if upper == "?":
                raise _DOW.error("'?' must be the whole field")
            if "#" in upper:
                day_text, _, k_text = upper.partition("#")
                if not day_text:
                    raise _DOW.error(f"{item!r}: '#' needs a weekday before it, e.g. FRI#2")
                weekday = _DOW.value(day_text) % 7
                if not _NUMBER.fullmatch(k_text) or not 1 <= int(k_text) <= 5:
                    raise _DOW.error(f"{item!r}: the number after '#' must be 1-5")
                dow_nth.add((weekday, int(k_text)))
            elif upper.endswith("L"):
                day_text = upper[:-1]
                if not day_text:
                    raise _DOW.error("L needs a weekday before it, e.g. 5L or FRIL")
                dow_last.add(_DOW.value(day_text) % 7)
            elif _NEAREST_WEEKDAY.fullmatch(upper):
                raise _DOW.error(f"{item!r}: W belongs in day-of-month")
            else:
                dow_days |= {d % 7 for d in _DOW.values(item)}
    return _DayRule(
        dom_any=dom_any,
        dow_any=dow_any,
        dom_days=frozenset(dom_days),
        dom_before_last=frozenset(before_last),
        dom_nearest_weekday=frozenset(nearest),
        dom_last_weekday=last_weekday,
        dow_days=frozenset(dow_days),
        dow_last=frozenset(dow_last),
        dow_nth=frozenset(dow_nth),
    )
