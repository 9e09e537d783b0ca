"""Where files are kept: one port over a local directory, an S3 bucket and an Azure container.

A listener lists new files, reads them and moves them away; an archiver writes
them. Both talk to :class:`Storage` and never to an SDK, so a use case is tested
once and runs on any of the three (``libs/runtime/tests/integration/test_storage.py``
runs the same contract suite against each adapter on a real server).

Paths
    A path is relative to the storage's *prefix*: the configured folder
    (``StorageConfig.prefix``, normalised to ``''`` or ``'folder/'``) inside the
    bucket, container or local root. It uses ``/`` separators, and each segment
    is non-empty and not ``.`` or ``..``; absolute paths, backslashes and control
    characters are refused with :class:`StorageError` before any I/O
    (:func:`check_path`). A file is a leaf: ``a/b`` is a file, ``a/`` is not.

Metadata
    Keys are lower-case ``[a-z][a-z0-9_]*`` (S3 lower-cases keys, Azure only
    accepts identifiers) and values printable ASCII without surrounding spaces
    (both send them as HTTP headers), 2 KiB in all (S3's limit): see
    :func:`check_metadata`. Local storage keeps no metadata and guesses the
    content type from the file name.

The SDKs are imported when a storage of their kind is opened, not with this
package, so a service that only uses local files does not load them.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from jobwire.contracts.objects import FileObject, StorageKind
from jobwire.contracts.storage import (
    AzureBlobStorageConfig,
    LocalStorageConfig,
    S3StorageConfig,
    StorageConfig,
)

if TYPE_CHECKING:
    from jobwire.runtime.secrets import Secrets

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_PATH_BYTES",
    "Page",
    "Storage",
    "StorageError",
    "StorageFileNotFound",
    "StoredFile",
    "check_metadata",
    "check_page_size",
    "check_path",
    "check_prefix",
    "config_prefix",
    "file_object",
    "guess_content_type",
    "open_storage",
]

# S3 keys and Azure blob names both stop at 1024 (bytes for S3, characters for Azure).
MAX_PATH_BYTES = 1024
# S3's limit for all user metadata of one object, keys and values together.
MAX_METADATA_BYTES = 2048

_COMPRESSED = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_METADATA_KEY = re.compile(r"[a-z][a-z0-9_]{0,127}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


class StorageError(Exception):
    """A storage could not be opened or an operation on it failed.

    The message names the storage kind, the bucket, container or root, and the
    path; it never contains a secret. The SDK's own exception, if any, is the
    ``__cause__``.
    """

    def __init__(
        self, message: str, *, kind: StorageKind | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path


class StorageFileNotFound(StorageError):
    """The file to read or move does not exist (it may have been moved or deleted meanwhile)."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file as the storage reports it."""

    path: str
    """Relative to the storage's prefix, with ``/`` separators."""
    size: int
    etag: str | None
    """Changes when the content does. S3 and Azure: the ETag without quotes (S3's is
    an MD5 only for single-part uploads); local: ``f"{inode:x}-{mtime_ns:x}-{size:x}"``
    (the inode changes on every atomic replace, so a same-size rewrite within one
    tick of the file system's clock is still seen unless it is written in place)."""
    last_modified: datetime | None
    """Aware, UTC. ``None`` where the storage does not report it (S3's ``write``)."""
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Filled by ``stat`` and ``write``; listings fill it where the storage lists it (Azure)."""


Page = list[StoredFile]


class Storage(Protocol):
    """Files in one local directory, S3 bucket or Azure Blob container, under one prefix.

    Every method may raise :class:`StorageError`. Methods validate their paths
    (:func:`check_path`) before any I/O. A storage is used from one event loop;
    ``close()`` releases its connections and the storage is not used afterwards.
    """

    @property
    def kind(self) -> StorageKind: ...

    @property
    def bucket(self) -> str | None:
        """The S3 bucket or Azure container; ``None`` for local storage."""

    @property
    def prefix(self) -> str:
        """The folder all paths are relative to: ``''`` or ending in ``/``."""

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[Page]:
        """Every file whose path starts with ``prefix``, in pages of at most ``page_size``.

        Recursive (``prefix`` is a string prefix, not a folder: ``"in"`` matches
        ``in/a`` and ``inbox/b``). Pages are fetched as they are consumed, so a
        large listing is never held in memory; no page is empty, and an empty
        storage yields none. Files come in lexicographic order of their paths
        (code points, which is UTF-8 byte order): what S3 and Azure return.
        SeaweedFS (and other S3 servers that store keys as a tree) list folder by
        folder instead, ``a/b`` before ``a-b``; the two orders differ only where a
        folder's name is a prefix of a sibling's followed by a character below ``/``.
        A listing is not a snapshot: files written or removed meanwhile may or
        may not appear. Folder markers (keys ending in ``/``) and names that are
        not valid paths are skipped with a warning.
        """
        ...

    async def stat(self, path: str) -> StoredFile | None:
        """The file with its content type and metadata, or ``None`` if there is none.

        A missing bucket, container or root is a :class:`StorageError`, not ``None``.
        """
        ...

    async def read(self, path: str) -> bytes:
        """The whole content; :class:`StorageFileNotFound` if the file does not exist."""
        ...

    async def write(
        self,
        path: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredFile:
        """Create or replace the file at once: readers see the old or the new content, never part.

        ``content_type`` defaults to a guess from the file name
        (``application/octet-stream`` if none). Local storage keeps neither
        content type nor metadata (see the module docstring).
        """
        ...

    async def move(self, source: str, target: str) -> None:
        """Move ``source`` to ``target``, replacing ``target`` if it exists.

        Idempotent, so a retry after a crash succeeds: when ``source`` is gone
        and ``target`` exists, the move is taken as done. Object stores copy
        (keeping content type and metadata) and then delete the source, so for a
        moment both exist; a crash in between leaves both, and the retry
        completes the move. :class:`StorageFileNotFound` when neither exists.
        """
        ...

    async def delete(self, path: str) -> None:
        """Remove the file; a missing file is not an error."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


