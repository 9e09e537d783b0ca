"""Property tests: the DST policy holds around real offset changes in many zones.

The oracle is independent of the implementation. It finds a zone's offset changes
by probing UTC instants (zoneinfo is unambiguous in that direction) and maps each
matching wall-clock slot to the first instant at which the zone's clock reads that
time or later. That single rule gives the policy: an existing time fires at its
first occurrence, a time in a gap at the first instant after the gap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from jobwire.scheduler.domain.schedule import CronSchedule, IntervalSchedule, next_fire, preview

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ZONES = [
    "Africa/Cairo",
    "Africa/Casablanca",  # negative DST, suspended for Ramadan
    "America/Asuncion",
    "America/Havana",  # changes at midnight
    "America/Mexico_City",
    "America/New_York",
    "America/Santiago",  # changes at midnight
    "America/Sao_Paulo",
    "America/Scoresbysund",
    "America/St_Johns",  # -03:30
    "Antarctica/Troll",  # two-hour DST
    "Asia/Amman",
    "Asia/Beirut",  # changes at midnight
    "Asia/Gaza",
    "Asia/Jerusalem",
    "Asia/Tehran",  # +03:30, changed at midnight
    "Australia/Adelaide",
    "Australia/Lord_Howe",  # half-hour DST
    "Australia/Sydney",
    "Europe/Berlin",
    "Europe/Chisinau",
    "Europe/Dublin",  # negative DST in the data
    "Europe/Moscow",
    "Pacific/Apia",  # skipped 2011-12-30
    "Pacific/Chatham",  # +12:45
    "Pacific/Easter",
    "Pacific/Norfolk",
]


@dataclass(frozen=True)
class Pool:
    expression: str
    matches: Callable[[datetime], bool]
    step: timedelta  # granularity of the naive slot enumeration
    half_window: timedelta  # window on each side of the transition


MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)
DAYS = timedelta(days=2)

POOL = [
    Pool("* * * * *", lambda t: True, MINUTE, timedelta(days=1)),
    Pool("*/7 * * * *", lambda t: t.minute % 7 == 0, MINUTE, DAYS),
    Pool("30 * * * *", lambda t: t.minute == 30, MINUTE, DAYS),
    Pool("59 * * * *", lambda t: t.minute == 59, MINUTE, DAYS),
    Pool("0 */2 * * *", lambda t: t.minute == 0 and t.hour % 2 == 0, MINUTE, DAYS),
    Pool("30 2 * * *", lambda t: (t.hour, t.minute) == (2, 30), MINUTE, DAYS),
    Pool("30 1 * * *", lambda t: (t.hour, t.minute) == (1, 30), MINUTE, DAYS),
    Pool("0 0 * * *", lambda t: (t.hour, t.minute) == (0, 0), MINUTE, DAYS),
    Pool(
        "15,45 23,0-3 * * *",
        lambda t: t.minute in (15, 45) and t.hour in (23, 0, 1, 2, 3),
        MINUTE,
        DAYS,
    ),
    Pool("*/15 * * * *", lambda t: t.minute % 15 == 0, MINUTE, DAYS),
    Pool(
        "0 0 * * SUN", lambda t: (t.hour, t.minute) == (0, 0) and t.isoweekday() == 7, MINUTE, DAYS
    ),
    Pool("*/20 * * * * *", lambda t: t.second % 20 == 0, SECOND, timedelta(hours=2)),
    Pool("45 59 * * * *", lambda t: (t.minute, t.second) == (59, 45), SECOND, timedelta(hours=3)),
]


def offset_at(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def changes(zone: ZoneInfo, start: datetime, end: datetime, probe: timedelta) -> list[datetime]:
    """Instants in (start, end] where the UTC offset changes, to the second."""
    found = []
    low, low_offset = start, offset_at(zone, start)
    while low < end:
        high = min(low + probe, end)
        if offset_at(zone, high) != low_offset:
            a, b = low, high
            while b - a > SECOND:
                middle = a + (b - a) // 2
                middle = middle.replace(microsecond=0)
                if offset_at(zone, middle) == low_offset:
                    a = middle
                else:
                    b = middle
            found.append(b)
            low_offset = offset_at(zone, b)
            low = b
        else:
            low = high
    return found


@functools.cache
def transitions(name: str) -> list[datetime]:
    """The zone's offset changes from 1970 to 2037, found by probing every two days."""
    return changes(
        ZoneInfo(name),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2037, 12, 31, tzinfo=UTC),
        timedelta(days=2),
    )


