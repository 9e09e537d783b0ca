"""Dovecot fixtures: a real IMAP server, a fresh user per test, restarts on the same ports."""

from __future__ import annotations

import imaplib
import ssl
from pathlib import Path

import pytest

from jobwire.runtime.embedded import is_listening, pid_alive
from jobwire.testing.dovecot import DovecotServer, ImapAccount, ImapTestClient
from jobwire.testing.imap_fixtures import DovecotFactory, configured_server

pytestmark = pytest.mark.integration

MESSAGE = b"From: a@example.com\r\nSubject: hello\r\nMessage-ID: <1@example.com>\r\n\r\nbody\r\n"


async def test_a_fresh_user_has_an_empty_mailbox_and_round_trips_a_message(
    imap_account: ImapAccount,
) -> None:
    async with ImapTestClient(imap_account) as imap:
        assert await imap.count() == 0
        uid = await imap.append(MESSAGE)
        await imap.create("Archive")
        assert await imap.flags() == {uid: set()}
        assert await imap.count("Archive") == 0


async def test_users_do_not_share_mailboxes(dovecot: DovecotServer) -> None:
    first, second = dovecot.add_user(), dovecot.add_user()
    async with ImapTestClient(first) as imap:
        await imap.append(MESSAGE)
    async with ImapTestClient(second) as imap:
        assert await imap.count() == 0


async def test_imaps_verifies_against_the_ca_it_hands_out(imap_account: ImapAccount) -> None:
    async with ImapTestClient(imap_account, tls=True) as imap:
        await imap.append(MESSAGE)
        assert await imap.count() == 1

    untrusted = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            imap_account.host, imap_account.tls_port, ssl_context=untrusted, timeout=5
        )


async def test_a_wrong_password_is_refused(dovecot_factory: DovecotFactory) -> None:
    # A server of its own: Dovecot delays every later login from 127.0.0.1 after
    # a failed one, which would slow down the tests sharing the session's server.
    account = dovecot_factory().add_user()
    imap = imaplib.IMAP4(account.host, account.port, timeout=5)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(account.user, account.password + "x")
    finally:
        imap.shutdown()


async def test_a_restart_keeps_ports_users_and_mail(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory()
    account = server.add_user()
    async with ImapTestClient(account) as imap:
        uid = await imap.append(MESSAGE)
        validity = await imap.uidvalidity()
    pid = server.pid
    assert pid is not None

    server.stop()

    assert not pid_alive(pid)
    assert not is_listening(server.host, server.imap_port)
    assert not is_listening(server.host, server.imaps_port)
    server.start()
    async with ImapTestClient(account, tls=True) as imap:
        assert await imap.flags() == {uid: set()}
        assert await imap.uidvalidity() == validity


async def test_a_server_another_process_runs_is_reused_through_its_directory(
    dovecot: DovecotServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environ = {"JOBWIRE_TEST_IMAP_DIR": str(dovecot.directory)}
    attached = configured_server(environ)
    assert attached is not None
    assert (attached.imap_port, attached.imaps_port) == (dovecot.imap_port, dovecot.imaps_port)
    assert attached.pid is None  # not ours to stop
    async with ImapTestClient(attached.add_user()) as imap:
        assert await imap.count() == 0

    assert configured_server({**environ, "JOBWIRE_TEST_START_SERVERS": "1"}) is None
    assert configured_server({"JOBWIRE_TEST_IMAP_DIR": str(tmp_path)}) is None


async def test_messages_reads_what_was_appended_without_marking_it_seen(
    imap_account: ImapAccount,
) -> None:
    async with ImapTestClient(imap_account) as imap:
        uid = await imap.append(MESSAGE)
        assert await imap.messages() == {uid: MESSAGE}
        assert await imap.flags() == {uid: set()}
