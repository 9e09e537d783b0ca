"""A profile checked against a catalog: what is filled in, and every problem named by its path."""

from __future__ import annotations

import pytest

from jobwire.contracts.search import DocumentProfile
from jobwire.search_sync.domain.catalog import Catalog, Column, ForeignKey, Table
from jobwire.search_sync.domain.plan import ProfileError, resolve
from jobwire.search_sync.domain.sql import documents_of_keys_sql, install_sql


def _col(name: str, sql_type: str = "bigint", base: str = "int8") -> Column:
    return Column(name, sql_type, base, "N" if base.startswith("int") else "S")


def _catalog() -> Catalog:
    cases = Table(
        "caseapp",
        "cases",
        "r",
        {c.name: c for c in [_col("id"), _col("title", "text", "text"), _col("customer_id")]},
        ("id",),
        (ForeignKey(("customer_id",), "caseapp", "customers", ("id",)),),
    )
    tasks = Table(
        "caseapp",
        "tasks",
        "r",
        {c.name: c for c in [_col("id"), _col("case_id"), _col("title", "text", "text")]},
        ("id",),
        (ForeignKey(("case_id",), "caseapp", "cases", ("id",)),),
    )
    customers = Table(
        "caseapp",
        "customers",
        "r",
        {c.name: c for c in [_col("id"), _col("name", "text", "text")]},
        ("id",),
    )
    return Catalog({(t.schema, t.name): t for t in (cases, tasks, customers)})


def test_keys_and_foreign_keys_come_from_the_catalog() -> None:
    profile = DocumentProfile(
        root="caseapp.cases",
        children=[{"table": "caseapp.tasks"}],
        lookups=[{"table": "caseapp.customers", "field": "customer"}],
    )
    plan = resolve(profile, _catalog())
    assert [c.name for c in plan.key] == ["id"]
    assert [c.name for c in plan.children[0].foreign_key] == ["case_id"]
    # the child's foreign key is left out of its objects: it repeats the root's key
    assert [f.name for f in plan.children[0].fields] == ["id", "title"]
    assert [c.name for c in plan.lookups[0].root_columns] == ["customer_id"]
    assert [c.relation for c in plan.captures] == [
        "caseapp.cases(id)",
        "caseapp.tasks(case_id)",
        "caseapp.customers(id)",
    ]
    sql = documents_of_keys_sql(plan)
    assert '"caseapp"."tasks" c0 WHERE c0."case_id" = r."id"' in sql
    assert "unnest($1::jsonb[])" in sql
    assert any("EXECUTE FUNCTION jobwire_search.capture('case_id')" in s for s in install_sql(plan))


def test_every_unknown_table_and_column_is_named() -> None:
    profile = DocumentProfile(
        root="caseapp.cases",
        fields=["id", "titel"],
        children=[{"table": "caseapp.taks"}, {"table": "caseapp.tasks", "order_by": ["due"]}],
        lookups=[{"table": "caseapp.customers", "fields": [{"column": "nam"}]}],
    )
    with pytest.raises(ProfileError) as refused:
        resolve(profile, _catalog())
    paths = [path for path, _ in refused.value.problems]
    assert paths == [
        "params.profile.fields.1.column",
        "params.profile.children.0.table",
        "params.profile.children.1.order_by.0",
        "params.profile.lookups.0.fields.0.column",
    ]
    assert "no column 'titel' in caseapp.cases" in str(refused.value)


def test_a_child_without_a_foreign_key_must_name_its_columns() -> None:
    catalog = _catalog()
    profile = DocumentProfile(root="caseapp.customers", children=[{"table": "caseapp.tasks"}])
    with pytest.raises(ProfileError) as refused:
        resolve(profile, catalog)
    assert refused.value.problems[0][0] == "params.profile.children.0.foreign_key"
    declared = DocumentProfile(
        root="caseapp.customers", children=[{"table": "caseapp.tasks", "foreign_key": ["case_id"]}]
    )
    assert [c.name for c in resolve(declared, catalog).children[0].foreign_key] == ["case_id"]
