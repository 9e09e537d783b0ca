"""pytest fixtures: a real mail path, Postfix delivering into the session's Dovecot.

``postfix`` (session) starts one private Postfix instance in a temporary
directory, delivering into the maildirs of the ``dovecot`` fixture's server (so
mail sent to it is read over IMAP from that server), and stops it by PID after
the session. There is nothing to reuse: Postfix runs only as root and writes into
the Dovecot's folders, so every run starts its own.

Per-test isolation comes from fresh mailboxes: ``postfix.add_mailbox(domain=...)``
gives a new address (``u<hex>@cases.test`` or ``@client.test``) and its IMAP
login. ``postfix_factory`` starts dedicated instances a test may stop and start.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from jobwire.testing.dovecot import DovecotServer

# Listed in the "jobwire test servers" summary that plugin prints.
from jobwire.testing.plugin import _record
from jobwire.testing.postfix import PostfixServer

__all__ = ["PostfixFactory"]


class PostfixFactory(Protocol):
    def __call__(self, delivering_into: DovecotServer | None = None) -> PostfixServer: ...


def _start(dovecot: DovecotServer) -> PostfixServer:
    # Not under pytest's basetemp: that is 0700, and Postfix's daemons run as
    # 'postfix', which must reach the queue.
    server = PostfixServer(Path(tempfile.mkdtemp(prefix="jobwire-postfix-")), dovecot)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.directory, ignore_errors=True)
        raise
    return server


def _discard(server: PostfixServer) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix(request: pytest.FixtureRequest, dovecot: DovecotServer) -> Iterator[PostfixServer]:
    """Postfix on 127.0.0.1 (SMTP with STARTTLS, SMTPS) delivering into ``dovecot``."""
    server = _start(dovecot)
    _record(
        request.config,
        f"SMTP: started Postfix on {server.smtp_port} (smtps {server.smtps_port}, "
        f"pid {server.pid}) delivering into Dovecot in {dovecot.directory}",
    )
    try:
        yield server
    finally:
        _discard(server)


@pytest.fixture
def postfix_factory(dovecot: DovecotServer) -> Iterator[PostfixFactory]:
    """Start dedicated Postfix instances this test owns (for restart and outage tests),
    delivering into the session's Dovecot or the one given (e.g. from
    ``dovecot_factory``, for wrong-password tests: Dovecot delays later logins from
    127.0.0.1 after a failed one). All are stopped and removed after the test."""
    servers: list[PostfixServer] = []

    def start(delivering_into: DovecotServer | None = None) -> PostfixServer:
        server = _start(delivering_into or dovecot)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            _discard(server)
