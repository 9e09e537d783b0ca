"""Values typed on the command line: times and ``key=value`` parameters."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jobwire.cli.client import CliError

_AGO = re.compile(r"^(?:\d+[smhdw])+$")
_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, option: str, now: datetime | None = None) -> str:
    """``now``, a time ago (``90s``, ``15m``, ``1h30m``, ``7d``, ``2w``) or ISO 8601.

    A time without an offset is local time, as ``date`` prints it. Returned as
    ISO 8601 with its offset, which is what the API takes.
    """
    value = text.strip()
    current = now or datetime.now(UTC)
    if value == "now":
        return current.isoformat()
    if _AGO.match(value):
        delta = timedelta()
        for amount, unit in _PART.findall(value):
            delta += timedelta(**{_UNITS[unit]: int(amount)})
        return (current - delta).isoformat()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{option}: {text!r} is not a time: use ISO 8601 (2026-03-29T02:30:00+02:00, "
            "2026-03-29T00:30Z), a time ago (15m, 2h, 7d) or now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return moment.isoformat()


def parse_params(pairs: Sequence[str], option: str = "--param") -> dict[str, Any]:
    """``k=v`` pairs; each value is JSON when it parses as JSON, else the string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            # The pair is not echoed: a value may be a secret.
            raise CliError(f"{option}: each value must be key=value (e.g. {option} n=3)")
        if key in params:
            raise CliError(f"{option}: {key} is given twice")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params
