"""pytest plugin: real PostgreSQL, NATS JetStream, Kafka-protocol, S3 and Azure Blob servers.

Each server fixture reuses a server already listening at the configured address
and otherwise starts its own on a free loopback port in a temporary directory,
stopping (by PID) only what it started. Configuration, read when a fixture first
needs it:

``JOBWIRE_TEST_DATABASE_URL``
    PostgreSQL to reuse (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
``JOBWIRE_TEST_NATS_URL``
    NATS with JetStream to reuse (default ``nats://127.0.0.1:4222``).
``JOBWIRE_TEST_KAFKA_BOOTSTRAP``
    Kafka-protocol broker to reuse (no default: a Tansu broker is started).
``JOBWIRE_TEST_S3_ENDPOINT``
    S3 server to reuse, e.g. ``http://127.0.0.1:8333``, with
    ``JOBWIRE_TEST_S3_ACCESS_KEY`` / ``JOBWIRE_TEST_S3_SECRET_KEY`` (no default:
    SeaweedFS is started).
``JOBWIRE_TEST_AZURE_BLOB_CONNECTION_STRING``
    Azure Blob account to reuse (no default: Azurite is started, installed from
    npm into ``.jobwire/node`` on first use).
``JOBWIRE_TEST_START_SERVERS=1``
    Start our own servers even if the above listen: the fresh-machine path.

Per-test isolation comes from unique names, not from separate servers: a fresh
database per test (``database_url``), a subject/stream namespace (``namespace``),
a topic (``kafka_topic``), a bucket (``s3_bucket``) and a container
(``azure_container``), each removed after the test.

Storage contract tests take ``storage_config``: parametrised over ``local``,
``s3`` and ``azure-blob``, it gives a :class:`StorageSetup` (config + secrets)
for a fresh directory, bucket or container, so a test written once runs per
adapter. ``local_storage_config``, ``s3_storage_config`` and
``azure_blob_storage_config`` give one kind each.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from jobwire.contracts.storage import (
    AzureBlobStorageConfig,
    LocalStorageConfig,
    S3StorageConfig,
    StorageConfig,
)
from jobwire.runtime.embedded import NatsServer, PostgresServer, is_listening
from jobwire.runtime.secrets import Secrets, variable_name
from jobwire.testing.databases import scratch_database
from jobwire.testing.jetstream import purge_namespace
from jobwire.testing.kafka import TansuBroker, create_topic, delete_topics
from jobwire.testing.storage_servers import (
    AzuriteServer,
    S3Endpoint,
    SeaweedS3Server,
    create_bucket,
    create_container,
    delete_bucket,
    delete_container,
)

__all__ = [
    "STORAGE_PREFIX",
    "HarnessSettings",
    "KafkaTopicFactory",
    "NatsServerFactory",
    "PostgresServerFactory",
    "S3Endpoint",
    "StorageSetup",
]

_TRUE = {"1", "true", "yes", "on"}
_SERVERS_USED = pytest.StashKey[list[str]]()


@dataclass(frozen=True)
class HarnessSettings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    nats_url: str = "nats://127.0.0.1:4222"
    kafka_bootstrap: str | None = None
    s3_endpoint: str | None = None
    # A reused S3 server without authentication accepts any keys.
    s3_access_key: str = "jobwire-tests"
    s3_secret_key: str = "jobwire-tests"  # noqa: S105 (a placeholder, not a secret)
    azure_blob_connection_string: str | None = None
    start_servers: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> HarnessSettings:
        defaults = cls()
        return cls(
            database_url=environ.get("JOBWIRE_TEST_DATABASE_URL") or defaults.database_url,
            nats_url=environ.get("JOBWIRE_TEST_NATS_URL") or defaults.nats_url,
            kafka_bootstrap=environ.get("JOBWIRE_TEST_KAFKA_BOOTSTRAP") or None,
            s3_endpoint=environ.get("JOBWIRE_TEST_S3_ENDPOINT") or None,
            s3_access_key=environ.get("JOBWIRE_TEST_S3_ACCESS_KEY") or defaults.s3_access_key,
            s3_secret_key=environ.get("JOBWIRE_TEST_S3_SECRET_KEY") or defaults.s3_secret_key,
            azure_blob_connection_string=(
                environ.get("JOBWIRE_TEST_AZURE_BLOB_CONNECTION_STRING") or None
            ),
            start_servers=environ.get("JOBWIRE_TEST_START_SERVERS", "").lower() in _TRUE,
        )


class NatsServerFactory(Protocol):
    def __call__(self, port: int | None = None) -> NatsServer: ...


class PostgresServerFactory(Protocol):
    def __call__(self, port: int | None = None) -> PostgresServer: ...


class KafkaTopicFactory(Protocol):
    async def __call__(self, partitions: int = 1) -> str: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kafka_topic(partitions=1): options for the topic the kafka_topic fixture creates",
    )
    config.stash[_SERVERS_USED] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    used = terminalreporter.config.stash.get(_SERVERS_USED, [])
    if used:
        terminalreporter.write_sep("-", "jobwire test servers")
        for line in used:
            terminalreporter.write_line(line)


def _record(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(_SERVERS_USED, []).append(line)


def _listening(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    return is_listening(parts.hostname or "127.0.0.1", parts.port or default_port)


@pytest.fixture(scope="session")
def jobwire_harness_settings() -> HarnessSettings:
    return HarnessSettings.from_env()


# ---------------------------------------------------------------- PostgreSQL


def _start_postgres(port: int | None = None) -> PostgresServer:
    # Not under pytest's basetemp: that is 0700 root-owned, and as root the
    # server runs as the 'postgres' user, which must be able to reach its data.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="jobwire-pg-")), port)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.data_dir, ignore_errors=True)
        raise
    return server


def _discard_postgres(server: PostgresServer) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dsn(
    request: pytest.FixtureRequest, jobwire_harness_settings: HarnessSettings
) -> Iterator[str]:
    """DSN of a PostgreSQL superuser connection (reused or started for the session)."""
    settings = jobwire_harness_settings
    if not settings.start_servers and _listening(settings.database_url, 5432):
        _record(request.config, f"PostgreSQL: reused {settings.database_url}")
        yield settings.database_url
        return
    server = _start_postgres()
    _record(request.config, f"PostgreSQL: started {server.dsn} (pid {server.pid})")
    try:
        yield server.dsn
    finally:
        _discard_postgres(server)


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for this test only, dropped afterwards."""
    async with scratch_database(postgres_dsn) as url:
        yield url