def open_storage(config: StorageConfig, secrets: Secrets) -> Storage:
    """The adapter for ``config``; resolves its secrets but does no network or file I/O.

    :class:`StorageError` naming the field when the configuration cannot work
    (a relative local root, a missing secret, an invalid endpoint …); a bucket
    or container that does not exist is only found out by the first operation.
    """
    if isinstance(config, LocalStorageConfig):
        from jobwire.runtime.storage.local import LocalStorage

        return LocalStorage(config)
    if isinstance(config, S3StorageConfig):
        from jobwire.runtime.storage.s3 import S3Storage

        return S3Storage(config, secrets)
    if isinstance(config, AzureBlobStorageConfig):
        from jobwire.runtime.storage.azure_blob import AzureBlobStorage

        return AzureBlobStorage(config, secrets)
    raise StorageError(f"storage kind {getattr(config, 'kind', config)!r} is not supported")


def file_object(storage: Storage, stored: StoredFile) -> FileObject:
    """Describe ``stored`` for a workflow.

    ``FileObject.path`` is the full key within the bucket or container (or path
    within the local root), *including* the storage's prefix: a workflow that
    gets the object opens a storage for the same bucket without knowing which
    listener's prefix it came through.
    """
    return FileObject(
        storage=storage.kind,
        bucket=storage.bucket,
        path=storage.prefix + stored.path,
        size=stored.size,
        etag=stored.etag,
        content_type=stored.content_type,
        metadata=dict(stored.metadata),
        last_modified=stored.last_modified,
    )


def _invalid(kind: StorageKind | None, what: str, value: str, reason: str) -> StorageError:
    where = f"{kind} storage: " if kind is not None else ""
    return StorageError(f"{where}invalid {what} {value!r}: {reason}", kind=kind, path=value)


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "empty segment (a '//' or a trailing '/')"
    if segment in (".", ".."):
        return f"{segment!r} segments are not allowed"
    return None


def _characters_problem(value: str) -> str | None:
    if "\\" in value:
        return "backslashes are not allowed; use '/'"
    if value.startswith("/"):
        return "absolute paths are not allowed; paths are relative to the storage's prefix"
    if _CONTROL.search(value):
        return "control characters are not allowed"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    return None


def check_path(path: str, kind: StorageKind | None = None) -> str:
    """Return ``path`` if it names a file (see the module docstring), else raise StorageError."""
    if not path:
        raise _invalid(kind, "path", path, "it is empty")
    problem = _characters_problem(path)
    if problem is None:
        problem = next(filter(None, map(_segment_problem, path.split("/"))), None)
    if problem is not None:
        raise _invalid(kind, "path", path, problem)
    return path


def check_prefix(prefix: str, kind: StorageKind | None = None) -> str:
    """Return a listing prefix if valid: ``''``, or complete segments plus an optional partial one.

    The last segment may be anything without ``/`` (``"in/.e"`` matches
    ``in/.env``); the ones before it follow :func:`check_path`.
    """
    if not prefix:
        return prefix
    problem = _characters_problem(prefix)
    if problem is None:
        folders = prefix.split("/")[:-1]
        problem = next(filter(None, map(_segment_problem, folders)), None)
    if problem is not None:
        raise _invalid(kind, "prefix", prefix, problem)
    return prefix


def config_prefix(kind: StorageKind, prefix: str) -> str:
    """The configured ``prefix`` as a folder: ``''`` or ``'a/b/'`` (its trailing ``/`` optional)."""
    folder = prefix.removesuffix("/")
    if not folder:
        return ""
    try:
        check_path(folder)
    except StorageError as error:
        raise StorageError(f"{kind} storage: field 'prefix': {error}", kind=kind) from None
    return folder + "/"


def guess_content_type(path: str) -> str:
    """The media type for the file name, ``application/octet-stream`` when unknown."""
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if encoding is not None:
        # `report.csv.gz` holds gzip bytes, not CSV: its type is the compression's.
        return _COMPRESSED.get(encoding, "application/octet-stream")
    return guessed or "application/octet-stream"


def check_page_size(page_size: int, kind: StorageKind | None = None) -> int:
    if page_size < 1:
        where = f"{kind} storage: " if kind is not None else ""
        raise StorageError(f"{where}page_size must be at least 1, got {page_size}", kind=kind)
    return page_size


def check_metadata(
    metadata: Mapping[str, str] | None, kind: StorageKind | None = None
) -> dict[str, str]:
    """A copy of ``metadata`` if every storage can keep it as given, else StorageError."""
    checked = dict(metadata or {})
    where = f"{kind} storage: " if kind is not None else ""
    total = 0
    for key, value in checked.items():
        if not _METADATA_KEY.fullmatch(key):
            raise StorageError(
                f"{where}invalid metadata key {key!r}: use lower-case letters, digits and '_', "
                "starting with a letter",
                kind=kind,
            )
        if not _METADATA_VALUE.fullmatch(value) or value != value.strip():
            raise StorageError(
                f"{where}invalid value for metadata key {key!r}: printable ASCII without "
                "leading or trailing spaces only (values travel as HTTP headers)",
                kind=kind,
            )
        total += len(key) + len(value)
    if total > MAX_METADATA_BYTES:
        raise StorageError(
            f"{where}metadata too large: {total} bytes, at most {MAX_METADATA_BYTES}", kind=kind
        )
    return checked
