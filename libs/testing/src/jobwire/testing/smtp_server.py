"""An SMTP server for tests: aiosmtpd in a process of its own, with faults on demand.

``SmtpServer`` starts ``python -m jobwire.testing.smtp_server --config FILE`` and
stops it by PID. In a process of its own the server shares nothing with the
test's event loop: a test that blocks its loop, or a client that hangs, cannot
stall the server, and a stopped server is really gone (connections reset, port
closed), as a real outage is.

What it offers, each an option of :class:`SmtpServer`:

- a plain port, with STARTTLS offered (``starttls``) and demanded before MAIL
  (``require_starttls``); an implicit-TLS port (``tls``). Certificates come from
  a CA made for the server (``ca_path``), which a client trusts through
  :meth:`SmtpServer.client_tls_context`;
- AUTH PLAIN and LOGIN against ``users`` (a failed login is refused with 535,
  never left unanswered), ``auth_required``, ``auth_require_tls``;
- SIZE (``data_size_limit``) and SMTPUTF8 (``smtputf8``) advertised in EHLO;
- every accepted message stored by :class:`jobwire.runtime.mail_sink.MailDrop`
  in ``mail_dir``: ``<n>-<uuid>.eml`` byte-exact plus a line in ``received.jsonl``,
  read back by :meth:`SmtpServer.messages`;
- faults, changed while it runs: :meth:`SmtpServer.set_faults` writes
  ``rules.json``, which the server reads again at every connection and every
  MAIL, RCPT and end of DATA (a few hundred bytes: cheaper than any protocol to
  tell it). See :class:`FaultRule`. Two recipient conventions need no rule:
  ``defer-4NN@…`` is answered ``4NN`` and ``reject-5NN@…`` ``5NN`` at RCPT.

Run it by hand for a mailer in development: write a config (a JSON
:class:`SmtpServerConfig`) and ``python -m jobwire.testing.smtp_server --config FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.parser
import email.policy
import fnmatch
import hmac
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobwire.runtime.embedded import (
    LOOPBACK,
    EmbeddedServer,
    EmbeddedServerError,
    child_options,
    terminate,
    wait_started,
)
from jobwire.runtime.mail_sink import ACCEPTED, MailDrop, MailDropHandler, StoredMessage
from jobwire.testing.dovecot import self_signed_ca
from jobwire.testing.waiting import wait_for

__all__ = ["FaultRule", "ReceivedMessage", "SmtpServer", "SmtpServerConfig"]

log = logging.getLogger("jobwire.testing.smtp_server")

CONFIG_FILE = "config.json"
RULES_FILE = "rules.json"
READY_FILE = "ready.json"
LOG_FILE = "smtp-server.log"
MAIL_DIR = "mail"
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 30
MIB = 1024 * 1024

Stage = Literal["connect", "mail", "rcpt", "data"]
Action = Literal["reply", "drop", "accept_then_drop", "delay"]


class FaultRule(BaseModel):
    """What the server does instead of its normal answer, at one stage of a session.

    - ``reply``: answer this (``"451 4.7.1 Greylisted"``, ``"550 5.1.1 User unknown"``,
      ``"452 4.3.1 Insufficient storage"``, ``"554 5.6.0 Rejected"``); at ``data`` the
      message is not stored; at ``connect`` it replaces the greeting and the
      server hangs up.
    - ``drop``: close the connection without a reply; at ``data`` after the
      whole message arrived, which is then not stored.
    - ``accept_then_drop`` (``data`` only): store the message, then close without
      a reply: the client cannot know its message was delivered.
    - ``delay``: the normal answer, ``delay_seconds`` late (a slow server); at
      ``data`` the message is stored before the wait, as a server that queued
      it: a client that times out has delivered it all the same. Any other
      action waits ``delay_seconds`` first, too.

    ``rcpt`` and ``mail_from`` are shell-style patterns (``*@example.com``),
    matched without regard to case; at ``data`` a rule matches when any
    recipient does. The first matching rule applies; one with a ``count``
    applies that many times, then no more (until new rules are set).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage = "rcpt"
    action: Action | None = Field(None, description="empty: 'reply' if reply is set")
    reply: str | None = Field(None, pattern=r"^[2-5]\d\d( [^\r\n]*)?$")
    rcpt: str | None = None
    mail_from: str | None = None
    delay_seconds: float = Field(0.0, ge=0)
    count: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.action is None:
            action: Action = "reply" if self.reply is not None else "delay"
            object.__setattr__(self, "action", action)
        if (self.action == "reply") != (self.reply is not None):
            raise ValueError("a reply is given exactly when the action is 'reply'")
        if self.action == "accept_then_drop" and self.stage != "data":
            raise ValueError("accept_then_drop applies to the data stage only")
        if self.action == "delay" and self.delay_seconds == 0:
            raise ValueError("a delay rule needs delay_seconds")
        if self.stage == "connect" and (self.rcpt or self.mail_from):
            raise ValueError("at connect there is no sender or recipient to match")
        return self

    def matches(self, mail_from: str | None, rcpts: Iterable[str]) -> bool:
        if self.mail_from is not None and not _like(mail_from or "", self.mail_from):
            return False
        return self.rcpt is None or any(_like(rcpt, self.rcpt) for rcpt in rcpts)


