"""jobwire.runtime.embedded against the real nats-server and PostgreSQL binaries."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from jobwire.runtime.embedded import (
    SHARED_POSTGRES_ROOT,
    EmbeddedServerError,
    NatsServer,
    PostgresServer,
    free_port,
    is_listening,
    pid_alive,
    postgres_data_dir,
)
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration


def test_free_port_is_bindable_and_is_listening_tells_open_from_closed() -> None:
    port = free_port()
    assert not is_listening("127.0.0.1", port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert is_listening("127.0.0.1", port)


# ---------------------------------------------------------------------- NATS


async def _publish(url: str, subject: str, count: int) -> None:
    client = await nats.connect(url, allow_reconnect=False)
    try:
        js = client.jetstream()
        for number in range(count):
            await js.publish(subject, f"{number}".encode())
    finally:
        await client.close()


async def _stream_messages(url: str, stream: str) -> int:
    client = await nats.connect(url, allow_reconnect=False)
    try:
        info = await client.jetstream().stream_info(stream)
        messages: int = info.state.messages
        return messages
    finally:
        await client.close()


async def test_nats_server_restarts_on_same_port_with_its_jetstream_data(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    with server:
        url, first_pid = server.url, server.pid
        assert first_pid is not None
        client = await nats.connect(url, allow_reconnect=False)
        try:
            await client.jetstream().add_stream(name="RESTART", subjects=["restart.>"])
        finally:
            await client.close()
        await _publish(url, "restart.a", 3)

        server.stop()
        assert server.pid is None
        assert not pid_alive(first_pid)
        assert not is_listening("127.0.0.1", server.port)

        server.start()
        assert server.url == url
        assert server.pid not in (None, first_pid)
        assert await _stream_messages(url, "RESTART") == 3
        await _publish(url, "restart.b", 2)
        assert await _stream_messages(url, "RESTART") == 5
        last_pid = server.pid
    assert last_pid is not None
    assert not pid_alive(last_pid)
    assert (tmp_path / "nats" / "nats-server.log").stat().st_size > 0


def test_nats_server_stop_kills_after_timeout(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    pid = server.pid
    assert pid is not None
    # A zero grace period takes the SIGKILL path.
    server.stop(timeout=0)
    assert not pid_alive(pid)
    server.stop()


def test_nats_server_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = NatsServer(tmp_path / "nats", port=listener.getsockname()[1])
        with pytest.raises(EmbeddedServerError, match="already listens"):
            server.start()
    assert server.pid is None


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    # Directly under the system temp dir: when we run as root the server runs as
    # 'postgres', which cannot enter pytest's 0700 basetemp.
    path = Path(tempfile.mkdtemp(prefix="jobwire-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _query(dsn: str, sql: str) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def test_postgres_server_keeps_data_across_restarts_and_runs_once(pg_data_dir: Path) -> None:
    server = PostgresServer(pg_data_dir)
    with server:
        first_pid = server.pid
        assert first_pid is not None
        assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        await _query(server.dsn, "CREATE TABLE kept AS SELECT 42 AS answer")
        with pytest.raises(EmbeddedServerError, match="already running"):
            PostgresServer(pg_data_dir, port=free_port()).start()

        server.stop()
        assert server.pid is None
        assert not pid_alive(first_pid)
        assert not is_listening("127.0.0.1", server.port)

        server.start()
        assert await _query(server.dsn, "SELECT answer FROM kept") == 42
        last_pid = server.pid
    assert last_pid is not None
    assert not pid_alive(last_pid)
    assert (pg_data_dir / "postgres.log").stat().st_size > 0


async def test_postgres_server_starts_after_being_killed(pg_data_dir: Path) -> None:
    server = PostgresServer(pg_data_dir)
    server.start()
    try:
        await _query(server.dsn, "CREATE TABLE survived AS SELECT 1 AS one")
        killed = server.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        assert (pg_data_dir / "postmaster.pid").exists()

        # The stale postmaster.pid (and a zombie postmaster until init reaps it)
        # must not block the next start; crash recovery replays the WAL.
        server.start()
        assert server.pid not in (None, killed)
        assert await _query(server.dsn, "SELECT one FROM survived") == 1
    finally:
        server.stop()


def test_postgres_server_refuses_a_foreign_non_empty_dir(pg_data_dir: Path) -> None:
    (pg_data_dir / "something.txt").write_text("not a cluster")
    with pytest.raises(EmbeddedServerError, match="neither empty nor a PostgreSQL data"):
        PostgresServer(pg_data_dir).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data dir to 'postgres'")
def test_postgres_server_as_root_explains_an_unreachable_data_dir(tmp_path: Path) -> None:
    # pytest's basetemp is 0700 root-owned: 'postgres' cannot enter it.
    with pytest.raises(EmbeddedServerError, match="cannot reach"):
        PostgresServer(tmp_path / "pg").start()


# ------------------------------------------------------- servers die with us

_OWNER = """
import sys, tempfile
from pathlib import Path
from jobwire.runtime.embedded import NatsServer, PostgresServer
nats = NatsServer(Path(sys.argv[1]) / "nats")
nats.start()
pg = PostgresServer(Path(sys.argv[1]) / "pg")
pg.start()
print(nats.pid, pg.pid, flush=True)
sys.stdin.read()  # until killed
"""


def _reachable_folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)  # reachable by the 'postgres' user when we are root
    return folder


def _start_owner(folder: Path) -> tuple[subprocess.Popen[str], int, int]:
    """A process that starts both servers, and the servers' PIDs."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    nats_pid, pg_pid = (int(pid) for pid in owner.stdout.readline().split())
    return owner, nats_pid, pg_pid


async def test_servers_do_not_outlive_a_process_killed_with_sigkill() -> None:
    # A benchmark or `jobwire dev` killed by its user must not leave servers behind.
    folder = _reachable_folder("jobwire-owner-")
    owner, nats_pid, pg_pid = _start_owner(folder)
    try:
        assert pid_alive(nats_pid)
        assert pid_alive(pg_pid)
        owner.kill()
        await asyncio.to_thread(owner.communicate)
        await wait_for(
            lambda: not pid_alive(nats_pid) and not pid_alive(pg_pid),
            timeout=20,
            description="the servers gone after their owner was killed",
        )
    finally:
        if owner.poll() is None:
            owner.kill()
        await asyncio.to_thread(owner.communicate)
        shutil.rmtree(folder, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data dir to 'postgres'")
async def test_postgres_data_dir_moves_out_of_a_folder_postgres_cannot_reach() -> None:
    project = Path(tempfile.mkdtemp(prefix="jobwire-private-"))  # 0700, like root's home
    assert _mode(project) == 0o700
    data = postgres_data_dir(project / ".jobwire" / "postgres", project)
    try:
        assert data.is_relative_to(SHARED_POSTGRES_ROOT)
        assert (data.parent / "project").read_text().strip() == str(project)
        # Stable: the next run of the same project finds the same folder.
        assert postgres_data_dir(project / ".jobwire" / "postgres", project) == data
        with PostgresServer(data) as server:
            assert await _query(server.dsn, "SELECT 1") == 1
        # The user's folder is left as it was.
        assert _mode(project) == 0o700
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)


def test_postgres_data_dir_stays_where_it_is_when_reachable() -> None:
    reachable = _reachable_folder("jobwire-open-")
    try:
        preferred = reachable / "postgres"
        assert postgres_data_dir(preferred, reachable) == preferred
    finally:
        shutil.rmtree(reachable, ignore_errors=True)
