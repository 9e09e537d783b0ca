"""S3 (SeaweedFS) and Azure Blob (Azurite) fixtures: buckets, containers and server lifecycle."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from botocore.exceptions import ClientError

from jobwire.runtime.embedded import is_listening, pid_alive
from jobwire.testing.plugin import StorageSetup
from jobwire.testing.storage_servers import (
    AzuriteServer,
    S3Endpoint,
    SeaweedS3Server,
    create_bucket,
    create_container,
    delete_bucket,
    delete_container,
)

pytestmark = pytest.mark.integration


def _client(endpoint: S3Endpoint) -> Any:
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
    )


async def test_s3_bucket_is_usable_and_removed_with_its_objects(s3_server: S3Endpoint) -> None:
    bucket = await create_bucket(s3_server)
    async with _client(s3_server) as client:
        await client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"x")
        await delete_bucket(s3_server, bucket)
        with pytest.raises(ClientError) as caught:
            await client.head_bucket(Bucket=bucket)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


async def test_s3_rejects_keys_it_was_not_given(s3_server: S3Endpoint, s3_bucket: str) -> None:
    wrong = S3Endpoint(s3_server.url, s3_server.access_key, "not-the-secret")
    async with _client(wrong) as client:
        with pytest.raises(ClientError):
            await client.list_objects_v2(Bucket=s3_bucket)


async def test_azure_container_is_removed_after_use(
    azurite_server: str, azure_container: str
) -> None:
    async with ContainerClient.from_connection_string(azurite_server, azure_container) as client:
        await client.upload_blob("a/b.txt", b"x")
        assert [blob.name async for blob in client.list_blobs()] == ["a/b.txt"]


async def test_storage_config_gives_one_fresh_storage_per_kind(
    storage_config: StorageSetup,
) -> None:
    config, secrets = storage_config
    assert config.prefix == "jobwire-tests/"
    if config.kind == "s3":
        assert config.access_key_id is not None
        assert secrets.resolve(config.access_key_id).get_secret_value()
    elif config.kind == "azure-blob":
        connection_string = secrets.resolve(config.connection_string).get_secret_value()
        async with ContainerClient.from_connection_string(
            connection_string, config.container
        ) as client:
            assert [blob.name async for blob in client.list_blobs()] == []
    else:
        assert await asyncio.to_thread(os.listdir, config.root) == []


def test_seaweedfs_stop_leaves_no_process_and_no_sockets(tmp_path: Path) -> None:
    server = SeaweedS3Server(tmp_path)
    with server:
        pid = server.pid
        assert pid is not None
        assert is_listening("127.0.0.1", server.port)
    assert server.pid is None
    assert not pid_alive(pid)
    assert not is_listening("127.0.0.1", server.port)
    assert server.leftover_sockets() == []


def test_azurite_stop_leaves_no_process(tmp_path: Path) -> None:
    server = AzuriteServer(tmp_path)
    with server:
        pid = server.pid
        assert pid is not None
        assert is_listening("127.0.0.1", server.port)
    assert server.pid is None
    assert not pid_alive(pid)
    assert not is_listening("127.0.0.1", server.port)


async def test_deleted_container_is_gone(azurite_server: str) -> None:
    name = await create_container(azurite_server)
    await delete_container(azurite_server, name)
    await delete_container(azurite_server, name)  # already gone: no error
    async with ContainerClient.from_connection_string(azurite_server, name) as client:
        with pytest.raises(ResourceNotFoundError):
            await client.get_container_properties()
