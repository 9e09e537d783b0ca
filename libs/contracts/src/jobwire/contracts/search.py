"""Search sync: the parameters of `search-full-load` and `search-incremental` jobs.

Both job types keep one search index (behind an alias) in step with one
application database. Their parameters carry where the data is (a DSN held
in a secret), which engine to write to, and a **document profile**: the root
table whose rows become documents, the child tables that become nested
arrays, the lookups that become objects, or instead a SQL view the user owns.
A full load and the incremental job of the same alias must carry the same
profile: the incremental job refuses to run on an index built from another.

Identifiers cannot be SQL parameters: they are checked against a strict
pattern here and quoted wherever SQL is written.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from jobwire.contracts.envelope import Versioned
from jobwire.contracts.job_types import JobParams, job_params
from jobwire.contracts.secrets import SecretName

MIB = 1024 * 1024

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TABLE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Lower case, no leading '-', '_' or '+', none of the characters either engine refuses.
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9_-]{0,150}$")


def _matching(pattern: re.Pattern[str], what: str, rule: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not valid: {rule}")
        return value

    return AfterValidator(check)


Identifier = Annotated[
    str,
    _matching(_IDENTIFIER, "column name", "letters, digits and '_', not starting with a digit"),
    Field(description="A column name, as the catalog spells it (case matters)."),
]
TableName = Annotated[
    str,
    _matching(_TABLE, "table name", "`table` or `schema.table` of letters, digits and '_'"),
    Field(description="`schema.table`, or `table` in schema `public`."),
]
FieldName = Annotated[
    str,
    _matching(_FIELD, "field name", "letters, digits and '_' (no dots), not starting with a digit"),
    Field(description="A field of the search document."),
]
AliasName = Annotated[
    str,
    _matching(_ALIAS, "index alias", "lower-case letters, digits, '-' and '_'"),
    Field(description="The alias searches use; physical indices are `<alias>-<timestamp>`."),
]

#: Field types a profile may ask for instead of the one derived from the column's type.
EngineFieldType = Literal[
    "text",
    "keyword",
    "long",
    "integer",
    "short",
    "double",
    "float",
    "scaled_float",
    "boolean",
    "date",
    "object",
    "flattened",
    "binary",
]


class _Written(Versioned):
    # Written by people: a misspelt key is refused, not ignored.
    model_config = ConfigDict(extra="forbid")


class FieldMap(_Written):
    """One column of a table as one field of the document."""

    column: Identifier
    field: FieldName | None = Field(default=None, description="Empty = the column's name.")
    type: EngineFieldType | None = Field(
        default=None, description="The field's type in the index; empty = derived from the column."
    )

    @property
    def name(self) -> str:
        return self.field or self.column


Fields = Annotated[
    list[FieldMap | Identifier] | None,
    Field(
        description="Columns to put in the document, as names or `{column, field, type}`; "
        "empty = every column.",
    ),
]


def field_maps(fields: list[FieldMap | str] | None) -> list[FieldMap] | None:
    """``fields`` with plain column names turned into :class:`FieldMap`."""
    if fields is None:
        return None
    return [f if isinstance(f, FieldMap) else FieldMap(column=f) for f in fields]


class ChildTable(_Written):
    """Rows of a table referencing the root, as an array of nested objects."""

    table: TableName
    field: FieldName | None = Field(default=None, description="Empty = the table's name.")
    fields: Fields = None
    foreign_key: list[Identifier] | None = Field(
        default=None,
        min_length=1,
        description="This table's columns that hold the root's key, in the key's order; "
        "empty = the foreign key to the root found in the catalog.",
    )
    order_by: list[Identifier] | None = Field(
        default=None, description="Order of the array; empty = this table's primary key."
    )

    @property
    def name(self) -> str:
        return self.field or self.table.rsplit(".", 1)[-1]


class LookupTable(_Written):
    """The row of a table the root references, as one object."""

    table: TableName
    field: FieldName | None = Field(default=None, description="Empty = the table's name.")
    fields: Fields = None
    foreign_key: list[Identifier] | None = Field(
        default=None,
        min_length=1,
        description="The root's columns that reference this table's key, in the key's order; "
        "empty = the root's foreign key to this table found in the catalog.",
    )

    @property
    def name(self) -> str:
        return self.field or self.table.rsplit(".", 1)[-1]


class ViewSource(_Written):
    """A table a view reads, and the columns of it that hold the view's key."""

    table: TableName
    key: list[Identifier] = Field(
        min_length=1, description="This table's columns whose values are the view's key."
    )


