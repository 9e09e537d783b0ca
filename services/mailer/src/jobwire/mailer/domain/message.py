"""A :class:`SendEmail` → the RFC 5322 message the mailer sends, or why it cannot be. No I/O.

Order of use (the caller does the I/O between the steps):

1. :func:`check_command` when the command arrives: every problem, each naming
   its field, before anything is queued or read.
2. The attachments are read from storage; :func:`references_for` gives the
   References from the conversation's parent email.
3. :func:`build_message` assembles the MIME tree with the standard library's
   ``email`` package.
4. :func:`check_without_smtputf8` lists the addresses whose local part is not
   ASCII. Only those need SMTPUTF8; if there are any, the sender asks for the
   extension (MAIL FROM ... SMTPUTF8) and renders with ``smtputf8=True``, and
   if the server does not offer it after EHLO, the email is failed with the
   first of them (no encoding can carry such an address). This check is not in
   step 1 because one server may offer the extension and the next not: the
   command is valid either way. :func:`render` refuses such an address header
   again as a backstop, naming the header. (The account's own From address is
   configuration: the caller checks it with ``needs_smtputf8``.)
   SMTPUTF8 is used only when needed because encoded words (RFC 2047, 2231)
   reach every client, while raw UTF-8 headers (RFC 6532) only reach those that
   read them: a server offering the extension says nothing about the reader.
5. :func:`render` gives the bytes for DATA; :func:`envelope_recipients` the RCPT TOs.

:func:`render_email` does steps 3 to 5 at once, as the mailer does when an email
is queued: it renders under SMTPUTF8 only when an address needs it, and says so
(:class:`Rendered`), so that the bytes can be kept and sent as they are by every
attempt, to whichever server.

The MIME tree, as mail clients expect it::

    multipart/mixed                 only with attachments
      multipart/alternative         only with both bodies
        text/plain
        multipart/related           only with inline images
          text/html
          image/...  Content-ID: <cid>   (the HTML refers to cid:<cid>)
      application/... attachments (file names RFC 2231-encoded when not ASCII)

Bodies are quoted-printable or base64, never 8bit, so no server needs 8BITMIME.
Header fields are folded at 78 characters; a UTF-8 subject or display name is
sent as RFC 2047 encoded words, or raw (RFC 6532) when rendered for SMTPUTF8
(file names stay RFC 2231-encoded even then). Message ids (References,
In-Reply-To, Content-ID) are folded between ids, never encoded.

Header injection is stopped twice. :func:`check_command` refuses line breaks
(every character ``str.splitlines`` breaks at) and control characters in
every text that reaches a header, also once RFC 2047 encoded words in it are
decoded — the email package decodes them in the values it is given, and the
Python on these machines (3.11.7) writes a decoded CR LF out as a new header
line (CVE-2024-6923, fixed in 3.11.10 and 3.12.5) — and refuses ``=?`` in
display names outright (decoded, they are written unquoted: ``a, b@x`` would
be a second visible address). :func:`render` then checks every folded header
for a line that is not a continuation, whatever the Python version.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.headerregistry import (
    Address,
    BaseHeader,
    ContentDispositionHeader,
    HeaderRegistry,
    UnstructuredHeader,
)
from email.message import EmailMessage, Message, MIMEPart
from email.policy import Policy
from io import BytesIO
from typing import Any

from jobwire.contracts.mail import Attachment, SendEmail, email_id
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.domain.addresses import (
    InvalidCommand,
    ascii_domain,
    check_address,
    check_display_name,
    header_text_problem,
    needs_smtputf8,
    normalize_address,
)

__all__ = [
    "MAX_REFERENCES",
    "RESERVED_HEADERS",
    "Rendered",
    "attachment_content_type",
    "attachment_filename",
    "build_message",
    "check_command",
    "check_without_smtputf8",
    "envelope_recipients",
    "envelope_sender",
    "message_id",
    "references_for",
    "render",
    "render_email",
]

# Set by the mailer itself, or by the servers on the way: a caller's value
# would contradict ours, or (Bcc) undo what the field is for.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "message-id",
        "date",
        "in-reply-to",
        "references",
        "mime-version",
        "return-path",
    }
)
# A thread of hundreds of emails must not grow a header without bound; the
# first id (the thread's root) and the latest ones are what clients thread by.
MAX_REFERENCES = 20
MAX_HEADER_NAME = 76  # the name and its colon fit on one folded line
MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1
MAX_MSG_ID = 250  # far beyond real ones, far below the 998-octet line limit
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'
_MSG_ID = re.compile(r"<[!-;=?-~]+>")  # printable ASCII but '<' '>', in angle brackets
_CONTENT_ID = re.compile(r"[!-;=?-~]+")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*")
_NEWLINE_WITHOUT_FWS = re.compile(rb"\r\n[^ \t]|\r[^ \n\t]|\n[^ \t]|[\r\n]$")
_ADDRESS_HEADERS = {"from": "from", "to": "to", "cc": "cc", "reply-to": "reply_to"}


class _MessageIdsHeader(UnstructuredHeader, BaseHeader):
    """Message-id lists (References, In-Reply-To) and Content-ID, folded between ids only.

    As unstructured text the email package would turn an id too long for one
    line into RFC 2047 encoded words, which no client reads as an id.
    """

    def fold(self, *, policy: Policy) -> str:
        max_length = policy.max_line_length or 78
        lines = [f"{self.name}:"]
        for token in str(self).split():
            if len(lines[-1]) + 1 + len(token) > max_length and lines[-1] != f"{self.name}:":
                lines.append("")
            lines[-1] += f" {token}"
        return policy.linesep.join(lines) + policy.linesep


# The bases the registry combines anyway; typeshed types the two apart.
class _ContentDispositionHeader(ContentDispositionHeader, BaseHeader):  # type: ignore[misc]
    """Content-Disposition whose file name is RFC 2231-encoded even under SMTPUTF8.

    RFC 6532 allows it raw then, but mail clients read RFC 2231 names far more
    reliably than raw UTF-8 parameters.
    """

    def fold(self, *, policy: Policy) -> str:
        # _POLICY is the rendering policy less utf8 (render uses no other).
        return BaseHeader.fold(self, policy=_POLICY)


class _HeaderRegistry(HeaderRegistry):
    """The registry of the mailer's policies: its header classes made once, and
    each of the MIME headers parsed once.

    The standard registry creates a new class for every header it parses,
    which costs more than parsing most values. Every message has the same
    MIME-Version, Content-Transfer-Encoding and body Content-Type values (set
    as text by the email package). A parsed header is immutable (the message
    replaces it when it changes), so one can be shared by every message that
    has the same name and value. The cache is bounded: Content-Types with a
    boundary or a file name do not recur.
    """

    _SHARED = frozenset({"mime-version", "content-type", "content-transfer-encoding"})

    def __init__(self) -> None:
        super().__init__()
        for name in ("references", "in-reply-to", "content-id"):
            self.map_to_type(name, _MessageIdsHeader)
        self.map_to_type("content-disposition", _ContentDispositionHeader)
        self._parse_shared = functools.lru_cache(maxsize=128)(super().__call__)
        # Keyed by the registered class, not the header name: names come from callers.
        self._classes: dict[type[Any], type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        # As HeaderRegistry.__getitem__ does, once per class.
        registered = self.registry.get(name.lower(), self.default_class)
        combined = self._classes.get(registered)
        if combined is None:
            combined = type("_" + registered.__name__, (registered, self.base_class), {})
            self._classes[registered] = combined
        return combined

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if isinstance(value, str) and name.lower() in self._SHARED:
            return self._parse_shared(name, value)
        return super().__call__(name, value)


# cte_type 7bit: bodies become quoted-printable or base64 (see the module docstring).
_POLICY = email_policy.SMTP.clone(header_factory=_HeaderRegistry(), cte_type="7bit")
_POLICY_SMTPUTF8 = _POLICY.clone(utf8=True)


def message_id(idempotency_key: str, domain: str) -> str:
    """``<email-id@domain>``: the same key gives the same Message-ID on every
    replica and every attempt, so a re-sent email threads as the same one."""
    return f"<{email_id(idempotency_key)}@{ascii_domain(domain)}>"


def check_command(
    command: SendEmail, *, max_attachments_bytes: int | None = None
) -> list[InvalidCommand]:
    """Every reason ``command`` cannot be sent, each naming its field; empty = valid.

    ``max_attachments_bytes`` limits each attachment (by its ``file.size``).
    Storage (does the file exist?) and the account are the caller's to check.
    """
    return [
        *_recipient_problems(command),
        *_address_problems(command),
        *_body_problems(command),
        *_subject_problems(command),
        *_header_problems(command.headers),
        *_in_reply_to_problems(command.in_reply_to),
        *_attachment_problems(command, max_attachments_bytes),
    ]


def check_without_smtputf8(command: SendEmail) -> list[InvalidCommand]:
    """The addresses of ``command`` that a server without SMTPUTF8 cannot take."""
    return [
        InvalidCommand(field, "the local part is not ASCII and the server does not offer SMTPUTF8")
        for field, mailbox in _mailboxes(command)
        if needs_smtputf8(mailbox.address.strip())
    ]


def envelope_recipients(command: SendEmail) -> list[str]:
    """RCPT TO addresses: To, Cc and Bcc normalised, each once (by its normalised form),
    in that order."""
    seen: dict[str, None] = {}
    for mailbox in [*command.to, *command.cc, *command.bcc]:
        seen.setdefault(normalize_address(mailbox.address), None)
    return list(seen)


def references_for(
    parent_message_id: str | None,
    parent_references: Sequence[str],
    parent_in_reply_to: str | None = None,
) -> list[str]:
    """The References of a reply (RFC 5322 3.6.4): the parent's References — or,
    when it has none, its In-Reply-To — then the parent's Message-ID.

    Ids come from received email too, so what is not a ``<...>`` msg-id (or
    longer than :data:`MAX_MSG_ID`) is dropped rather than put into a header;
    repeats are dropped; more than :data:`MAX_REFERENCES` keep the first (the
    thread's root) and the latest ones. No parent id → no References.
    """
    if parent_message_id is None or not _is_msg_id(parent_message_id):
        return []
    ancestors = list(parent_references) or ([parent_in_reply_to] if parent_in_reply_to else [])
    ids = list(dict.fromkeys(i for i in [*ancestors, parent_message_id] if _is_msg_id(i)))
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def build_message(
    command: SendEmail,
    *,
    account_from: EmailAddress,
    message_id: str,
    date: datetime,
    references: list[str],
    attachments: list[tuple[Attachment, bytes]],
) -> EmailMessage:
    """The message for a checked ``command``: headers, bodies and attachments.

    ``attachments`` pairs each of the command's attachments with its content.
    ``references`` is what :func:`references_for` gave (what is not a msg-id
    is left out); when empty and the command answers an email, References
    repeats In-Reply-To. Bcc is never a
    header: those recipients are only in the envelope.
    """
    message = EmailMessage(policy=_POLICY)
    _set_headers(message, command, account_from, message_id, date, references)
    _set_bodies(message, command)
    for attachment, content in attachments:
        _attach(message, attachment, content, inline=bool(command.html))
    for part in message.walk():
        if part is not message:
            # The email package repeats MIME-Version in the parts it creates;
            # RFC 2045 4 wants it once, at the top.
            del part["MIME-Version"]
    _set_boundaries(message, message_id)
    return message


def _set_boundaries(message: EmailMessage, message_id: str) -> None:
    """Give every multipart a boundary derived from its content, not a random one.

    A resend (a crash after the server accepted DATA) must be the same bytes
    as the first copy, and the email package draws each boundary at random
    when it writes. A hash of the message id and of everything the part
    holds cannot occur in that content, so no caller-chosen body can end a
    part early (the Message-ID alone is predictable from the key). Inner
    parts first: their boundaries are part of what the outer ones hash.
    """
    for part in reversed(list(message.walk())):
        if not part.is_multipart():
            continue
        digest = hashlib.sha256(message_id.encode())
        for inner in part.walk():
            if inner is part:
                continue
            for name, value in inner.items():
                digest.update(f"{name}: {value}\n".encode())
            if not inner.is_multipart():
                digest.update(str(inner.get_payload()).encode())
        part.set_boundary(f"=_{digest.hexdigest()[:40]}")


@dataclass(frozen=True, slots=True)
class Rendered:
    """An email's DATA, rendered once, as every attempt sends it.

    ``smtputf8``: rendered with raw UTF-8 headers because an address of the
    email needs SMTPUTF8; only a server that offers the extension can take it.
    """

    data: bytes
    smtputf8: bool


def envelope_sender(command: SendEmail, account_from: EmailAddress) -> str:
    """MAIL FROM: the command's From, else the account's, normalised."""
    return normalize_address((command.from_ or account_from).address)


def render_email(
    command: SendEmail,
    *,
    account_from: EmailAddress,
    message_id: str,
    date: datetime,
    references: list[str],
    attachments: list[tuple[Attachment, bytes]],
) -> Rendered:
    """:func:`build_message` then :func:`render`, under SMTPUTF8 only where an address needs it.

    Raw UTF-8 headers would make a server that offers SMTPUTF8 but relays to
    one that does not bounce the email, so an all-ASCII email is rendered
    without, whatever the server. The same inputs give the same bytes.
    """
    message = build_message(
        command,
        account_from=account_from,
        message_id=message_id,
        date=date,
        references=references,
        attachments=attachments,
    )
    smtputf8 = bool(check_without_smtputf8(command)) or needs_smtputf8(
        envelope_sender(command, account_from)
    )
    return Rendered(render(message, smtputf8=smtputf8), smtputf8)


def render(message: EmailMessage, *, smtputf8: bool) -> bytes:
    """The bytes to send as DATA, lines ending in CRLF.

    ``smtputf8``: the server offers SMTPUTF8 (and the sender asks for it);
    then non-ASCII header text stays raw UTF-8. Without it, an address whose
    local part is not ASCII raises :class:`InvalidCommand` naming the header
    (the email package would otherwise put an encoded word into the address).
    """
    if not smtputf8:
        for name, field in _ADDRESS_HEADERS.items():
            for address in getattr(message[name], "addresses", ()):
                if not address.username.isascii():
                    raise InvalidCommand(
                        field, "the local part is not ASCII and the server does not offer SMTPUTF8"
                    )
    policy = _POLICY_SMTPUTF8 if smtputf8 else _POLICY
    out = BytesIO()
    # As Message.as_bytes does, with each header checked as it is written.
    _VerifyingGenerator(out, mangle_from_=False, policy=policy).flatten(message, unixfrom=False)
    return out.getvalue()


class _VerifyingGenerator(BytesGenerator):
    """A generator that refuses a folded header that is not one header field.

    :func:`check_command` refuses line breaks in what a caller gives; this is
    the backstop for what the email package makes of it (Python 3.11.10 and
    3.12.5 got ``policy.verify_generated_headers`` for the same reason,
    CVE-2024-6923, checked at the same place; this runs on every version).
    It checks the very bytes that are sent, of the message and of every MIME
    part (the generator clones itself for the parts), each header folded
    once: no line that is not a continuation, no bare CR or LF, no line
    longer than RFC 5322's 998 octets.
    """

    def _write_headers(self, msg: Message) -> None:
        policy = self.policy
        assert policy is not None  # flatten sets it, to the message's if none was given
        for name, value in msg.raw_items():
            folded = policy.fold_binary(name, value)
            body = folded.removesuffix(b"\r\n")
            if _NEWLINE_WITHOUT_FWS.search(body):
                raise InvalidCommand(
                    _field_of_header(name), "would start a new header line when written"
                )
            if any(len(line) > MAX_LINE_OCTETS for line in body.split(b"\r\n")):
                raise InvalidCommand(
                    _field_of_header(name),
                    f"would have a line longer than {MAX_LINE_OCTETS} octets when written",
                )
            # What BytesGenerator writes, through the file it writes to (typeshed omits it).
            self._fp.write(folded)  # type: ignore[attr-defined]
        # A blank line always separates headers from body.
        self.write(policy.linesep)


def _field_of_header(name: str) -> str:
    lowered = name.lower()
    if lowered in _ADDRESS_HEADERS:
        return _ADDRESS_HEADERS[lowered]
    if lowered in ("subject", "in-reply-to"):
        return lowered.replace("-", "_")
    return f"headers.{name}"


def attachment_filename(attachment: Attachment) -> str:
    """The name the recipient sees: ``filename``, else the last part of ``file.path``."""
    return attachment.filename or attachment.file.path.rstrip("/").rpartition("/")[2] or "file"


def attachment_content_type(attachment: Attachment) -> str:
    """``content_type``, else the file's, else guessed from the name, else octet-stream.

    The guess uses :mod:`mimetypes`, which reads the system's ``mime.types``
    once, on first use (not at import).
    """
    guessed, _ = mimetypes.guess_type(attachment_filename(attachment), strict=False)
    return (
        attachment.content_type
        or attachment.file.content_type
        or guessed
        or "application/octet-stream"
    ).lower()


# ----------------------------------------------------------------- checks


def _recipient_problems(command: SendEmail) -> Iterator[InvalidCommand]:
    if not (command.to or command.cc or command.bcc):
        yield InvalidCommand("to", "no recipient: give at least one address in to, cc or bcc")


def _mailboxes(command: SendEmail) -> Iterator[tuple[str, EmailAddress]]:
    """(field of the address, mailbox) for every mailbox of the command, From first."""
    if command.from_ is not None:
        yield "from.address", command.from_
    for name in ("to", "cc", "bcc", "reply_to"):
        for index, mailbox in enumerate(getattr(command, name)):
            yield f"{name}.{index}.address", mailbox


def _address_problems(command: SendEmail) -> Iterator[InvalidCommand]:
    for field, mailbox in _mailboxes(command):
        try:
            check_address(mailbox.address, field)
            check_display_name(mailbox.name, field.removesuffix("address") + "name")
        except InvalidCommand as problem:
            yield problem


def _body_problems(command: SendEmail) -> Iterator[InvalidCommand]:
    if not (command.text or command.html):
        yield InvalidCommand("text", "no body: give text, html or both")


def _subject_problems(command: SendEmail) -> Iterator[InvalidCommand]:
    if problem := header_text_problem(command.subject):
        yield InvalidCommand("subject", problem)


def _header_problems(headers: dict[str, str]) -> Iterator[InvalidCommand]:
    for name, value in headers.items():
        # The name goes into the field path, and the path into logs and events.
        field = f"headers.{name.encode('unicode_escape').decode('ascii')}"
        if not _HEADER_NAME.fullmatch(name):
            yield InvalidCommand(
                field, "not a header field name (printable ASCII without spaces or ':')"
            )
        elif len(name) > MAX_HEADER_NAME:
            yield InvalidCommand(field, f"a header field name is at most {MAX_HEADER_NAME} long")
        elif _is_reserved(name):
            yield InvalidCommand(field, "set by the mailer; use the command's own field")
        elif problem := header_text_problem(value):
            yield InvalidCommand(field, problem)


def _is_reserved(name: str) -> bool:
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith("content-")


def _in_reply_to_problems(in_reply_to: str | None) -> Iterator[InvalidCommand]:
    if in_reply_to is not None and not _is_msg_id(in_reply_to):
        yield InvalidCommand(
            "in_reply_to",
            f"not a Message-ID: expected <id@domain>, printable ASCII, "
            f"at most {MAX_MSG_ID} characters",
        )


def _is_msg_id(value: str) -> bool:
    return len(value) <= MAX_MSG_ID and _MSG_ID.fullmatch(value) is not None


def _attachment_problems(command: SendEmail, limit: int | None) -> Iterator[InvalidCommand]:
    content_ids: set[str] = set()
    for index, attachment in enumerate(command.attachments):
        field = f"attachments.{index}"
        if limit is not None and attachment.file.size > limit:
            yield InvalidCommand(
                f"{field}.file.size",
                f"{attachment.file.size} bytes is more than the limit of {limit} bytes",
            )
        if problem := header_text_problem(attachment_filename(attachment)):
            yield InvalidCommand(f"{field}.filename", problem)
        if not _is_attachable_type(attachment_content_type(attachment)):
            yield InvalidCommand(
                f"{field}.content_type", "not a media type (type/subtype) that can be attached"
            )
        cid = attachment.content_id
        if cid is not None:
            yield from _content_id_problems(f"{field}.content_id", cid, content_ids, command)
            content_ids.add(cid)


def _is_attachable_type(content_type: str) -> bool:
    # multipart/* and message/* are containers the email package builds itself.
    return _MEDIA_TYPE.fullmatch(content_type) is not None and not content_type.startswith(
        ("multipart/", "message/")
    )


def _content_id_problems(
    field: str, cid: str, seen: set[str], command: SendEmail
) -> Iterator[InvalidCommand]:
    if not _CONTENT_ID.fullmatch(cid):
        yield InvalidCommand(
            field, "not a content id: printable ASCII without spaces or angle brackets"
        )
    elif cid in seen:
        yield InvalidCommand(field, f"{cid!r} is used by an earlier attachment")
    elif not command.html:
        yield InvalidCommand(field, "an inline image needs an html body to refer to it")


# ----------------------------------------------------------------- building


def _set_headers(
    message: EmailMessage,
    command: SendEmail,
    account_from: EmailAddress,
    msg_id: str,
    date: datetime,
    references: list[str],
) -> None:
    message["From"] = _address(command.from_ or account_from)
    if command.to:
        message["To"] = [_address(m) for m in command.to]
    if command.cc:
        message["Cc"] = [_address(m) for m in command.cc]
    if command.reply_to:
        message["Reply-To"] = [_address(m) for m in command.reply_to]
    message["Subject"] = command.subject
    message["Date"] = date
    message["Message-ID"] = msg_id
    if command.in_reply_to:
        message["In-Reply-To"] = command.in_reply_to
        references = references or [command.in_reply_to]
    # Only msg-ids reach the header, whatever the caller's store held.
    references = [ref for ref in references if _is_msg_id(ref)]
    if references:
        message["References"] = " ".join(references)
    for name, value in command.headers.items():
        message[name] = value


def _address(mailbox: EmailAddress) -> Address:
    local, _, domain = normalize_address(mailbox.address).rpartition("@")
    return Address(display_name=mailbox.name or "", username=local, domain=domain)


def _set_bodies(message: EmailMessage, command: SendEmail) -> None:
    if command.text:
        message.set_content(command.text)
        if command.html:
            message.add_alternative(command.html, subtype="html")
    elif command.html:
        message.set_content(command.html, subtype="html")


def _html_part(message: EmailMessage) -> MIMEPart:
    """The text/html part the inline images belong with."""
    body = message.get_body(preferencelist=("related", "html"))
    if body is None:  # a checked command with inline images has an html body
        raise ValueError("inline images need an html body")
    return body


def _attach(message: EmailMessage, attachment: Attachment, content: bytes, *, inline: bool) -> None:
    maintype, _, subtype = attachment_content_type(attachment).partition("/")
    options: dict[str, Any] = {"filename": attachment_filename(attachment)}
    if attachment.content_id and inline:
        _html_part(message).add_related(
            content,
            maintype,
            subtype,
            cid=f"<{attachment.content_id}>",
            disposition="inline",
            **options,
        )
    else:
        message.add_attachment(content, maintype, subtype, **options)
