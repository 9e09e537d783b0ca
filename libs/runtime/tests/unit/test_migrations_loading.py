from __future__ import annotations

from pathlib import Path

import pytest

from jobwire.runtime.db import MigrationError, load_migrations, quote_ident


def test_loads_in_version_order(tmp_path: Path) -> None:
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    migrations = load_migrations(tmp_path)
    assert [(m.version, m.name) for m in migrations] == [(1, "first"), (2, "second")]
    assert migrations[0].checksum != migrations[1].checksum


def test_refuses_a_badly_named_file(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"1_first\.sql"):
        load_migrations(tmp_path)


def test_refuses_two_files_with_one_version(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share a version"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("name", ["Scheduler", "a-b", "x; DROP TABLE jobs", ""])
def test_schema_names_are_restricted(name: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        quote_ident(name)