def _like(address: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(address.lower(), pattern.lower())


class SmtpServerConfig(BaseModel):
    """What the server process is told (``config.json`` in its directory)."""

    model_config = ConfigDict(extra="forbid")

    directory: Path
    host: str = LOOPBACK
    port: int = Field(0, ge=0, le=65_535, description="0: any free port")
    tls_port: int | None = Field(None, ge=0, le=65_535, description="None: no implicit TLS")
    starttls: bool = False
    require_starttls: bool = False
    cert_path: Path | None = None
    key_path: Path | None = None
    users: dict[str, str] = Field(default_factory=dict)
    auth_required: bool = False
    auth_require_tls: bool = False
    data_size_limit: int | None = Field(10 * MIB, ge=1)
    smtputf8: bool = True

    @property
    def mail_dir(self) -> Path:
        return self.directory / MAIL_DIR

    @property
    def rules_path(self) -> Path:
        return self.directory / RULES_FILE


# ------------------------------------------------------------ the server side


# Recipients that need no rule: `defer-451@x` is deferred with 451, `reject-550@x`
# refused with 550 (any 4NN / 5NN), optionally with a tag: `defer-451+a1@x`.
_CONVENTION = re.compile(r"^(?:defer-(?P<defer>4\d\d)|reject-(?P<reject>5\d\d))(?:[+.-][^@]*)?@")
_CONVENTION_TEXT = {
    "421": "4.3.2 Service not available",
    "450": "4.2.1 Mailbox unavailable",
    "451": "4.7.1 Greylisted, try again later",
    "452": "4.2.2 Mailbox full",
    "550": "5.1.1 User unknown",
    "552": "5.2.2 Mailbox full",
    "553": "5.1.3 Bad destination address",
    "554": "5.7.1 Rejected",
}


def convention_reply(address: str) -> str | None:
    """The reply a conventional test address asks for, None for an ordinary address."""
    found = _CONVENTION.match(address.lower())
    if found is None:
        return None
    code = found["defer"] or found["reject"]
    return f"{code} {_CONVENTION_TEXT.get(code, f'{code[0]}.0.0 Refused by test address')}"


class FaultBook:
    """The rules in ``rules.json``, read again whenever asked; counts reset when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._content: bytes | None = None
        self._rules: list[FaultRule] = []
        self._applied: list[int] = []

    def take(
        self, stage: Stage, mail_from: str | None = None, rcpts: Iterable[str] = ()
    ) -> FaultRule | None:
        """The first rule that matches and has uses left (counting this use), else None."""
        self._reload()
        candidates = list(rcpts)
        for position, rule in enumerate(self._rules):
            if rule.stage != stage or not rule.matches(mail_from, candidates):
                continue
            if rule.count is not None and self._applied[position] >= rule.count:
                continue
            self._applied[position] += 1
            log.info("fault applied: %s", rule.model_dump_json(exclude_none=True))
            return rule
        return None

    def _reload(self) -> None:
        # A blocking read inside the event loop: a local file of a few hundred
        # bytes, in a test server.
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            content = b""
        if content == self._content:
            return
        try:
            rules = [FaultRule.model_validate(rule) for rule in json.loads(content or b"[]")]
        except ValueError:
            # SmtpServer writes the file whole (rename); only a hand-written one gets here.
            log.exception("invalid %s; keeping the previous rules", self.path)
            return
        self._content, self._rules, self._applied = content, rules, [0] * len(rules)


class FaultingHandler(MailDropHandler):
    """Stores messages like the mail sink does, unless a fault rule says otherwise.

    aiosmtpd calls ``handle_MAIL``, ``handle_RCPT`` and ``handle_DATA`` by these names.
    """

    def __init__(self, drop: MailDrop, faults: FaultBook) -> None:
        super().__init__(drop)
        self.faults = faults

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        rule = self.faults.take("mail", mail_from=address)
        if rule is not None and (outcome := await _apply(server, rule)) is not None:
            return outcome
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rule = self.faults.take("rcpt", mail_from=envelope.mail_from, rcpts=[address])
        if rule is not None and (outcome := await _apply(server, rule)) is not None:
            return outcome
        conventional = convention_reply(address)
        if conventional is not None:
            return conventional
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rule = self.faults.take("data", mail_from=envelope.mail_from, rcpts=envelope.rcpt_tos)
        if rule is not None and rule.action in ("accept_then_drop", "delay"):
            # Stored first, as a real server that queued it: a client that gives
            # up while waiting for the reply has delivered the message anyway.
            await self.store(envelope)
            await asyncio.sleep(rule.delay_seconds)
            return _hang_up(server) if rule.action == "accept_then_drop" else ACCEPTED
        if rule is not None and (outcome := await _apply(server, rule)) is not None:
            return outcome
        await self.store(envelope)
        return ACCEPTED


async def _apply(server: SMTP, rule: FaultRule) -> str | None:
    """Wait as the rule says, then its reply, or a hang-up; None: answer normally."""
    await asyncio.sleep(rule.delay_seconds)
    if rule.action == "reply":
        assert rule.reply is not None
        return rule.reply
    if rule.action == "drop":
        return _hang_up(server)
    return None


def _hang_up(server: SMTP) -> str:
    """Close the connection at once; aiosmtpd's reply then goes nowhere.

    ``abort``, not ``close``: a closing transport still sends what is written
    before the next loop iteration, and the reply must never reach the client.
    """
    if server.transport is not None:
        server.transport.abort()  # type: ignore[attr-defined]
    return "421 4.3.0 connection dropped by a test fault"


class FaultingSMTP(SMTP):
    """aiosmtpd's SMTP with the ``connect`` stage faults (before any greeting)."""

    def __init__(self, handler: FaultingHandler, **options: Any) -> None:
        super().__init__(handler, **options)
        self._faults = handler.faults
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS: that is no new connection.
        rule = self._faults.take("connect") if self._original_transport is None else None
        if rule is None:
            super().connection_made(transport)
            return
        if rule.action == "delay":
            # A slow greeting: the session starts late.
            self.loop.call_later(rule.delay_seconds, super().connection_made, transport)
            return
        self._refused = True
        reply = rule.reply

        def refuse() -> None:
            if reply is not None:
                transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
            else:
                transport.abort()  # type: ignore[attr-defined]

        self.loop.call_later(rule.delay_seconds, refuse)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused or self._handler_coroutine is None:
            return  # no session was ever started on this connection
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused or self._handler_coroutine is None:
            return False
        return super().eof_received()


def _authenticator(users: Mapping[str, str]) -> Any:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode(errors="replace")
            expected = users.get(user)
            if expected is not None and hmac.compare_digest(expected.encode(), auth_data.password):
                return AuthResult(success=True, auth_data=user)
        # handled=False: aiosmtpd then answers 535; handled=True would leave the
        # client waiting for a reply that never comes.
        return AuthResult(success=False, handled=False)

    return authenticate


def _server_tls_context(config: SmtpServerConfig) -> ssl.SSLContext:
    if config.cert_path is None or config.key_path is None:
        raise ValueError("TLS needs cert_path and key_path")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.cert_path, config.key_path)
    return context


