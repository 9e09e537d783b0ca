"""A raw email (RFC 5322 bytes) → what a workflow gets about it, or why it cannot. No I/O.

:func:`parse_email` reads the message with the standard library's ``email``
package and returns a :class:`ParsedEmail`: the fields of an
:class:`~jobwire.contracts.objects.EmailObject` plus the attachments' bytes,
which the source stores before it builds the object (:meth:`ParsedEmail.email_object`).

The MIME structure is parsed with ``policy.compat32``, the header fields a
workflow gets as values (addresses, date) with ``policy.default`` (RFC 2047,
structured addresses and dates): parsing every header of every part with
``policy.default`` took twice as long, and most of it was spent on headers
nobody reads (a 140 KB email: 11 ms → 4 ms).

What counts as what:

- Bodies: the first ``text/plain`` and the first ``text/html`` part that is not
  an attachment, looking into a ``multipart/related`` only at its root (what
  ``EmailMessage.get_body`` picks); lines end in ``\n``, not CRLF.
- Attachments: every other leaf part — files, inline images, calendar parts,
  an attached email (``message/rfc822``, kept whole as ``.eml``) — except further
  inline ``text/plain``/``text/html`` parts without a file name (other renderings
  of the body), which are not passed on.
- Headers keep every field by lower-cased name, in order, unfolded, with RFC 2047
  encoded words decoded and nothing else changed. Raw UTF-8 in headers (RFC
  6532) is read as UTF-8; other raw 8-bit bytes become U+FFFD.

Refused, as :class:`EmailParseError` with a dead-letter reason:

- ``malformed_mime``: a defect that loses content (a multipart without its
  boundary, or whose boundary never occurs; base64 that cannot be decoded), or
  no usable ``From`` address.
- ``unknown_charset``: a body part in a charset Python has no codec for. Its
  text would only be guessed, so the email is dead-lettered rather than handed
  on with replacement characters. Bytes that are invalid in a charset Python
  knows (say, Latin-1 labelled as UTF-8, common in the wild) are replaced by
  U+FFFD instead: the rest of the text is still right.

Size limits are not checked here: the runner owns ``too_large``.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors, message_from_bytes, policy
from email.headerregistry import Address
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, Final

from jobwire.contracts.objects import EmailAddress, EmailObject, FileObject

__all__ = [
    "Attachment",
    "EmailParseError",
    "ParsedEmail",
    "attachment_name",
    "header_message_id",
    "parse_email",
    "synthetic_message_id",
]

MALFORMED_MIME: Final = "malformed_mime"
UNKNOWN_CHARSET: Final = "unknown_charset"

# Defects after which part of the message is gone or unreadable: the parser
# kept a multipart's body as one opaque string.
_LOSSY_DEFECTS: tuple[type[errors.MessageDefect], ...] = (
    errors.NoBoundaryInMultipartDefect,
    errors.StartBoundaryNotFoundDefect,
    errors.MultipartInvariantViolationDefect,
)
_MAX_NAME_CHARS = 120
_UNSAFE_NAME = re.compile(r"[^\w.+\-()= ]+")
_MESSAGE_ID = re.compile(r"<[^<>]*>")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class EmailParseError(ValueError):
    """The email cannot become an EmailObject; ``reason`` names why for the dead letter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    """As the email names it (decoded), or made up from the part's position and type."""
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """An email's fields for :class:`EmailObject`, with its attachments still as bytes."""

    message_id: str
    from_: EmailAddress
    to: list[EmailAddress]
    cc: list[EmailAddress]
    reply_to: list[EmailAddress]
    subject: str
    date: datetime | None
    in_reply_to: str | None
    references: list[str]
    text: str | None
    html: str | None
    headers: dict[str, list[str]]
    size: int
    attachments: list[Attachment] = field(default_factory=list)
    message_id_synthetic: bool = False

    def email_object(self, attachments: Sequence[FileObject] = ()) -> EmailObject:
        """The object a workflow gets, with the attachments as stored (none if not stored)."""
        return EmailObject(
            message_id=self.message_id,
            from_=self.from_,
            to=self.to,
            cc=self.cc,
            reply_to=self.reply_to,
            subject=self.subject,
            date=self.date,
            in_reply_to=self.in_reply_to,
            references=self.references,
            text=self.text,
            html=self.html,
            headers=self.headers,
            attachments=list(attachments),
            size=self.size,
        )


