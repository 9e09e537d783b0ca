"""Email listener: every new email in an IMAP folder is one trigger (aioimaplib).

Position. IMAP numbers a folder's emails with ascending UIDs, valid as long as
the folder's UIDVALIDITY stays the same. The checkpoint — KV bucket
``<ns>_email_checkpoints``, key = job id — holds that UIDVALIDITY and the
highest UID whose StartWorkflow (or dead letter) is stored; a (re)start reads
everything above it. The first start reads the whole folder: point a listener
at a folder of its own. The trigger key ``<folder>/<uidvalidity>/<uid>`` makes
an email read twice (after a crash) start one workflow.

Reading. ``UID SEARCH UID n:*`` finds what is new; ``UID FETCH`` takes the
sizes first, then the raw emails with ``BODY.PEEK[]`` (which, unlike ``RFC822``,
does not set \\Seen), a batch at most ``batch_max_messages`` and
``_BATCH_BYTES`` large. An email over ``max_message_bytes`` is not parsed: it is
fetched whole for its dead letter, or only its header when even that would be
unreasonable (over ``_KEEP_LIMIT``). Attachments are stored through the storage
port at ``<job id>/<uidvalidity>/<uid>/<n>-<name>`` before the trigger is handed on.

Waiting. With ``idle`` and a server that has IDLE, the source stays in IDLE
between receives and wakes on EXISTS. An EXISTS can also come at the end of any
other command's answer (Dovecot reports new mail when a command ends, so a
SEARCH may announce an email its own result missed); aioimaplib drops those, so
the client's protocol notes every EXISTS it sees and the source searches again
before it idles. It also re-enters IDLE every ``poll_seconds`` (at most every
25 min: servers may drop an IDLE after 30), searching each time. Without IDLE
it polls every ``poll_seconds``.

Settling. See :meth:`ImapSource.ack`: record first (Message-IDs, then the
checkpoint), then flag \\Seen and/or move; a crash in between is repaired on
the next open, and never fires an email twice.

UIDVALIDITY change (a folder recreated or rebuilt; seen at open, and by
selecting the folder again every ``poll_seconds``, since a session may not
notice on its own): every UID is new, so the folder is read again from the
start, and an email whose Message-ID was handled before is settled without a
workflow. Those Message-IDs (hashed) are kept as one KV key per acked batch,
``<job id>.ids.<uidvalidity>.<first uid>``: one write per batch, not per email,
and no size limit (a single key holding them all would hit NATS's max payload
around 20,000 emails). With ``move_to`` a batch's key is deleted once its
emails left the folder; after a rescan the keys of older validities go.

Every server call has a deadline and a lost connection fails the call at once,
so a dead server surfaces as an exception (the runner reopens with backoff),
never as a hang. Credentials never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from aioimaplib import (  # type: ignore[import-untyped]
    IMAP4,
    AioImapException,
    IMAP4ClientProtocol,
    Response,
    quoted,
)
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from jobwire.contracts.listeners import EmailListenerParams
from jobwire.contracts.objects import FileObject
from jobwire.contracts.subjects import Bucket, bucket_name
from jobwire.listeners.domain.emails import (
    EmailParseError,
    ParsedEmail,
    attachment_name,
    header_message_id,
    parse_email,
    synthetic_message_id,
)
from jobwire.listeners.domain.triggers import Trigger
from jobwire.listeners.sources import SourceContext
from jobwire.runtime.hosts import open_bucket
from jobwire.runtime.logs import get_logger
from jobwire.runtime.storage import Storage, file_object, open_storage

__all__ = ["ImapError", "ImapSource"]

log = get_logger("jobwire.listeners.imap")

T = TypeVar("T")

# Below the runner's open timeout (30 s by default), so that this error, naming
# the server, is the one reported.
OPEN_TIMEOUT = 25.0
COMMAND_TIMEOUT = 30.0
# A FETCH may take long for big emails; aioimaplib's own inactivity timer
# (reset on every chunk received) is what catches a stalled one.
FETCH_TIMEOUT = 600.0
CLOSE_TIMEOUT = 2.0
# RFC 2177: servers may drop an IDLE after 30 min; clients re-issue it before 29.
IDLE_REFRESH = 25 * 60.0
# A polling session sends NOOP when quiet this long, before the server's
# autologout (30 min at least, RFC 3501).
KEEPALIVE = 10 * 60.0
# Raw bytes one receive holds at most (one email always fits, whatever its size).
_BATCH_BYTES = 32 * 1024 * 1024
# Emails over max_message_bytes are fetched whole for their dead letter up to
# here (the largest max_message_bytes allowed); above, only their header.
_KEEP_LIMIT = 64 * 1024 * 1024
_STORE_CONCURRENCY = 8

_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"[( ]UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")


class ImapError(Exception):
    """An IMAP server refused a command, or the connection failed.

    The message names the server, the folder and the command, and quotes the
    server's answer; never a user name or password.
    """


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a listener stands in its folder (the KV value, as JSON)."""

    uidvalidity: int
    uid: int = 0
    """Every email with a UID up to here has its StartWorkflow or dead letter stored."""
    settled: int = 0
    """Emails up to here are flagged/moved too; lags ``uid`` by at most one batch."""
    rescan_until: int = 0
    """After a UIDVALIDITY change, UIDs up to here are de-duplicated by Message-ID."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        return cls(**json.loads(data))


@dataclass(slots=True)
class _Fetched:
    uid: int
    size: int
    raw: bytes
    complete: bool  # False: only the header was fetched


@dataclass(slots=True)
class _Batch:
    """What the last receive handed out, for its ack."""

    uids: list[int] = field(default_factory=list)
    """Every UID of the batch, triggers and duplicates, ascending."""
    triggers: set[int] = field(default_factory=set)
    ids: dict[int, str] = field(default_factory=dict)
    """UID → hashed Message-ID."""


class _Protocol(IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, noting each EXISTS (new mail) the server sends.

    aioimaplib hands untagged responses to the command that asked for them and
    drops the rest; an EXISTS at the end of a SEARCH or FETCH is dropped. Its
    private ``_untagged_response`` sees every one, so this extends it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Any) -> None:
        super().__init__(loop, conn_lost_cb)
        self.announced = asyncio.Event()
        self.bye: str | None = None

    def _untagged_response(self, line: bytes) -> Any:
        text = line.removeprefix(b"* ")
        if _EXISTS.match(text):
            self.announced.set()
        elif text.startswith(b"BYE "):
            self.bye = text[4:].decode(errors="replace")[:200]
        return super()._untagged_response(line)


class _Client(IMAP4):  # type: ignore[misc]
    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # IMAP4.create_client, with our protocol.
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running, conn_lost_cb)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class _Mailbox:
    """One logged-in IMAP session with a folder selected, over aioimaplib.

    Every call has a deadline and fails at once when the connection is lost
    (aioimaplib itself would wait for an answer that never comes).
    """

    def __init__(self, client: _Client, lost: asyncio.Event, where: str, timeout: float) -> None:
        self.client = client
        self._lost = lost
        self.where = where
        self.timeout = timeout
        self.uidvalidity = 0
        self.uidnext = 0
        self.exists = 0
        self._idle: asyncio.Future[Any] | None = None
        self._idle_since = 0.0
        self.last_command = time.monotonic()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        user: str,
        password: str,
        *,
        timeout: float,
    ) -> _Mailbox:
        lost = asyncio.Event()
        where = f"{host}:{port}" + (" (TLS)" if context is not None else "")
        client = _Client(
            host, port, timeout=timeout, conn_lost_cb=lambda _: lost.set(), ssl_context=context
        )
        mailbox = cls(client, lost, where, timeout)
        try:
            await mailbox._call("connect", client.wait_hello_from_server())
        except ImapError:
            await mailbox.close()
            raise
        except Exception as error:
            await mailbox.close()
            raise ImapError(f"cannot connect to IMAP server {where}: {_describe(error)}") from None
        try:
            # aioimaplib sends the user name as an atom: quote it. The password
            # it quotes itself and keeps out of its debug log.
            response = await mailbox._call("LOGIN", client.login(quoted(user), password))
        except BaseException:
            await mailbox.close()
            raise
        if response.result != "OK":
            await mailbox.close()
            raise ImapError(f"IMAP server {where} refused the login: {_said(response)}")
        # The capabilities after login may differ from the greeting's.
        await mailbox._call("CAPABILITY", client.protocol.capability())
        return mailbox

    @property
    def announced(self) -> asyncio.Event:
        """Set when the server reported new mail since the last search began."""
        event: asyncio.Event = self.client.protocol.announced
        return event

    def has(self, capability: str) -> bool:
        return bool(self.client.has_capability(capability))

    async def select(self, folder: str) -> None:
        response = await self._command("SELECT", self.client.select(_mailbox(folder)))
        text = b"\n".join(line for line in response.lines if isinstance(line, bytes))
        validity, uidnext = _UIDVALIDITY.search(text), _UIDNEXT.search(text)
        if validity is None:
            raise ImapError(f"IMAP server {self.where} sent no UIDVALIDITY for {folder!r}")
        self.uidvalidity = int(validity.group(1))
        self.uidnext = int(uidnext.group(1)) if uidnext else 0
        for line in response.lines:
            found = _EXISTS.match(line) if isinstance(line, bytes) else None
            if found:
                self.exists = int(found.group(1))

    async def search_above(self, uid: int) -> list[int]:
        await self.end_idle()
        # From here on an EXISTS may name mail this search misses: search again then.
        self.announced.clear()
        # `n:*` also matches the highest UID when that is below n (RFC 3501 6.4.8).
        response = await self._command(
            "UID SEARCH", self.client.uid_search("UID", f"{uid + 1}:*", charset=None)
        )
        found: set[int] = set()
        for line in response.lines[:-1]:  # the last is the completion text
            if isinstance(line, bytes):
                found.update(int(token) for token in line.split() if token.isdigit())
        return sorted(u for u in found if u > uid)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        response = await self._command(
            "UID FETCH", self.client.uid("fetch", _uid_set(uids), "(UID RFC822.SIZE)")
        )
        sizes: dict[int, int] = {}
        for text, _ in _fetch_groups(response.lines):
            uid, size = _UID.search(text), _SIZE.search(text)
            if uid and size:
                sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def fetch(self, uids: Sequence[int], item: str) -> dict[int, bytes]:
        """``BODY.PEEK[]`` or ``BODY.PEEK[HEADER]`` of ``uids``: UID → bytes.

        UIDs expunged meanwhile are missing from the answer."""
        response = await self._command(
            "UID FETCH",
            self.client.uid("fetch", _uid_set(uids), f"(UID {item})"),
            timeout=FETCH_TIMEOUT,
        )
        found: dict[int, bytes] = {}
        for text, literal in _fetch_groups(response.lines):
            uid = _UID.search(text)
            if uid and literal is not None:
                found[int(uid.group(1))] = literal
        return found

    async def flag_seen(self, uids: Sequence[int]) -> None:
        await self._command(
            "UID STORE", self.client.uid("store", _uid_set(uids), "+FLAGS.SILENT", r"(\Seen)")
        )

    async def move(self, uids: Sequence[int], folder: str) -> None:
        """Move to ``folder`` (created when the server says TRYCREATE).

        UID MOVE where the server has it; else COPY, flag \\Deleted and expunge
        (only these UIDs with UIDPLUS; without it, EXPUNGE also removes other
        emails someone flagged \\Deleted in this folder). UIDs already gone are
        not an error, so repeating a move after a crash is harmless."""
        target = _mailbox(folder)
        for attempt in range(2):
            if self.has("MOVE"):
                response = await self._command(
                    "UID MOVE", self.client.uid("move", _uid_set(uids), target), check=False
                )
            else:
                response = await self._command(
                    "UID COPY", self.client.uid("copy", _uid_set(uids), target), check=False
                )
            if response.result == "OK":
                break
            if attempt == 0 and b"TRYCREATE" in _said(response).encode():
                created = await self._command("CREATE", self.client.create(target), check=False)
                if created.result != "OK" and b"ALREADYEXISTS" not in _said(created).encode():
                    raise ImapError(
                        f"IMAP server {self.where} cannot create {folder!r}: {_said(created)}"
                    )
                continue
            raise ImapError(
                f"IMAP server {self.where} cannot move to {folder!r}: {_said(response)}"
            )
        if self.has("MOVE"):
            return
        await self._command(
            "UID STORE", self.client.uid("store", _uid_set(uids), "+FLAGS.SILENT", r"(\Deleted)")
        )
        if self.has("UIDPLUS"):
            await self._command("UID EXPUNGE", self.client.uid("expunge", _uid_set(uids)))
        else:
            await self._command("EXPUNGE", self.client.expunge())

    async def noop(self) -> None:
        await self._command("NOOP", self.client.noop())

    async def wait_for_mail(self, timeout: float, refresh: float) -> bool:
        """Wait in IDLE until the server announces new mail (True) or ``timeout``
        passes (False). Leaves IDLE every ``refresh`` seconds and then answers
        True: the caller searches, and a long IDLE is renewed."""
        if self.announced.is_set():
            return True
        if self._idle is None:
            # What earlier IDLEs pushed is known through `announced` already.
            queue = self.client.protocol.idle_queue
            while not queue.empty():
                queue.get_nowait()
            self._idle = await self._call("IDLE", self.client.idle_start(IDLE_REFRESH + 60))
            self._idle_since = time.monotonic()
        remaining = min(timeout, self._idle_since + refresh - time.monotonic())
        try:
            await self._call("IDLE", self.announced.wait(), timeout=max(0.0, remaining))
        except TimeoutError:
            if time.monotonic() - self._idle_since < refresh:
                return False
        await self.end_idle()
        return True

    async def end_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is None:
            return
        if not idle.done():
            # Only while the server idles: a DONE it does not expect comes back
            # as a tagged BAD that aioimaplib cannot place, and it drops the line.
            self.client.idle_done()
        response = await self._call("IDLE", asyncio.shield(idle))
        if response.result != "OK":
            raise ImapError(f"IMAP server {self.where} ended IDLE with {_said(response)}")

    async def close(self) -> None:
        """LOGOUT if the server answers soon, then drop the connection; never raises."""
        if self._idle is not None and not self._lost.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.end_idle()
        if self._idle is not None:
            await _reap(self._idle)
            self._idle = None
        protocol = self.client.protocol
        if protocol.state in ("AUTH", "SELECTED") and not self._lost.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.client.logout()
        transport = protocol.transport
        if transport is not None:
            transport.close()
        await _reap(self.client._client_task)

    async def _command(
        self,
        what: str,
        call: Awaitable[Response],
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> Response:
        try:
            await self.end_idle()  # no other command may run during IDLE
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()  # never sent; spares a "never awaited" warning
            raise
        response: Response = await self._call(what, call, timeout=timeout)
        self.last_command = time.monotonic()
        if check and response.result != "OK":
            raise ImapError(f"IMAP {what} failed on {self.where}: {_said(response)}")
        return response

    async def _call(self, what: str, call: Awaitable[T], *, timeout: float | None = None) -> T:
        """``call``'s result; ImapError when the connection is lost meanwhile,
        TimeoutError after ``timeout`` (default: the command timeout)."""
        task = asyncio.ensure_future(call)
        if self._lost.is_set():
            await _reap(task)
            raise ImapError(
                f"connection to IMAP server {self.where} lost before {what}{self._bye()}"
            )
        lost = asyncio.ensure_future(self._lost.wait())
        limit = self.timeout if timeout is None else timeout
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task not in done:
            await _reap(task)
            if self._lost.is_set():
                raise ImapError(
                    f"connection to IMAP server {self.where} lost during {what}{self._bye()}"
                )
            raise TimeoutError(f"IMAP {what} on {self.where}: no answer within {limit:g} s")
        try:
            return task.result()
        except (AioImapException, TimeoutError) as error:
            # aioimaplib's own timeouts and aborts; its exceptions can carry the
            # command, arguments included (LOGIN's too): only the type goes on.
            raise ImapError(f"IMAP {what} on {self.where} failed: {type(error).__name__}") from None

    def _bye(self) -> str:
        bye = self.client.protocol.bye
        return f" (the server said BYE: {bye})" if bye else ""


class ImapSource:
    """An IMAP folder; implements ``jobwire.listeners.sources.Source``.

    Triggers carry ``token = uid``, ``obj`` = the EmailObject and ``raw`` = the
    email's bytes; ``poison`` instead of ``obj`` for an email that cannot be
    parsed (``malformed_mime``, ``unknown_charset``) or is over
    ``max_message_bytes`` (``too_large``, not parsed at all).
    """

    def __init__(
        self,
        params: EmailListenerParams,
        ctx: SourceContext,
        *,
        command_timeout: float = COMMAND_TIMEOUT,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        self.params = params
        self.ctx = ctx
        self._command_timeout = command_timeout
        self._open_timeout = open_timeout
        self._job = ctx.definition.job_id
        self._port = params.port or (993 if params.tls else 143)
        self._log = log.bind(job_id=self._job, slot=ctx.slot, folder=params.folder)
        self._mailbox: _Mailbox | None = None
        self._kv: KeyValue | None = None
        self._storage: Storage | None = None
        self._checkpoint: Checkpoint | None = None
        # Message-IDs (hashed) handled before a UIDVALIDITY change, while rescanning.
        self._known: set[str] = set()
        self._cursor = 0  # highest UID handed out
        self._pending: list[int] = []  # found by the last search, not yet handed out
        self._searched = False
        self._next_check = 0.0
        self._batch: _Batch | None = None

    # ------------------------------------------------------------------ port

    async def open(self) -> None:
        self._kv = await self._bucket()
        stored = await self._load()
        try:
            async with asyncio.timeout(self._open_timeout):
                self._mailbox = await self._connect()
                await self._mailbox.select(self.params.folder)
        except TimeoutError:
            await self.close()
            raise TimeoutError(
                f"IMAP server {self.params.host}:{self._port} did not let us select "
                f"{self.params.folder!r} within {self._open_timeout:g} s"
            ) from None
        except BaseException:
            await self.close()
            raise
        mailbox = self._mailbox
        checkpoint = stored or Checkpoint(uidvalidity=mailbox.uidvalidity)
        if checkpoint.uidvalidity != mailbox.uidvalidity:
            # Every UID of the folder is new: read it all again, and recognise
            # what was handled by its Message-ID.
            last = (
                mailbox.uidnext - 1
                if mailbox.uidnext
                else max(await mailbox.search_above(0), default=0)
            )
            checkpoint = Checkpoint(uidvalidity=mailbox.uidvalidity, rescan_until=last)
            self._log.warning(
                "imap.uidvalidity_changed",
                old=stored.uidvalidity if stored else None,
                new=mailbox.uidvalidity,
                rescan_until=checkpoint.rescan_until,
            )
            await self._kv_call(self._require_kv().put(self._job, checkpoint.encode()))
        self._checkpoint = checkpoint
        self._known = (
            await self._load_known() if checkpoint.rescan_until > checkpoint.uid else set()
        )
        if self.params.attachments is not None:
            self._storage = open_storage(self.params.attachments, self.ctx.secrets)
        self._cursor, self._pending, self._searched = checkpoint.uid, [], False
        self._next_check = 0.0
        self._batch = None
        if checkpoint.settled < checkpoint.uid:
            # A crash between recording a batch and flagging/moving it.
            await self._settle_mailbox(list(range(checkpoint.settled + 1, checkpoint.uid + 1)))
            self._checkpoint = replace(checkpoint, settled=checkpoint.uid)
        self._log.info(
            "imap.opened",
            server=mailbox.where,
            uidvalidity=mailbox.uidvalidity,
            exists=mailbox.exists,
            checkpoint=checkpoint.uid,
            idle=self._idle_enabled(),
        )

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        mailbox = self._require_mailbox()
        deadline = time.monotonic() + timeout
        limit = max(1, min(max_items, self.params.batch_max_messages))
        while True:
            if self._pending:
                triggers = await self._next_batch(limit)
                if triggers:
                    return triggers
                continue  # a batch of duplicates only, settled already: go on
            if not self._searched or time.monotonic() >= self._next_check:
                await self._search()
                if self._pending:
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if not await self._wait(mailbox, remaining):
                return []
            self._searched = False

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        """Settle what the runner stored, in an order that survives a crash anywhere.

        1. Record the batch's Message-IDs (one KV key), then the checkpoint. From
           here these emails never fire again: not after a restart (UID at or below
           the checkpoint), not after a UIDVALIDITY change (Message-ID known).
        2. Flag \\Seen and/or move them. A crash before this leaves them unflagged
           in the folder, not unhandled: the checkpoint's ``settled`` is behind its
           ``uid``, and the next open flags/moves that range (idempotent).
        3. With ``move_to``, drop the batch's Message-ID key: the emails left.

        The other order — flag or move, then checkpoint — would, after a crash in
        between, read the flagged emails again and start their workflows twice
        (unless within JetStream's de-duplication window). A missed flag is
        repaired; a second workflow is not. ``settled`` is written with the next
        batch's checkpoint, so each batch costs two KV writes, not three.
        """
        batch, self._batch = self._batch, None
        acked = {int(t.token) for t in triggers}
        if batch is None or not acked <= batch.triggers:
            raise RuntimeError("ack of triggers this source did not hand out last")
        if acked != batch.triggers:
            # Not expected from the runner (it acks whole batches): settle what
            # was acked and everything before it, and read the rest again.
            high = max(acked)
            batch.uids = [u for u in batch.uids if u <= high]
            self._cursor, self._pending, self._searched = high, [], False
        await self._settle(batch)

    async def release(self, triggers: Sequence[Trigger]) -> None:
        """Nothing to hand back: unacked emails are above the checkpoint and are
        read again; forget the batch so a later receive starts from there."""
        self._batch = None
        if self._checkpoint is not None:
            self._cursor, self._pending, self._searched = self._checkpoint.uid, [], False

    async def close(self) -> None:
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            try:
                await mailbox.close()
            except Exception as error:  # must not raise
                self._log.warning("imap.close_failed", error=_describe(error))
        storage, self._storage = self._storage, None
        if storage is not None:
            try:
                await storage.close()
            except Exception as error:
                self._log.warning("imap.storage_close_failed", error=_describe(error))
        self._pending, self._batch, self._known = [], None, set()

    def lag(self) -> int | None:
        """Emails found by the last search and not yet handed out."""
        return len(self._pending) if self._mailbox is not None else None

    # ------------------------------------------------------------- reading

    async def _search(self) -> None:
        mailbox = self._require_mailbox()
        if time.monotonic() >= self._next_check:
            # A session does not notice its selected folder deleted and created
            # again (Dovecot even answers STATUS from the old one): select anew.
            validity = mailbox.uidvalidity
            await mailbox.select(self.params.folder)
            if mailbox.uidvalidity != validity:
                # Reopening takes it from there: the rescan starts at open.
                raise ImapError(
                    f"UIDVALIDITY of {self.params.folder!r} on {mailbox.where} changed from "
                    f"{validity} to {mailbox.uidvalidity} (the folder was recreated or rebuilt)"
                )
        self._pending = await mailbox.search_above(self._cursor)
        self._searched = True
        self._next_check = time.monotonic() + self.params.poll_seconds

    async def _wait(self, mailbox: _Mailbox, timeout: float) -> bool:
        """Wait up to ``timeout`` for a reason to search again."""
        if self._idle_enabled():
            return await mailbox.wait_for_mail(timeout, min(self.params.poll_seconds, IDLE_REFRESH))
        if mailbox.announced.is_set():
            return True
        if time.monotonic() - mailbox.last_command >= KEEPALIVE:
            await mailbox.noop()
        wait = min(timeout, self._next_check - time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        return time.monotonic() >= self._next_check or mailbox.announced.is_set()

    def _idle_enabled(self) -> bool:
        return bool(self.params.idle and self._mailbox is not None and self._mailbox.has("IDLE"))

    async def _next_batch(self, limit: int) -> list[Trigger]:
        mailbox = self._require_mailbox()
        candidates = self._pending[:limit]
        sizes = await mailbox.sizes(candidates)
        uids: list[int] = []
        total = 0
        for uid in candidates:
            size = sizes.get(uid)
            if size is None:
                continue  # expunged since the search
            if uids and total + min(size, _KEEP_LIMIT) > _BATCH_BYTES:
                break
            uids.append(uid)
            total += min(size, _KEEP_LIMIT)
        last = uids[-1] if uids else candidates[-1]
        self._pending = [u for u in self._pending if u > last]
        if not self._pending:
            # What arrived meanwhile: search before waiting.
            self._searched = False
        if not uids:
            self._cursor = max(self._cursor, last)
            return []
        fetched = await self._fetch(mailbox, uids, sizes)
        batch = _Batch()
        triggers: list[Trigger] = []
        for uid in uids:
            item = fetched.get(uid)
            if item is None:
                continue  # expunged between the two fetches
            # What de-duplication knows an email by, from its header alone: the
            # same whether it can be parsed or not.
            identity = header_message_id(item.raw) or synthetic_message_id(item.raw)
            digest = _digest(identity)
            batch.uids.append(uid)
            batch.ids[uid] = digest
            if self._is_duplicate(uid, digest):
                continue
            batch.triggers.add(uid)
            triggers.append(await self._trigger(item, mailbox.uidvalidity, identity))
        self._cursor = max(self._cursor, last)
        if not batch.uids:
            return []
        if not triggers:
            self._log.info("imap.duplicates_settled", uids=_uid_set(batch.uids))
            await self._settle(batch)
            return []
        self._batch = batch
        return triggers

    async def _fetch(
        self, mailbox: _Mailbox, uids: list[int], sizes: dict[int, int]
    ) -> dict[int, _Fetched]:
        whole = [u for u in uids if sizes[u] <= _KEEP_LIMIT]
        headers = [u for u in uids if sizes[u] > _KEEP_LIMIT]
        fetched: dict[int, _Fetched] = {}
        if whole:
            for uid, raw in (await mailbox.fetch(whole, "BODY.PEEK[]")).items():
                fetched[uid] = _Fetched(uid, sizes.get(uid, len(raw)), raw, complete=True)
        if headers:
            for uid, raw in (await mailbox.fetch(headers, "BODY.PEEK[HEADER]")).items():
                fetched[uid] = _Fetched(uid, sizes[uid], raw, complete=False)
        return fetched

    def _is_duplicate(self, uid: int, digest: str) -> bool:
        checkpoint = self._checkpoint
        return checkpoint is not None and uid <= checkpoint.rescan_until and digest in self._known

    async def _trigger(self, item: _Fetched, uidvalidity: int, identity: str) -> Trigger:
        params = self.params
        folder = params.folder
        size = max(item.size, len(item.raw))
        poison: tuple[str, str] | None = None
        obj = None
        message_id = identity
        if not item.complete:
            poison = (
                "too_large",
                f"{size} bytes; the job allows {params.max_message_bytes}. Only the header "
                f"is kept: the email is over {_KEEP_LIMIT // (1024 * 1024)} MiB",
            )
        elif size > params.max_message_bytes:
            # Not parsed; dead-lettered with its raw bytes.
            poison = ("too_large", f"{size} bytes; the job allows {params.max_message_bytes}")
        else:
            try:
                parsed = parse_email(item.raw)
            except EmailParseError as error:
                poison = (error.reason, error.detail)
            else:
                message_id = parsed.message_id
                files = await self._store_attachments(parsed, uidvalidity, item.uid)
                obj = parsed.email_object(files)
        return Trigger(
            key=f"{folder}/{uidvalidity}/{item.uid}",
            coordinates={
                "mailbox": folder,
                "uidvalidity": uidvalidity,
                "uid": item.uid,
                "message_id": message_id,
            },
            subject=folder,
            obj=obj,
            poison=poison,
            raw=item.raw,
            token=item.uid,
        )

    async def _store_attachments(
        self, parsed: ParsedEmail, uidvalidity: int, uid: int
    ) -> list[FileObject]:
        storage = self._storage
        if storage is None or not parsed.attachments:
            return []
        gate = asyncio.Semaphore(_STORE_CONCURRENCY)
        folder = f"{self._job}/{uidvalidity}/{uid}"

        async def store(index: int) -> FileObject:
            attachment = parsed.attachments[index - 1]
            path = f"{folder}/{attachment_name(index, attachment.filename)}"
            async with gate:
                # The same path every time: a crash and a second read overwrite,
                # never add.
                stored = await storage.write(
                    path, attachment.data, content_type=attachment.content_type
                )
            return file_object(storage, stored)

        return list(
            await asyncio.gather(*(store(i) for i in range(1, len(parsed.attachments) + 1)))
        )

    # ------------------------------------------------------------ settling

    async def _settle(self, batch: _Batch) -> None:
        if not batch.uids:
            return
        checkpoint = self._require_checkpoint()
        kv = self._require_kv()
        high = batch.uids[-1]
        ids_key = f"{self._job}.ids.{checkpoint.uidvalidity}.{batch.uids[0]}"
        ids = sorted({batch.ids[u] for u in batch.uids if u in batch.ids})
        await self._kv_call(kv.put(ids_key, json.dumps(ids).encode()))
        rescan_until = checkpoint.rescan_until if high < checkpoint.rescan_until else 0
        recorded = replace(checkpoint, uid=high, rescan_until=rescan_until)
        await self._kv_call(kv.put(self._job, recorded.encode()))
        self._checkpoint = recorded
        await self._settle_mailbox(batch.uids)
        self._checkpoint = replace(recorded, settled=high)
        if self.params.move_to is not None:
            await self._kv_call(kv.delete(ids_key))
        if checkpoint.rescan_until and not rescan_until:
            await self._rescan_done(checkpoint.uidvalidity)

    async def _settle_mailbox(self, uids: list[int]) -> None:
        mailbox = self._require_mailbox()
        if self.params.mark_seen:
            await mailbox.flag_seen(uids)
        if self.params.move_to is not None:
            await mailbox.move(uids, self.params.move_to)

    async def _rescan_done(self, uidvalidity: int) -> None:
        """Every email in the folder now has its Message-ID under this UIDVALIDITY:
        the older keys only name emails that are gone."""
        kv = self._require_kv()
        stale = [
            key
            for key in await self._ids_keys()
            if not key.startswith(f"{self._job}.ids.{uidvalidity}.")
        ]
        for key in stale:
            await self._kv_call(kv.delete(key))
        self._known = set()
        self._log.info("imap.rescan_done", uidvalidity=uidvalidity, dropped_keys=len(stale))

    # ---------------------------------------------------------- checkpoint

    async def _bucket(self) -> KeyValue:
        return await open_bucket(
            self.ctx.js, bucket_name(self.ctx.namespace, Bucket.EMAIL_CHECKPOINTS)
        )

    async def _load(self) -> Checkpoint | None:
        try:
            entry = await self._kv_call(self._require_kv().get(self._job))
        except KeyNotFoundError:
            return None
        return Checkpoint.decode(entry.value) if entry.value else None

    async def _ids_keys(self) -> list[str]:
        return [key for key, _ in await self._ids_entries(values=False)]

    async def _load_known(self) -> set[str]:
        known: set[str] = set()
        for _, value in await self._ids_entries(values=True):
            known.update(json.loads(value))
        self._log.info("imap.known_message_ids", count=len(known))
        return known

    async def _ids_entries(self, *, values: bool) -> list[tuple[str, bytes]]:
        watcher = await self._require_kv().watch(
            f"{self._job}.ids.>", ignore_deletes=True, meta_only=not values
        )
        found: list[tuple[str, bytes]] = []
        try:
            async with asyncio.timeout(self._command_timeout):
                async for entry in watcher:
                    if entry is None:  # the end of what is stored
                        break
                    found.append((entry.key, entry.value or b""))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def _kv_call(self, call: Awaitable[T]) -> T:
        async with asyncio.timeout(self._command_timeout):
            return await call

    # ------------------------------------------------------------ plumbing

    async def _connect(self) -> _Mailbox:
        params, secrets = self.params, self.ctx.secrets
        user = secrets.resolve(params.username).get_secret_value()
        password = secrets.resolve(params.password).get_secret_value()
        return await _Mailbox.connect(
            params.host,
            self._port,
            self._ssl_context() if params.tls else None,
            user,
            password,
            timeout=self._command_timeout,
        )

    def _ssl_context(self) -> ssl.SSLContext:
        name = self.params.ca
        if name is None:
            return ssl.create_default_context()
        ca = self.ctx.secrets.resolve(name).get_secret_value()
        try:
            return ssl.create_default_context(cadata=ca)
        except (ssl.SSLError, ValueError):
            # The library's message could quote the secret's content.
            raise ValueError(f"secret {name!r} (ca) is not a PEM CA certificate") from None

    def _require_mailbox(self) -> _Mailbox:
        if self._mailbox is None:
            raise RuntimeError("ImapSource is not open")
        return self._mailbox

    def _require_kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("ImapSource is not open")
        return self._kv

    def _require_checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            raise RuntimeError("ImapSource is not open")
        return self._checkpoint


# ----------------------------------------------------------------- helpers


async def _reap(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if needed and wait for it, its outcome ignored; a
    cancellation of the caller itself still propagates."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 (the task's failure is what we are discarding)
        pass


def _digest(message_id: str) -> str:
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _uid_set(uids: Iterable[int]) -> str:
    """``1:3,7,9:10`` for 1, 2, 3, 7, 9, 10."""
    ranges: list[str] = []
    ordered = sorted(set(uids))
    start = previous = ordered[0]
    for uid in [*ordered[1:], 0]:
        if uid == previous + 1:
            previous = uid
            continue
        ranges.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = uid
    return ",".join(ranges)


def _fetch_groups(lines: Sequence[Any]) -> list[tuple[bytes, bytes | None]]:
    """A FETCH answer's items per email: (the non-literal text, the literal if any).

    aioimaplib hands the untagged lines without ``* `` and each literal as a
    separate bytearray right after the line announcing it.
    """
    groups: list[tuple[bytearray, bytes | None]] = []
    for line in lines[:-1]:  # the last is the completion text
        if isinstance(line, bytearray):
            if groups:
                text, _ = groups[-1]
                groups[-1] = (text, bytes(line))
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            groups.append((bytearray(line), None))
        elif groups:
            groups[-1][0].extend(b" " + line)
    return [(bytes(text), literal) for text, literal in groups]


def _mailbox(folder: str) -> str:
    """A folder name as an IMAP argument: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    return str(quoted(_utf7(folder)))


def _utf7(name: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(encoded).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _said(response: Response) -> str:
    """The server's words in a response (its last line), for an error message."""
    lines = [line for line in response.lines if isinstance(line, bytes | bytearray)]
    text = bytes(lines[-1]).decode(errors="replace") if lines else ""
    return f"{response.result} {text}".strip()[:300]


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _QuietAioimaplib(logging.Filter):
    """aioimaplib logs every byte sent and received at DEBUG (whole emails, the
    LOGIN user name) and, at INFO, each untagged response it did not expect —
    the EXISTS a server adds to any command's answer when mail arrives, which
    the next search picks up anyway. Neither belongs in the service's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno <= logging.DEBUG:
            return not message.startswith(("Sending", "Received"))
        return not message.startswith("ignored untagged response")


logging.getLogger("aioimaplib.aioimaplib").addFilter(_QuietAioimaplib())
