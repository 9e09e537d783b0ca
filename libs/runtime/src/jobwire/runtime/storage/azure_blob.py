"""Azure Blob storage on ``azure.storage.blob.aio``: block blobs in one container.

The container client is built from the connection string secret when the
storage is opened (no I/O until the first call) and closed by ``close()``.
Retries: three, with shorter backoffs than the SDK's (see ``_RETRIES``).

``move`` is a server-side copy followed by a delete. Copies within one account
usually finish at once; a pending copy is polled for at most
``copy_timeout`` seconds and aborted after that.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, ContentSettings
from azure.storage.blob.aio import ContainerClient, ExponentialRetry

from jobwire.contracts.objects import StorageKind
from jobwire.contracts.storage import AzureBlobStorageConfig
from jobwire.runtime.logs import get_logger
from jobwire.runtime.secrets import SecretNotFound, Secrets
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

__all__ = ["AzureBlobStorage"]

log = get_logger("jobwire.storage")

_KIND = StorageKind.AZURE_BLOB
_CONTAINER = re.compile(r"\$root|\$web|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
# Azure answers CannotVerifyCopySource for a copy from a missing blob; Azurite BlobNotFound.
_SOURCE_MISSING = {"BlobNotFound", "CannotVerifyCopySource"}
_ACCESS_DENIED = {
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions",
}
# The SDK's default backoff (15 s, growing) takes an unreachable account 90 s
# to fail one call; the caller (a listener's runner) retries anyway. This gives
# up after 10-15 s, closer to botocore's standard mode.
_RETRIES = 3
_RETRY_FIRST_BACKOFF = 1
_RETRY_INCREMENT_BASE = 2
_COPY_POLL_FIRST = 0.05
_COPY_POLL_MAX = 1.0


def _code(error: HttpResponseError) -> str:
    # The storage SDK sets `error_code` (a StorageErrorCode) on the errors it raises.
    code = getattr(error, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _etag(value: str | None) -> str | None:
    # Properties carry the ETag quoted, listings unquoted.
    return value.strip('"') if value else None


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _first_line(error: AzureError) -> str:
    # The SDK appends request ids and the raw XML body on further lines.
    message = str(getattr(error, "message", None) or error)
    return message.splitlines()[0] if message else type(error).__name__


class AzureBlobStorage:
    """The :class:`~jobwire.runtime.storage.Storage` of the blobs in one container."""

    def __init__(
        self, config: AzureBlobStorageConfig, secrets: Secrets, *, copy_timeout: float = 60.0
    ) -> None:
        self._container_name = config.container
        self._where = f"azure-blob storage, container {config.container!r}"
        if not _CONTAINER.fullmatch(config.container):
            raise self._config_error(
                "container", f"{config.container!r} is not a valid container name"
            )
        self._prefix = config_prefix(_KIND, config.prefix)
        self._copy_timeout = copy_timeout
        try:
            connection_string = secrets.resolve(config.connection_string).get_secret_value()
        except SecretNotFound as error:
            raise self._config_error("connection_string", str(error)) from None
        try:
            self._container = ContainerClient.from_connection_string(
                connection_string,
                container_name=config.container,
                # The SDK logs every request and response at INFO otherwise.
                http_logging_level=logging.DEBUG,
                retry_policy=ExponentialRetry(
                    initial_backoff=_RETRY_FIRST_BACKOFF,
                    increment_base=_RETRY_INCREMENT_BASE,
                    retry_total=_RETRIES,
                ),
            )
        except ValueError:
            # Not chained: the SDK's message may quote the connection string.
            raise self._config_error(
                "connection_string",
                f"secret {config.connection_string!r} does not hold a valid connection string",
            ) from None
        self._secret_values = [
            value
            for part in connection_string.split(";")
            if part.lower().startswith(("accountkey=", "sharedaccesssignature="))
            and (value := part.partition("=")[2])
        ]
        self._closed = False

    @property
    def kind(self) -> StorageKind:
        return _KIND

    @property
    def bucket(self) -> str | None:
        return self._container_name

    @property
    def prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        return (
            f"AzureBlobStorage(container={self._container_name!r}, prefix={self._prefix!r}, "
            f"url={self._container.url!r})"
        )

    # ------------------------------------------------------------------ port

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[Page]:
        check_prefix(prefix, _KIND)
        check_page_size(page_size, _KIND)
        self._check_open()
        pages = self._container.list_blobs(
            name_starts_with=self._prefix + prefix,
            include=["metadata"],
            results_per_page=page_size,
        ).by_page()
        while True:
            try:
                blobs = [blob async for blob in await anext(pages)]
            except StopAsyncIteration:
                return
            except AzureError as error:
                raise self._error("list", prefix, error) from error
            page = [stored for blob in blobs if (stored := self._listed(blob))]
            if page:
                yield page

    async def stat(self, path: str) -> StoredFile | None:
        check_path(path, _KIND)
        self._check_open()
        try:
            properties = await self._blob(path).get_blob_properties()
        except ResourceNotFoundError as error:
            if _code(error) == "ContainerNotFound":
                raise self._missing_container("stat", path) from error
            return None
        except AzureError as error:
            raise self._error("stat", path, error) from error
        return self._stored(path, properties)

    async def read(self, path: str) -> bytes:
        check_path(path, _KIND)
        self._check_open()
        try:
            download = await self._blob(path).download_blob()
            return cast(bytes, await download.readall())
        except AzureError as error:
            raise self._error("read", path, error) from error

    async def write(
        self,
        path: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredFile:
        check_path(path, _KIND)
        kept = check_metadata(metadata, _KIND)
        media_type = content_type or guess_content_type(path)
        self._check_open()
        try:
            result = await self._blob(path).upload_blob(
                data,
                overwrite=True,
                content_settings=ContentSettings(content_type=media_type),
                metadata=kept,
            )
        except AzureError as error:
            raise self._error("write", path, error) from error
        return StoredFile(
            path=path,
            size=len(data),
            etag=_etag(result.get("etag")),
            last_modified=_utc(result.get("last_modified")),
            content_type=media_type,
            metadata=kept,
        )

    async def move(self, source: str, target: str) -> None:
        check_path(source, _KIND)
        check_path(target, _KIND)
        self._check_open()
        if source == target:
            if await self.stat(source) is None:
                raise self._not_found("move", source)
            return
        destination = self._blob(target)
        try:
            # Without new metadata the copy keeps the source's metadata and
            # content settings. Same account: the request's own key authorises
            # reading the source, no SAS needed.
            copy = await destination.start_copy_from_url(self._blob(source).url)
        except HttpResponseError as error:
            if _code(error) not in _SOURCE_MISSING:
                raise self._error("move", source, error) from error
            if await self.stat(target) is None:
                raise self._not_found("move", source) from error
            log.info(
                "storage.move_already_done",
                kind=str(_KIND),
                container=self._container_name,
                source=self._prefix + source,
                target=self._prefix + target,
            )
            return
        except AzureError as error:
            raise self._error("move", source, error) from error
        if copy.get("copy_status") != "success":
            await self._wait_for_copy(target, str(copy.get("copy_id")))
        await self.delete(source)

    async def delete(self, path: str) -> None:
        check_path(path, _KIND)
        self._check_open()
        try:
            await self._blob(path).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError as error:
            if _code(error) == "ContainerNotFound":
                raise self._missing_container("delete", path) from error
        except AzureError as error:
            raise self._error("delete", path, error) from error

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._container.close()

    # --------------------------------------------------------------- helpers

    def _blob(self, path: str) -> Any:
        return self._container.get_blob_client(self._prefix + path)

    async def _wait_for_copy(self, target: str, copy_id: str) -> None:
        destination = self._blob(target)
        deadline = time.monotonic() + self._copy_timeout
        interval = _COPY_POLL_FIRST
        status: str | None = "pending"
        description: str | None = None
        while status == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(interval)
            interval = min(interval * 2, _COPY_POLL_MAX)
            try:
                properties = await destination.get_blob_properties()
            except AzureError as error:
                raise self._error("move", target, error) from error
            status, description = properties.copy.status, properties.copy.status_description
        if status == "success":
            return
        if status == "pending":
            try:
                await destination.abort_copy(copy_id)
            except AzureError as error:
                log.warning(
                    "storage.copy_abort_failed",
                    kind=str(_KIND),
                    container=self._container_name,
                    target=self._prefix + target,
                    error=_first_line(error),
                )
            problem = f"the copy was still pending after {self._copy_timeout:g} s"
        else:
            problem = f"the copy ended {status}: {description}"
        raise StorageError(
            f"{self._where}: move to {self._prefix + target!r} failed: {problem}",
            kind=_KIND,
            path=target,
        )

    def _listed(self, blob: BlobProperties) -> StoredFile | None:
        name = str(blob.name)
        # Folder markers, and the directories of accounts with a hierarchical namespace.
        if name.endswith("/") or (blob.metadata or {}).get("hdi_isfolder") == "true":
            return None
        path = name[len(self._prefix) :]
        try:
            check_path(path)
        except StorageError as error:
            log.warning(
                "storage.file_skipped",
                kind=str(_KIND),
                container=self._container_name,
                reason=str(error),
            )
            return None
        return self._stored(path, blob)

    def _stored(self, path: str, blob: BlobProperties) -> StoredFile:
        return StoredFile(
            path=path,
            size=int(blob.size),
            etag=_etag(blob.etag),
            last_modified=_utc(blob.last_modified),
            content_type=blob.content_settings.content_type,
            metadata=dict(blob.metadata or {}),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._where}: the storage is closed", kind=_KIND)

    def _config_error(self, field: str, problem: str) -> StorageError:
        return StorageError(f"{self._where}: field {field!r}: {problem}", kind=_KIND)

    def _missing_container(self, operation: str, path: str) -> StorageError:
        return StorageError(
            f"{self._where}: cannot {operation} {self._prefix + path!r}: "
            f"container {self._container_name!r} does not exist",
            kind=_KIND,
            path=path,
        )

    def _not_found(self, operation: str, path: str) -> StorageFileNotFound:
        return StorageFileNotFound(
            f"{self._where}: cannot {operation} {self._prefix + path!r}: no such blob",
            kind=_KIND,
            path=path,
        )

    def _error(self, operation: str, path: str, error: AzureError) -> StorageError:
        code = _code(error) if isinstance(error, HttpResponseError) else ""
        if code == "ContainerNotFound":
            return self._missing_container(operation, path)
        if code == "BlobNotFound":
            return self._not_found(operation, path)
        if code in _ACCESS_DENIED:
            detail = f"access denied ({code}): check the connection string's account key or SAS"
        else:
            detail = f"{code}: {_first_line(error)}" if code else _first_line(error)
        for secret in self._secret_values:
            detail = detail.replace(secret, "***")
        return StorageError(
            f"{self._where}: {operation} {self._prefix + path!r} failed: {detail}",
            kind=_KIND,
            path=path,
        )