def parse_email(raw: bytes) -> ParsedEmail:
    """Parse ``raw``; :class:`EmailParseError` when it cannot be handed on.

    An email without a ``Message-ID`` gets one made from a hash of its bytes
    (:func:`synthetic_message_id`), so the same email always gets the same id
    and de-duplication by Message-ID still works; ``message_id_synthetic`` says so.
    """
    message = message_from_bytes(raw, policy=policy.compat32)
    _check_structure(message)
    raw_headers = _raw_headers(message)
    headers = {name: [_decoded(value) for value in values] for name, values in raw_headers.items()}
    message_id = _first_id(headers.get("message-id"))
    synthetic = message_id is None
    text_part = _body_part(message, "plain")
    html_part = _body_part(message, "html")
    bodies = [part for part in (text_part, html_part) if part is not None]
    return ParsedEmail(
        message_id=message_id or synthetic_message_id(raw),
        from_=_sender(raw_headers),
        to=_addresses(raw_headers, "to"),
        cc=_addresses(raw_headers, "cc"),
        reply_to=_addresses(raw_headers, "reply-to"),
        subject=_single(headers, "subject") or "",
        date=_date(raw_headers),
        in_reply_to=_first_id(headers.get("in-reply-to")),
        references=_references(headers.get("references", [])),
        text=_text(text_part) if text_part is not None else None,
        html=_text(html_part) if html_part is not None else None,
        headers=headers,
        size=len(raw),
        attachments=list(_attachments(message, bodies)),
        message_id_synthetic=synthetic,
    )


def header_message_id(raw: bytes) -> str | None:
    """The ``Message-ID`` of an email read no further than its header (for one that
    is not parsed: too large, or refused)."""
    end = _HEADER_END.search(raw)
    try:
        # Only the header: the parser would otherwise read the body line by line.
        header = BytesHeaderParser(policy=policy.compat32).parsebytes(
            raw[: end.end()] if end else raw
        )
        values = [_clean(str(v)) for v in header.get_all("message-id", [])]
    except Exception:
        return None
    return _first_id(values)


def synthetic_message_id(raw: bytes) -> str:
    """``<sha256 of the raw bytes, 40 hex>@jobwire.invalid>``: stable for the same bytes;
    ``.invalid`` (RFC 2606) so it can never be mistaken for a real one."""
    return f"<{hashlib.sha256(raw).hexdigest()[:40]}@jobwire.invalid>"


def attachment_name(index: int, filename: str) -> str:
    """``<index>-<filename>`` made safe as one path segment of any storage.

    Keeps letters and digits of any script, ``. _ - + ( ) =`` and spaces; anything
    else (``/``, ``\\``, control characters, quotes …) becomes ``_``. Leading dots go
    (no hidden or ``..`` names), and long names are cut keeping the extension.
    The index keeps two attachments of the same name apart.
    """
    name = unicodedata.normalize("NFC", filename)
    name = _UNSAFE_NAME.sub("_", name).strip(" ._") or "attachment"
    if len(name) > _MAX_NAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 10:
            name = stem[: _MAX_NAME_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:_MAX_NAME_CHARS]
    return f"{index}-{name}"


# ----------------------------------------------------------------- internals


def _clean(value: str) -> str:
    """Lone surrogates (raw 8-bit header bytes) as UTF-8 if they are, else U+FFFD:
    JSON cannot carry them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _check_structure(message: Message) -> None:
    for part in _parts(message):
        for defect in part.defects:
            if isinstance(defect, _LOSSY_DEFECTS):
                where = "the message" if part is message else f"a {part.get_content_type()} part"
                raise EmailParseError(
                    MALFORMED_MIME, f"{where}: {_defect_text(defect)}; its parts cannot be read"
                )


def _defect_text(defect: errors.MessageDefect) -> str:
    return type(defect).__name__.removesuffix("Defect") + (f" ({defect})" if str(defect) else "")


def _raw_headers(message: Message) -> dict[str, list[str]]:
    """Lower-cased name → unfolded raw values (8-bit bytes as surrogates), in order."""
    found: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        found.setdefault(name.lower(), []).append(_unfold(str(value)))
    return found


def _unfold(value: str) -> str:
    return _FOLD.sub("", value).strip()


def _decoded(value: str) -> str:
    """A header value with RFC 2047 encoded words decoded; most need nothing."""
    if value.isascii() and "=?" not in value:
        return value
    try:
        # Parsed as unstructured text: encoded words decoded, raw UTF-8 kept.
        decoded = str(policy.default.header_factory("x-unstructured", value))
    except Exception:  # the header parser has choked on odd input before (CPython bugs)
        decoded = value
    return _clean(decoded)


def _structured(raw_headers: dict[str, list[str]], name: str) -> list[Any]:
    """``policy.default``'s parsed headers of ``name`` (address lists, dates)."""
    parsed = []
    for value in raw_headers.get(name, []):
        # A header the parser cannot make sense of counts as absent.
        with contextlib.suppress(Exception):
            parsed.append(policy.default.header_factory(name, value))
    return parsed


