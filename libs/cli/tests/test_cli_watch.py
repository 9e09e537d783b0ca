"""`jobwire watch` on a terminal: a live table that Ctrl-C ends cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import sys
from collections.abc import Iterator

import pytest
from cli_harness import ApiServer, Jobwire, create_job, hello_job

from jobwire.testing import wait_for, with_signals

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def parent_sigint(disposition: signal.Handlers | None) -> Iterator[None]:
    """The test process's own SIGINT disposition while it starts the child:
    ignored is how a script's background job (CI) starts pytest."""
    if disposition is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, disposition)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    "inherited", [None, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"]
)
async def test_watch_shows_the_live_table_and_ctrl_c_exits_cleanly(
    jobwire: Jobwire, api_server: ApiServer, inherited: signal.Handlers | None
) -> None:
    await create_job(api_server, hello_job("watched"))
    primary, secondary = pty.openpty()
    env = {
        **os.environ,
        "JOBWIRE_API_URL": api_server.url,
        "JOBWIRE_TOKEN": api_server.tokens["viewer"],
        "JOBWIRE_CONFIG": str(jobwire.config),
        "COLUMNS": "200",
        "LINES": "50",
        "TERM": "xterm",
    }
    # The child's SIGINT is set here, whatever the test process inherited: it
    # is the signal this test sends.
    command = with_signals([sys.executable, "-m", "jobwire.cli", "watch", "--interval", "0.2"])
    with parent_sigint(inherited):
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=secondary, stdout=secondary, stderr=secondary, env=env
        )
    os.close(secondary)
    seen = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):  # the process has closed the terminal
            seen.extend(os.read(primary, 65536))

    loop = asyncio.get_running_loop()
    loop.add_reader(primary, read)
    try:
        await wait_for(lambda: b"watched" in seen, timeout=60, description="the table")
        assert b"Next Run Time" in seen
        assert b"Ctrl-C to stop" in seen
        # A refresh happens, not just one frame: the clock in the footer moves on.
        frames = seen.count(b"Ctrl-C to stop")
        await wait_for(lambda: seen.count(b"Ctrl-C to stop") > frames, timeout=60)

        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), timeout=60)
    finally:
        loop.remove_reader(primary)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        read()
        os.close(primary)
    assert code == 0, seen.decode(errors="replace")
    assert b"Traceback" not in seen
    assert b"KeyboardInterrupt" not in seen


async def test_watch_as_json_prints_a_page_per_refresh_until_sigint(
    jobwire: Jobwire, api_server: ApiServer
) -> None:
    await create_job(api_server, hello_job("watched-json"))
    env = {
        **os.environ,
        "JOBWIRE_API_URL": api_server.url,
        "JOBWIRE_TOKEN": api_server.tokens["viewer"],
        "JOBWIRE_CONFIG": str(jobwire.config),
    }
    command = with_signals([sys.executable, "-m", "jobwire.cli", "watch", "-o", "json"])
    proc = await asyncio.create_subprocess_exec(
        *command, "--interval", "0.2", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        pages = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    for page in pages:
        assert [job["name"] for job in page["items"]] == ["watched-json"]
        assert page["total"] == 1
    for line in rest.decode().splitlines():
        json.loads(line)  # stdout stays a stream of documents
