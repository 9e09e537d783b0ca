"""The test SMTP server, driven by aiosmtplib over real sockets: TLS, AUTH, SIZE,
byte-exact storage, every fault, and a stop that leaves nothing behind."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from typing import Any

import aiosmtplib
import pytest

from jobwire.runtime.embedded import is_listening, pid_alive
from jobwire.testing.smtp_fixtures import SmtpServerFactory
from jobwire.testing.smtp_server import SmtpServer

pytestmark = pytest.mark.integration

SENDER = "cases@example.com"


def _message(rcpt: str, subject: str = "Hello", body: bytes = b"body\r\n") -> tuple[bytes, str]:
    message_id = f"<{uuid.uuid4().hex}@example.com>"
    raw = (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body
    return raw, message_id


def _address(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


async def _send(
    server: SmtpServer, rcpt: str, raw: bytes | None = None, **options: Any
) -> tuple[dict[str, Any], str]:
    options.setdefault("start_tls", False)
    options.setdefault("timeout", 5)
    result: tuple[dict[str, Any], str] = await aiosmtplib.send(
        raw if raw is not None else _message(rcpt)[0],
        sender=SENDER,
        recipients=[rcpt],
        hostname=server.host,
        port=options.pop("port", server.port),
        **options,
    )
    return result


async def test_a_message_is_stored_byte_exact_and_indexed(smtp_server: SmtpServer) -> None:
    rcpt = _address()
    # A line starting with a dot (dot-stuffed on the wire), 8-bit UTF-8 in the body.
    raw, message_id = _message(rcpt, body=".leading dot\r\nJörg grüßt\r\n..two\r\n".encode())
    await _send(smtp_server, rcpt, raw)
    [received] = await smtp_server.wait_for_messages(1, rcpt=rcpt)
    assert received.raw == raw
    assert received.file.read_bytes() == raw
    assert received.file.parent == smtp_server.mail_dir
    assert received.file.name.split("-", 1)[0].isdigit()
    assert (received.mail_from, received.rcpt_tos) == (SENDER, [rcpt])
    assert (received.size, received.message_id, received.smtputf8) == (len(raw), message_id, False)
    assert received.message["Subject"] == "Hello"
    # policy.SMTP keeps the CRLF line ends.
    assert received.message.get_content() == ".leading dot\r\nJörg grüßt\r\n..two\r\n"
    lines = (smtp_server.mail_dir / "received.jsonl").read_text().splitlines()
    index = [json.loads(line) for line in lines]
    entry = next(line for line in index if line["rcpt_tos"] == [rcpt])
    assert entry["file"] == received.file.name
    assert {"mail_from", "rcpt_tos", "size", "message_id", "file", "smtputf8"} <= entry.keys()


async def test_an_international_address_goes_over_smtputf8(smtp_server: SmtpServer) -> None:
    rcpt = f"jörg-{uuid.uuid4().hex[:8]}@exämple.com"
    # aiosmtplib asks for SMTPUTF8 only when told to.
    await _send(smtp_server, rcpt, _message("x@example.com")[0], mail_options=["SMTPUTF8"])
    [received] = await smtp_server.wait_for_messages(1, rcpt=rcpt)
    assert received.smtputf8 is True


async def test_smtputf8_and_size_are_advertised_as_configured(
    smtp_server_factory: SmtpServerFactory, smtp_server: SmtpServer
) -> None:
    async with aiosmtplib.SMTP(
        hostname=smtp_server.host, port=smtp_server.port, start_tls=False
    ) as client:
        await client.ehlo()
        assert "smtputf8" in client.esmtp_extensions
        assert client.esmtp_extensions["size"] == str(10 * 1024 * 1024)
    small = smtp_server_factory(smtputf8=False, data_size_limit=1024)
    async with aiosmtplib.SMTP(hostname=small.host, port=small.port, start_tls=False) as client:
        await client.ehlo()
        assert "smtputf8" not in client.esmtp_extensions
        assert client.esmtp_extensions["size"] == "1024"
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(small, _address(), _message("x@example.com", body=b"x" * 2048 + b"\r\n")[0])
    assert refused.value.code == 552
    assert small.messages() == []


async def test_starttls_is_offered_and_can_be_required(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(starttls=True, require_starttls=True)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await _send(server, _address())
    assert refused.value.code == 530
    # A client that does not trust the server's CA refuses the upgrade.
    with pytest.raises(ssl.SSLCertVerificationError):
        await _send(server, _address(), start_tls=True, tls_context=ssl.create_default_context())
    rcpt = _address()
    await _send(server, rcpt, start_tls=True, tls_context=server.client_tls_context())
    assert [m.rcpt_tos for m in await server.wait_for_messages(1)] == [[rcpt]]


async def test_implicit_tls_verifies_against_the_ca_it_hands_out(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(tls=True)
    assert "BEGIN CERTIFICATE" in server.ca_pem
    rcpt = _address()
    await _send(
        server, rcpt, port=server.tls_port, use_tls=True, tls_context=server.client_tls_context()
    )
    assert [m.rcpt_tos for m in await server.wait_for_messages(1)] == [[rcpt]]
    with pytest.raises(aiosmtplib.SMTPConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await _send(server, _address(), port=server.tls_port, use_tls=True)
    # The plain port stays plain: no STARTTLS unless asked for.
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False) as client:
        await client.ehlo()
        assert "starttls" not in client.esmtp_extensions


async def test_auth_accepts_the_right_password_and_refuses_a_wrong_one(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(users={"mailer": "s3cret"}, auth_required=True)
    rcpt = _address()
    await _send(server, rcpt, username="mailer", password="s3cret")
    assert len(await server.wait_for_messages(1)) == 1
    for mechanism in ("plain", "login"):
        client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False, timeout=5)
        async with client:
            await client.ehlo()
            # Answered (535), not left hanging: the client's timeout is never reached.
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
                await getattr(client, f"auth_{mechanism}")("mailer", "wrong")
            assert refused.value.code == 535
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as unauthenticated:
        await _send(server, _address())
    assert unauthenticated.value.code == 530
    assert len(server.messages()) == 1


async def test_recipient_faults_apply_their_count_and_change_while_it_runs(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(
        faults=[{"rcpt": "grey-*@example.com", "reply": "451 4.7.1 Greylisted", "count": 1}]
    )
    grey = _address("grey")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as deferred:
        await _send(server, grey)
    assert [r.code for r in deferred.value.recipients] == [451]
    await _send(server, grey)  # the rule was used up
    other = _address()
    await _send(server, other)  # never matched
    server.set_faults([{"rcpt": "*", "reply": "550 5.1.1 User unknown"}])
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as rejected:
        await _send(server, _address())
    assert [r.code for r in rejected.value.recipients] == [550]
    server.clear_faults()
    await _send(server, other)
    assert [m.rcpt_tos for m in server.messages()] == [[grey], [other], [other]]


async def test_conventional_addresses_defer_and_reject_without_rules(
    smtp_server: SmtpServer,
) -> None:
    for address, code in (("defer-451@example.com", 451), ("reject-550+x@example.com", 550)):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await _send(smtp_server, address)
        assert [r.code for r in refused.value.recipients] == [code]
    assert smtp_server.messages(rcpt="defer-*") == []
    assert smtp_server.messages(rcpt="reject-*") == []


@pytest.mark.parametrize(
    ("stage", "rule", "error", "code"),
    [
        ("mail", {"reply": "421 4.3.2 Going away"}, aiosmtplib.SMTPSenderRefused, 421),
        ("data", {"reply": "452 4.3.1 Insufficient storage"}, aiosmtplib.SMTPDataError, 452),
        ("data", {"reply": "554 5.6.0 Message rejected"}, aiosmtplib.SMTPDataError, 554),
        ("connect", {"reply": "421 4.3.2 Too busy"}, aiosmtplib.SMTPConnectResponseError, 421),
    ],
)
async def test_a_reply_fault_is_what_the_client_sees_and_nothing_is_stored(
    smtp_server_factory: SmtpServerFactory,
    stage: str,
    rule: dict[str, Any],
    error: type[aiosmtplib.SMTPResponseException],
    code: int,
) -> None:
    server = smtp_server_factory(faults=[{"stage": stage, **rule}])
    with pytest.raises(error) as refused:
        await _send(server, _address())
    assert refused.value.code == code
    assert server.messages() == []


async def test_a_dropped_connection_at_each_stage_gets_no_reply(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory()
    for stage in ("connect", "mail", "rcpt", "data"):
        server.set_faults([{"stage": stage, "action": "drop"}])
        # Before the greeting, aiosmtplib calls it a failed connect.
        error = (
            aiosmtplib.SMTPConnectError if stage == "connect" else aiosmtplib.SMTPServerDisconnected
        )
        with pytest.raises(error, match=r"Unexpected EOF|Connection lost|reset"):
            await _send(server, _address())
    server.clear_faults()
    rcpt = _address()
    await _send(server, rcpt)
    assert [m.rcpt_tos for m in server.messages()] == [[rcpt]]


async def test_accept_then_drop_delivers_what_the_client_thinks_failed(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(faults=[{"stage": "data", "action": "accept_then_drop"}])
    rcpt = _address()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await _send(server, rcpt)
    assert [m.rcpt_tos for m in server.messages()] == [[rcpt]]


async def test_a_slow_data_reply_times_the_client_out(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(faults=[{"stage": "data", "delay_seconds": 3, "count": 1}])
    rcpt = _address()
    started = time.monotonic()
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await _send(server, rcpt, timeout=0.5)
    assert time.monotonic() - started < 2.5
    # The server went on after its delay: the message is there, the client never knew.
    [received] = await server.wait_for_messages(1, timeout=10)
    assert received.rcpt_tos == [rcpt]
    started = time.monotonic()
    await _send(server, _address())  # count 1: the next one is fast
    assert time.monotonic() - started < 2.5


async def test_stop_leaves_no_process_and_a_restart_keeps_ports_and_mail(
    smtp_server_factory: SmtpServerFactory,
) -> None:
    server = smtp_server_factory(tls=True)
    await _send(server, _address())
    pid, port, tls_port = server.pid, server.port, server.tls_port
    assert pid is not None
    server.stop()
    assert not pid_alive(pid)
    assert server.pid is None
    assert not is_listening(server.host, port)
    assert not is_listening(server.host, tls_port)
    server.start()
    assert (server.port, server.tls_port) == (port, tls_port)
    await _send(server, _address())
    assert len(server.messages()) == 2
    assert [m.file.name.split("-", 1)[0] for m in server.messages()] == ["1", "2"]
