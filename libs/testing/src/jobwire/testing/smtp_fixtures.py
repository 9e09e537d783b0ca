"""pytest fixtures: a real SMTP server (aiosmtpd in a process of its own).

``smtp_server`` (session)
    A plain sink on 127.0.0.1 shared by the session: no TLS, no AUTH, accepts
    everything (SIZE 10 MiB, SMTPUTF8). Its mail is every test's mail: send to
    addresses your test made up and read with ``messages(rcpt=...)`` /
    ``wait_for_messages(n, rcpt=...)``. Leave its faults alone: a test that
    needs faults takes a server of its own.
``smtp_server_factory`` (function)
    ``smtp_server_factory(tls=True, starttls=True, users={"u": "pw"},
    auth_required=True, data_size_limit=1024, faults=[...])`` starts a server
    this test owns (any :class:`~jobwire.testing.smtp_server.SmtpServer`
    option), stopped by PID after the test. ``set_faults`` changes its faults
    while it runs; ``stop()`` then ``start()`` is an outage on the same ports.

A client trusts a TLS server through ``server.client_tls_context()`` (or
``server.ca_pem``). aiosmtplib upgrades to STARTTLS by itself when offered:
give it that context, or ``start_tls=False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from jobwire.testing.plugin import _record
from jobwire.testing.smtp_server import FaultRule, ReceivedMessage, SmtpServer

__all__ = ["FaultRule", "ReceivedMessage", "SmtpServer", "SmtpServerFactory"]


class SmtpServerFactory(Protocol):
    def __call__(self, **options: Any) -> SmtpServer: ...


@pytest.fixture(scope="session")
def smtp_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SmtpServer]:
    """A plain SMTP sink for the session (see the module docstring)."""
    with SmtpServer(tmp_path_factory.mktemp("smtp-server")) as server:
        _record(request.config, f"SMTP: started aiosmtpd on {server.port} (pid {server.pid})")
        yield server


@pytest.fixture
def smtp_server_factory(tmp_path: Path) -> Iterator[SmtpServerFactory]:
    """Start SMTP servers this test owns, with any options; all stopped after the test."""
    servers: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        server = SmtpServer(tmp_path / f"smtp-server-{len(servers)}", **options)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
