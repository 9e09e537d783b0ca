"""`make run` on a fresh machine: `jobwire dev` brings the system up and Ctrl-C takes it down."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from jobwire.runtime.embedded import is_listening
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration

PRINTER = Path(__file__).parents[2] / "examples" / "workflow_printer.py"


class Dev:
    """`jobwire dev` as a user runs it, in a folder of its own."""

    def __init__(self, data: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("JOBWIRE_") and not k.startswith("OTEL_")
        }
        env |= {"JOBWIRE_DEV_DIR": str(data), "JOBWIRE_LOG_FORMAT": "json"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "jobwire.cli", "dev", "--example", str(PRINTER)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def read_until(self, marker: str) -> str:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            if marker in line:
                return "".join(self.lines)
        raise AssertionError("jobwire dev exited early:\n" + "".join(self.lines))

    def interrupt(self) -> int:
        self.popen.send_signal(signal.SIGINT)
        rest, _ = self.popen.communicate(timeout=60)
        self.lines.append(rest)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.communicate(timeout=30)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # Under /tmp, not pytest's 0700 tmp_path: the embedded PostgreSQL runs as
    # the `postgres` OS user when we are root, and must reach its folder.
    path = Path(tempfile.mkdtemp(prefix="jobwire-dev-"))
    path.chmod(0o755)  # as `make run` would find the repository folder
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_dev_starts_servers_keeps_data_and_stops_cleanly(dev_dir: Path) -> None:
    tmp_path = dev_dir
    dev = Dev(tmp_path)
    try:
        banner = dev.read_until("Ctrl-C stops everything.")
        nats_url = re.search(r"NATS\s+(nats://\S+)", banner)
        pg_url = re.search(r"PostgreSQL\s+(postgresql://\S+)", banner)
        assert nats_url, banner
        assert pg_url, banner
        assert re.search(r"scheduler\s+http://127.0.0.1:\d+", banner), banner
        # Something visibly happens: the sample job fires and the example app prints it.
        printed = dev.read_until("workflow-printer: start 'hello'")
        assert "hello from jobwire" in printed
        assert re.search(r"listeners\s+http://127.0.0.1:\d+", banner), banner
        # A file dropped into the sample inbox starts a workflow through the
        # listeners service (scheduler → KV mirror → listener → JetStream).
        (tmp_path / "inbox").mkdir(exist_ok=True)
        (tmp_path / "inbox" / "greeting.txt").write_text("hi")
        printed = dev.read_until('"path": "greeting.txt"')
        assert "workflow-printer: start 'hello'" in printed.splitlines()[-1]
        await wait_for(
            lambda: (tmp_path / "inbox" / "processed" / "greeting.txt").exists(),
            timeout=10,
            description="the sample listener moved the file",
        )
        nc = await nats.connect(nats_url[1])
        js = nc.jetstream()
        await js.add_stream(name="DEVPROBE", subjects=["devprobe.>"])
        await js.publish("devprobe.x", b"kept")
        await nc.close()
        conn = await asyncpg.connect(pg_url[1])
        await conn.execute("CREATE TABLE probe (note text); INSERT INTO probe VALUES ('kept')")
        await conn.close()
        postmaster_pid = int((tmp_path / "postgres" / "postmaster.pid").read_text().split()[0])
        assert dev.interrupt() == 0, "".join(dev.lines)
    finally:
        dev.kill()
    assert "jobwire dev: stopped" in "".join(dev.lines)
    # Nothing left behind: the NATS port is free and the postmaster is gone.
    port = int(nats_url[1].rsplit(":", 1)[1])
    assert not is_listening("127.0.0.1", port)
    await wait_for(
        lambda: not _pid_alive(postmaster_pid), timeout=10, description="postmaster gone"
    )

    # A second run finds the data of the first.
    again = Dev(tmp_path)
    try:
        banner = again.read_until("Ctrl-C stops everything.")
        nats_url = re.search(r"NATS\s+(nats://\S+)", banner)
        pg_url = re.search(r"PostgreSQL\s+(postgresql://\S+)", banner)
        assert nats_url
        assert pg_url
        conn = await asyncpg.connect(pg_url[1])
        assert await conn.fetchval("SELECT note FROM probe") == "kept"
        await conn.close()
        nc = await nats.connect(nats_url[1])
        msg = await nc.jetstream().get_last_msg("DEVPROBE", "devprobe.x")
        assert msg.data == b"kept"
        await nc.close()
        assert again.interrupt() == 0
    finally:
        again.kill()
