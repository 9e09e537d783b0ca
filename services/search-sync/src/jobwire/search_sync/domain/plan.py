"""A document profile checked against the source's catalog: the plan the SQL is written from.

:func:`resolve` names every problem by its parameter's path
(``params.profile.children.0.table``), as the admin API names fields, and
fills in what the profile left to the catalog: the root's key, the foreign
keys of children and lookups, every column when no fields are listed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from jobwire.contracts.search import (
    DocumentProfile,
    FieldMap,
    IndexOptions,
    field_maps,
)
from jobwire.search_sync.domain.catalog import Catalog, Column, Table

PROFILE = "params.profile"


@dataclass(frozen=True, slots=True)
class PlannedField:
    column: Column
    name: str  # the document's field
    type: str | None  # asked for by the profile; None = derived from the column


@dataclass(frozen=True, slots=True)
class Child:
    table: Table
    name: str
    fields: tuple[PlannedField, ...]
    foreign_key: tuple[Column, ...]  # this table's columns holding the root's key, in its order
    order_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Lookup:
    table: Table
    name: str
    fields: tuple[PlannedField, ...]
    root_columns: tuple[Column, ...]  # the root's columns referencing the lookup
    key: tuple[Column, ...]  # the lookup's columns they reference


@dataclass(frozen=True, slots=True)
class Capture:
    """What a change-capture trigger on ``table`` records: the values of ``columns``.

    ``relation`` names the pair in the change table, so two profiles that follow
    the same table by different columns never read each other's changes.
    """

    table: Table
    columns: tuple[str, ...]

    @property
    def relation(self) -> str:
        return f"{self.table.qualified}({','.join(self.columns)})"


@dataclass(frozen=True, slots=True)
class Plan:
    root: Table  # the root table, or the view
    key: tuple[Column, ...]
    fields: tuple[PlannedField, ...]
    children: tuple[Child, ...]
    lookups: tuple[Lookup, ...]
    captures: tuple[Capture, ...]
    view_sources: tuple[Capture, ...]  # with a view: captures whose values are the view's key


class ProfileError(ValueError):
    """The profile does not fit the source; ``problems`` are (parameter path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


def profile_hash(profile: DocumentProfile) -> str:
    """A fingerprint of what documents look like, kept with the index a full load built."""
    canonical = json.dumps(profile.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def tables_named(profile: DocumentProfile) -> list[str]:
    """Every table or view the profile names, for the catalog read."""
    names = [profile.root or profile.view or ""]
    names += [c.table for c in profile.children] + [lk.table for lk in profile.lookups]
    names += [s.table for s in profile.view_sources]
    return names


class _Resolver:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def table(self, name: str, path: str, *, view: bool = False) -> Table | None:
        table = self.catalog.find(name)
        if table is None:
            what = "table or view" if view else "table"
            self.problem(path, f"no {what} {name!r} in the source database (or no access to it)")
            return None
        if not view and not table.is_table:
            self.problem(path, f"{name!r} is a view: name it in `view`, not here")
            return None
        return table

    def columns(self, table: Table, names: list[str], path: str) -> tuple[Column, ...] | None:
        found = []
        for i, name in enumerate(names):
            column = table.columns.get(name)
            if column is None:
                self.problem(f"{path}.{i}", f"no column {name!r} in {table.qualified}")
            else:
                found.append(column)
        return tuple(found) if len(found) == len(names) else None

    def fields(
        self, table: Table, fields: list[FieldMap | str] | None, path: str, skip: tuple[str, ...]
    ) -> tuple[PlannedField, ...]:
        maps = field_maps(fields)
        if maps is None:
            # Every column, but not the foreign key that points back to the parent:
            # it repeats what the document is already about.
            return tuple(
                PlannedField(column, column.name, None)
                for column in table.columns.values()
                if column.name not in skip
            )
        planned, names = [], set()
        for i, item in enumerate(maps):
            column = table.columns.get(item.column)
            if column is None:
                self.problem(
                    f"{path}.{i}.column", f"no column {item.column!r} in {table.qualified}"
                )
                continue
            if item.name in names:
                self.problem(f"{path}.{i}", f"field {item.name!r} is given twice")
                continue
            names.add(item.name)
            planned.append(PlannedField(column, item.name, item.type))
        return tuple(planned)


def resolve(profile: DocumentProfile, catalog: Catalog, index: IndexOptions | None = None) -> Plan:
    """The plan of ``profile`` over ``catalog``; :class:`ProfileError` naming every problem."""
    r = _Resolver(catalog)
    is_view = profile.view is not None
    root_path = f"{PROFILE}.view" if is_view else f"{PROFILE}.root"
    root = r.table(profile.view or profile.root or "", root_path, view=is_view)
    if root is None:
        raise ProfileError(r.problems)
    if profile.key is not None:
        key = r.columns(root, profile.key, f"{PROFILE}.key")
    elif root.primary_key:
        key = tuple(root.columns[name] for name in root.primary_key)
    else:
        r.problem(f"{PROFILE}.key", f"{root.qualified} has no primary key: name the key columns")
        key = None
    fields = r.fields(root, profile.fields, f"{PROFILE}.fields", skip=())
    names = {f.name for f in fields}

    children: list[Child] = []
    for i, spec in enumerate(profile.children):
        path = f"{PROFILE}.children.{i}"
        child = r.table(spec.table, f"{path}.table")
        if child is None or key is None:
            continue
        if spec.foreign_key is not None:
            fk = r.columns(child, spec.foreign_key, f"{path}.foreign_key")
            if fk is not None and len(fk) != len(key):
                r.problem(f"{path}.foreign_key", f"the root's key has {len(key)} column(s)")
                fk = None
        else:
            found = [
                fk
                for fk in child.references_to(root)
                if fk.referenced == tuple(c.name for c in key)
            ]
            if len(found) != 1:
                how = "no foreign key" if not found else "several foreign keys"
                r.problem(
                    f"{path}.foreign_key",
                    f"{how} from {child.qualified} to the key of {root.qualified}: "
                    "name the columns",
                )
                fk = None
            else:
                fk = tuple(child.columns[name] for name in found[0].columns)
        order = spec.order_by or list(child.primary_key)
        if spec.order_by is not None:
            r.columns(child, spec.order_by, f"{path}.order_by")
        if fk is None:
            continue
        skip = tuple(c.name for c in fk)
        child_fields = r.fields(child, spec.fields, f"{path}.fields", skip=skip)
        children.append(Child(child, spec.name, child_fields, fk, tuple(order)))
        if spec.name in names:
            r.problem(f"{path}.field", f"{spec.name!r} is also a field of the root")

    lookups: list[Lookup] = []
    for i, lspec in enumerate(profile.lookups):
        path = f"{PROFILE}.lookups.{i}"
        target = r.table(lspec.table, f"{path}.table")
        if target is None:
            continue
        if lspec.foreign_key is not None:
            root_columns = r.columns(root, lspec.foreign_key, f"{path}.foreign_key")
            if not target.primary_key:
                r.problem(f"{path}.table", f"{target.qualified} has no primary key to look up by")
                continue
            if root_columns is not None and len(root_columns) != len(target.primary_key):
                r.problem(
                    f"{path}.foreign_key",
                    f"the key of {target.qualified} has {len(target.primary_key)} column(s)",
                )
                root_columns = None
            referenced = target.primary_key
        else:
            links = root.references_to(target)
            if len(links) != 1:
                how = "no foreign key" if not links else "several foreign keys"
                r.problem(
                    f"{path}.foreign_key",
                    f"{how} from {root.qualified} to {target.qualified}: name the columns",
                )
                continue
            root_columns = tuple(root.columns[name] for name in links[0].columns)
            referenced = links[0].referenced
        if root_columns is None:
            continue
        lookup_fields = r.fields(target, lspec.fields, f"{path}.fields", skip=())
        lookups.append(
            Lookup(
                target,
                lspec.name,
                lookup_fields,
                root_columns,
                tuple(target.columns[name] for name in referenced),
            )
        )
        if lspec.name in names:
            r.problem(f"{path}.field", f"{lspec.name!r} is also a field of the root")

    view_sources: list[Capture] = []
    for i, source in enumerate(profile.view_sources):
        path = f"{PROFILE}.view_sources.{i}"
        table = r.table(source.table, f"{path}.table")
        if table is None:
            continue
        if r.columns(table, source.key, f"{path}.key") is None:
            continue
        if key is not None and len(source.key) != len(key):
            r.problem(f"{path}.key", f"the view's key has {len(key)} column(s)")
            continue
        view_sources.append(Capture(table, tuple(source.key)))

    if index is not None and index.mappings is not None and "properties" not in index.mappings:
        r.problem("params.index.mappings", "give `properties`, or leave mappings empty")
    if r.problems or key is None:
        raise ProfileError(r.problems)
    captures = [] if is_view else [Capture(root, tuple(c.name for c in key))]
    captures += [Capture(c.table, tuple(col.name for col in c.foreign_key)) for c in children]
    captures += [Capture(lk.table, tuple(col.name for col in lk.key)) for lk in lookups]
    captures += view_sources
    return Plan(
        root, key, fields, tuple(children), tuple(lookups), tuple(captures), tuple(view_sources)
    )
