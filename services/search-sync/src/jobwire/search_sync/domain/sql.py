"""The SQL a plan runs on the source: documents built by PostgreSQL, and the change capture.

PostgreSQL writes each document's JSON itself (``row_to_json``, ``json_agg``):
the values arrive in the engine's formats (ISO 8601 times, numbers, arrays)
and the sync only splices text into bulk requests. Identifiers were checked
by the contracts' patterns; they are quoted here all the same.

Change capture (installed by ``jobwire search install``): one row trigger per
followed table records, for every row written, the values of the columns
that lead to a document (the root's key, a child's foreign key, a lookup's
key) — the new row's and, when they differ, the old row's — in
``jobwire_search.changes`` with the writing transaction's id. A run takes the
changes of transactions below its snapshot's ``xmin``: every such transaction
has ended, so a row committed late is never passed over (it is taken by the
run whose snapshot first sees it).
"""

from __future__ import annotations

import hashlib

from jobwire.search_sync.domain.catalog import Column, Table
from jobwire.search_sync.domain.plan import Capture, Child, Lookup, Plan, PlannedField

SCHEMA = "jobwire_search"
CHANGES = f"{SCHEMA}.changes"
CONSUMERS = f"{SCHEMA}.consumers"
TRIGGER_PREFIX = "jobwire_search_"


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_sql(table: Table) -> str:
    return f"{q(table.schema)}.{q(table.name)}"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _value(alias: str, column: Column) -> str:
    expression = f"{alias}.{q(column.name)}"
    if column.base_type == "bytea" and not column.is_array:
        return f"encode({expression}, 'base64')"  # the engines' binary fields take base64
    return expression


def _record(alias: str, fields: tuple[PlannedField, ...], extra: list[str] | None = None) -> str:
    """``(SELECT x FROM (SELECT a.col AS "field", ...) x)``: one row value, as JSON an object."""
    columns = [f"{_value(alias, f.column)} AS {q(f.name)}" for f in fields] + (extra or [])
    return f"(SELECT x FROM (SELECT {', '.join(columns) or 'NULL AS _'}) x)"


def _matches(
    left: str, left_columns: tuple[Column, ...], right: str, right_columns: tuple[Column, ...]
) -> str:
    return " AND ".join(
        f"{left}.{q(a.name)} = {right}.{q(b.name)}"
        for a, b in zip(left_columns, right_columns, strict=True)
    )


def _child(child: Child, key: tuple[Column, ...], i: int) -> str:
    alias = f"c{i}"
    order = ", ".join(f"{alias}.{q(name)}" for name in child.order_by)
    aggregate = f"json_agg({_record(alias, child.fields)}" + (
        f" ORDER BY {order})" if order else ")"
    )
    where = _matches(alias, child.foreign_key, "r", key)
    return (
        f"(SELECT COALESCE({aggregate}, '[]'::json) FROM {table_sql(child.table)} {alias} "
        f"WHERE {where}) AS {q(child.name)}"
    )


def _lookup(lookup: Lookup, i: int) -> str:
    alias = f"l{i}"
    where = _matches(alias, lookup.key, "r", lookup.root_columns)
    return (
        f"(SELECT row_to_json({_record(alias, lookup.fields)}) FROM {table_sql(lookup.table)} "
        f"{alias} WHERE {where}) AS {q(lookup.name)}"
    )


def key_text(alias: str, key: tuple[Column, ...]) -> str:
    """A key as canonical JSON text (``jsonb`` output), comparable with the captured keys."""
    return "jsonb_build_array(" + ", ".join(f"{alias}.{q(c.name)}" for c in key) + ")::text"


def document_id(alias: str, key: tuple[Column, ...]) -> str:
    if len(key) == 1:
        return f"{alias}.{q(key[0].name)}::text"
    return key_text(alias, key)


def _in_keys(alias: str, columns: tuple[Column, ...]) -> str:
    """``columns`` among the keys of parameter $1 (JSON arrays as text), indexable."""
    left = ", ".join(f"{alias}.{q(c.name)}" for c in columns)
    right = ", ".join(f"(k->>{i})::{c.sql_type}" for i, c in enumerate(columns))
    return f"({left}) IN (SELECT {right} FROM unnest($1::jsonb[]) AS k)"


def _document(plan: Plan) -> str:
    parts = [_child(c, plan.key, i) for i, c in enumerate(plan.children)]
    parts += [_lookup(lk, i) for i, lk in enumerate(plan.lookups)]
    # json_agg separates its elements with line breaks; outside strings (where JSON
    # escapes them) a line break is only white space, and NDJSON needs none.
    return f"replace(row_to_json({_record('r', plan.fields, parts)})::text, E'\\n', '')"


