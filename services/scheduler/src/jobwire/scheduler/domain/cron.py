"""Cron expressions, evaluated on naive local wall-clock time.

Two dialects: ``standard`` (the default) and ``quartz``. They differ in the
numbering of the days of the week, which silently changes what an expression
means, so neither guesses: an expression is read in the dialect it is given.

Standard syntax
---------------
Five fields ``minute hour day-of-month month day-of-week``, or six with seconds
first: ``second minute hour day-of-month month day-of-week``. The nicknames
``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``)
and ``@hourly`` are accepted.

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

Because a six-field expression with ``?`` looks like Quartz, the standard
dialect refuses one that also names a weekday by number (``0 0 12 ? * 6L``,
``0 15 10 ? * 2-6``): it would fire on other days than its author meant. Day
names (``FRIL``, ``MON-FRI``) or ``dialect: quartz`` say which is meant. A
seventh (year) field is refused for the same reason.

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

Quartz dialect
--------------
As Quartz's ``CronExpression`` reads it (FLEXCUBE and other Quartz-based
schedulers take these): six or seven fields, ``second minute hour day-of-month
month day-of-week [year]``; no nicknames.

* Day-of-week 1-7 is ``SUN``-``SAT`` (1 = Sunday, 6 = Friday); 0 is refused.
* Exactly one of day-of-month and day-of-week is ``?``: ``0 0 12 * * ?`` and
  ``0 0 12 ? * MON``, never both ``?`` and never both given.
* Year (optional) 1970-2099; the expression fires only in those years, and
  after the last one no more. ``*`` or no year field: every year.
* Ranges may wrap: ``22-2`` in hours is 22, 23, 0, 1, 2; ``FRI-MON`` is Friday
  to Monday (not in the year field). A step is at most the field's largest
  value (59 for seconds, 7 for day-of-week, ...).
* Day-of-month ``L``, ``L-n`` (n ≤ 30), ``LW``, ``L-nW`` (the weekday nearest
  to ``L-n``) and ``nW``, each as the whole field: Quartz supports no lists or
  ranges with them.
* Day-of-week ``L`` alone is 7 (Saturday); ``nL`` / ``FRIL`` the last such
  weekday of the month; ``n#k`` / ``FRI#3`` the k-th (1-5) one. Each as the
  whole field, as Quartz requires (``3#1,6#3`` is not valid).
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal, Self

__all__ = ["CronError", "CronExpression", "Dialect"]

Dialect = Literal["standard", "quartz"]

# Every date pattern repeats after 400 Gregorian years (146097 days, a whole number
# of weeks), so a search that finds nothing in 400 years will never find anything.
_SEARCH_YEARS: Final = 400
_MAX_YEAR: Final = 9999

_MONTH_NAMES: Final = {
    name.upper(): number for number, name in enumerate(calendar.month_abbr) if name
}
_DAY_NAMES: Final = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_QUARTZ_DAY_NAMES: Final = {name: number + 1 for name, number in _DAY_NAMES.items()}

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
_QUARTZ_LAST: Final = re.compile(r"L(?:-([0-9]+))?(W?)")
_QUARTZ_SHAPE: Final = (
    "a Quartz expression has 6 or 7 fields: "
    "'second minute hour day-of-month month day-of-week [year]'"
)
_QUARTZ_HINT: Final = "set `dialect: quartz`, or write day names (MON-FRI) in a standard expression"


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
    # Whether Quartz lets a range wrap around this field's end; not the year's.
    wraps: bool = True

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

    def values(self, item: str, *, quartz: bool = False) -> set[int]:
        """The values of one list item: ``*``, ``n``, ``a-b``, with an optional ``/step``.

        ``quartz``: Quartz's rules, where a range may wrap around the field's end
        (``22-2`` in hours) and a step may not exceed the field's largest value.
        """
        base, slash, step_text = item.partition("/")
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise self.error(f"step in {item!r} must be a positive number")
            step = int(step_text)
            if step == 0:
                raise self.error(f"step in {item!r} must be at least 1")
            if quartz and self.wraps and step > self.high:
                raise self.error(f"step in {item!r} must be at most {self.high}")
        else:
            step = 1
        size = self.high - self.low + 1
        if base == "*":
            start, end = self.low, self.high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = self.value(first), self.value(last)
            if self.input_high is not None and end == self.low and start > end:
                end = self.input_high  # a range may end on Sunday: FRI-SUN is 5-7
            if start > end:
                if not (quartz and self.wraps):
                    raise self.error(f"range {base!r} runs backwards ({start} > {end})")
                end += size  # Quartz: 22-2 is 22, 23, 0, 1, 2
        else:
            start = self.value(base)
            end = self.high if slash else start
        values = {self.low + (v - self.low) % size for v in range(start, end + 1, step)}
        if not values:
            raise self.error(f"{item!r} matches no value")
        return values


_SECOND: Final = _Field("second", 0, 59)
_MINUTE: Final = _Field("minute", 0, 59)
_HOUR: Final = _Field("hour", 0, 23)
_DOM: Final = _Field("day-of-month", 1, 31)
_MONTH: Final = _Field("month", 1, 12, _MONTH_NAMES, " (or a name JAN-DEC)")
_DOW: Final = _Field("day-of-week", 0, 6, _DAY_NAMES, " (or a name SUN-SAT)", input_high=7)
_QUARTZ_DOW: Final = _Field("day-of-week", 1, 7, _QUARTZ_DAY_NAMES, " (or a name SUN-SAT)")
# Quartz's documented range; its code allows up to a century from today.
_YEAR: Final = _Field("year", 1970, 2099, wraps=False)


@dataclass(frozen=True, slots=True)
class _DayRule:
    """Which days of a month match: the day-of-month and day-of-week fields together."""

    dom_any: bool
    dow_any: bool
    dom_days: frozenset[int] = frozenset()  # plain days 1-31
    dom_before_last: frozenset[int] = frozenset()  # L (0) and L-n (n)
    dom_nearest_weekday: frozenset[int] = frozenset()  # nW
    dom_nearest_before_last: frozenset[int] = frozenset()  # LW (0) and Quartz's L-nW (n)
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
            for n in self.dom_nearest_before_last:
                if last - n >= 1:
                    day = last - n
                    found.add(_nearest_weekday(day, (first_dow + day - 1) % 7, last))
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

    Immutable and hashable; ``text`` is the source as written, ``dialect`` the
    dialect it was read in.
    """

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    day_rule: _DayRule
    # Quartz's year field; None: every year.
    years: tuple[int, ...] | None = None
    dialect: Dialect = "standard"
    # Matching days per (year, month); a cache, not part of the value.
    _month_days: dict[tuple[int, int], tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def parse(cls, text: str, dialect: Dialect = "standard") -> Self:
        """Parse ``text`` in ``dialect``; raises :class:`CronError` naming the offending field."""
        if dialect == "quartz":
            return cls._parse_quartz(text)
        if dialect != "standard":
            raise ValueError(f"unknown cron dialect {dialect!r}: expected 'standard' or 'quartz'")
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
                "a year field (7th field) is not supported in the standard dialect; use 5 "
                "fields 'minute hour day-of-month month day-of-week' or 6 with seconds "
                "first. Seven fields are a Quartz expression: set `dialect: quartz`",
            )
        if len(fields) == 5:
            fields = ["0", *fields]
        elif len(fields) != 6:
            raise CronError(
                None,
                f"expected 5 fields 'minute hour day-of-month month day-of-week' or 6 "
                f"with seconds first, got {len(fields)}",
            )
        else:
            _refuse_quartz_lookalike(fields[3], fields[5])
        second, minute, hour, dom, month, dow = fields
        return cls(
            text=text,
            seconds=_parse_plain(_SECOND, second),
            minutes=_parse_plain(_MINUTE, minute),
            hours=_parse_plain(_HOUR, hour),
            months=_parse_plain(_MONTH, month),
            day_rule=_parse_days(dom, dow),
        )

    @classmethod
    def _parse_quartz(cls, text: str) -> Self:
        fields = text.upper().split()  # Quartz reads names and L, W case-insensitively
        if len(fields) == 1 and fields[0].startswith("@"):
            raise CronError(
                None, f"Quartz has no nicknames such as {text.strip()!r}; " + _QUARTZ_SHAPE
            )
        if len(fields) not in (6, 7):
            raise CronError(None, f"{_QUARTZ_SHAPE}, got {len(fields)}")
        second, minute, hour, dom, month, dow = fields[:6]
        if (dom == "?") == (dow == "?"):
            # Quartz refuses both (and, in practice, neither) with "Support for specifying
            # both a day-of-week AND a day-of-month parameter is not implemented".
            raise CronError(
                None,
                "a Quartz expression needs '?' in exactly one of day-of-month and "
                "day-of-week, e.g. '0 0 12 * * ?' or '0 0 12 ? * MON'",
            )
        years = None
        if len(fields) == 7 and fields[6] != "*":
            years = _parse_plain(_YEAR, fields[6], quartz=True)
        return cls(
            text=text,
            seconds=_parse_plain(_SECOND, second, quartz=True),
            minutes=_parse_plain(_MINUTE, minute, quartz=True),
            hours=_parse_plain(_HOUR, hour, quartz=True),
            months=_parse_plain(_MONTH, month, quartz=True),
            day_rule=_parse_quartz_days(dom, dow),
            years=years,
            dialect="quartz",
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
        years = self.years
        # With a year field every allowed year is searched: they are few and finite.
        last_year = min(year + _SEARCH_YEARS, _MAX_YEAR) if years is None else years[-1]
        # Each failed step carries into the next larger unit and resets the smaller
        # ones to 0; bisect then jumps straight to the next allowed value.
        while year <= last_year:
            if years is not None:
                i = bisect_left(years, year)
                if i == len(years):
                    return None
                if years[i] != year:
                    year, month, day, hour, minute, second = years[i], 1, 1, 0, 0, 0
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


def _parse_plain(spec: _Field, text: str, *, quartz: bool = False) -> tuple[int, ...]:
    if text == "?":
        raise spec.error("'?' is only allowed in day-of-month and day-of-week")
    values: set[int] = set()
    for item in _items(spec, text):
        if "#" in item or _DAY_EXTENSION.fullmatch(item):
            raise spec.error(f"{item!r}: L, W and # are only allowed in the day fields")
        values |= spec.values(item, quartz=quartz)
    return tuple(sorted(values))


def _refuse_quartz_lookalike(dom: str, dow: str) -> None:
    """Refuse a six-field standard expression that reads differently in Quartz.

    With ``?`` in a day field it is most likely copied from a Quartz scheduler, where
    day-of-week 1 is Sunday: ``6L`` would fire on the last Saturday instead of the
    last Friday, silently. A weekday given by name, or ``*``/``*/n`` (the same days
    in both numberings), means the same in both and passes.
    """
    if "?" not in (dom, dow) or not _numbers_a_weekday(dow):
        return
    raise CronError(
        "day-of-week",
        f"with '?' this looks like a Quartz expression, whose day-of-week numbers mean "
        f"something else (1 = Sunday, 7 = Saturday; here 0 and 7 are Sunday), so "
        f"{dow!r} would fire on other days; {_QUARTZ_HINT}",
    )


def _numbers_a_weekday(dow: str) -> bool:
    for item in dow.upper().split(","):
        base = item.partition("/")[0].partition("#")[0]
        if base == "L":  # Quartz's Saturday; an error here
            return True
        if any(_NUMBER.fullmatch(part) for part in base.removesuffix("L").split("-")):
            return True
    return False


def _parse_quartz_days(dom: str, dow: str) -> _DayRule:
    """Quartz's day fields (upper-cased); exactly one of them is ``?``."""
    dom_days: set[int] = set()
    before_last: set[int] = set()
    nearest: set[int] = set()
    nearest_before_last: set[int] = set()
    if dom not in ("*", "?"):
        last = _QUARTZ_LAST.fullmatch(dom)
        if "L" in dom and last is None:
            raise _DOM.error(
                f"{dom!r}: expected L, L-n, LW or L-nW, as the whole field "
                "(Quartz supports no lists or ranges with L)"
            )
        if last is not None:
            offset = int(last.group(1) or 0)
            if offset > 30:
                raise _DOM.error(f"{dom!r}: offset {offset} is out of range 0-30")
            (nearest_before_last if last.group(2) else before_last).add(offset)
        elif "W" in dom:
            day_text = dom.removesuffix("W")
            if not _NUMBER.fullmatch(day_text):
                raise _DOM.error(
                    f"{dom!r}: W takes a single day as the whole field, e.g. 15W "
                    "(Quartz supports no lists or ranges with it)"
                )
            nearest.add(_DOM.value(day_text))
        else:
            for item in _items(_DOM, dom):
                if item == "?":
                    raise _DOM.error("'?' must be the whole field")
                if "#" in item:
                    raise _DOM.error(f"{item!r}: '#' belongs in day-of-week")
                dom_days |= _DOM.values(item, quartz=True)
    dow_days: set[int] = set()
    dow_last: set[int] = set()
    dow_nth: set[tuple[int, int]] = set()
    # Quartz numbers SUN-SAT 1-7; stored like the standard dialect, Sunday = 0.
    if dow not in ("*", "?"):
        if dow == "L":
            dow_days.add(6)  # L alone is 7, Saturday
        elif ("L" in dow or "#" in dow) and "," in dow:
            raise _DOW.error(f"{dow!r}: Quartz takes nL and n#k as the whole field, not in a list")
        elif "#" in dow:
            day_text, _, k_text = dow.partition("#")
            if not day_text:
                raise _DOW.error(f"{dow!r}: '#' needs a weekday before it, e.g. 6#3 or FRI#3")
            weekday = _QUARTZ_DOW.value(day_text) - 1
            if not _NUMBER.fullmatch(k_text) or not 1 <= int(k_text) <= 5:
                raise _DOW.error(f"{dow!r}: the number after '#' must be 1-5")
            dow_nth.add((weekday, int(k_text)))
        elif dow.endswith("L"):
            dow_last.add(_QUARTZ_DOW.value(dow.removesuffix("L")) - 1)
        else:
            for item in _items(_QUARTZ_DOW, dow):
                if item == "?":
                    raise _DOW.error("'?' must be the whole field")
                if _NEAREST_WEEKDAY.fullmatch(item):
                    raise _DOW.error(f"{item!r}: W belongs in day-of-month")
                dow_days |= {d - 1 for d in _QUARTZ_DOW.values(item, quartz=True)}
    return _DayRule(
        dom_any=dom in ("*", "?"),
        dow_any=dow in ("*", "?"),
        dom_days=frozenset(dom_days),
        dom_before_last=frozenset(before_last),
        dom_nearest_weekday=frozenset(nearest),
        dom_nearest_before_last=frozenset(nearest_before_last),
        dow_days=frozenset(dow_days),
        dow_last=frozenset(dow_last),
        dow_nth=frozenset(dow_nth),
    )


def _parse_days(dom: str, dow: str) -> _DayRule:
    dom_any = dom in ("*", "?")
    dow_any = dow in ("*", "?")
    dom_days: set[int] = set()
    before_last: set[int] = set()
    nearest: set[int] = set()
    last_weekday: set[int] = set()
    if not dom_any:
        for item in _items(_DOM, dom):
            upper = item.upper()
            if upper == "?":
                raise _DOM.error("'?' must be the whole field")
            if upper == "L":
                before_last.add(0)
            elif upper == "LW":
                last_weekday.add(0)
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
        dom_nearest_before_last=frozenset(last_weekday),
        dow_days=frozenset(dow_days),
        dow_last=frozenset(dow_last),
        dow_nth=frozenset(dow_nth),
    )
