"""Email addresses and display names: checked, normalised, compared. No I/O.

An address is ``local-part@domain``. What this module accepts, and why:

- The local part is a *dot-atom* (RFC 5322 3.2.3): letters, digits and
  ``!#$%&'*+-/=?^_`{|}~``, dots between them, and (RFC 6531) any non-ASCII
  character that is not a control, format or space character. Quoted local
  parts (``"john doe"@example.com``) are refused: nobody hands them out any
  more, and refusing them refuses spaces, angle brackets, quotes and commas —
  the material of header injection — in one rule. It is kept as given: a local
  part is case-sensitive by RFC 5321 2.4, the receiving server decides.
- The domain is lower-cased and IDNA-encoded (``bücher.example`` →
  ``xn--bcher-kva.example``), so it is plain ASCII on the wire and in headers
  whether or not the server speaks SMTPUTF8. Encoding follows IDNA 2008 with
  the UTS #46 mapping (the ``idna`` package), not the standard library's IDNA
  2003 codec: the two differ for real domains — IDNA 2003 maps ``straße.de`` to
  ``strasse.de``, another registrant's domain — and IDNA 2008 is what
  registries and current mail software use. Address literals (``[192.0.2.1]``)
  and a trailing dot are refused.
- A non-ASCII local part can only travel with SMTPUTF8 (RFC 6531):
  :func:`check_address` accepts it, :func:`needs_smtputf8` says so, and the
  sender refuses it when the server does not offer the extension.

Limits are counted in octets of UTF-8: local part 64, whole address 254
(RFC 5321 4.5.3.1, with the path's angle brackets taken off its 256).
"""

from __future__ import annotations

import email.policy
import functools
import unicodedata

import idna

__all__ = [
    "InvalidCommand",
    "address_key",
    "check_address",
    "check_display_name",
    "header_text_problem",
    "needs_smtputf8",
    "normalize_address",
]

MAX_LOCAL_PART_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
# Everything str.splitlines() breaks at, not only CR and LF: parts of the email
# package split header text with it, so any of these could start a new header line.
_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class InvalidCommand(ValueError):
    """A SendEmail that cannot be sent as given; ``field`` is its pydantic-style path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def normalize_address(address: str) -> str:
    """``address`` stripped, with its domain lower-cased and IDNA-encoded.

    Raises :class:`ValueError` when there is no ``@`` or the domain cannot be
    encoded; it does not check the local part (:func:`check_address` does).
    """
    local, domain = _split(address.strip())
    return f"{local}@{ascii_domain(domain)}"


def address_key(address: str) -> str:
    """What two addresses share when the address book counts them as one:
    the local part lower-cased, the domain as in :func:`normalize_address`."""
    local, domain = _split(address.strip())
    return f"{local.lower()}@{ascii_domain(domain)}"


# Every address of every email is normalised, and a few domains make most of them.
@functools.lru_cache(maxsize=1024)
def ascii_domain(domain: str) -> str:
    """A domain as IDNA 2008 A-labels, lower-case; :class:`ValueError` if it is not one."""
    if not domain:
        raise ValueError("the domain is empty")
    if domain.startswith("["):
        raise ValueError("address literals ([...]) are not accepted, give a domain name")
    if domain.endswith("."):
        raise ValueError("the domain ends with a dot")
    try:
        return idna.encode(domain, uts46=True, std3_rules=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(
            f"the domain {domain!r} is not a valid (IDNA) domain name: {error}"
        ) from None


def check_address(address: str, field: str) -> str:
    """``address`` normalised, or :class:`InvalidCommand` naming ``field`` and why."""
    stripped = address.strip()
    problem = header_text_problem(stripped) or _local_and_domain_problem(stripped)
    if problem:
        raise InvalidCommand(field, problem)
    normalized = normalize_address(stripped)
    if len(normalized.encode()) > MAX_ADDRESS_OCTETS:
        raise InvalidCommand(field, f"longer than {MAX_ADDRESS_OCTETS} octets")
    return normalized


def needs_smtputf8(address: str) -> bool:
    """Whether ``address`` can only be sent with SMTPUTF8 (its local part is not ASCII).

    The domain never needs it: it is sent IDNA-encoded.
    """
    return not address.rpartition("@")[0].isascii()


def check_display_name(name: str | None, field: str) -> str | None:
    """``name`` if it can be a display name; :class:`InvalidCommand` if it holds a
    line break or another control character (header injection) or ``=?``."""
    if name is None:
        return None
    if problem := header_text_problem(name):
        raise InvalidCommand(field, problem)
    if "=?" in name:
        # The email package decodes an encoded word in a display name and then
        # writes the result unquoted: "=?utf-8?q?a=2C_b@x?=" would become a second
        # visible address. The mailer encodes names itself; they come as plain text.
        raise InvalidCommand(
            field, "looks like an RFC 2047 encoded word (=?...?=): give the name as plain text"
        )
    return name


def header_text_problem(text: str) -> str | None:
    """Why ``text`` cannot be put into a header field, or None.

    Line breaks of any kind and control characters (tab aside, which folding
    allows) are refused: in a header they end the field and start another.
    """
    problem = _raw_text_problem(text)
    if problem is None and "=?" in text:
        # The email package decodes RFC 2047 encoded words in the values it is
        # given (as any reader would), and Python before 3.11.10 / 3.12.5 then
        # writes a decoded CR LF out unchecked (CVE-2024-6923): "=?utf-8?q?=0D=0A?=".
        decoded = _decoded(text)
        if any(unicodedata.category(char) == "Cs" for char in decoded):
            # The package then writes the field as "unknown-8bit" words, and
            # in an address field takes the address into them.
            return "has an encoded word (=?...?=) that cannot be decoded"
        if decoded_problem := _raw_text_problem(decoded):
            return f"has an encoded word (=?...?=) that {decoded_problem.removeprefix('has ')}"
    return problem


def _raw_text_problem(text: str) -> str | None:
    for char in text:
        if char in _LINE_BREAKS:
            return f"has a line break ({_escaped(char)}): not allowed in a header"
        if unicodedata.category(char) == "Cc" and char != "\t":
            return f"has a control character ({_escaped(char)})"
    return None


def _decoded(text: str) -> str:
    try:
        return str(email.policy.default.header_factory("x-unstructured", text))
    except Exception:  # the header parser has choked on odd input before (CPython bugs)
        return text


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at:
        raise ValueError("not an address: no @")
    return local, domain


def _local_and_domain_problem(address: str) -> str | None:
    if not address:
        return "empty"
    if "@" not in address:
        return "not an address: no @"
    local, domain = _split(address)
    problem = _local_part_problem(local)
    if problem:
        return problem
    try:
        ascii_domain(domain)
    except ValueError as error:
        return str(error)
    return None


def _local_part_problem(local: str) -> str | None:
    if not local:
        return "the local part (before the @) is empty"
    if len(local.encode()) > MAX_LOCAL_PART_OCTETS:
        return f"the local part is longer than {MAX_LOCAL_PART_OCTETS} octets"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "the local part has a dot at its start or end, or two in a row"
    for char in local:
        if char != "." and not _is_atext(char):
            return (
                f"the local part contains {_escaped(char)}, which an address cannot "
                "hold unquoted (quoted local parts are not accepted)"
            )
    return None


def _is_atext(char: str) -> bool:
    if char.isascii():
        return char in _ATEXT_ASCII
    # RFC 6531 UTF8-non-ascii, less what would look like a separator or be invisible.
    return unicodedata.category(char)[0] not in "CZ"


def _escaped(char: str) -> str:
    """A character as it can be shown in an error message (which may land in a header)."""
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"
