"""Postfix fixtures: a real mail path from an SMTP client into Dovecot mailboxes read over IMAP."""

from __future__ import annotations

import email
import email.policy
import shutil
import ssl
import tempfile
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from jobwire.runtime.embedded import is_listening, pid_alive
from jobwire.testing import wait_for
from jobwire.testing.dovecot import DovecotServer, ImapAccount, ImapTestClient
from jobwire.testing.imap_fixtures import DovecotFactory
from jobwire.testing.postfix import PostfixServer, session_processes
from jobwire.testing.postfix_fixtures import PostfixFactory

pytestmark = pytest.mark.integration

SUBJECT = "Ihre Anfrage Nr. 42 — Grüße, 日本語"


def tls(server: PostfixServer) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=server.ca_pem)


async def inbox(account: ImapAccount, expected: int = 1) -> list[bytes]:
    """The messages of the account's INBOX once there are ``expected`` of them."""

    async def arrived() -> list[bytes] | None:
        async with ImapTestClient(account) as imap:
            found = await imap.messages()
        return list(found.values()) if len(found) >= expected else None

    return await wait_for(arrived, timeout=10, description=f"{expected} message(s) in INBOX")


def instance_processes(config_dir: Path) -> list[int]:
    """PIDs of processes that run with this instance's configuration (MAIL_CONFIG)."""
    marker = f"MAIL_CONFIG={config_dir}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(environ.parent.name)
        if marker in variables and pid_alive(pid):
            found.append(pid)
    return found


async def test_a_message_sent_with_smtputf8_over_starttls_lands_intact_in_the_inbox(
    postfix: PostfixServer,
) -> None:
    support = postfix.add_mailbox(domain="cases.test")
    customer = postfix.add_mailbox(domain="client.test")
    raw = (
        f"From: Support <{support.user}>\r\nTo: <{customer.user}>\r\n"
        f"Subject: {SUBJECT}\r\nMessage-ID: <case-42.1@cases.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        "\r\nGuten Tag, ihre Anfrage ist eingegangen. ✓\r\n"
    ).encode()

    async with aiosmtplib.SMTP(
        hostname=postfix.host, port=postfix.smtp_port, tls_context=tls(postfix)
    ) as smtp:
        assert smtp.get_transport_info("sslcontext") is not None  # upgraded by STARTTLS
        await smtp.ehlo()  # what the server offers over TLS
        assert smtp.supports_extension("smtputf8")
        errors, reply = await smtp.sendmail(
            support.user, [customer.user], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
    assert errors == {}
    assert "queued as" in reply

    [delivered] = await inbox(customer)
    message = email.message_from_bytes(delivered, policy=email.policy.SMTPUTF8)
    assert message["Message-ID"] == "<case-42.1@cases.test>"
    # Not re-encoded on the way: the UTF-8 header arrives byte for byte.
    assert f"Subject: {SUBJECT}\r\n".encode() in delivered
    assert message.get_content().strip() == "Guten Tag, ihre Anfrage ist eingegangen. ✓"
    assert message["Delivered-To"] == customer.user
    assert "with UTF8SMTPS" in str(message["Received"])  # SMTPUTF8 over TLS
    async with ImapTestClient(support) as imap:
        assert await imap.count() == 0


async def test_the_customer_reads_the_email_and_writes_a_reply_back(
    postfix: PostfixServer,
) -> None:
    support = postfix.add_mailbox(domain="cases.test")
    customer = postfix.add_mailbox(domain="client.test")
    question = EmailMessage()
    question["From"], question["To"] = support.user, customer.user
    question["Subject"], question["Message-ID"] = SUBJECT, "<case-7.1@cases.test>"
    question.set_content("Wir melden uns. Grüße")
    await aiosmtplib.send(
        question, hostname=postfix.host, port=postfix.smtp_port, tls_context=tls(postfix)
    )
    [received] = await inbox(customer)
    original = email.message_from_bytes(received, policy=email.policy.default)

    reply = EmailMessage()
    reply["From"], reply["To"] = customer.user, original["From"]
    reply["Subject"] = f"Re: {original['Subject']}"
    reply["Message-ID"] = "<reply-1@client.test>"
    reply["In-Reply-To"] = reply["References"] = original["Message-ID"]
    reply.set_content("Danke!")
    # The other way in: TLS from the first byte.
    await aiosmtplib.send(
        reply,
        hostname=postfix.host,
        port=postfix.smtps_port,
        use_tls=True,
        tls_context=tls(postfix),
    )

    [answer] = await inbox(support)
    answered = email.message_from_bytes(answer, policy=email.policy.default)
    assert answered["Subject"] == f"Re: {SUBJECT}"
    assert answered["In-Reply-To"] == "<case-7.1@cases.test>"
    assert answered["Message-ID"] == "<reply-1@client.test>"
    async with ImapTestClient(customer) as imap:
        assert await imap.count() == 1  # the question only: the reply went to support


async def test_unknown_users_and_foreign_domains_are_refused_at_rcpt(
    postfix: PostfixServer,
) -> None:
    support = postfix.add_mailbox(domain="cases.test")
    async with aiosmtplib.SMTP(
        hostname=postfix.host, port=postfix.smtp_port, tls_context=tls(postfix)
    ) as smtp:
        await smtp.mail(support.user)
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as unknown:
            await smtp.rcpt("nobody@client.test")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as foreign:
            await smtp.rcpt("someone@example.com")
        # The session goes on: a known recipient is still taken.
        accepted = await smtp.rcpt(support.user)
    assert unknown.value.code == 550
    assert "5.1.1" in unknown.value.message
    assert foreign.value.code == 554
    assert "Relay access denied" in foreign.value.message
    assert accepted.code == 250


async def test_mailboxes_added_while_running_are_seen_at_once(postfix: PostfixServer) -> None:
    # Both within one second: Postfix would miss a change by mtime alone.
    first = postfix.add_mailbox(domain="client.test")
    sender = postfix.add_mailbox(domain="cases.test")
    async with aiosmtplib.SMTP(
        hostname=postfix.host, port=postfix.smtp_port, tls_context=tls(postfix)
    ) as smtp:
        await smtp.sendmail(sender.user, [first.user], b"Subject: one\r\n\r\n1\r\n")
    second = postfix.add_mailbox(domain="client.test")
    async with aiosmtplib.SMTP(
        hostname=postfix.host, port=postfix.smtp_port, tls_context=tls(postfix)
    ) as smtp:
        await smtp.sendmail(sender.user, [second.user], b"Subject: two\r\n\r\n2\r\n")
    assert b"Subject: one" in (await inbox(first))[0]
    assert b"Subject: two" in (await inbox(second))[0]


async def test_stop_leaves_no_process_and_a_restart_keeps_ports_and_mail(
    postfix_factory: PostfixFactory,
) -> None:
    server = postfix_factory()
    customer = server.add_mailbox(domain="client.test")
    pid = server.pid
    assert pid is not None
    assert int(server.pid_file.read_text()) == pid  # the master's own pid file
    assert len(instance_processes(server.config_dir)) > 1  # the master and its daemons

    server.stop()

    assert not pid_alive(pid)
    assert session_processes(pid) == []
    assert instance_processes(server.config_dir) == []
    assert not is_listening(server.host, server.smtp_port)
    assert not is_listening(server.host, server.smtps_port)

    server.start()
    assert server.pid not in (None, pid)
    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.smtp_port, tls_context=tls(server)
    ) as smtp:
        await smtp.sendmail("support@cases.test", [customer.user], b"Subject: back\r\n\r\nx\r\n")
    assert b"Subject: back" in (await inbox(customer))[0]