@pytest.fixture
def postgres_server_factory() -> Iterator[PostgresServerFactory]:
    """Start dedicated PostgreSQL servers this test owns (for outage and restart tests).

    Each gets its own port and data directory; all are stopped and removed after
    the test. ``server.stop()`` / ``server.start()`` keep port and data.
    """
    servers: list[PostgresServer] = []

    def start(port: int | None = None) -> PostgresServer:
        server = _start_postgres(port)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            _discard_postgres(server)


# ---------------------------------------------------------------------- NATS


@pytest.fixture(scope="session")
def nats_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    jobwire_harness_settings: HarnessSettings,
) -> Iterator[str]:
    """URL of a NATS server with JetStream (reused or started for the session)."""
    settings = jobwire_harness_settings
    if not settings.start_servers and _listening(settings.nats_url, 4222):
        _record(request.config, f"NATS: reused {settings.nats_url}")
        yield settings.nats_url
        return
    with NatsServer(tmp_path_factory.mktemp("nats-server")) as server:
        _record(request.config, f"NATS: started {server.url} (pid {server.pid})")
        yield server.url


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(nats_url: str) -> AsyncIterator[str]:
    """A unique ``t<10 hex>`` subject namespace; its streams and buckets are deleted after."""
    value = f"t{secrets.token_hex(5)}"
    yield value
    await purge_namespace(nats_url, value)


@pytest_asyncio.fixture(loop_scope="session")
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    """A connected nats-py client, drained after the test."""
    client = await nats.connect(nats_url, name="jobwire-tests", connect_timeout=5)
    try:
        yield client
    finally:
        if not client.is_closed:
            await client.drain()


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[NatsServerFactory]:
    """Start dedicated NATS servers this test owns (for outage tests).

    Each gets its own port and store directory; ``server.stop()`` then
    ``server.start()`` brings it back on the same port with its JetStream data.
    All are stopped after the test.
    """
    servers: list[NatsServer] = []

    def start(port: int | None = None) -> NatsServer:
        server = NatsServer(tmp_path / f"nats-server-{len(servers)}", port)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


# --------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    jobwire_harness_settings: HarnessSettings,
) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker: Tansu (not Apache Kafka) unless configured."""
    settings = jobwire_harness_settings
    configured = settings.kafka_bootstrap
    if configured and not settings.start_servers:
        first = configured.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        if is_listening(host or "127.0.0.1", int(port or 9092)):
            _record(request.config, f"Kafka: reused {configured}")
            yield configured
            return
    with TansuBroker(tmp_path_factory.mktemp("tansu")) as broker:
        _record(request.config, f"Kafka: started Tansu at {broker.bootstrap} (pid {broker.pid})")
        yield broker.bootstrap


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_topic_factory(kafka_bootstrap: str) -> AsyncIterator[KafkaTopicFactory]:
    """``await kafka_topic_factory(partitions=N)`` creates a unique topic; all deleted after."""
    created: list[str] = []

    async def create(partitions: int = 1) -> str:
        topic = await create_topic(kafka_bootstrap, partitions)
        created.append(topic)
        return topic

    try:
        yield create
    finally:
        await delete_topics(kafka_bootstrap, created)


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_topic(
    request: pytest.FixtureRequest, kafka_topic_factory: KafkaTopicFactory
) -> str:
    """A unique topic, deleted after the test.

    Partitions: ``@pytest.mark.kafka_topic(partitions=3)``, or indirect
    parametrisation with the partition count, else 1.
    """
    marker = request.node.get_closest_marker("kafka_topic")
    if marker is not None:
        partitions = int(marker.kwargs.get("partitions", 1))
    else:
        partitions = int(getattr(request, "param", 1))
    return await kafka_topic_factory(partitions)


# ------------------------------------------------------------------- storage

# Every storage_config uses this prefix, so contract tests also check that paths
# are relative to it.
STORAGE_PREFIX = "jobwire-tests/"


class StorageSetup(NamedTuple):
    """What ``open_storage`` takes: a storage's configuration and the secrets it names."""

    config: StorageConfig
    secrets: Secrets


