"""Where files are kept: one configuration model per storage kind.

Used by the file listener (and later the archiver) to name a storage; the
service kit turns one into a client (``jobwire.runtime.storage.open_storage``).
The union is discriminated by ``kind``, so a definition says
``{"kind": "s3", "bucket": "in", ...}`` and a wrong field is named.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from jobwire.contracts.envelope import Versioned
from jobwire.contracts.secrets import SecretName


class _StorageConfig(Versioned):
    # Written by people: a misspelt key is refused, not ignored.
    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(
        default="",
        description="Only this folder (key prefix) is used, e.g. `incoming/`; empty = all.",
    )


class LocalStorageConfig(_StorageConfig):
    """A directory on the listener's file system (a mounted volume in Kubernetes)."""

    kind: Literal["local"] = "local"
    root: str = Field(min_length=1, description="Absolute path of the directory.")


class S3StorageConfig(_StorageConfig):
    """An S3 bucket, on AWS or any S3-compatible server (MinIO, SeaweedFS, Ceph and others)."""

    kind: Literal["s3"] = "s3"
    bucket: str = Field(min_length=3, max_length=63, description="Bucket name.")
    endpoint_url: str | None = Field(
        default=None, description="Server URL for S3-compatible storage; empty = AWS."
    )
    region: str = Field(default="us-east-1", description="Region of the bucket.")
    access_key_id: SecretName | None = Field(
        default=None,
        description="Secret holding the access key id; empty = the SDK's default chain "
        "(environment, instance profile, IRSA).",
    )
    secret_access_key: SecretName | None = Field(
        default=None, description="Secret holding the secret access key."
    )
    force_path_style: bool = Field(
        default=True,
        description="Address the bucket in the path (most S3-compatible servers need it).",
    )


class AzureBlobStorageConfig(_StorageConfig):
    """An Azure Blob Storage container."""

    kind: Literal["azure-blob"] = "azure-blob"
    container: str = Field(min_length=3, max_length=63, description="Container name.")
    connection_string: SecretName = Field(
        description="Secret holding the storage account's connection string."
    )


StorageConfig = Annotated[
    LocalStorageConfig | S3StorageConfig | AzureBlobStorageConfig,
    Field(discriminator="kind"),
]
