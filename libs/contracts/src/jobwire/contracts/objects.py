"""What listeners hand to workflows: a file or an email, described as JSON.

These are not messages of their own. A listener puts one, dumped to JSON, in
the ``input`` of the StartWorkflow it sends, so a workflow can rely on one
shape whichever storage or mailbox it came from.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, ConfigDict, Field

from jobwire.contracts.envelope import Versioned


class StorageKind(StrEnum):
    """Where a file is kept: `local` directory, `s3`-compatible bucket, or `azure-blob`."""

    LOCAL = "local"
    S3 = "s3"
    AZURE_BLOB = "azure-blob"


class FileObject(Versioned):
    """A file in one of jobwire's storages, by reference: its content stays there."""

    storage: StorageKind = Field(description="The kind of storage holding the file.")
    bucket: str | None = Field(
        default=None,
        description="S3 bucket or Azure Blob container; null for local storage.",
    )
    path: str = Field(
        min_length=1,
        description="Key within the bucket or container, or path within the local root, "
        "with `/` separators.",
    )
    size: int = Field(ge=0, description="Size in bytes.")
    etag: str | None = Field(
        default=None,
        description="The storage's version tag of the content; changes when the file does.",
    )
    content_type: str | None = Field(
        default=None, description="Media type, e.g. `application/pdf`, if known."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="User metadata stored with the file."
    )
    last_modified: AwareDatetime | None = Field(
        default=None, description="When the content was last written, if known."
    )


class EmailAddress(Versioned):
    """One mailbox, split so nobody has to parse `Name <address>` again."""

    address: str = Field(min_length=1, description="The address, e.g. `alice@example.com`.")
    name: str | None = Field(default=None, description="Display name, if given.")


class EmailObject(Versioned):
    """An email received by an email listener.

    The body is inline; attachments are stored first and referenced as files.
    """

    # `from` is a Python keyword: the field is `from_` in Python and `from` in JSON.
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    message_id: str = Field(min_length=1, description="The `Message-ID` header.")
    from_: EmailAddress = Field(alias="from", description="The `From` mailbox.")
    to: list[EmailAddress] = Field(default_factory=list, description="`To` recipients.")
    cc: list[EmailAddress] = Field(default_factory=list, description="`Cc` recipients.")
    reply_to: list[EmailAddress] = Field(
        default_factory=list, description="`Reply-To` mailboxes, if set."
    )
    subject: str = Field(default="", description="Decoded `Subject`; empty if none.")
    date: AwareDatetime | None = Field(
        default=None, description="The `Date` header; null if missing or unreadable."
    )
    in_reply_to: str | None = Field(
        default=None, description="The `In-Reply-To` header, for threading."
    )
    references: list[str] = Field(
        default_factory=list, description="Message ids from the `References` header."
    )
    text: str | None = Field(default=None, description="Plain-text body, if present.")
    html: str | None = Field(default=None, description="HTML body, if present.")
    headers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="All header fields, by lower-cased name; a field that occurs "
        "several times (e.g. `received`) keeps every value in order.",
    )
    attachments: list[FileObject] = Field(
        default_factory=list, description="Attachments, stored and referenced as files."
    )
    size: int = Field(ge=0, description="Size of the raw message in bytes.")
