"""pytest fixtures: a real IMAP server (Dovecot) and a fresh mailbox user per test.

``dovecot`` (session) reuses the server that ``python -m jobwire.testing.dovecot
DIR`` runs when ``JOBWIRE_TEST_IMAP_DIR=DIR`` is set and that server listens;
otherwise it starts one in a temporary directory, stopped by PID after the
session. ``JOBWIRE_TEST_START_SERVERS=1`` always starts one.

A reused server is one of ours, not any IMAP server: per-test isolation comes
from a fresh user (its own empty mailbox), which only a server whose passwd-file
we can write to can give.

``imap_account`` gives that user; ``dovecot_factory`` starts dedicated servers a
test may stop and start again (a server restart) without disturbing the others.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from jobwire.testing.dovecot import DovecotServer, ImapAccount

# Listed in the "jobwire test servers" summary that plugin prints.
from jobwire.testing.plugin import _record

__all__ = ["DovecotFactory", "ImapAccount"]

_TRUE = {"1", "true", "yes", "on"}


class DovecotFactory(Protocol):
    def __call__(self) -> DovecotServer: ...


def configured_server(environ: Mapping[str, str] = os.environ) -> DovecotServer | None:
    """The server ``JOBWIRE_TEST_IMAP_DIR`` names, when it listens and may be reused."""
    if environ.get("JOBWIRE_TEST_START_SERVERS", "").lower() in _TRUE:
        return None
    directory = environ.get("JOBWIRE_TEST_IMAP_DIR")
    return DovecotServer.attach(Path(directory)) if directory else None


def _start() -> DovecotServer:
    # Not under pytest's basetemp: that is 0700, and Dovecot's login and auth
    # processes run as its own users, which must reach the sockets and passwd file.
    server = DovecotServer(Path(tempfile.mkdtemp(prefix="jobwire-dovecot-")))
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.directory, ignore_errors=True)
        raise
    return server


def _discard(server: DovecotServer) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(request: pytest.FixtureRequest) -> Iterator[DovecotServer]:
    """A Dovecot IMAP/IMAPS server on 127.0.0.1 (reused or started for the session)."""
    reused = configured_server()
    if reused is not None:
        _record(request.config, f"IMAP: reused Dovecot in {reused.directory}")
        yield reused
        return
    server = _start()
    _record(
        request.config,
        f"IMAP: started Dovecot on {server.imap_port} (imaps {server.imaps_port}, "
        f"pid {server.pid})",
    )
    try:
        yield server
    finally:
        _discard(server)


@pytest.fixture
def imap_account(dovecot: DovecotServer) -> ImapAccount:
    """A new user with an empty mailbox on the session's server: host, ports, login, CA."""
    return dovecot.add_user()


@pytest.fixture
def dovecot_factory() -> Iterator[DovecotFactory]:
    """Start dedicated Dovecot servers this test owns (for restart and outage tests).

    ``server.stop()`` then ``server.start()`` brings one back on the same ports
    with its users and mail. All are stopped and removed after the test.
    """
    servers: list[DovecotServer] = []

    def start() -> DovecotServer:
        server = _start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            _discard(server)
