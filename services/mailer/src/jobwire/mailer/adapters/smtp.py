"""SMTP through aiosmtplib: one connection pool per account, one transaction per attempt.

A pool keeps up to ``max_connections`` connections open and reuses them
(a connection is put back only after a transaction that left it clean); a
token spacing caps the rate at ``max_per_second`` per replica. Every step is
timed: connect, TLS and AUTH and each command by ``timeout_seconds``, the
message data and its reply by ``data_timeout_seconds``.

The transaction is spelt out (MAIL, RCPT per recipient, DATA) rather than
``sendmail`` so that every recipient's reply is kept, and the server's SIZE
is checked before any data goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import aiosmtplib
from aiosmtplib import SMTP

from jobwire.mailer.domain.delivery import AttemptResult, Reply
from jobwire.mailer.settings import SmtpAccount
from jobwire.runtime.logs import get_logger
from jobwire.runtime.secrets import Secrets

log = get_logger("jobwire.mailer.smtp")

# Errors that say the connection, not the email, is the trouble: nothing was
# accepted, the attempt is deferred.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectTimeoutError,
    aiosmtplib.SMTPReadTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    ssl.SSLError,
)


class SmtpLoginError(Exception):
    """The server refused the account's login (or its TLS): a configuration problem."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class _RateLimit:
    """At most ``per_second`` starts per second, spaced evenly."""

    def __init__(self, per_second: float | None) -> None:
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + self._interval


class SmtpPool:
    """The open connections of one account."""

    def __init__(self, name: str, account: SmtpAccount, secrets: Secrets) -> None:
        self.name = name
        self.account = account
        self._secrets = secrets
        self._idle: list[SMTP] = []
        self._slots = asyncio.Semaphore(account.max_connections)
        self._rate = _RateLimit(account.max_per_second)

    def check_secrets(self) -> None:
        """Raise ``SecretNotFound`` (naming the file and variable) if a secret is missing."""
        for name in (self.account.username, self.account.password, self.account.ca):
            self._secrets.optional(name)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[SMTP]:
        """A connected, logged-in SMTP client, exclusively for one transaction."""
        async with self._slots:
            await self._rate.wait()
            smtp = self._idle.pop() if self._idle else None
            if smtp is not None and not smtp.is_connected:
                smtp = None
            if smtp is None:
                smtp = await self._open()
            clean = False
            try:
                yield smtp
                clean = True
            finally:
                if clean and smtp.is_connected:
                    self._idle.append(smtp)
                else:
                    _close(smtp)

    async def _open(self) -> SMTP:
        account = self.account
        context: ssl.SSLContext | None = None
        if account.security != "none":
            ca = self._secrets.optional(account.ca)
            context = ssl.create_default_context(cadata=ca.get_secret_value() if ca else None)
        smtp = SMTP(
            hostname=account.host,
            port=account.effective_port,
            timeout=account.timeout_seconds,
            use_tls=account.security == "tls",
            # True: refuse a server that does not offer STARTTLS, never fall back to plain.
            start_tls=account.security == "starttls",
            tls_context=context,
        )
        await smtp.connect()
        if smtp.last_ehlo_response is None:
            # Without STARTTLS nothing has said EHLO yet; the extensions (SIZE,
            # SMTPUTF8) must be known before the first message is rendered.
            await smtp.ehlo()
        if account.username is not None:
            user = self._secrets.resolve(account.username).get_secret_value()
            password = self._secrets.optional(account.password)
            try:
                await smtp.login(user, password.get_secret_value() if password else "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                _close(smtp)
                raise SmtpLoginError(Reply(exc.code, f"login refused: {exc.message}")) from None
            except aiosmtplib.SMTPException:
                _close(smtp)
                raise
        return smtp

    async def close(self) -> None:
        while self._idle:
            smtp = self._idle.pop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.quit(), 2.0)
            _close(smtp)


def _close(smtp: SMTP) -> None:
    with contextlib.suppress(Exception):
        smtp.close()


class Stale(Exception):
    """A reused connection was found closed before the transaction began: open another."""


async def transact(
    smtp: SMTP,
    sender: str,
    recipients: list[str],
    render: Callable[[bool], bytes],
    *,
    account: SmtpAccount,
    reused: bool,
    before_data: Callable[[], None] = lambda: None,
) -> AttemptResult:
    """One SMTP transaction: MAIL, a RCPT per recipient, DATA.

    ``render(offered)`` gives the message bytes once it is known whether the
    server offers SMTPUTF8 (it raises ``InvalidCommand`` if the email cannot be
    sent here). ``before_data`` is called just before the data is
    sent: from then on the server may accept the email whatever happens to
    this process; an exception it raises abandons the transaction unsent
    (it propagates, and the pool drops the connection). Connection errors
    propagate (the caller defers); a
    connection that broke at MAIL on a reused connection raises
    :class:`Stale` so that the caller can retry on a fresh one.
    """
    smtputf8 = smtp.supports_extension("smtputf8")
    data = render(smtputf8)
    options: list[str] = []
    if smtp.supports_extension("size"):
        limit = _int(smtp.esmtp_extensions.get("size", ""))
        if limit and len(data) > limit:
            return AttemptResult(
                Reply(
                    552,
                    f"5.3.4 the message is {len(data)} bytes; the server takes at most "
                    f"{limit} (its SIZE)",
                )
            )
        options.append(f"SIZE={len(data)}")
    encoding = "ascii"
    if smtputf8 and not _ascii(sender, *recipients, data=data):
        options.append("SMTPUTF8")
        encoding = "utf-8"
    if smtp.supports_extension("8bitmime") and not data.isascii():
        options.append("BODY=8BITMIME")
    timeout = account.timeout_seconds
    try:
        await smtp.mail(sender, options=options, encoding=encoding, timeout=timeout)
    except aiosmtplib.SMTPResponseException as exc:
        await _reset(smtp, timeout)
        return AttemptResult(Reply(exc.code, exc.message))
    except aiosmtplib.SMTPServerDisconnected:
        if reused:
            raise Stale from None
        raise
    replies: dict[str, Reply] = {}
    for recipient in recipients:
        try:
            response = await smtp.rcpt(recipient, encoding=encoding, timeout=timeout)
            replies[recipient] = Reply(response.code, response.message)
        except aiosmtplib.SMTPRecipientRefused as exc:
            replies[recipient] = Reply(exc.code, exc.message)
    if not any(r.code is not None and r.code < 300 for r in replies.values()):
        await _reset(smtp, timeout)
        first = next(iter(replies.values()))
        return AttemptResult(first, replies)
    before_data()
    try:
        response = await smtp.data(data, timeout=account.data_timeout_seconds)
    except aiosmtplib.SMTPResponseException as exc:
        await _reset(smtp, timeout)
        return AttemptResult(Reply(exc.code, exc.message), replies)
    return AttemptResult(Reply(response.code, response.message), replies)


async def _reset(smtp: SMTP, timeout: float) -> None:
    # A refused transaction leaves an envelope on the server: clear it so the
    # connection can be reused; if even that fails, the pool drops it.
    try:
        await smtp.rset(timeout=timeout)
    except Exception:
        _close(smtp)


def _int(value: str) -> int:
    try:
        return int(value.strip() or 0)
    except ValueError:
        return 0


def _ascii(*addresses: str, data: bytes) -> bool:
    return all(a.isascii() for a in addresses) and data.isascii()
