"""The index's mappings, derived from the plan's columns where the profile gives none.

Both engines take the same mapping language for these types. Text gets a
``keyword`` sub-field (as dynamic mapping would) so a field can be searched
and also sorted or aggregated on; children are ``nested`` so a search for a
task's title and state matches one task, not one of each.
"""

from __future__ import annotations

from typing import Any

from jobwire.search_sync.domain.catalog import Column
from jobwire.search_sync.domain.plan import Plan, PlannedField

_BY_TYPE: dict[str, str] = {
    "int2": "short",
    "int4": "integer",
    "int8": "long",
    "oid": "long",
    "float4": "float",
    "float8": "double",
    "numeric": "double",
    "money": "double",
    "bool": "boolean",
    "date": "date",
    "timestamp": "date",
    "timestamptz": "date",
    "uuid": "keyword",
    "bytea": "binary",
    "inet": "ip",
    "json": "object",
    "jsonb": "object",
}
# The rest by category: S strings, D dates and times, N other numbers, B booleans.
_BY_CATEGORY: dict[str, str] = {"S": "text", "D": "date", "N": "double", "B": "boolean"}
_TEXT_KEYWORD = {"keyword": {"type": "keyword", "ignore_above": 256}}


def field_type(column: Column) -> str:
    """The engine type of a column's values (of its elements, for an array)."""
    if column.is_enum:
        return "keyword"
    found = _BY_TYPE.get(column.base_type) or _BY_CATEGORY.get(column.category)
    # time, interval, ranges, geometric types: kept as their text, searchable as a keyword.
    return found or "keyword"


def _property(field: PlannedField) -> dict[str, Any]:
    kind = field.type or field_type(field.column)
    if kind == "text":
        return {"type": "text", "fields": _TEXT_KEYWORD}
    if kind == "scaled_float":
        return {"type": "scaled_float", "scaling_factor": 100}
    return {"type": kind}


def _properties(fields: tuple[PlannedField, ...]) -> dict[str, Any]:
    return {f.name: _property(f) for f in fields}


def mappings(plan: Plan) -> dict[str, Any]:
    """``{"properties": ...}`` for the documents the plan builds."""
    properties = _properties(plan.fields)
    for child in plan.children:
        properties[child.name] = {"type": "nested", "properties": _properties(child.fields)}
    for lookup in plan.lookups:
        properties[lookup.name] = {"type": "object", "properties": _properties(lookup.fields)}
    return {"properties": properties}