def expected_fires(pool: Pool, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """All fires in (start, end], computed from wall-clock slots and offset segments."""
    margin = timedelta(days=2)
    cuts = changes(zone, start - margin, end + margin, timedelta(minutes=10))
    bounds = [start - margin, *cuts, end + margin]
    segments = [(a, b, offset_at(zone, a)) for a, b in pairwise(bounds)]
    offsets = [o for _, _, o in segments]
    local = (start + min(offsets)).replace(tzinfo=None)
    last_local = (end + max(offsets)).replace(tzinfo=None)
    fires: set[datetime] = set()
    while local <= last_local:
        if pool.matches(local):
            # The first instant at which the wall clock reads `local` or later.
            wall = local.replace(tzinfo=UTC)
            for seg_start, seg_end, offset in segments:
                instant = max(seg_start, wall - offset)
                if instant < seg_end:
                    if start < instant <= end:
                        fires.add(instant)
                    break
        local += pool.step
    return sorted(fires)


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_fires_around_offset_changes_follow_the_policy(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(ZONES), label="zone")
    transition = data.draw(st.sampled_from(transitions(name)), label="transition")
    pool = data.draw(st.sampled_from(POOL), label="expression")
    zone = ZoneInfo(name)
    schedule = CronSchedule(kind="cron", expression=pool.expression, timezone=name)
    start, end = transition - pool.half_window, transition + pool.half_window

    expected = expected_fires(pool, zone, start, end)
    fires = preview(schedule, start, len(expected) + 1)

    # Exactly the expected fires: strictly increasing, no duplicates, no slot lost,
    # nothing extra, and the one after the window is outside it.
    assert fires[:-1] == expected
    assert fires[-1] > end
    assert all(f.tzinfo is UTC for f in fires)
    # Near the transition, each fire is reached from just before it and from halfway
    # since the previous one.
    for previous, fire in zip([start, *fires], fires, strict=False):
        if abs(fire - transition) > timedelta(hours=6):
            continue
        assert next_fire(schedule, fire - timedelta(microseconds=1)) == fire
        assert next_fire(schedule, previous + (fire - previous) / 2) == fire
    # Probes near the transition, including inside a repeated hour, in any zone.
    for _ in range(5):
        seconds = data.draw(st.floats(-3 * 3600, 3 * 3600), label="probe")
        probe = transition + timedelta(seconds=seconds)
        if start <= probe < end:
            after = probe.astimezone(data.draw(st.sampled_from([UTC, zone])))
            assert next_fire(schedule, after) == next(f for f in fires if f > probe)


@settings(deadline=None, max_examples=200)
@given(
    every=st.timedeltas(min_value=SECOND, max_value=timedelta(days=4000)),
    anchor=st.none()
    | st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("Pacific/Apia")]),
    ),
    after=st.datetimes(
        min_value=datetime(1950, 1, 1),
        max_value=datetime(2300, 1, 1),
        timezones=st.sampled_from([UTC, ZoneInfo("America/New_York")]),
    ),
)
def test_interval_fires_on_the_anchor_grid(
    every: timedelta, anchor: datetime | None, after: datetime
) -> None:
    schedule = IntervalSchedule(kind="interval", every=every, anchor=anchor)
    origin = EPOCH if anchor is None else anchor.astimezone(UTC)
    fire = next_fire(schedule, after)
    assert fire is not None
    assert fire.tzinfo is UTC
    assert fire > after
    assert (fire - origin) % every == timedelta(0)
    assert fire >= origin
    # Minimal: the previous grid point is not after `after` (or precedes the anchor).
    assert fire == origin or fire - every <= after
