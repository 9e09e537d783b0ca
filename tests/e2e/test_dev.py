"""`make run` on a fresh machine: `jobwire dev` brings the system up, the commands
it prints work as printed, and a stop — however it is asked for — leaves no
process behind.

The tests share one project folder, in order: a first run as a script runs it
(SIGINT ignored, as a background job of a non-interactive shell inherits it),
a second under a terminal (Ctrl-C) finds the first run's data, a third stops
on SIGTERM, a fourth is killed with SIGKILL. The folder is 0700, like a clone
in root's home, which the `postgres` OS user cannot enter.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest

from jobwire.runtime.embedded import SHARED_POSTGRES_ROOT, is_listening, pid_alive
from jobwire.testing import wait_for, with_signals

pytestmark = pytest.mark.integration

PRINTER = Path(__file__).parents[2] / "examples" / "workflow_printer.py"
CASEAPP = Path(__file__).parents[2] / "examples" / "caseapp_sample.py"
READY = "Ctrl-C stops everything."
# A few seconds on a quiet machine; the bound leaves room for a busy one.
STOP_BOUND = 20.0
DEFAULT_PAGE = "http://127.0.0.1:8080/"


def _environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JOBWIRE_") and not k.startswith("OTEL_")
    }
    return env | {"JOBWIRE_LOG_FORMAT": "json", "COLUMNS": "200"}


class Dev:
    """`jobwire dev` as a user runs it, in the project's folder: from a script
    (a pipe, SIGINT ignored) or in a terminal (a pty, Ctrl-C)."""

    def __init__(self, project: Path, terminal: bool = False) -> None:
        self.project = project
        self.output = ""
        self._lock = threading.Lock()
        command = [sys.executable, "-m", "jobwire.cli", "dev", "--example", str(PRINTER)]
        command += ["--example", str(CASEAPP)]
        self.popen: subprocess.Popen[bytes] | None = None
        self.primary: int | None = None
        if terminal:
            env = _environment()  # built before the fork: the child only execs
            pid, self.primary = pty.fork()
            if pid == 0:  # the child: the pty is its controlling terminal
                os.chdir(project)
                os.execve(sys.executable, command, env)  # noqa: S606 (no shell wanted)
            self.pid = pid
            source = self.primary
        else:
            # How a script's `make run &` starts it: SIGINT ignored, inherited.
            self.popen = subprocess.Popen(
                with_signals(command, ignored=[signal.SIGINT]),
                cwd=project,
                env=_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self.pid = self.popen.pid
            assert self.popen.stdout is not None
            source = self.popen.stdout.fileno()
        self._reader = threading.Thread(target=self._read, args=(source,), daemon=True)
        self._reader.start()
        self.returncode: int | None = None

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed with the process
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk.decode(errors="replace").replace("\r\n", "\n")

    async def until(self, marker: str, timeout: float = 120) -> str:
        def seen() -> bool:
            if marker in self.output:
                return True
            if self.poll() is not None:
                raise AssertionError(f"jobwire dev exited before {marker!r}:\n{self.output}")
            return False

        await wait_for(seen, timeout=timeout, description=repr(marker))
        return self.output

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.popen is not None:
                self.returncode = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    async def exited(self, timeout: float = STOP_BOUND) -> int:
        await wait_for(lambda: self.poll() is not None, timeout=timeout, description="exit")
        code = self.poll()
        assert code is not None
        return code

    def recorded(self) -> list[int]:
        """The PIDs `jobwire dev` recorded for what it started (never found by name)."""
        record = json.loads((self.project / ".jobwire" / "dev.json").read_text())
        assert record["pid"] == self.pid
        return [entry["pid"] for entry in record["processes"].values()]

    def close(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            if self.popen is not None:
                self.popen.wait()
            else:
                os.waitpid(self.pid, 0)
        if self.popen is not None and self.popen.stdout is not None:
            self.popen.stdout.close()
        if self.primary is not None:
            os.close(self.primary)


async def _all_gone(pids: list[int]) -> None:
    await wait_for(
        lambda: not [pid for pid in pids if pid_alive(pid)],
        timeout=20,
        description=f"every process jobwire dev started ({pids}) gone",
    )


def _run_cli(project: Path, printed: str) -> subprocess.CompletedProcess[str]:
    """A command as `make run` printed it (`uv run jobwire …`), from the project's
    folder, with nothing set by hand; this environment's Python stands in for `uv run`."""
    words = shlex.split(printed)
    assert words[:3] == ["uv", "run", "jobwire"], printed
    return subprocess.run(
        [sys.executable, "-m", "jobwire.cli", *words[3:]],
        cwd=project,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jobwire-dev-"))  # 0700
    yield path
    record = path / ".jobwire" / "dev.json"
    if record.exists():
        moved = json.loads(record.read_text()).get("postgres_data")
        if moved and Path(moved).is_relative_to(SHARED_POSTGRES_ROOT):
            shutil.rmtree(Path(moved).parent, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


async def test_a_script_runs_it_and_the_printed_next_steps_work(project: Path) -> None:
    assert _mode(project) == 0o700
    dev = Dev(project)
    try:
        banner = await dev.until(READY)
        nats_url = re.search(r"NATS\s+(nats://\S+)", banner)
        pg_url = re.search(r"PostgreSQL\s+(postgresql://\S+) \(embedded, data in (\S+)\)", banner)
        page = re.search(r"Jobs Management page and admin API: (http://127.0.0.1:\d+)/", banner)
        assert nats_url, banner
        assert pg_url, banner
        assert page, banner
        if os.geteuid() == 0:
            # The `postgres` user cannot enter a 0700 folder of root's: its data
            # lives elsewhere, and the banner says where.
            assert Path(pg_url[2]).is_relative_to(SHARED_POSTGRES_ROOT), banner
        assert _mode(project) == 0o700  # left as it was
        assert f"scheduler   {page[1]} " in banner
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{page[1]}/")).status_code == 200  # the page itself
        record = project / ".jobwire" / "dev.json"
        assert _mode(record) == 0o600  # it holds an admin token

        # The search sample saves its jobs and loads its index beside the system.
        await dev.until("caseapp-sample: incremental job `sample-cases` enabled")
        # The next steps, exactly as printed, need nothing typed by hand.
        steps = banner.split("Next, in another terminal in this folder:\n", 1)[1]
        printed = [line.strip() for line in steps.splitlines() if line.startswith("  uv run")]
        assert "uv run jobwire jobs list" in printed, banner
        assert "uv run jobwire hosts" in printed, banner
        # The README shows the same steps.
        readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
        assert f"Jobs Management page and admin API: {DEFAULT_PAGE}" in readme
        for command in printed:
            assert f"  {command}\n" in readme, command
        for command in printed:
            if command.endswith(" watch"):
                continue  # until Ctrl-C: test_cli_watch covers it
            done = _run_cli(project, command)
            assert done.returncode == 0, f"{command}: {done.stderr}"
        jobs = _run_cli(project, "uv run jobwire jobs list")
        assert "sample-hello" in jobs.stdout
        hosts = _run_cli(project, "uv run jobwire hosts -o json")
        assert hosts.returncode == 0, hosts.stderr
        assert {h["service"] for h in json.loads(hosts.stdout)} == {
            "scheduler",
            "listeners",
            "mailer",
            "search-sync",
        }
        status = _run_cli(project, "uv run jobwire search status sample-cases -o json")
        assert status.returncode == 0, status.stderr
        searched = json.loads(status.stdout)
        assert searched["source_documents"] == 2000
        assert searched["capture_installed"] is True

        # Something visibly happens: the sample job fires and the example app prints it.
        printed_run = await dev.until("workflow-printer: start 'hello'")
        assert "hello from jobwire" in printed_run
        # A file dropped into the sample inbox starts a workflow through the
        # listeners service (scheduler → KV mirror → listener → JetStream).
        inbox = project / ".jobwire" / "inbox"
        inbox.mkdir(exist_ok=True)
        (inbox / "greeting.txt").write_text("hi")
        await dev.until('"path": "greeting.txt"')
        await wait_for(
            lambda: (inbox / "processed" / "greeting.txt").exists(),
            timeout=30,
            description="the sample listener moved the file",
        )
        # The sample mail (due every minute; triggered here rather than awaited):
        # the example app asks the mailer, `mail-sender` sends it into the sink.
        triggered = _run_cli(project, "uv run jobwire jobs trigger sample-mail")
        assert triggered.returncode == 0, triggered.stderr
        mailed = await dev.until("mail  → alice@example.com")
        assert "Hello from jobwire" in mailed
        assert list((project / ".jobwire" / "mail").glob("*.eml"))
        nc = await nats.connect(nats_url[1])
        js = nc.jetstream()
        await js.add_stream(name="DEVPROBE", subjects=["devprobe.>"])
        await js.publish("devprobe.x", b"kept")
        await nc.close()
        conn = await asyncpg.connect(pg_url[1])
        await conn.execute("CREATE TABLE probe (note text); INSERT INTO probe VALUES ('kept')")
        await conn.close()

        children = dev.recorded()
        # nats-server, postgres, osmem-server, the two examples
        assert len(children) == 5
        # Without a terminal `uv run` forwards the SIGINT jobwire dev already
        # got: one Ctrl-C arrives twice, and is still one graceful stop.
        os.kill(dev.pid, signal.SIGINT)
        await dev.until('"event": "service.stop_requested"')
        os.kill(dev.pid, signal.SIGINT)
        assert await dev.exited() == 0, dev.output
    finally:
        dev.close()
    assert "jobwire dev: stopped" in dev.output
    assert "service.forced_stop" not in dev.output
    await _all_gone(children)
    assert not is_listening("127.0.0.1", int(nats_url[1].rsplit(":", 1)[1]))


async def test_ctrl_c_in_a_terminal_stops_it_and_the_data_is_kept(project: Path) -> None:
    dev = Dev(project, terminal=True)
    try:
        banner = await dev.until(READY)
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
        children = dev.recorded()
        assert dev.primary is not None
        os.write(dev.primary, b"\x03")  # Ctrl-C: the terminal signals its foreground group
        assert await dev.exited() == 0, dev.output
    finally:
        dev.close()
    assert "jobwire dev: stopped" in dev.output
    await _all_gone(children)


async def test_sigterm_stops_it(project: Path) -> None:
    dev = Dev(project)
    try:
        await dev.until(READY)
        children = dev.recorded()
        os.kill(dev.pid, signal.SIGTERM)
        assert await dev.exited() == 0, dev.output
    finally:
        dev.close()
    await _all_gone(children)


async def test_nothing_outlives_it_when_it_is_killed(project: Path) -> None:
    dev = Dev(project)
    try:
        await dev.until(READY)
        children = dev.recorded()
        os.kill(dev.pid, signal.SIGKILL)
        await dev.exited()
    finally:
        dev.close()
    # The servers and the example are in sessions of their own (a Ctrl-C goes to
    # jobwire dev alone), so only their parent-death signal can stop them.
    await _all_gone(children)
