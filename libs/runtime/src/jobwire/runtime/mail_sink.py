"""A mail sink: every message an SMTP server accepts, kept as an ``.eml`` file.

Written once for both SMTP servers jobwire runs outside production: the test
server (:mod:`jobwire.testing.smtp_server`, aiosmtpd in a process of its own)
and the development sink ``jobwire dev`` starts (:class:`DevMailSink`, aiosmtpd
in a thread of ``jobwire dev``). Neither relays anything anywhere.

A folder holds, per accepted message, ``<name>.eml`` — the bytes exactly as the
client sent them after the SMTP transparency dots are removed (CRLF line ends
included) — and one JSON line in ``received.jsonl``::

    {"number": 1, "file": "1-<uuid>.eml", "mail_from": "...", "rcpt_tos": [...],
     "size": 1234, "message_id": "<...>", "subject": "...", "smtputf8": false,
     "received_at": "2026-12-03T12:55:01.123456+00:00"}

The ``.eml`` file is complete before its index line is written, so a reader of
the index never finds a half-written message. Numbers continue after the
messages already in the folder: a restarted sink overwrites nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import email.parser
import email.policy
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from jobwire.runtime.embedded import LOOPBACK, EmbeddedServer, free_port, is_listening

__all__ = [
    "DEV_SMTP_PORT",
    "DEV_SMTP_VARIABLE",
    "INDEX_FILE",
    "DevMailSink",
    "MailDrop",
    "MailDropHandler",
    "StoredMessage",
    "dev_smtp_address",
    "numbered_name",
    "timestamped_name",
]

INDEX_FILE = "received.jsonl"
# How `jobwire dev` tells the services (the mailer) where its sink listens:
# `host:port`, set before their settings are loaded.
DEV_SMTP_VARIABLE = "JOBWIRE_DEV_SMTP"
# The customary unprivileged SMTP port, so the address stays put between runs.
DEV_SMTP_PORT = 2525
ACCEPTED = "250 2.0.0 OK: message stored"


@dataclass(frozen=True)
class StoredMessage:
    """One accepted message as the index records it; ``file`` is relative to the folder."""

    number: int
    file: str
    mail_from: str
    rcpt_tos: list[str]
    size: int
    message_id: str | None
    subject: str | None
    smtputf8: bool
    received_at: str

    @classmethod
    def from_json(cls, line: str) -> StoredMessage:
        values: dict[str, Any] = json.loads(line)
        fields: dict[str, Any] = {name: values.get(name) for name in cls.__dataclass_fields__}
        return cls(**fields)


def numbered_name(number: int, received: datetime.datetime) -> str:
    """``<n>-<uuid>``: unique even across folders (the test server's names)."""
    return f"{number}-{uuid.uuid4().hex}"


def timestamped_name(number: int, received: datetime.datetime) -> str:
    """``20261203-125501-<n>``, local time: sorts and reads well in a folder listing."""
    return f"{received.astimezone():%Y%m%d-%H%M%S}-{number}"


_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.default)


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return str(value).strip() if value is not None else None


class MailDrop:
    """Writes accepted messages into ``directory`` (see the module docstring).

    Thread-safe: the number, the file and the index line of a message are
    written under one lock, so index lines are in number order.
    """

    def __init__(
        self,
        directory: Path,
        name: Callable[[int, datetime.datetime], str] = numbered_name,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.index_path = self.directory / INDEX_FILE
        self._name = name
        self._lock = threading.Lock()
        self._count: int | None = None

    def messages(self) -> list[StoredMessage]:
        """What the index lists, oldest first; empty before the first message."""
        try:
            lines = self.index_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [StoredMessage.from_json(line) for line in lines if line.strip()]

    def store(
        self, mail_from: str, rcpt_tos: list[str], data: bytes, smtputf8: bool
    ) -> StoredMessage:
        """Write ``data`` as the next message and index it; return its index entry."""
        # Headers only: a message may be large, and only these two are indexed.
        headers = _HEADERS.parsebytes(data, headersonly=True)
        received = datetime.datetime.now(datetime.UTC)
        with self._lock:
            if self._count is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._count = len(self.messages())
            self._count += 1
            file = f"{self._name(self._count, received)}.eml"
            (self.directory / file).write_bytes(data)
            stored = StoredMessage(
                number=self._count,
                file=file,
                mail_from=mail_from,
                rcpt_tos=list(rcpt_tos),
                size=len(data),
                message_id=_header(headers, "Message-ID"),
                subject=_header(headers, "Subject"),
                smtputf8=smtputf8,
                received_at=received.isoformat(),
            )
            with self.index_path.open("a", encoding="utf-8") as index:
                index.write(json.dumps(asdict(stored), ensure_ascii=False) + "\n")
                index.flush()
                os.fsync(index.fileno())
        return stored


class MailDropHandler:
    """An aiosmtpd handler that stores every message in a :class:`MailDrop`.

    ``on_stored`` is called with each stored message (``jobwire dev`` prints a
    line); it runs in the server's thread and must not block.
    """

    def __init__(
        self, drop: MailDrop, on_stored: Callable[[StoredMessage], None] | None = None
    ) -> None:
        self.drop = drop
        self.on_stored = on_stored

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.store(envelope)
        return ACCEPTED

    async def store(self, envelope: Envelope) -> StoredMessage:
        """Store the envelope's message off the event loop (file writes block)."""
        data = envelope.original_content or b""
        stored = await asyncio.to_thread(
            self.drop.store,
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
            data,
            bool(envelope.smtp_utf8),
        )
        if self.on_stored is not None:
            self.on_stored(stored)
        return stored


def dev_smtp_address(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """The ``(host, port)`` of the development sink that ``jobwire dev`` announces in
    ``JOBWIRE_DEV_SMTP``, None when it is not set (not run by ``jobwire dev``)."""
    value = environ.get(DEV_SMTP_VARIABLE, "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{DEV_SMTP_VARIABLE} must be host:port, not {value!r}")
    return host, int(port)


class DevMailSink(EmbeddedServer):
    """The development SMTP sink: accepts every message on loopback, relays none.

    aiosmtpd in a thread of the calling process (its ``Controller``), not a child
    process: it lives and dies with ``jobwire dev``. No TLS and no AUTH: a client
    configured with a login uses it only when AUTH is offered. Port ``port``
    when free, else any free one.
    """

    def __init__(
        self,
        directory: Path,
        port: int = DEV_SMTP_PORT,
        on_stored: Callable[[StoredMessage], None] | None = None,
        data_size_limit: int = 50 * 1024 * 1024,
    ) -> None:
        self.drop = MailDrop(directory, name=timestamped_name)
        self.host = LOOPBACK
        self.preferred_port = port
        self.port: int | None = None
        self._handler = MailDropHandler(self.drop, on_stored)
        self._data_size_limit = data_size_limit
        self._controller: Controller | None = None

    @property
    def directory(self) -> Path:
        return self.drop.directory

    @property
    def address(self) -> str:
        """``host:port`` (what ``JOBWIRE_DEV_SMTP`` holds); only while started."""
        if self.port is None:
            raise RuntimeError("the development mail sink is not started")
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # aiosmtpd logs every SMTP command at INFO; the console gets one line per
        # message from on_stored instead.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        port = self.preferred_port
        if is_listening(self.host, port):
            port = free_port()
        controller = Controller(
            self._handler,
            hostname=self.host,
            port=port,
            server_hostname="localhost",
            ready_timeout=10.0,
            # Names in other scripts than Latin arrive as they were sent.
            enable_SMTPUTF8=True,
            data_size_limit=self._data_size_limit,
        )
        controller.start()
        self.port = port
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