def test_addresses_outside_its_domains_cannot_be_mailboxes(postfix: PostfixServer) -> None:
    with pytest.raises(ValueError, match="one of"):
        postfix.add_mailbox("someone@example.com")
    with pytest.raises(ValueError, match="one of"):
        postfix.add_mailbox("two words@client.test")


async def test_auth_takes_a_mailbox_login_over_tls_only(
    postfix_factory: PostfixFactory, dovecot_factory: DovecotFactory
) -> None:
    # A Dovecot of its own: after the wrong password below it would delay every
    # later login from 127.0.0.1 on the session's server.
    server = postfix_factory(dovecot_factory())
    support = server.add_mailbox(domain="cases.test")
    customer = server.add_mailbox(domain="client.test")
    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.smtp_port, start_tls=False
    ) as smtp:
        await smtp.ehlo()
        assert not smtp.supports_extension("auth")  # not in the clear
    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.smtp_port, tls_context=tls(server)
    ) as smtp:
        await smtp.login(support.user, support.password)
        await smtp.sendmail(support.user, [customer.user], b"Subject: logged in\r\n\r\nx\r\n")
    [delivered] = await inbox(customer)
    assert b"Subject: logged in" in delivered

    # Last, and one mechanism only (login() tries each): every failure makes
    # Dovecot hold back the next login from 127.0.0.1 for seconds.
    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.smtp_port, tls_context=tls(server)
    ) as smtp:
        await smtp.ehlo()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.auth_plain(support.user, support.password + "x")
    assert refused.value.code == 535


async def test_mailboxes_may_be_added_before_the_first_start_and_again(
    dovecot: DovecotServer,
) -> None:
    # Not under pytest's tmp_path: that is 0700, out of reach of Postfix's daemons.
    server = PostfixServer(Path(tempfile.mkdtemp(prefix="jobwire-postfix-")), dovecot)
    try:
        customer = server.add_mailbox("early@client.test")
        assert server.add_mailbox("early@client.test", password=customer.password) == customer
        server.start()
        async with aiosmtplib.SMTP(
            hostname=server.host, port=server.smtp_port, tls_context=tls(server)
        ) as smtp:
            await smtp.sendmail("support@cases.test", [customer.user], b"Subject: e\r\n\r\nx\r\n")
        assert len(await inbox(customer)) == 1
        assert server.mailboxes_path.read_text() == "early@client.test early@client.test/\n"
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
