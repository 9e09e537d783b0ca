"""What the storage port refuses before any I/O: paths, prefixes, metadata, configurations."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobwire.contracts.objects import StorageKind
from jobwire.contracts.storage import AzureBlobStorageConfig, LocalStorageConfig, S3StorageConfig
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.storage import (
    MAX_METADATA_BYTES,
    StorageError,
    StoredFile,
    check_metadata,
    check_page_size,
    check_path,
    check_prefix,
    config_prefix,
    file_object,
    guess_content_type,
    open_storage,
)

VALID_PATHS = [
    "a",
    "a/b.txt",
    "incoming/2024/06/report.final.pdf",
    ".env",
    "a..b",
    "...",
    "with space.txt",
    "ümlaut/日本.txt",
    "x" * 1024,
]

INVALID_PATHS = {
    "": "empty",
    "/etc/passwd": "absolute",
    "../secret": "'..'",
    "a/../../b": "'..'",
    "..": "'..'",
    "a/./b": "'.'",
    ".": "'.'",
    "a//b": "empty segment",
    "a/": "empty segment",
    "a\\b": "backslash",
    "..\\windows": "backslash",
    "a\x00b": "control",
    "line\nbreak": "control",
    "x" * 1025: "longer than 1024",
    "é" * 513: "longer than 1024",
}


@pytest.mark.parametrize("path", VALID_PATHS)
def test_valid_paths_pass_unchanged(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(("path", "reason"), INVALID_PATHS.items(), ids=repr)
def test_invalid_paths_are_refused_with_the_reason(path: str, reason: str) -> None:
    with pytest.raises(StorageError, match=reason) as caught:
        check_path(path, StorageKind.S3)
    assert str(caught.value).startswith("s3 storage: invalid path")
    assert caught.value.kind is StorageKind.S3
    assert caught.value.path == path


@pytest.mark.parametrize("prefix", ["", "in", "in/", "a/b/", "a/.e", "a/..hidden", "a/."])
def test_list_prefixes_may_end_in_a_partial_segment(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/in", "../", "a/../b", "./a", "a//", "a\\", "\x7f"])
def test_list_prefixes_with_bad_folders_are_refused(prefix: str) -> None:
    with pytest.raises(StorageError, match="invalid prefix"):
        check_prefix(prefix)


@pytest.mark.parametrize(
    ("configured", "folder"),
    [("", ""), ("/", ""), ("in", "in/"), ("in/", "in/"), ("a/b", "a/b/")],
)
def test_configured_prefix_becomes_a_folder(configured: str, folder: str) -> None:
    assert config_prefix(StorageKind.LOCAL, configured) == folder


@pytest.mark.parametrize("configured", ["../up", "/abs", "a//", "a\\b"])
def test_configured_prefix_errors_name_the_field(configured: str) -> None:
    with pytest.raises(StorageError, match="field 'prefix'"):
        config_prefix(StorageKind.LOCAL, configured)


def test_page_size_must_be_positive() -> None:
    assert check_page_size(1) == 1
    with pytest.raises(StorageError, match="at least 1"):
        check_page_size(0)


def test_metadata_that_every_storage_keeps_passes() -> None:
    metadata = {"source": "imap", "run_id": "r-1/2", "empty": ""}
    assert check_metadata(metadata) == metadata
    assert check_metadata(None) == {}


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"Source": "x"}, "invalid metadata key 'Source'"),
        ({"x-trace": "x"}, "invalid metadata key 'x-trace'"),
        ({"1st": "x"}, "invalid metadata key '1st'"),
        ({"name": "Müller"}, "printable ASCII"),
        ({"name": "two\nlines"}, "printable ASCII"),
        ({"name": " padded"}, "leading or trailing spaces"),
        ({"big": "x" * MAX_METADATA_BYTES}, "metadata too large"),
    ],
)
def test_metadata_that_some_storage_would_change_is_refused(
    metadata: dict[str, str], problem: str
) -> None:
    with pytest.raises(StorageError, match=problem):
        check_metadata(metadata)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("a/report.txt", "text/plain"),
        ("data.json", "application/json"),
        ("export.csv.gz", "application/gzip"),
        ("no-extension", "application/octet-stream"),
    ],
)
def test_content_type_is_guessed_from_the_name(path: str, content_type: str) -> None:
    assert guess_content_type(path) == content_type


# Opening does no I/O, so a configuration that cannot work fails here, naming its field.

NO_SECRETS = Secrets(None, {})


def test_local_root_must_be_absolute() -> None:
    with pytest.raises(StorageError, match="field 'root' must be an absolute path"):
        open_storage(LocalStorageConfig(root="relative/dir"), NO_SECRETS)


def test_s3_keys_come_in_pairs() -> None:
    config = S3StorageConfig(bucket="in-bucket", access_key_id="s3-key")
    with pytest.raises(StorageError, match="field 'secret_access_key': must be set together"):
        open_storage(config, NO_SECRETS)


def test_s3_missing_secret_names_the_field_and_where_to_put_it() -> None:
    config = S3StorageConfig(
        bucket="in-bucket",
        access_key_id="s3-key",
        secret_access_key="s3-secret",
    )
    secrets = Secrets(None, {"JOBWIRE_SECRET_S3_KEY": "AKIA"})
    with pytest.raises(StorageError, match=r"field 'secret_access_key'.*JOBWIRE_SECRET_S3_SECRET"):
        open_storage(config, secrets)


@pytest.mark.parametrize("url", ["localhost:9000", "ftp://host", "http://"])
def test_s3_endpoint_must_be_an_http_url(url: str) -> None:
    with pytest.raises(StorageError, match="field 'endpoint_url'"):
        open_storage(S3StorageConfig(bucket="in-bucket", endpoint_url=url), NO_SECRETS)


def test_s3_bucket_name_is_checked() -> None:
    with pytest.raises(StorageError, match="field 'bucket'"):
        open_storage(S3StorageConfig(bucket="no spaces"), NO_SECRETS)


def test_azure_connection_string_is_checked_without_showing_it() -> None:
    value = "AccountKey=c2VjcmV0LXZhbHVl;nonsense"
    config = AzureBlobStorageConfig(container="in-box", connection_string="azure")
    with pytest.raises(StorageError, match="field 'connection_string'") as caught:
        open_storage(config, Secrets(None, {"JOBWIRE_SECRET_AZURE": value}))
    assert "c2VjcmV0LXZhbHVl" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_azure_container_name_is_checked() -> None:
    config = AzureBlobStorageConfig(container="Upper_Case", connection_string="azure")
    with pytest.raises(StorageError, match="field 'container'"):
        open_storage(config, NO_SECRETS)


def test_file_object_path_includes_the_prefix(tmp_path: Path) -> None:
    storage = open_storage(LocalStorageConfig(root=str(tmp_path), prefix="in"), NO_SECRETS)
    stored = StoredFile(path="a/b.pdf", size=3, etag="e", last_modified=None)
    described = file_object(storage, stored)
    assert (described.storage, described.bucket, described.path) == ("local", None, "in/a/b.pdf")
