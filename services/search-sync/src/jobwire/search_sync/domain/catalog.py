"""What the source database's catalog says about the tables a profile names.

Read by the source adapter (one query for columns, one for keys), checked and
turned into SQL here without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SCHEMA = "public"


def split_name(name: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` → (schema, table)."""
    schema, _, table = name.rpartition(".")
    return schema or DEFAULT_SCHEMA, table


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str  # format_type(): what a cast to this column's type is written as
    base_type: str  # pg_type.typname of the value (of the element, for an array)
    category: str  # pg_type.typcategory of the value: N numeric, S string, D date/time, ...
    is_array: bool = False
    is_enum: bool = False


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    schema: str
    table: str
    referenced: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    kind: str  # pg_class.relkind: r table, p partitioned, v view, m materialized view, f foreign
    columns: dict[str, Column]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_table(self) -> bool:
        return self.kind in ("r", "p")

    def references_to(self, other: Table) -> list[ForeignKey]:
        return [
            fk for fk in self.foreign_keys if (fk.schema, fk.table) == (other.schema, other.name)
        ]


@dataclass(slots=True)
class Catalog:
    tables: dict[tuple[str, str], Table] = field(default_factory=dict)

    def find(self, name: str) -> Table | None:
        return self.tables.get(split_name(name))