def _web_port(url: str) -> int:
    return 443 if url.startswith("https:") else 80


def _secrets(values: Mapping[str, str]) -> Secrets:
    return Secrets(None, {variable_name(name): value for name, value in values.items()})


@pytest.fixture(scope="session")
def s3_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    jobwire_harness_settings: HarnessSettings,
) -> Iterator[S3Endpoint]:
    """URL and keys of an S3 server: SeaweedFS (not AWS) unless one is configured."""
    settings = jobwire_harness_settings
    configured = settings.s3_endpoint
    if configured and not settings.start_servers and _listening(configured, _web_port(configured)):
        _record(request.config, f"S3: reused {configured}")
        yield S3Endpoint(configured, settings.s3_access_key, settings.s3_secret_key)
        return
    with SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        _record(
            request.config, f"S3: started SeaweedFS at {server.endpoint.url} (pid {server.pid})"
        )
        yield server.endpoint


def _blob_endpoint(connection_string: str) -> str | None:
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "blobendpoint":
            return value.strip()
    return None


@pytest.fixture(scope="session")
def azurite_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    jobwire_harness_settings: HarnessSettings,
) -> Iterator[str]:
    """Connection string of an Azure Blob account: Azurite (not Azure) unless one is configured."""
    settings = jobwire_harness_settings
    configured = settings.azure_blob_connection_string
    if configured and not settings.start_servers:
        endpoint = _blob_endpoint(configured)
        # Without a BlobEndpoint the string names a cloud account: nothing to probe.
        if endpoint is None or _listening(endpoint, _web_port(endpoint)):
            _record(request.config, f"Azure Blob: reused {endpoint or 'the configured account'}")
            yield configured
            return
    with AzuriteServer(tmp_path_factory.mktemp("azurite")) as server:
        _record(
            request.config, f"Azure Blob: started Azurite on port {server.port} (pid {server.pid})"
        )
        yield server.connection_string


@pytest_asyncio.fixture(loop_scope="session")
async def s3_bucket(s3_server: S3Endpoint) -> AsyncIterator[str]:
    """A unique, empty bucket; deleted with its objects after the test."""
    bucket = await create_bucket(s3_server)
    try:
        yield bucket
    finally:
        await delete_bucket(s3_server, bucket)


@pytest_asyncio.fixture(loop_scope="session")
async def azure_container(azurite_server: str) -> AsyncIterator[str]:
    """A unique, empty container; deleted with its blobs after the test."""
    container = await create_container(azurite_server)
    try:
        yield container
    finally:
        await delete_container(azurite_server, container)


@pytest.fixture
def local_storage_config(tmp_path: Path) -> StorageSetup:
    """Local storage in a fresh directory, under :data:`STORAGE_PREFIX`."""
    root = tmp_path / "storage"
    root.mkdir()
    return StorageSetup(
        LocalStorageConfig(root=str(root), prefix=STORAGE_PREFIX), Secrets(None, {})
    )


@pytest.fixture
def s3_storage_config(s3_server: S3Endpoint, s3_bucket: str) -> StorageSetup:
    """S3 storage on a fresh bucket, under :data:`STORAGE_PREFIX`; keys passed as secrets."""
    config = S3StorageConfig(
        bucket=s3_bucket,
        endpoint_url=s3_server.url,
        region=s3_server.region,
        access_key_id="s3-access-key",
        secret_access_key="s3-secret-key",  # noqa: S106 (the secret's name)
        prefix=STORAGE_PREFIX,
    )
    secrets = _secrets(
        {"s3-access-key": s3_server.access_key, "s3-secret-key": s3_server.secret_key}
    )
    return StorageSetup(config, secrets)


@pytest.fixture
def azure_blob_storage_config(azurite_server: str, azure_container: str) -> StorageSetup:
    """Azure Blob storage on a fresh container, under :data:`STORAGE_PREFIX`."""
    config = AzureBlobStorageConfig(
        container=azure_container,
        connection_string="azure-blob-connection-string",
        prefix=STORAGE_PREFIX,
    )
    return StorageSetup(config, _secrets({"azure-blob-connection-string": azurite_server}))


_STORAGE_FIXTURES = {
    "local": "local_storage_config",
    "s3": "s3_storage_config",
    "azure-blob": "azure_blob_storage_config",
}


@pytest.fixture(params=list(_STORAGE_FIXTURES))
def storage_config(request: pytest.FixtureRequest) -> StorageSetup:
    """One storage per parameter (``local``, ``s3``, ``azure-blob``), fresh for the test.

    Servers start only for the kinds a run selects (``-k local`` starts none).
    """
    setup: StorageSetup = request.getfixturevalue(_STORAGE_FIXTURES[request.param])
    return setup
