"""Local storage: files under a directory (in Kubernetes, a mounted volume).

Every blocking file call runs in a worker thread (``asyncio.to_thread``), one
hop per operation and one per listed page rather than one per file.

What a directory cannot mirror from an object store: no metadata and no stored
content type (it is guessed from the name), ``a`` and ``a/b`` cannot both be
files, and symbolic links are neither followed nor listed, so a listing cannot
loop or leave the root.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import stat as stat_module
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from jobwire.contracts.objects import StorageKind
from jobwire.contracts.storage import LocalStorageConfig
from jobwire.runtime.logs import get_logger
from jobwire.runtime.storage import (
    Page,
    StorageError,
    StorageFileNotFound,
    StoredFile,
    check_metadata,
    check_page_size,
    check_path,
    check_prefix,
    config_prefix,
    guess_content_type,
)

__all__ = ["LocalStorage"]

log = get_logger("jobwire.storage")

T = TypeVar("T")

_KIND = StorageKind.LOCAL
# Written next to the target and renamed over it; listings skip them, so a
# half-written file is never seen.
_TEMP_MARK = ".jobwire-tmp-"
_FILE_MODE = 0o666  # narrowed by the process umask, like any file the service creates


def _is_temp(name: str) -> bool:
    return name.startswith(".") and _TEMP_MARK in name


def _stored(path: str, status: os.stat_result) -> StoredFile:
    return StoredFile(
        path=path,
        size=status.st_size,
        etag=f"{status.st_ino:x}-{status.st_mtime_ns:x}-{status.st_size:x}",
        last_modified=datetime.fromtimestamp(status.st_mtime_ns / 1e9, UTC),
        content_type=guess_content_type(path),
    )


class LocalStorage:
    """The :class:`~jobwire.runtime.storage.Storage` of the files under a directory."""

    def __init__(self, config: LocalStorageConfig) -> None:
        if not os.path.isabs(config.root):
            raise StorageError(
                f"local storage: field 'root' must be an absolute path, got {config.root!r}",
                kind=_KIND,
            )
        self._root = os.path.normpath(config.root)
        self._prefix = config_prefix(_KIND, config.prefix)
        self._closed = False

    @property
    def kind(self) -> StorageKind:
        return _KIND

    @property
    def bucket(self) -> str | None:
        return None

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def root(self) -> Path:
        return Path(self._root)

    def __repr__(self) -> str:
        return f"LocalStorage(root={self._root!r}, prefix={self._prefix!r})"

    # ------------------------------------------------------------------ port

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[Page]:
        check_prefix(prefix, _KIND)
        check_page_size(page_size, _KIND)
        self._check_open()
        files = self._walk(self._prefix + prefix)
        while True:
            page = await self._in_thread("list", prefix, self._next_page, files, page_size)
            if not page:
                return
            yield page

    async def stat(self, path: str) -> StoredFile | None:
        check_path(path, _KIND)
        return await self._in_thread("stat", path, self._stat, path)

    async def read(self, path: str) -> bytes:
        check_path(path, _KIND)
        return await self._in_thread("read", path, self._read, path)

    async def write(
        self,
        path: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredFile:
        check_path(path, _KIND)
        # Validated although not kept, so code that works here works on S3 and Azure.
        check_metadata(metadata, _KIND)
        return await self._in_thread("write", path, self._write, path, data)

    async def move(self, source: str, target: str) -> None:
        check_path(source, _KIND)
        check_path(target, _KIND)
        already_done = await self._in_thread("move", source, self._move, source, target)
        if already_done:
            log.info(
                "storage.move_already_done",
                kind=str(_KIND),
                root=self._root,
                source=source,
                target=target,
            )

    async def delete(self, path: str) -> None:
        check_path(path, _KIND)
        await self._in_thread("delete", path, self._delete, path)

    async def close(self) -> None:
        self._closed = True

    # --------------------------------------------------- in the worker thread

    def _full(self, path: str) -> str:
        return os.path.join(self._root, self._prefix + path)

    def _require_root(self) -> None:
        # A missing mount must fail loudly, not be recreated as an empty
        # directory in the container's own file system.
        if not os.path.isdir(self._root):
            raise StorageError(
                f"local storage: root directory {self._root!r} does not exist", kind=_KIND
            )

    def _next_page(self, files: Iterator[StoredFile], page_size: int) -> Page:
        return list(itertools.islice(files, page_size))

    def _walk(self, prefix: str) -> Iterator[StoredFile]:
        """Files whose path (relative to the root) starts with ``prefix``, lexicographically.

        Lazy: advanced one page at a time from the worker thread. Sorting a
        folder's entries by name, with ``/`` appended to sub-folders, and
        descending in that order gives the global order of the full paths.
        """
        self._require_root()
        folder = prefix.rpartition("/")[0]
        start = os.path.join(self._root, folder) if folder else self._root
        for relative, status in self._files_under(start, folder + "/" if folder else "", prefix):
            yield _stored(relative[len(self._prefix) :], status)

    def _files_under(
        self, directory: str, relative: str, prefix: str
    ) -> Iterator[tuple[str, os.stat_result]]:
        try:
            with os.scandir(directory) as scan:
                entries = [
                    (entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name, entry)
                    for entry in scan
                ]
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda pair: pair[0])
        for key, entry in entries:
            path = relative + key
            if key.endswith("/"):
                if path.startswith(prefix) or prefix.startswith(path):
                    yield from self._files_under(entry.path, path, prefix)
                continue
            if not path.startswith(prefix) or _is_temp(entry.name):
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the folder was read
            if not stat_module.S_ISREG(status.st_mode):
                continue
            try:
                check_path(path)
            except StorageError as error:
                log.warning(
                    "storage.file_skipped", kind=str(_KIND), root=self._root, reason=str(error)
                )
                continue
            yield path, status

    def _stat(self, path: str) -> StoredFile | None:
        self._require_root()
        try:
            status = os.stat(self._full(path), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _stored(path, status) if stat_module.S_ISREG(status.st_mode) else None

    def _read(self, path: str) -> bytes:
        self._require_root()
        try:
            with open(self._full(path), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found("read", path) from None

    def _write(self, path: str, data: bytes) -> StoredFile:
        self._require_root()
        target = self._full(path)
        directory, name = os.path.split(target)
        os.makedirs(directory, exist_ok=True)
        # Shortened: the temporary name must stay within the 255-byte name limit.
        temp = os.path.join(directory, f".{name[:64]}{_TEMP_MARK}{secrets.token_hex(6)}")
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return _stored(path, os.stat(target))

    def _move(self, source: str, target: str) -> bool:
        """Move; True when it had already been done (source gone, target there)."""
        self._require_root()
        source_path, target_path = self._full(source), self._full(target)
        if source_path == target_path:
            if os.path.isfile(source_path):
                return False
            raise self._not_found("move", source)
        try:
            os.makedirs(os.path.dirname(target_path), exist_ok=True)
            os.replace(source_path, target_path)
        except FileNotFoundError:
            if not os.path.lexists(source_path) and os.path.isfile(target_path):
                return True
            raise self._not_found("move", source) from None
        return False

    def _delete(self, path: str) -> None:
        self._require_root()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.remove(self._full(path))

    # --------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"local storage {self._root!r} is closed", kind=_KIND)

    def _not_found(self, operation: str, path: str) -> StorageFileNotFound:
        return StorageFileNotFound(
            f"local storage, root {self._root!r}: cannot {operation} "
            f"{self._prefix + path!r}: no such file",
            kind=_KIND,
            path=path,
        )

    async def _in_thread(
        self, operation: str, path: str, function: Callable[..., T], *args: object
    ) -> T:
        self._check_open()
        try:
            return await asyncio.to_thread(function, *args)
        except StorageError:
            raise
        except OSError as error:
            raise StorageError(
                f"local storage, root {self._root!r}: {operation} {self._prefix + path!r} "
                f"failed: {error.strerror or error}",
                kind=_KIND,
                path=path,
            ) from error