async def serve(config: SmtpServerConfig) -> None:
    """Run the server until SIGTERM or SIGINT; write ``ready.json`` once it listens."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    handler = FaultingHandler(MailDrop(config.mail_dir), FaultBook(config.rules_path))
    tls = _server_tls_context(config) if config.starttls or config.tls_port is not None else None
    common: dict[str, Any] = {
        "hostname": "localhost",  # not socket.getfqdn(): that may wait on DNS
        "ident": "jobwire test SMTP",
        "data_size_limit": config.data_size_limit,
        "enable_SMTPUTF8": config.smtputf8,
        "auth_required": config.auth_required,
        "authenticator": _authenticator(config.users),
        "loop": loop,
    }

    def plain() -> FaultingSMTP:
        return FaultingSMTP(
            handler,
            tls_context=tls if config.starttls else None,
            require_starttls=config.require_starttls,
            auth_require_tls=config.auth_require_tls,
            **common,
        )

    def implicit_tls() -> FaultingSMTP:
        # The connection is TLS from its first byte: AUTH is as safe as it gets.
        return FaultingSMTP(handler, auth_require_tls=False, **common)

    servers = [await loop.create_server(plain, config.host, config.port)]
    ports = {"port": servers[0].sockets[0].getsockname()[1], "tls_port": None}
    if config.tls_port is not None:
        servers.append(
            await loop.create_server(implicit_tls, config.host, config.tls_port, ssl=tls)
        )
        ports["tls_port"] = servers[1].sockets[0].getsockname()[1]
    ready = config.directory / READY_FILE
    partial = ready.with_suffix(".partial")
    partial.write_text(json.dumps({"pid": os.getpid(), **ports}))
    partial.replace(ready)
    log.info("listening: %s", ports)
    await stop.wait()
    for server in servers:
        server.close()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="an SmtpServerConfig (JSON)")
    args = parser.parse_args(argv)
    config = SmtpServerConfig.model_validate_json(args.config.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(config))


# ------------------------------------------------------------ the test's side


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the server accepted: its envelope, its bytes, and them parsed."""

    mail_from: str
    rcpt_tos: list[str]
    size: int
    message_id: str | None
    subject: str | None
    smtputf8: bool
    file: Path
    raw: bytes
    message: EmailMessage

    @classmethod
    def read(cls, directory: Path, stored: StoredMessage) -> ReceivedMessage:
        raw = (directory / stored.file).read_bytes()
        parsed = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        return cls(
            mail_from=stored.mail_from,
            rcpt_tos=stored.rcpt_tos,
            size=stored.size,
            message_id=stored.message_id,
            subject=stored.subject,
            smtputf8=stored.smtputf8,
            file=directory / stored.file,
            raw=raw,
            message=parsed,
        )