def documents_sql(plan: Plan) -> str:
    """Rows of (key, id, document JSON), one per root row."""
    return (
        f"SELECT {key_text('r', plan.key)} AS key, {document_id('r', plan.key)} AS id, "
        f"{_document(plan)} AS document FROM {table_sql(plan.root)} r"
    )


def documents_of_keys_sql(plan: Plan) -> str:
    """Rows of (key, id, document JSON) for each key of parameter $1 (JSON arrays as text);
    the document is NULL where the key has no row: that document is to be deleted."""
    match = " AND ".join(f"r.{q(c.name)} = (k->>{i})::{c.sql_type}" for i, c in enumerate(plan.key))
    # The same text document_id() gives for the row, computed from the key alone.
    ident = f"(k->>0)::{plan.key[0].sql_type}::text" if len(plan.key) == 1 else "k::text"
    return (
        f"SELECT k::text AS key, {ident} AS id, d.document FROM unnest($1::jsonb[]) AS k "
        f"LEFT JOIN LATERAL (SELECT {_document(plan)} AS document "
        f"FROM {table_sql(plan.root)} r WHERE {match}) d ON true"
    )


def count_sql(plan: Plan) -> str:
    return f"SELECT count(*) FROM {table_sql(plan.root)}"


def roots_of_lookup_sql(plan: Plan, lookup: Lookup) -> str:
    """The keys of the documents that show the lookup rows of parameter $1."""
    return (
        f"SELECT DISTINCT {key_text('r', plan.key)} FROM {table_sql(plan.root)} r "
        f"WHERE {_in_keys('r', lookup.root_columns)}"
    )


# -- change capture -------------------------------------------------------------

INSTALL_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {CHANGES} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    relation text NOT NULL,
    keys jsonb,  -- NULL: the table was truncated
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS changes_xid ON {CHANGES} (xid);
CREATE TABLE IF NOT EXISTS {CONSUMERS} (
    alias text PRIMARY KEY,
    index_name text NOT NULL,
    profile_hash text NOT NULL,
    watermark xid8 NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- SECURITY DEFINER: the application's roles write their tables without any
-- grant on this schema; search_path is pinned so the function cannot be misled.
CREATE OR REPLACE FUNCTION {SCHEMA}.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    relation text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
        || '(' || array_to_string(TG_ARGV, ',') || ')';
    row_values jsonb;
    new_keys jsonb;
    old_keys jsonb;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        row_values := to_jsonb(NEW);
        SELECT jsonb_agg(row_values -> a.c ORDER BY a.o) INTO new_keys
            FROM unnest(TG_ARGV) WITH ORDINALITY AS a(c, o);
        INSERT INTO {CHANGES} (relation, keys) VALUES (relation, new_keys);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        row_values := to_jsonb(OLD);
        SELECT jsonb_agg(row_values -> a.c ORDER BY a.o) INTO old_keys
            FROM unnest(TG_ARGV) WITH ORDINALITY AS a(c, o);
        IF new_keys IS DISTINCT FROM old_keys THEN
            INSERT INTO {CHANGES} (relation, keys) VALUES (relation, old_keys);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE FUNCTION {SCHEMA}.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    INSERT INTO {CHANGES} (relation, keys) VALUES (
        TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME || '(' || array_to_string(TG_ARGV, ',') || ')',
        NULL
    );
    RETURN NULL;
END
$fn$;
"""


def trigger_name(capture: Capture, suffix: str = "") -> str:
    digest = hashlib.sha256(capture.relation.encode()).hexdigest()[:12]
    return f"{TRIGGER_PREFIX}{digest}{suffix}"


def install_sql(plan: Plan) -> list[str]:
    """Statements that install the change capture a plan needs; running them again is harmless."""
    statements = [INSTALL_SCHEMA]
    for capture in plan.captures:
        table = table_sql(capture.table)
        args = ", ".join(literal(c) for c in capture.columns)
        row, truncate = trigger_name(capture), trigger_name(capture, "_t")
        statements += [
            f"DROP TRIGGER IF EXISTS {q(row)} ON {table}",
            f"CREATE TRIGGER {q(row)} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.capture({args})",
            f"DROP TRIGGER IF EXISTS {q(truncate)} ON {table}",
            f"CREATE TRIGGER {q(truncate)} AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.capture_truncate({args})",
        ]
    return statements
