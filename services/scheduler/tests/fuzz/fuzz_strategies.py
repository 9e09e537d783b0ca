"""Hypothesis strategies for the admin API fuzz test: job definitions (scheduled and
listener), updates, triggers, previews and backfills, mostly valid, then mutated.

A body is drawn in two steps: a definition that is valid or nearly so (every
schedule kind and policy, extreme and naive datetimes, odd strings), then zero
or more mutations (a value replaced by a wrong type, a key dropped or invented,
deep nesting, huge strings). Finally it is encoded, usually as JSON, sometimes
as bytes no JSON parser accepts or under a wrong content type. The test, not
the strategies, knows what a good answer is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

# The largest string a body may carry; the fuzz profile raises it (a few MB) to
# reach NATS' 1 MB message limit, the CI profile keeps requests cheap.
_limits = {"huge": 64 * 1024}


def set_huge_limit(size: int) -> None:
    _limits["huge"] = size


# -- datetimes ----------------------------------------------------------------------

EXTREME_TIMES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",  # valid ISO 8601, before year 1 in UTC
    "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:00:00-05:00",  # after year 9999 in UTC
    "9999-12-31T23:59:59-23:59",
    "2026-06-01T12:00:00+23:59",
    "2026-06-01T12:00:00-23:59",
    "2026-06-01T12:00:00+24:00",
    "2016-12-31T23:59:60Z",  # a leap second
    "2026-02-30T00:00:00Z",
    "2026-06-01T12:00:00",  # naive
    "2026-06-01",
    "2026-06-01T12:00:00ZZ",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "+10000-01-01T00:00:00Z",
    "now",
    "",
]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@st.composite
def relative_times(draw: st.DrawFn) -> str:
    """An instant near now: the past (a once that can never fire) or the near future."""
    offset = draw(
        st.one_of(
            st.integers(-86_400 * 365, 86_400 * 365),
            st.sampled_from([-3600, -1, 0, 1, 2, 5, 3600]),
        )
    )
    return _iso(datetime.now(UTC) + timedelta(seconds=offset))


def times() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(EXTREME_TIMES),
        relative_times(),
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.datetimes().map(lambda d: d.isoformat()),  # naive
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False),
    )


# -- strings ---------------------------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x00b",
    "\u0000\u0001\u001f\u007f",
    "\ud800",  # a lone surrogate (json.dumps writes it as \\ud800)
    "\U0001f600" * 10,
    "e\u0301",  # combining accent
    "\u202e" + "evil",  # right-to-left override
    "\ufeff" + "bom",
    "null",
    "../../etc/passwd",
    "%00",
    "' OR 1=1 --",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "a" * 201,
]


@st.composite
def huge_strings(draw: st.DrawFn) -> str:
    size = draw(st.sampled_from([1000, 10_000, 100_000, _limits["huge"]]))
    size = min(size, _limits["huge"])
    return draw(st.sampled_from(["x", "\u00e9", "\U0001f600", "\\"])) * size


def odd_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_STRINGS),
        st.text(max_size=40),
        st.text(st.characters(codec="utf-8"), max_size=20),
        st.text(st.characters(max_codepoint=0x1F), max_size=5),
    )


def any_strings() -> st.SearchStrategy[str]:
    return st.one_of(odd_strings(), huge_strings())


def deep(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for n in range(depth):
        value = [value] if n % 2 else {"d": value}
    return value


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, including ones of a wrong type for every field."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        odd_strings(),
    )
    return st.one_of(
        scalars,
        st.sampled_from([[], {}, 2**63, -(2**63) - 1, 10**400, 1e308, -0.0, 5e-324]),
        st.integers(2, 600).map(deep),
        st.recursive(scalars, lambda kids: st.lists(kids, max_size=3), max_leaves=8),
        st.dictionaries(odd_strings(), scalars, max_size=3),
        huge_strings(),
    )


# -- schedules -----------------------------------------------------------------------

CRON_EXPRESSIONS = [
    "* * * * * *",
    "*/5 * * * * *",
    "0 3 * * *",
    "0 9 * * MON-FRI",
    "0 0 12 L * ?",
    "0 0 12 LW * ?",
    "0 0 12 15W * ?",
    "0 15 10 ? * 6L",
    "0 15 10 ? * FRI#3",
    "0 15 10 ? * 5#6",
    "0 0 12 ? * MON#0",
    "0 0 0 ? * 1-7",
    "0 0 12 * * ? 2030",  # Quartz's year field
    "0 0/5 14 * * ?",
    "0 0 12 1/5 * ?",
    "0 0 12 L-3 * ?",
    "0 0 12 L-40 * ?",
    "0 0 12 32W * ?",
    "0 0 0 29 2 *",
    "0 0 30 2 *",  # never matches
    "0 0 31 4,6,9,11 *",
    "@hourly",
    "@yearly",
    "@reboot",
    "@every 5s",
    "*/0 * * * *",
    "60 * * * *",
    "1-0 * * * *",
    "5-1/2 * * * *",
    "0-59/999999999999999999999 * * * *",
    "* * * * ? ?",
    "? * * * *",
    "L * * * *",
    "* * * * 8",
    "* * * JAN-DEC/13 *",
    "* * * * SUN-SAT#1",
    "#",
    "W",
    "1W-L * * * *",
    ",,,, * * * *",
    "* * * * *   ",
    "*\t*\t*\t*\t*",
    "",
    "* * * * * * * *",
    "9" * 5000 + " * * * *",
]

TIMEZONES = [
    "UTC",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "America/St_Johns",
    "Europe/berlin",
    "right/UTC",
    "posix/Europe/Berlin",
    "localtime",
    "Factory",
    "EST5EDT",
    "Etc/GMT+12",
    "+05:00",
    "../../etc/passwd",
    "",
]

DURATIONS = [
    "PT1S",
    "PT0.5S",
    "PT0.999999S",
    "PT1.0000001S",
    "P1D",
    "P1W",
    "P999999999D",
    "P1Y",
    "P1M",
    "-PT1S",
    "PT-1S",
    "P",
    "PT",
    "1 day",
    "00:00:01",
    "999999999 days, 23:59:59.999999",
    1,
    0,
    -1,
    0.5,
    86_400 * 365 * 10_000,
    1e308,
    2**63,
    True,
]


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["cron", "interval", "once"]))
    if kind == "cron":
        schedule: dict[str, Any] = {
            "kind": "cron",
            "expression": draw(st.one_of(st.sampled_from(CRON_EXPRESSIONS), odd_strings())),
        }
        if draw(st.booleans()):
            schedule["timezone"] = draw(st.one_of(st.sampled_from(TIMEZONES), odd_strings()))
        return schedule
    if kind == "interval":
        schedule = {"kind": "interval", "every": draw(st.sampled_from(DURATIONS))}
        if draw(st.booleans()):
            schedule["anchor"] = draw(times())
        return schedule
    return {"kind": "once", "at": draw(times())}


# -- definitions -----------------------------------------------------------------------

LISTENER_TYPES = [
    "kafka-subscriber",
    "message-bus-listener",
    "file-listener",
    "servicebus-listener",
    "email-listener",
]
SECRET_NAMES = ["kafka-user", "a", "UPPER", "with space", "../x", "a" * 129, "", "ok_name-1"]


@st.composite
def storages(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["local", "s3", "azure-blob", "ftp", "", None]))
    if kind == "local":
        return {"kind": kind, "root": draw(st.sampled_from(["/srv/in", "", "relative", "/"]))}
    if kind == "s3":
        return {
            "kind": kind,
            "bucket": draw(st.sampled_from(["inbox", "ab", "x" * 64])),
            "access_key_id": draw(st.sampled_from(SECRET_NAMES)),
            "secret_access_key": draw(st.sampled_from(SECRET_NAMES)),
        }
    if kind == "azure-blob":
        return {
            "kind": kind,
            "container": "inbox",
            "connection_string": draw(st.sampled_from(SECRET_NAMES)),
        }
    return {"kind": kind, "root": "/srv"}


@st.composite
def listener_params(draw: st.DrawFn, job_type: str) -> dict[str, Any]:
    params: dict[str, Any] = {"workflow": draw(workflows())}
    if job_type == "kafka-subscriber":
        params["bootstrap_servers"] = draw(
            st.sampled_from([["127.0.0.1:9"], [], "127.0.0.1:9", [1]])
        )
        if draw(st.booleans()):
            params["topics"] = draw(st.sampled_from([["orders"], [], [""]]))
        else:
            params["topic_pattern"] = draw(st.sampled_from(["orders-.*", "(", "[a-", "a{99999}"]))
        if draw(st.booleans()):
            params["security_protocol"] = draw(st.sampled_from(["SASL_SSL", "SSL", "TLS"]))
            params["sasl_mechanism"] = "PLAIN"
            params["sasl_username"] = draw(st.sampled_from(SECRET_NAMES))
            params["sasl_password"] = draw(st.sampled_from(SECRET_NAMES))
    elif job_type == "message-bus-listener":
        params["mode"] = draw(st.sampled_from(["core", "jetstream", "pull"]))
        params["subject"] = draw(st.sampled_from(["orders.>", "", ">", "a b", "a..b"]))
        if params["mode"] == "jetstream" or draw(st.booleans()):
            params["stream"] = draw(st.sampled_from(["ORDERS", "", "a.b", "x" * 300]))
    elif job_type == "file-listener":
        params["storage"] = draw(storages())
        if draw(st.booleans()):
            params["poll_seconds"] = draw(st.sampled_from([0, 0.001, 3600, 3601, -1, "5"]))
    elif job_type == "servicebus-listener":
        params["connection_string"] = draw(st.sampled_from(SECRET_NAMES))
        params["queue"] = draw(st.sampled_from(["orders", "", None]))
        if draw(st.booleans()):
            params["topic"], params["subscription"] = "t", "s"
    elif job_type == "email-listener":
        params["host"] = draw(st.sampled_from(["127.0.0.1", "", "imap.example.test"]))
        params["username"] = draw(st.sampled_from(SECRET_NAMES))
        params["password"] = draw(st.sampled_from(SECRET_NAMES))
        if draw(st.booleans()):
            params["port"] = draw(st.sampled_from([0, 1, 65_535, 65_536, -1]))
        if draw(st.booleans()):
            params["attachments"] = draw(storages())
    if draw(st.booleans()):
        params["max_message_bytes"] = draw(st.sampled_from([0, 1, 64 * 2**20, 64 * 2**20 + 1]))
    return params


def workflows() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["fuzz-wf", "hello", "a.b", "a b", "*", ">", "", "x" * 300]),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    )


def names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"fz-[A-Za-z0-9._-]{1,12}", fullmatch=True),
        st.sampled_from(["fz a", "fz.", "-fz", " fz", "fz/x", "fz%2F", "fz\u00e9", "f" * 201]),
    )


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["misfire"] = {
            "policy": draw(st.sampled_from(["skip", "fire_once", "fire_all", "FIRE_ALL", ""])),
            "max_catch_up": draw(st.sampled_from([0, 1, 10, 1000, 1001, 2**31])),
            "grace_seconds": draw(st.sampled_from([-1, 0, 0.5, 60, 1e308, 10**30])),
        }
    if draw(st.booleans()):
        out["overlap"] = {
            "policy": draw(st.sampled_from(["allow", "queue", "skip", "replace"])),
            "max_parallel": draw(st.sampled_from([0, 1, 1000, 1001])),
            "max_queued": draw(st.sampled_from([-1, 0, 10_000, 10_001])),
        }
    return out


@st.composite
def definitions(draw: st.DrawFn, existing: Callable[[], list[str]] = list) -> dict[str, Any]:
    """A job definition: scheduled (start-workflow) or a listener, valid or nearly so.

    ``existing`` gives the names of the jobs that exist now (names, renames and
    chains onto them); it is read through ``known``, so that the shape of what
    is drawn does not depend on it (Hypothesis requires that).
    """
    if draw(st.integers(0, 2)) == 0:
        return draw(valid_definitions(existing))
    name = draw(st.one_of(names(), known(existing)))
    listener = draw(st.integers(0, 3)) == 0
    body: dict[str, Any] = {"name": name}
    if listener:
        job_type = draw(st.sampled_from(LISTENER_TYPES))
        body["type"] = job_type
        body["params"] = draw(listener_params(job_type))
        if draw(st.booleans()):
            body["replicas"] = draw(st.sampled_from([0, 1, 2, 64, 65, -1]))
    else:
        body["type"] = draw(st.sampled_from(["start-workflow"] * 6 + ["no-such-type", ""]))
        params: dict[str, Any] = {"workflow": draw(workflows())}
        if draw(st.booleans()):
            params["input"] = draw(st.dictionaries(st.text(max_size=5), json_values(), max_size=3))
        body["params"] = params
        body["schedule"] = draw(st.one_of(schedules(), st.none()))
    body.update(draw(policies()))
    for key, values in {
        "start_at": times(),
        "expires_at": times(),
        "description": any_strings(),
        "group": st.one_of(st.sampled_from(["fz-group", ""]), odd_strings()),
        "tags": st.lists(odd_strings(), max_size=3),
        "priority": st.sampled_from([-1001, -1000, 0, 1000, 1001]),
        "max_attempts": st.sampled_from([0, 1, 100, 101]),
        "retry_backoff_seconds": st.sampled_from([0, 0.001, 86_400, 86_401]),
        "timeout_seconds": st.sampled_from([None, 0, 1, 1e308]),
        "enabled": st.booleans(),
        "after": st.lists(
            st.fixed_dictionaries(
                {
                    "job": st.one_of(known(existing), st.sampled_from([name, "nope", ""])),
                    "on": st.sampled_from(["succeeded", "failed", "finished", "always"]),
                }
            ),
            max_size=2,
        ),
    }.items():
        if draw(st.integers(0, 4)) == 0:
            body[key] = draw(values)
    return draw(mutated(body))


def known(existing: Callable[[], list[str]]) -> st.SearchStrategy[str]:
    """One of the names ``existing()`` returns when drawn (a fresh one if none)."""

    def pick(index: int) -> str:
        names = existing()
        return names[index % len(names)] if names else "fz-nope"

    return st.integers(0, 2**16).map(pick)


# Aware times a definition may carry, the extreme ones included: only what the
# server does with them (fire, refuse, crash) can be wrong.
VALID_TIMES = [
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T05:00:00+05:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T00:00:00-23:59",
    "1970-01-01T00:00:00Z",
    "2000-02-29T12:00:00+23:59",
]
VALID_CRON = [
    "* * * * * *",
    "*/2 * * * * *",
    "0 3 * * *",
    "0 0 12 L * ?",
    "0 0 12 LW * ?",
    "0 15 10 ? * 6L",
    "0 15 10 ? * FRI#5",
    "0 0 0 29 2 *",
    "59 59 23 31 12 *",
    "@yearly",
]
VALID_DURATIONS = ["PT1S", "PT1.5S", "PT1H", "P1D", "P999999999D", 1, 86_400 * 365 * 9000]


@st.composite
def valid_times(draw: st.DrawFn) -> str:
    # Mostly the extremes: a near-now time is what every other test already uses.
    return draw(
        st.one_of(st.sampled_from(VALID_TIMES), st.sampled_from(VALID_TIMES), relative_times())
    )


@st.composite
def valid_schedules(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["cron", "interval", "once"]))
    if kind == "cron":
        return {
            "kind": "cron",
            "expression": draw(st.sampled_from(VALID_CRON)),
            "timezone": draw(st.sampled_from(TIMEZONES[:6])),
        }
    if kind == "interval":
        schedule: dict[str, Any] = {
            "kind": "interval",
            "every": draw(st.sampled_from(VALID_DURATIONS)),
        }
        if draw(st.booleans()):
            schedule["anchor"] = draw(valid_times())
        return schedule
    return {"kind": "once", "at": draw(valid_times())}


@st.composite
def valid_definitions(draw: st.DrawFn, existing: Callable[[], list[str]] = list) -> dict[str, Any]:
    """A definition every field of which is of the right type and in its documented
    bounds, with extreme values where the bounds allow them (year 1 and 9999, a
    once in the past, the largest catch-up, a 64-replica Kafka listener)."""
    name = draw(
        st.one_of(st.from_regex(r"fz-[A-Za-z0-9._-]{1,12}", fullmatch=True), known(existing))
    )
    body: dict[str, Any] = {"name": name}
    if draw(st.integers(0, 3)) == 0:
        body["type"] = "kafka-subscriber"
        body["params"] = {
            "workflow": "fuzz-wf",
            "bootstrap_servers": ["127.0.0.1:9"],
            "topics": ["fuzz"],
            "session_timeout_ms": 300_000,
        }
        body["replicas"] = draw(st.sampled_from([1, 64]))
    else:
        body["type"] = "start-workflow"
        body["params"] = {"workflow": draw(st.from_regex(r"fz[a-z0-9-]{0,10}", fullmatch=True))}
        if draw(st.booleans()):
            body["params"]["input"] = {"blob": draw(huge_strings())}
        body["schedule"] = draw(valid_schedules())
        body["misfire"] = {
            "policy": draw(st.sampled_from(["skip", "fire_once", "fire_all"])),
            "max_catch_up": draw(st.sampled_from([1, 1000])),
            "grace_seconds": draw(st.sampled_from([0, 60, 1e9])),
        }
        body["overlap"] = {
            "policy": draw(st.sampled_from(["allow", "queue", "skip"])),
            "max_parallel": draw(st.sampled_from([1, 1000])),
            "max_queued": draw(st.sampled_from([0, 10_000])),
        }
    if draw(st.booleans()):
        body["start_at"] = draw(valid_times())
    if draw(st.booleans()):
        body["expires_at"] = draw(valid_times())
    if draw(st.booleans()):
        body["after"] = [{"job": draw(known(existing)), "on": "finished"}]
    return body


# -- mutations -------------------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _set(copy[head], tuple(rest), new)
    return copy


def _drop(value: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        copy = dict(value) if isinstance(value, dict) else list(value)
        del copy[path[0]]
        return copy
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _drop(copy[head], tuple(rest))
    return copy


@st.composite
def mutated(draw: st.DrawFn, body: Any, max_mutations: int = 3) -> Any:
    """``body`` with 0..max_mutations mutations (half of the bodies are left alone)."""
    if draw(st.booleans()):
        return body
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "replace" or (not path and action == "drop"):
            body = _set(body, path, draw(json_values()))
        elif action == "drop":
            body = _drop(body, path)
        else:
            target = body
            for part in path:
                target = target[part]
            if isinstance(target, dict):
                body = _set(body, path, {**target, draw(odd_strings()): draw(json_values())})
    return body


# -- other bodies ----------------------------------------------------------------------


@st.composite
def trigger_bodies(draw: st.DrawFn) -> Any:
    body = {"params": draw(st.dictionaries(odd_strings(), json_values(), max_size=3))}
    if draw(st.booleans()):
        body["params"]["workflow"] = draw(workflows())
    if draw(st.booleans()):
        body["params"]["input"] = draw(json_values())
    return draw(st.one_of(st.just(body), st.none(), mutated(body)))


@st.composite
def preview_bodies(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {}
    choice = draw(st.sampled_from(["schedule", "definition", "both", "neither"]))
    if choice in {"schedule", "both"}:
        body["schedule"] = draw(schedules())
    if choice in {"definition", "both"}:
        body["definition"] = draw(definitions())
    if draw(st.booleans()):
        body["count"] = draw(st.sampled_from([0, 1, 1000, 1001, -1, "10", 1.5]))
    if draw(st.booleans()):
        body["after"] = draw(times())
    return draw(mutated(body))


@st.composite
def backfill_bodies(draw: st.DrawFn) -> Any:
    now = datetime.now(UTC)
    start = draw(st.one_of(times(), st.just(_iso(now - timedelta(seconds=30)))))
    end = draw(st.one_of(times(), st.just(_iso(now - timedelta(seconds=1)))))
    body: dict[str, Any] = {"from": start, "to": end, "dry_run": draw(st.booleans())}
    if draw(st.booleans()):
        body["max_runs"] = draw(st.sampled_from([0, 1, 10_000, 10_001]))
    if draw(st.booleans()):
        body["rate_per_second"] = draw(st.sampled_from([0, 0.001, 10_000, 10_001, 1e308]))
    return draw(mutated(body))


# -- encodings -------------------------------------------------------------------------

JSON = "application/json"


@dataclass(frozen=True)
class Encoded:
    """A request body as bytes on the wire, and the content type sent with it."""

    content: bytes | None
    content_type: str | None
    how: str = "json"
    extra_headers: dict[str, str] = field(default_factory=dict)

    def short(self, limit: int = 600) -> str:
        text = (self.content or b"").decode("utf-8", "backslashreplace")
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


RAW_BODIES = [
    b"",
    b"{",
    b"{}}",
    b"null",
    b"[]",
    b'"a string"',
    b"\xff\xfe\x00{",
    b'{"name": "\xff\xfe"}',  # invalid UTF-8 inside a string
    b'{"name": "\xed\xa0\x80"}',  # an encoded surrogate
    b"\xef\xbb\xbf{}",  # UTF-8 byte-order mark
    b'{"name": NaN}',
    b'{"priority": Infinity}',
    b'{"name": "a", "name": "b"}',
    b'{"name": 1e999999}',
    b'{"a": ' + b"1" * 5000 + b"}",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"[" * 100_000,
]
CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/merge-patch+json",
    "application/problem+json",
    "application/vnd.api+json",
    "*/*",
    "",
    "json",
]


def dumps(body: Any) -> bytes:
    # allow_nan: Python writes NaN/Infinity, which its own parser (and FastAPI's) accepts.
    return json.dumps(body, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def encoded(draw: st.DrawFn, body: Any) -> Encoded:
    """Usually ``body`` as JSON; sometimes raw bytes or a wrong content type."""
    way = draw(st.sampled_from(["json"] * 8 + ["raw", "content-type", "no-content-type"]))
    if way == "raw":
        return Encoded(draw(st.sampled_from(RAW_BODIES)), JSON, "raw")
    content = dumps(body)
    if way == "content-type":
        return Encoded(content, draw(st.sampled_from(CONTENT_TYPES)), "content-type")
    if way == "no-content-type":
        return Encoded(content, None, "no-content-type")
    return Encoded(content, JSON)
