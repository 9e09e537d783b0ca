"""Checks on input that pydantic's models do not make.

PostgreSQL cannot store a NUL character in text or JSON, nor NaN or Infinity
in JSON (which Python's parser accepts). Both are refused here, with the field
named, instead of failing later. (The range of a definition's times is the
definition's own rule: ``domain/definitions.py``.)
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request

from jobwire.scheduler.api.problems import invalid

_NUL = "\x00"


def check_json(value: Any, field: str) -> None:
    """Raise a 422 naming the first field of ``value`` (JSON-like) that cannot be
    stored: a string with a NUL character, or a number that is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(field or "body", "must be a finite number")
    if isinstance(value, str):
        if _NUL in value:
            raise invalid(field, "must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{key}" if field else str(key)
            if _NUL in str(key):
                raise invalid(path, "must not contain NUL characters")
            check_json(item, path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{field}.{index}" if field else str(index))


async def clean_request(request: Request) -> None:
    """Router dependency: no NUL in path or query parameters."""
    for name, value in request.path_params.items():
        check_json(value, name)
    for name, value in request.query_params.multi_items():
        check_json(value, name)


def parse_etag(value: str, field: str = "If-Match") -> int:
    """``"3"``, ``W/"3"`` or ``3`` → 3."""
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 9:
        raise invalid(field, 'must be the job\'s version as an entity tag, e.g. "3"')
    return int(text)
