"""S3 storage on aiobotocore: AWS or any S3-compatible server (SeaweedFS, MinIO, Ceph …).

One client per storage, created on first use and closed by ``close()``.
Retries are botocore's standard mode (throttling and 5xx, with backoff).

Limits: ``move`` is one CopyObject, so objects over 5 GiB cannot be moved;
``write`` returns no ``last_modified`` (a PUT does not report it; ``stat`` does).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from jobwire.contracts.objects import StorageKind
from jobwire.contracts.storage import S3StorageConfig
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

__all__ = ["S3Storage"]

log = get_logger("jobwire.storage")

_KIND = StorageKind.S3
# botocore's own check, looser than AWS's rules: S3-compatible servers accept
# names AWS no longer allows (upper case, '_').
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_ACCESS_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_SHORTEST_SECRET = 4  # shorter values are not scrubbed from messages: they would match anywhere


@functools.cache
def _botocore_session() -> Any:
    # Shared by every S3Storage: a session caches the parsed service model,
    # which otherwise costs each client ~0.1 s of CPU.
    return get_session()


def _etag(value: object) -> str | None:
    # S3 quotes ETags; some servers (SeaweedFS in CopyObject results) do not.
    return str(value).strip('"') if value else None


def _utc(value: object) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int | None:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


class S3Storage:
    """The :class:`~jobwire.runtime.storage.Storage` of the objects in one bucket."""

    def __init__(self, config: S3StorageConfig, secrets: Secrets) -> None:
        self._bucket = config.bucket
        self._where = f"s3 storage, bucket {config.bucket!r}"
        if not _BUCKET.fullmatch(config.bucket):
            raise self._config_error("bucket", f"{config.bucket!r} is not a valid bucket name")
        if config.endpoint_url is not None:
            parts = urlsplit(config.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self._config_error(
                    "endpoint_url", f"{config.endpoint_url!r} is not an http(s) URL"
                )
        self._prefix = config_prefix(_KIND, config.prefix)
        self._endpoint_url = config.endpoint_url
        self._region = config.region
        self._force_path_style = config.force_path_style
        self._credentials = self._resolve_credentials(config, secrets)
        self._secret_values = [
            value for value in self._credentials.values() if len(value) >= _SHORTEST_SECRET
        ]
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._closed = False

    def _resolve_credentials(self, config: S3StorageConfig, secrets: Secrets) -> dict[str, str]:
        names = {
            "access_key_id": config.access_key_id,
            "secret_access_key": config.secret_access_key,
        }
        given = {field: name for field, name in names.items() if name is not None}
        if not given:
            return {}  # botocore's default chain: environment, profile, IRSA, instance role
        if len(given) == 1:
            missing = next(field for field in names if field not in given)
            raise self._config_error(missing, "must be set together with " + next(iter(given)))
        values: dict[str, str] = {}
        for field, name in given.items():
            try:
                values["aws_" + field] = secrets.resolve(name).get_secret_value()
            except SecretNotFound as error:
                raise self._config_error(field, str(error)) from None
        return values

    @property
    def kind(self) -> StorageKind:
        return _KIND

    @property
    def bucket(self) -> str | None:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        return (
            f"S3Storage(bucket={self._bucket!r}, prefix={self._prefix!r}, "
            f"endpoint_url={self._endpoint_url!r})"
        )

    # ------------------------------------------------------------------ port

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[Page]:
        check_prefix(prefix, _KIND)
        check_page_size(page_size, _KIND)
        client = await self._s3()
        request: dict[str, Any] = {
            "Bucket": self._bucket,
            "Prefix": self._prefix + prefix,
            # S3 returns at most 1000 keys per request whatever is asked.
            "MaxKeys": page_size,
        }
        while True:
            try:
                response = await client.list_objects_v2(**request)
            except (ClientError, BotoCoreError) as error:
                raise self._error("list", prefix, error) from error
            page = [
                stored for item in response.get("Contents", ()) if (stored := self._listed(item))
            ]
            if page:
                yield page
            if not response.get("IsTruncated"):
                return
            request["ContinuationToken"] = response["NextContinuationToken"]

    async def stat(self, path: str) -> StoredFile | None:
        check_path(path, _KIND)
        client = await self._s3()
        try:
            head = await client.head_object(Bucket=self._bucket, Key=self._prefix + path)
        except ClientError as error:
            # A HEAD has no body, so a missing bucket is a bare 404 as well.
            if _status(error) == 404:
                await self._require_bucket("stat", path)
                return None
            raise self._error("stat", path, error) from error
        except BotoCoreError as error:
            raise self._error("stat", path, error) from error
        return StoredFile(
            path=path,
            size=int(head["ContentLength"]),
            etag=_etag(head.get("ETag")),
            last_modified=_utc(head.get("LastModified")),
            content_type=head.get("ContentType"),
            metadata=dict(head.get("Metadata", {})),
        )

    async def read(self, path: str) -> bytes:
        check_path(path, _KIND)
        client = await self._s3()
        try:
            response = await client.get_object(Bucket=self._bucket, Key=self._prefix + path)
            async with response["Body"] as body:
                return cast(bytes, await body.read())
        except (ClientError, BotoCoreError) as error:
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
        client = await self._s3()
        try:
            response = await client.put_object(
                Bucket=self._bucket,
                Key=self._prefix + path,
                Body=data,
                ContentType=media_type,
                Metadata=kept,
            )
        except (ClientError, BotoCoreError) as error:
            raise self._error("write", path, error) from error
        return StoredFile(
            path=path,
            size=len(data),
            etag=_etag(response.get("ETag")),
            last_modified=None,
            content_type=media_type,
            metadata=kept,
        )

    async def move(self, source: str, target: str) -> None:
        check_path(source, _KIND)
        check_path(target, _KIND)
        if source == target:
            if await self.stat(source) is None:
                raise self._not_found("move", source)
            return
        client = await self._s3()
        try:
            # MetadataDirective COPY keeps content type and user metadata.
            await client.copy_object(
                Bucket=self._bucket,
                Key=self._prefix + target,
                CopySource={"Bucket": self._bucket, "Key": self._prefix + source},
                MetadataDirective="COPY",
            )
        except ClientError as error:
            if _code(error) not in _NOT_FOUND:
                raise self._error("move", source, error) from error
            if await self.stat(target) is None:
                raise self._not_found("move", source) from error
            log.info(
                "storage.move_already_done",
                kind=str(_KIND),
                bucket=self._bucket,
                source=self._prefix + source,
                target=self._prefix + target,
            )
            return
        except BotoCoreError as error:
            raise self._error("move", source, error) from error
        await self.delete(source)

    async def delete(self, path: str) -> None:
        check_path(path, _KIND)
        client = await self._s3()
        try:
            # S3 answers 204 for a key that does not exist.
            await client.delete_object(Bucket=self._bucket, Key=self._prefix + path)
        except (ClientError, BotoCoreError) as error:
            raise self._error("delete", path, error) from error

    async def close(self) -> None:
        self._closed = True
        self._client = None
        await self._stack.aclose()

    # --------------------------------------------------------------- helpers

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._closed:
                raise StorageError(f"{self._where}: the storage is closed", kind=_KIND)
            if self._client is None:
                config = AioConfig(
                    s3={"addressing_style": "path" if self._force_path_style else "auto"},
                    retries={"mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                    # Newer botocore adds CRC checksums to every upload and checks them
                    # on every download; many S3-compatible servers reject or omit them.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                self._client = await self._stack.enter_async_context(
                    _botocore_session().create_client(
                        "s3",
                        endpoint_url=self._endpoint_url,
                        region_name=self._region,
                        config=config,
                        **self._credentials,
                    )
                )
        return self._client

    def _listed(self, item: Mapping[str, Any]) -> StoredFile | None:
        key = str(item["Key"])
        path = key[len(self._prefix) :]
        if key.endswith("/"):
            return None  # a folder marker, as consoles create them
        try:
            check_path(path)
        except StorageError as error:
            log.warning(
                "storage.file_skipped", kind=str(_KIND), bucket=self._bucket, reason=str(error)
            )
            return None
        return StoredFile(
            path=path,
            size=int(item.get("Size", 0)),
            etag=_etag(item.get("ETag")),
            last_modified=_utc(item.get("LastModified")),
        )

    async def _require_bucket(self, operation: str, path: str) -> None:
        client = await self._s3()
        try:
            await client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as error:
            if isinstance(error, ClientError) and _status(error) == 404:
                raise self._missing_bucket(operation, path) from error
            raise self._error(operation, path, error) from error

    def _config_error(self, field: str, problem: str) -> StorageError:
        return StorageError(f"{self._where}: field {field!r}: {problem}", kind=_KIND)

    def _missing_bucket(self, operation: str, path: str) -> StorageError:
        return StorageError(
            f"{self._where}: cannot {operation} {self._prefix + path!r}: "
            f"bucket {self._bucket!r} does not exist",
            kind=_KIND,
            path=path,
        )

    def _not_found(self, operation: str, path: str) -> StorageFileNotFound:
        return StorageFileNotFound(
            f"{self._where}: cannot {operation} {self._prefix + path!r}: no such key",
            kind=_KIND,
            path=path,
        )

    def _error(self, operation: str, path: str, error: ClientError | BotoCoreError) -> StorageError:
        if isinstance(error, ClientError):
            code = _code(error)
            if code == "NoSuchBucket":
                return self._missing_bucket(operation, path)
            if code in _NOT_FOUND:
                return self._not_found(operation, path)
            if code in _ACCESS_DENIED:
                detail = (
                    f"access denied ({code}): check the credentials and the bucket's permissions"
                )
            else:
                message = error.response.get("Error", {}).get("Message") or ""
                detail = f"{code or _status(error)}: {message}".rstrip(": ")
        else:
            detail = str(error)
        for secret in self._secret_values:
            detail = detail.replace(secret, "***")
        return StorageError(
            f"{self._where}: {operation} {self._prefix + path!r} failed: {detail}",
            kind=_KIND,
            path=path,
        )