def _single(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values else None


def _first_id(values: list[str] | None) -> str | None:
    if not values:
        return None
    value = values[0].strip()
    found = _MESSAGE_ID.search(value)
    # Some senders leave the angle brackets off; keep what is there.
    return (found.group(0) if found else value) or None


def _references(values: list[str]) -> list[str]:
    ids: list[str] = []
    for value in values:
        ids += _MESSAGE_ID.findall(value) or value.split()
    return ids


def _addresses(raw_headers: dict[str, list[str]], name: str) -> list[EmailAddress]:
    found: list[Address] = []
    for header in _structured(raw_headers, name):
        with contextlib.suppress(Exception):
            found += getattr(header, "addresses", ())
    return [
        EmailAddress(address=_clean(a.addr_spec), name=_clean(a.display_name) or None)
        for a in found
        if a.username  # group syntax ("undisclosed-recipients:;") and empty entries
    ]


def _sender(raw_headers: dict[str, list[str]]) -> EmailAddress:
    for name in ("from", "sender"):
        found = _addresses(raw_headers, name)
        if found:
            return found[0]
    raise EmailParseError(MALFORMED_MIME, "no From (or Sender) address")


def _date(raw_headers: dict[str, list[str]]) -> datetime | None:
    for header in _structured(raw_headers, "date")[:1]:
        value = getattr(header, "datetime", None)
        if isinstance(value, datetime):
            # "-0000" means UTC with the sender's zone unknown (RFC 5322 3.3).
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment"


def _find_body(part: Message, subtype: str) -> Iterator[Message]:
    """``EmailMessage._find_body`` for one subtype, on a compat32 message."""
    if _is_attachment(part):
        return
    maintype, _, found = part.get_content_type().partition("/")
    if maintype == "text":
        if found == subtype:
            yield part
        return
    if maintype != "multipart" or not part.is_multipart():
        return
    children = [p for p in part.get_payload() if isinstance(p, Message)]
    if found != "related":
        for child in children:
            yield from _find_body(child, subtype)
        return
    start = part.get_param("start")
    root = next((c for c in children if start and c.get("content-id") == start), None)
    if root is None and children:
        root = children[0]
    if root is not None:
        yield from _find_body(root, subtype)


def _body_part(message: Message, subtype: str) -> Message | None:
    return next(_find_body(message, subtype), None)


def _text(part: Message) -> str:
    charset = part.get_content_charset("us-ascii") or "us-ascii"
    data = _payload(part)
    try:
        text = data.decode(charset, errors="replace")
    except LookupError:
        raise EmailParseError(
            UNKNOWN_CHARSET,
            f"the {part.get_content_type()} body is in charset {charset!r}, "
            "which Python cannot decode",
        ) from None
    # CRLF is how lines travel, not part of the text.
    return _clean(text.replace("\r\n", "\n"))


def _payload(part: Message) -> bytes:
    data: Any = part.get_payload(decode=True)
    for defect in part.defects:
        if isinstance(defect, errors.InvalidBase64LengthDefect):
            raise EmailParseError(
                MALFORMED_MIME,
                f"a {part.get_content_type()} part: base64 of an impossible length, "
                "its content cannot be decoded",
            )
    return data if isinstance(data, bytes) else b""


def _parts(part: Message) -> Iterator[Message]:
    """Every part, containers included, not descending into an attached email
    (which is handed on whole, whatever its own defects)."""
    yield part
    if part.get_content_type() != "message/rfc822" and part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                yield from _parts(child)


def _leaves(part: Message) -> Iterator[Message]:
    """Leaf parts in order; an attached email is one leaf, not descended into."""
    if part.get_content_type() == "message/rfc822" or not part.is_multipart():
        yield part
        return
    for child in part.get_payload():
        if isinstance(child, Message):
            yield from _leaves(child)


def _attachments(message: Message, bodies: list[Message]) -> Iterator[Attachment]:
    if not message.is_multipart():
        return
    index = 0
    for part in _leaves(message):
        if any(part is body for body in bodies):
            continue
        content_type = part.get_content_type()
        filename = _filename(part)
        if (
            content_type in ("text/plain", "text/html")
            and filename is None
            and not _is_attachment(part)
        ):
            continue
        index += 1
        attached = content_type == "message/rfc822"
        data = _attached_message(part) if attached else _payload(part)
        yield Attachment(
            filename=filename or _made_up_name(index, content_type),
            content_type=content_type,
            data=data,
        )


def _filename(part: Message) -> str | None:
    try:
        # RFC 2231 (filename*=) decoded here; RFC 2047 words, which mail
        # programs use although RFC 2047 forbids it in parameters, below.
        name = part.get_filename()
    except Exception:  # a parameter the parser could not read
        return None
    if not name:
        return None
    return _decoded(_clean(name)).strip() or None


def _attached_message(part: Message) -> bytes:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, Message):
        return inner.as_bytes(policy=policy.compat32.clone(linesep="\r\n"))
    return _payload(part)


def _made_up_name(index: int, content_type: str) -> str:
    if content_type == "message/rfc822":
        return f"message-{index}.eml"
    extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
    return f"part-{index}{extension}"
