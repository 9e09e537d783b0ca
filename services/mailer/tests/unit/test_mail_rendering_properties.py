"""Properties of rendering: whatever text a caller gives, a command either is refused by
:func:`check_command` or renders into a message without injected header lines, within
the line limit, that reads back to what was given."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jobwire.contracts.mail import SendEmail
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.domain.addresses import check_address
from jobwire.mailer.domain.message import build_message, check_command, message_id, render

MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1
_HEADER_LINE = re.compile(rb"[!-9;-~]+:|[ \t]")  # a field's first line, or a continuation
EXPECTED_FIELDS = {
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"x-case",
}

# Any text, with the characters that break lines or headers made likely.
hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("\r\n\x00\x85\u2028\t:<>=? ")),
    ),
    max_size=100,
)
# What a check lets through: no control characters or line separators.
clean_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"])
    | st.sampled_from(list(':<>=?"()\\ \t')),
    max_size=100,
)
raw_text = clean_text | clean_text | hostile_text
# RFC 2047 encoded words: the email package decodes them in what it is given.
encoded_word = st.builds(
    lambda raw: "=?utf-8?q?" + "".join(f"={b:02X}" for b in raw.encode()) + "?=", raw_text
)
text = st.lists(st.one_of(raw_text, encoded_word), max_size=3).map(" ".join)
local_part = st.text(alphabet=st.sampled_from("abcxyz.+-_'ÄöЖ日"), min_size=1, max_size=20) | (
    st.text(alphabet=st.sampled_from('abc.ö\r\n <>"@'), min_size=1, max_size=20)
)


def _decoded(value: str) -> str:
    """``value`` and what its encoded words decode to."""
    return value + str(policy.default.header_factory("x-unstructured", value))


def _words(value: str) -> str:
    """``value`` as a reader sees it, white space aside: the stdlib's reader keeps the
    folding space between two encoded words of a display name, which RFC 2047 6.2 drops."""
    return "".join(str(policy.default.header_factory("x-unstructured", value)).split())


def _header_names(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    names = []
    for line in head.split(b"\r\n"):
        assert _HEADER_LINE.match(line), line
        if not line[:1].isspace():
            names.append(line.split(b":", 1)[0].lower())
    return names


def _read(data: bytes, *, smtputf8: bool) -> EmailMessage:
    if smtputf8:
        # The bytes parser reads raw 8-bit headers as surrogates; RFC 6532 headers are UTF-8.
        message = email.message_from_string(data.decode("utf-8"), policy=policy.SMTPUTF8)
    else:
        message = email.message_from_bytes(data, policy=policy.SMTP)
    assert isinstance(message, EmailMessage)
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=text,
    name=text,
    header_value=text,
    local=local_part,
    smtputf8=st.booleans(),
)
def test_accepted_input_renders_without_injection_within_line_limits(
    subject: str, name: str, header_value: str, local: str, smtputf8: bool
) -> None:
    command = SendEmail(
        idempotency_key="k",
        to=[EmailAddress(address=f"{local}@bücher.example", name=name)],
        bcc=[EmailAddress(address="hidden@example.net")],
        subject=subject,
        text="Hello\n",
        headers={"X-Case": header_value},
    )
    problems = check_command(command)
    event("refused by check_command" if problems else "checked")
    if problems:
        return
    address = check_address(command.to[0].address, "to.0.address")
    if not smtputf8 and not address.partition("@")[0].isascii():
        return  # refused by render, covered by its own test

    data = render(
        build_message(
            command,
            account_from=EmailAddress(address="cases@example.com"),
            message_id=message_id("k", "example.com"),
            date=datetime(2026, 1, 1, tzinfo=UTC),
            references=[],
            attachments=[],
        ),
        smtputf8=smtputf8,
    )

    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= MAX_LINE_OCTETS for line in data.split(b"\r\n"))
    assert smtputf8 or data.isascii()
    assert set(_header_names(data)) <= EXPECTED_FIELDS
    assert b"hidden@example.net" not in data
    message = _read(data, smtputf8=smtputf8)
    # Read back as a reader sees it: encoded words decoded, white space aside.
    assert _words(message["Subject"]) == _words(subject)
    assert _words(message["X-Case"]) == _words(header_value)
    (recipient,) = message["To"].addresses
    assert recipient.addr_spec == address
    assert _words(recipient.display_name) == _words(name)


@settings(max_examples=200, deadline=None)
@given(subject=text, name=text, value=text)
def test_line_breaks_in_header_input_are_always_refused(
    subject: str, name: str, value: str
) -> None:
    command = SendEmail(
        idempotency_key="k",
        to=[EmailAddress(address="a@example.org", name=name)],
        subject=subject,
        text="x",
        headers={"X-Case": value},
    )
    broken = {
        field
        for field, given_text in (
            ("subject", subject),
            ("to.0.name", name),
            ("headers.X-Case", value),
        )
        if any(c in _decoded(given_text) for c in "\r\n\x00\x85\u2028\u2029\x0b\x0c")
    }

    assert broken <= {p.field for p in check_command(command)}