class SmtpServer(EmbeddedServer):
    """The test SMTP server in a child process, everything under ``directory``.

    Ports are free ones unless given, chosen by the server when it binds and
    kept for a restart: ``stop()`` then ``start()`` brings it back on the same
    ports with the same stored mail. See the module docstring for the options.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        tls: bool = False,
        tls_port: int | None = None,
        starttls: bool = False,
        require_starttls: bool = False,
        users: Mapping[str, str] | None = None,
        auth_required: bool = False,
        auth_require_tls: bool = False,
        data_size_limit: int | None = 10 * MIB,
        smtputf8: bool = True,
        faults: Sequence[FaultRule | Mapping[str, Any]] = (),
    ) -> None:
        if require_starttls and not starttls:
            raise ValueError("require_starttls needs starttls")
        self.directory = Path(directory).absolute()
        self.host = LOOPBACK
        self.ca_path = self.directory / "ca.pem"
        self.log_path = self.directory / LOG_FILE
        self._faults = [FaultRule.model_validate(rule) for rule in faults]
        wants_tls = tls or tls_port is not None
        self.config = SmtpServerConfig(
            directory=self.directory,
            port=port or 0,
            tls_port=(tls_port or 0) if wants_tls else None,
            starttls=starttls,
            require_starttls=require_starttls,
            cert_path=self.directory / "server.pem" if wants_tls or starttls else None,
            key_path=self.directory / "server.key" if wants_tls or starttls else None,
            users=dict(users or {}),
            auth_required=auth_required,
            auth_require_tls=auth_require_tls,
            data_size_limit=data_size_limit,
            smtputf8=smtputf8,
        )
        self._drop = MailDrop(self.config.mail_dir)
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it is

    @property
    def port(self) -> int:
        """The plain SMTP port (STARTTLS there when enabled); known once started."""
        if not self.config.port:
            raise EmbeddedServerError("the SMTP server has not been started yet")
        return self.config.port

    @property
    def tls_port(self) -> int:
        """The implicit-TLS port; only with ``tls=True``, once started."""
        if not self.config.tls_port:
            raise EmbeddedServerError("this SMTP server has no TLS port (tls=False) or is stopped")
        return self.config.tls_port

    @property
    def mail_dir(self) -> Path:
        return self.config.mail_dir

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA (and verifies host names)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle

    def start(self, timeout: float = 15.0) -> None:
        """Start the process; return once it listens on every port."""
        if self.running:
            raise EmbeddedServerError(f"SMTP server already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.config.cert_path is not None and not self.config.cert_path.exists():
            self_signed_ca(self.directory, LOOPBACK)
        self._write_rules(self._faults)
        config_path = self.directory / CONFIG_FILE
        config_path.write_text(self.config.model_dump_json(indent=2))
        # The users' passwords are in it: throw-away ones, still not for others.
        config_path.chmod(0o600)
        ready = self.directory / READY_FILE
        ready.unlink(missing_ok=True)
        offset = _file_size(self.log_path)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "jobwire.testing.smtp_server", "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own session, and it dies with us (a killed test run).
                **child_options(),
            )
        try:
            wait_started(
                self._process,
                ready.exists,
                name="SMTP server",
                timeout=timeout,
                tail=lambda: _tail(self.log_path, offset),
            )
        except EmbeddedServerError:
            self.stop()
            raise
        bound = json.loads(ready.read_text())
        self.config.port = int(bound["port"])
        if bound["tls_port"] is not None:
            self.config.tls_port = int(bound["tls_port"])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; safe when not running."""
        process, self._process = self._process, None
        terminate(process, timeout)

    # -- faults

    def set_faults(self, rules: Sequence[FaultRule | Mapping[str, Any]]) -> None:
        """Replace the fault rules; the running server applies them from its next command."""
        self._faults = [FaultRule.model_validate(rule) for rule in rules]
        self._write_rules(self._faults)

    def clear_faults(self) -> None:
        self.set_faults([])

    def _write_rules(self, rules: Sequence[FaultRule]) -> None:
        path = self.config.rules_path
        partial = path.with_suffix(".partial")
        partial.write_text(
            json.dumps([rule.model_dump(mode="json", exclude_none=True) for rule in rules])
        )
        # Whole or not at all: the server reads it at any moment.
        partial.replace(path)

    # -- what arrived

    def messages(self, rcpt: str | None = None) -> list[ReceivedMessage]:
        """Accepted messages, oldest first; ``rcpt``: only those to that address (a pattern).

        The session's shared server holds every test's mail: filter by a
        recipient your test made up.
        """
        return [
            ReceivedMessage.read(self.mail_dir, stored)
            for stored in self._drop.messages()
            if rcpt is None or any(_like(address, rcpt) for address in stored.rcpt_tos)
        ]

    async def wait_for_messages(
        self, count: int, timeout: float = 10.0, *, rcpt: str | None = None
    ) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages (to ``rcpt``) arrived; return them all."""

        def arrived() -> list[ReceivedMessage]:
            found = self.messages(rcpt)
            return found if len(found) >= count else []

        return await wait_for(
            arrived, timeout, description=f"{count} message(s) at the test SMTP server"
        )

    def __repr__(self) -> str:
        return f"SmtpServer(port={self.config.port}, pid={self.pid}, directory={self.directory})"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, offset: int) -> str:
    with contextlib.suppress(OSError), path.open("rb") as log_file:
        log_file.seek(offset)
        lines = log_file.read().decode(errors="replace").splitlines()
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"last lines of {path}:\n{tail}" if tail else f"(log {path} is empty)"
    return f"(no log at {path})"


if __name__ == "__main__":
    main()
