"""Accounts: STARTTLS, implicit TLS, AUTH and a CA from a secret, on a real SMTP server."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobwire.contracts.mail import MailEvent

pytestmark = pytest.mark.integration


def _secrets(directory: Path, **values: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (directory / name).write_text(value + "\n", encoding="utf-8")


async def test_starttls_and_auth_with_a_ca_from_a_secret(
    mailer, smtp_server_factory, command, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(
        starttls=True, require_starttls=True, users={"cases": "s3cret"}, auth_required=True
    )
    _secrets(
        tmp_path / "secrets",
        **{"smtp-user": "cases", "smtp-pw": "s3cret", "smtp-ca": server.ca_pem},
    )
    service = await mailer(
        accounts={
            "default": {
                "host": "127.0.0.1",
                "port": server.port,
                "security": "starttls",
                "username": "smtp-user",
                "password": "smtp-pw",
                "ca": "smtp-ca",
                "from_address": "cases@mailer.test",
            }
        }
    )
    email_id = await service.send(command())
    await service.event(email_id, MailEvent.QUEUED)
    run = await service.run()
    assert run.result == {"sent": 1, "deferred": 0, "failed": 0}
    assert len(server.messages()) == 1


async def test_implicit_tls(mailer, smtp_server_factory, command, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(tls=True)
    _secrets(tmp_path / "secrets", **{"smtp-ca": server.ca_pem})
    service = await mailer(
        accounts={
            "default": {
                "host": "127.0.0.1",
                "port": server.tls_port,
                "security": "tls",
                "ca": "smtp-ca",
                "from_address": "cases@mailer.test",
            }
        }
    )
    email_id = await service.send(command())
    await service.event(email_id, MailEvent.QUEUED)
    assert (await service.run()).result == {"sent": 1, "deferred": 0, "failed": 0}
    assert len(server.messages()) == 1


async def test_an_untrusted_certificate_or_a_wrong_password_defers(
    mailer, smtp_server_factory, command, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    server = smtp_server_factory(starttls=True, users={"cases": "s3cret"}, auth_required=True)
    # No CA: the server's self-signed certificate is not trusted. Never falls back to plain.
    _secrets(
        tmp_path / "secrets", **{"smtp-user": "cases", "smtp-pw": "wrong", "smtp-ca": server.ca_pem}
    )
    base = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "starttls",
        "from_address": "c@mailer.test",
    }
    service = await mailer(
        accounts={
            "untrusted": {**base, "username": "smtp-user", "password": "smtp-pw"},
            "badlogin": {**base, "username": "smtp-user", "password": "smtp-pw", "ca": "smtp-ca"},
        }
    )
    untrusted = await service.send(command(account="untrusted"))
    badlogin = await service.send(command(account="badlogin"))
    await service.event(untrusted, MailEvent.QUEUED)
    await service.event(badlogin, MailEvent.QUEUED)
    run = await service.run()
    assert run.result == {"sent": 0, "deferred": 2, "failed": 0}
    tls = await service.event(untrusted, MailEvent.DEFERRED)
    login = await service.event(badlogin, MailEvent.DEFERRED)
    assert "certificate" in tls.reason.lower() or "ssl" in tls.reason.lower(), tls.reason
    assert "535" in login.reason
    assert "login refused" in login.reason
    assert "wrong" not in login.reason
    assert "s3cret" not in login.reason
    assert server.messages() == []


async def test_a_missing_secret_is_refused_up_front_naming_it(mailer, smtp_server, command) -> None:  # type: ignore[no-untyped-def]
    service = await mailer(
        accounts={
            "default": {
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "security": "none",
                "username": "nobody-user",
                "password": "nobody-pw",
                "from_address": "c@mailer.test",
            }
        }
    )
    email_id = await service.send(command())
    failed = await service.event(email_id, MailEvent.FAILED)
    assert failed.attempt == 0
    assert "account" in failed.reason
    assert "JOBWIRE_SECRET_NOBODY_USER" in failed.reason