class DocumentProfile(_Written):
    """What one document is: a root table's row with its children and lookups, or a view's row."""

    root: TableName | None = Field(default=None, description="The table whose rows are documents.")
    view: TableName | None = Field(
        default=None,
        description="Instead of `root`: a view the user owns, one row per document.",
    )
    key: list[Identifier] | None = Field(
        default=None,
        min_length=1,
        description="The columns that identify a document (its `_id`); empty = the root's "
        "primary key. Required with `view`.",
    )
    fields: Fields = None
    children: list[ChildTable] = Field(default_factory=list, max_length=20)
    lookups: list[LookupTable] = Field(default_factory=list, max_length=20)
    view_sources: list[ViewSource] = Field(
        default_factory=list,
        max_length=20,
        description="With `view`: the tables whose changes change the view's rows, so the "
        "incremental job can follow them.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DocumentProfile:
        if (self.root is None) == (self.view is None):
            raise ValueError("give either `root` or `view`")
        if self.view is not None:
            if self.key is None:
                raise ValueError("`key` is required with `view` (a view has no primary key)")
            if self.children or self.lookups:
                raise ValueError("`children` and `lookups` belong to `root`; a view joins itself")
            if not self.view_sources:
                raise ValueError("`view_sources` is required with `view`")
        elif self.view_sources:
            raise ValueError("`view_sources` belongs to `view`")
        names = [c.name for c in self.children] + [lk.name for lk in self.lookups]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two children or lookups are named {name!r}: set `field`")
        return self


class IndexOptions(_Written):
    """The index behind the alias: its name, settings and mappings, and how many to keep."""

    alias: AliasName
    settings: dict[str, Any] | None = Field(
        default=None, description="Index settings; empty = one shard, engine defaults."
    )
    mappings: dict[str, Any] | None = Field(
        default=None, description="Index mappings; empty = derived from the profile's columns."
    )
    keep: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Previous physical indices kept after a full load swaps the alias.",
    )


class EngineConfig(_Written):
    """The search engine: Elasticsearch 8/9 or OpenSearch 2/3."""

    kind: Literal["elasticsearch", "opensearch"]
    urls: list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]] = Field(
        min_length=1, max_length=20, description="Node URLs, e.g. `https://search:9200`."
    )
    username: SecretName | None = Field(default=None, description="Secret holding the user.")
    password: SecretName | None = Field(default=None, description="Secret holding the password.")
    api_key: SecretName | None = Field(
        default=None, description="Secret holding an API key (instead of user and password)."
    )
    ca: SecretName | None = Field(
        default=None, description="Secret holding CA certificate(s), PEM."
    )
    verify_certs: bool = Field(default=True, description="Check the engine's TLS certificate.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_login(self) -> EngineConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both `username` and `password`, or neither")
        if self.api_key is not None and self.username is not None:
            raise ValueError("give `api_key` or `username`/`password`, not both")
        return self


class SourceDatabase(_Written):
    """The application's PostgreSQL database."""

    dsn: SecretName = Field(description="Secret holding the database URL (with its login).")
    statement_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Limit of each statement sent to the source."
    )
    lock_timeout_seconds: float = Field(
        default=2.0, gt=0, le=600, description="Limit of waiting for a lock in the source."
    )


class _SearchParams(JobParams):
    source: SourceDatabase
    engine: EngineConfig
    profile: DocumentProfile
    index: IndexOptions
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Documents per bulk request.")
    max_bulk_bytes: int = Field(
        default=5 * MIB, ge=64 * 1024, le=100 * MIB, description="Bytes per bulk request at most."
    )
    concurrency: int = Field(default=2, ge=1, le=16, description="Bulk requests in flight at most.")
    dry_run: bool = Field(
        default=False, description="Read and build every document, write nothing; report counts."
    )


@job_params("search-full-load")
class SearchFullLoadParams(_SearchParams):
    """Parameters of a `search-full-load` job: rebuild the index behind the alias from scratch.

    The documents are read from one consistent snapshot into a new physical
    index; the document count is checked against the source; then the alias
    is moved to it in one request, so searches never see an empty or partial
    index. The incremental job continues from that snapshot.
    """

    fetch_size: int = Field(default=2000, ge=1, le=100_000, description="Rows read per fetch.")


@job_params("search-incremental")
class SearchIncrementalParams(_SearchParams):
    """Parameters of a `search-incremental` job: apply what changed since the last run.

    Needs the change capture installed once (`jobwire search install <job>`)
    and a full load of the alias. A run reads the changes committed since the
    last run, rebuilds the documents they touch (deleting those whose row is
    gone) and writes them with the snapshot's version, so an older document
    never overwrites a newer one.
    """

    max_changes: int = Field(
        default=50_000, ge=1, le=10_000_000, description="Changes taken per run; the rest next run."
    )
