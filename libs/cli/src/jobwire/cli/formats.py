"""JSON and YAML as the CLI reads and writes them.

YAML is read with the YAML 1.2 core schema rather than PyYAML's YAML 1.1 one:
under 1.1, ``on: failed`` in a chaining rule has the key ``True``, ``12:30`` is
the integer 750, ``0755`` is octal and an unquoted time becomes a ``datetime``
that JSON cannot carry. Job definitions are written by people, so only
``true``/``false`` are booleans, only plain decimals are numbers, and times
stay the strings they were written as. When writing, any string that either
schema would read as something else is quoted, so the files the CLI writes
read back the same in other YAML tools too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml  # type: ignore[import-untyped]

_CORE_SCHEMA: list[tuple[str, str, str]] = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9]*)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        # A dot or an exponent makes a float; 0755 stays a string, as for ints.
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("tag:yaml.org,2002:merge", r"^<<$", "<"),
]
_NULL = ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])


def _resolvers(*bases: dict[Any, Any]) -> dict[Any, Any]:
    table: dict[Any, list[Any]] = {}
    for base in bases:
        for first, entries in base.items():
            table.setdefault(first, []).extend(entries)
    for tag, pattern, firsts in [*_CORE_SCHEMA, _NULL]:
        for first in firsts:
            table.setdefault(first, []).append((tag, re.compile(pattern)))
    return table


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    pass


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    pass


_Loader.yaml_implicit_resolvers = _resolvers()
# The dumper knows both schemas, so it quotes "on", "1e3", "12:30", "2026-01-01"…
_Dumper.yaml_implicit_resolvers = _resolvers(yaml.SafeDumper.yaml_implicit_resolvers)


class DocumentError(ValueError):
    """A file that is not valid JSON or YAML."""


def load_document(text: str, source: str) -> Any:
    """Parse ``text`` as JSON when ``source`` ends in ``.json``, else as YAML
    (which also reads JSON)."""
    if source.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(
                f"{source}: not valid JSON: {exc.msg} (line {exc.lineno})"
            ) from None
        except ValueError as exc:  # an integer of more digits than Python converts
            raise DocumentError(f"{source}: not valid JSON: {exc}") from None
        except RecursionError:
            raise DocumentError(f"{source}: not valid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        raise DocumentError(
            f"{source}: not valid YAML: {problem or 'cannot be parsed'}{where}"
        ) from None
    except RecursionError:
        raise DocumentError(f"{source}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError) as exc:
        # A value the constructor cannot build: a 5,000-digit integer, a bad
        # !!timestamp or !!binary.
        raise DocumentError(f"{source}: not valid YAML: {exc}") from None


def dump_yaml(data: Any) -> str:
    text: str = yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return text


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
