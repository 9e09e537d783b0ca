"""The message: the checks of a SendEmail, the MIME tree, the rendered bytes, threading."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from jobwire.contracts.mail import Attachment, SendEmail, email_id
from jobwire.contracts.objects import EmailAddress, FileObject
from jobwire.mailer.domain.addresses import InvalidCommand
from jobwire.mailer.domain.message import (
    MAX_REFERENCES,
    build_message,
    check_command,
    check_without_smtputf8,
    envelope_recipients,
    message_id,
    references_for,
    render,
)

ACCOUNT_FROM = EmailAddress(address="cases@example.com", name="Cases")
DATE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def command(**fields: Any) -> SendEmail:
    fields.setdefault("idempotency_key", "case-4711-reply-1")
    fields.setdefault("to", [EmailAddress(address="alice@example.org", name="Alice")])
    fields.setdefault("text", "Hello\n")
    return SendEmail(**fields)


def attachment(path: str, size: int = 4, **fields: Any) -> Attachment:
    return Attachment(file=FileObject(storage="local", path=path, size=size), **fields)


def build(cmd: SendEmail, contents: list[bytes] | None = None, **fields: Any) -> EmailMessage:
    fields.setdefault("references", [])
    pairs = list(zip(cmd.attachments, contents or [b"data"] * len(cmd.attachments), strict=True))
    return build_message(
        cmd,
        account_from=ACCOUNT_FROM,
        message_id=message_id(cmd.idempotency_key, "example.com"),
        date=DATE,
        attachments=pairs,
        **fields,
    )


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.SMTP)
    assert isinstance(message, EmailMessage)
    return message


def fields_of(problems: list[InvalidCommand]) -> list[str]:
    return [p.field for p in problems]


# ----------------------------------------------------------------- Message-ID


def test_message_id_is_derived_from_the_idempotency_key_on_the_account_domain() -> None:
    key = "case-4711-reply-1"

    assert message_id(key, "example.com") == f"<{email_id(key)}@example.com>"
    assert message_id(key, "example.com") == message_id(key, "example.com")
    assert message_id("other", "example.com") != message_id(key, "example.com")
    assert message_id(key, "Bücher.example").endswith("@xn--bcher-kva.example>")


# ----------------------------------------------------------------- checks


def test_a_plain_command_is_valid() -> None:
    assert check_command(command()) == []


def test_no_recipient_is_refused_naming_to() -> None:
    assert fields_of(check_command(command(to=[]))) == ["to"]


def test_bcc_alone_is_a_recipient() -> None:
    assert check_command(command(to=[], bcc=[EmailAddress(address="b@example.org")])) == []


@pytest.mark.parametrize("body", [{"text": None}, {"text": ""}])
def test_no_body_is_refused_naming_text(body: dict[str, Any]) -> None:
    assert fields_of(check_command(command(**body))) == ["text"]


def test_html_alone_is_a_body() -> None:
    assert check_command(command(text=None, html="<p>Hi</p>")) == []


def test_every_address_and_name_is_checked_with_its_path() -> None:
    bad = command(
        from_=EmailAddress(address="me@example.com", name="Me\r\nBcc: x@example.com"),
        to=[EmailAddress(address="ok@example.org"), EmailAddress(address="no-at-sign")],
        cc=[EmailAddress(address="c@exa_mple.org")],
        bcc=[EmailAddress(address="b@example.org", name="B\nX: y")],
        reply_to=[EmailAddress(address="r@exa\r\nmple.org")],
    )

    assert fields_of(check_command(bad)) == [
        "from.name",
        "to.1.address",
        "cc.0.address",
        "bcc.0.name",
        "reply_to.0.address",
    ]


@pytest.mark.parametrize(
    "subject", ["Hi\r\nBcc: victim@example.com", "Hi\nX-Injected: 1", "Hi\r", "a\u2028b"]
)
def test_subject_with_a_line_break_is_refused(subject: str) -> None:
    assert fields_of(check_command(command(subject=subject))) == ["subject"]


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("X-Case:Bcc", "headers.X-Case:Bcc"),
        ("X-Case\r\nBcc", "headers.X-Case\\r\\nBcc"),
        ("X Case", "headers.X Case"),
        ("", "headers."),
        ("X-Ümlaut", "headers.X-\\xdcmlaut"),
        ("X-" + "a" * 80, "headers.X-" + "a" * 80),
    ],
)
def test_invalid_header_names_are_refused_and_named_without_line_breaks(
    name: str, field: str
) -> None:
    problems = check_command(command(headers={name: "1"}))

    assert fields_of(problems) == [field]
    assert "\r" not in str(problems[0])
    assert "\n" not in str(problems[0])


@pytest.mark.parametrize(
    "name",
    [
        *("From", "to", "CC", "Bcc", "Reply-To", "Subject", "Message-ID", "Date"),
        *("In-Reply-To", "References", "MIME-Version", "Content-Type", "Sender"),
        "content-transfer-encoding",
    ],
)
def test_reserved_headers_are_refused(name: str) -> None:
    problems = check_command(command(headers={name: "x"}))

    assert fields_of(problems) == [f"headers.{name}"]
    assert "set by the mailer" in problems[0].message


@pytest.mark.parametrize("value", ["1\r\nBcc: victim@example.com", "1\n", "1\r", "1\x00"])
def test_header_values_with_line_breaks_are_refused(value: str) -> None:
    assert fields_of(check_command(command(headers={"X-Case": value}))) == ["headers.X-Case"]


def test_extra_headers_are_accepted() -> None:
    assert check_command(command(headers={"X-Case": "4711", "List-Id": "<cases.example>"})) == []


@pytest.mark.parametrize(
    "in_reply_to", ["no-brackets@example.com", "<a@b>\r\nBcc: x@y", "<a b@c>", "<>", "<a<b>"]
)
def test_in_reply_to_must_be_a_msg_id(in_reply_to: str) -> None:
    assert fields_of(check_command(command(in_reply_to=in_reply_to))) == ["in_reply_to"]


def test_attachment_over_the_limit_is_refused_naming_its_size() -> None:
    cmd = command(attachments=[attachment("a.pdf", size=10), attachment("b.pdf", size=11)])

    assert check_command(cmd) == []
    assert check_command(cmd, max_attachments_bytes=11) == []
    problems = check_command(cmd, max_attachments_bytes=10)
    assert fields_of(problems) == ["attachments.1.file.size"]
    assert "11 bytes" in problems[0].message


@pytest.mark.parametrize("cid", ["<logo>", "lo go", "logo\r\n", "lögo", ""])
def test_invalid_content_ids_are_refused(cid: str) -> None:
    cmd = command(html="<img src='cid:x'>", attachments=[attachment("l.png", content_id=cid)])

    assert fields_of(check_command(cmd)) == ["attachments.0.content_id"]


def test_a_content_id_is_used_once() -> None:
    cmd = command(
        html="<img src='cid:logo'>",
        attachments=[
            attachment("a.png", content_id="logo"),
            attachment("b.png", content_id="logo"),
        ],
    )

    assert fields_of(check_command(cmd)) == ["attachments.1.content_id"]


def test_an_inline_image_needs_an_html_body() -> None:
    cmd = command(attachments=[attachment("a.png", content_id="logo")])

    assert fields_of(check_command(cmd)) == ["attachments.0.content_id"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"filename": "a\r\nb.pdf"}, "attachments.0.filename"),
        ({"content_type": "text/plain\r\nBcc: x"}, "attachments.0.content_type"),
        ({"content_type": "pdf"}, "attachments.0.content_type"),
        ({"content_type": "multipart/mixed"}, "attachments.0.content_type"),
        ({"content_type": "message/rfc822"}, "attachments.0.content_type"),
    ],
)
def test_attachment_names_and_types_are_checked(fields: dict[str, Any], field: str) -> None:
    assert fields_of(check_command(command(attachments=[attachment("a.pdf", **fields)]))) == [field]


def test_every_problem_is_reported_at_once() -> None:
    cmd = command(to=[], text=None, subject="a\nb", headers={"Bcc": "x"})

    assert fields_of(check_command(cmd)) == ["to", "text", "subject", "headers.Bcc"]


# ----------------------------------------------------------------- envelope


def test_envelope_recipients_are_to_cc_bcc_normalised_once_in_order() -> None:
    cmd = command(
        to=[EmailAddress(address="b@Example.org"), EmailAddress(address="a@example.org")],
        cc=[EmailAddress(address="b@example.ORG"), EmailAddress(address="c@bücher.example")],
        bcc=[EmailAddress(address="d@example.org")],
    )

    assert envelope_recipients(cmd) == [
        "b@example.org",
        "a@example.org",
        "c@xn--bcher-kva.example",
        "d@example.org",
    ]


def test_without_smtputf8_a_non_ascii_local_part_is_named() -> None:
    cmd = command(
        to=[EmailAddress(address="alice@bücher.example")],
        bcc=[EmailAddress(address="jörg@bücher.example")],
    )

    problems = check_without_smtputf8(cmd)

    assert fields_of(problems) == ["bcc.0.address"]
    assert "SMTPUTF8" in problems[0].message


# ----------------------------------------------------------------- building and rendering


def test_headers_of_a_plain_email() -> None:
    cmd = command(
        cc=[EmailAddress(address="carol@example.org")],
        reply_to=[EmailAddress(address="desk@example.com", name="Desk")],
        subject="Your case 4711",
        headers={"X-Case": "4711"},
    )

    message = parsed(render(build(cmd), smtputf8=False))

    assert message["From"] == "Cases <cases@example.com>"
    assert message["To"] == "Alice <alice@example.org>"
    assert message["Cc"] == "carol@example.org"
    assert message["Reply-To"] == "Desk <desk@example.com>"
    assert message["Subject"] == "Your case 4711"
    assert message["Message-ID"] == message_id(cmd.idempotency_key, "example.com")
    assert message["Date"].datetime == DATE
    assert message["X-Case"] == "4711"
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Hello\r\n"  # SMTP policy: CRLF line ends


def test_the_command_from_wins_over_the_account() -> None:
    cmd = command(from_=EmailAddress(address="agent@example.com", name="Agent"))

    assert parsed(render(build(cmd), smtputf8=False))["From"] == "Agent <agent@example.com>"


def test_bcc_is_never_in_the_rendered_bytes() -> None:
    cmd = command(bcc=[EmailAddress(address="hidden@secret.example", name="Hidden Person")])

    for smtputf8 in (False, True):
        data = render(build(cmd), smtputf8=smtputf8)
        assert b"hidden" not in data.lower()
        assert b"secret.example" not in data
        assert b"bcc" not in data.lower()


def test_utf8_subject_and_names_round_trip_as_encoded_words() -> None:
    cmd = command(
        to=[EmailAddress(address="joerg@bücher.example", name="Jörg Müller")],
        subject="Grüße aus Köln — Ihr Fall №4711 ✓",
        text="Grüße\n",
    )

    data = render(build(cmd), smtputf8=False)

    assert data.isascii()
    assert b"=?utf-8?" in data
    message = parsed(data)
    assert message["Subject"] == "Grüße aus Köln — Ihr Fall №4711 ✓"
    assert message["To"].addresses[0].display_name == "Jörg Müller"
    assert message["To"].addresses[0].addr_spec == "joerg@xn--bcher-kva.example"
    assert message.get_content() == "Grüße\r\n"


def test_with_smtputf8_utf8_headers_stay_raw() -> None:
    cmd = command(to=[EmailAddress(address="jörg@bücher.example", name="Jörg")], subject="Grüße")

    data = render(build(cmd), smtputf8=True)

    assert "Subject: Grüße".encode() in data
    assert "To: Jörg <jörg@xn--bcher-kva.example>".encode() in data
    message = email.message_from_bytes(data, policy=policy.SMTPUTF8)
    assert message["Subject"] == "Grüße"


def test_without_smtputf8_rendering_a_non_ascii_local_part_is_refused() -> None:
    message = build(command(to=[EmailAddress(address="jörg@bücher.example")]))

    with pytest.raises(InvalidCommand) as raised:
        render(message, smtputf8=False)

    assert raised.value.field == "to"


def test_lines_end_in_crlf_and_bodies_are_never_8bit() -> None:
    cmd = command(text="Grüße\n" + "ä" * 500 + "\n", html="<p>" + "x" * 2000 + "</p>")

    data = render(build(cmd), smtputf8=True)

    assert b"\n" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 78 for line in data.split(b"\r\n"))
    assert b"8bit" not in data


def test_text_and_html_are_alternatives() -> None:
    message = parsed(render(build(command(html="<p>Hello</p>")), smtputf8=False))

    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message.get_body(("html",)).get_content() == "<p>Hello</p>\r\n"  # type: ignore[union-attr]


def test_inline_image_is_related_to_the_html_and_referenced_by_cid() -> None:
    cmd = command(
        html='<p>Logo: <img src="cid:logo.4711@example.com"></p>',
        attachments=[
            attachment("files/report.pdf"),
            attachment("img/logo.png", content_id="logo.4711@example.com"),
        ],
    )

    message = parsed(render(build(cmd, [b"%PDF-1.7", b"\x89PNG\r\n"]), smtputf8=False))

    assert message.get_content_type() == "multipart/mixed"
    alternative, pdf = message.iter_parts()
    text, related = alternative.iter_parts()
    assert (text.get_content_type(), related.get_content_type()) == (
        "text/plain",
        "multipart/related",
    )
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert image["Content-ID"] == "<logo.4711@example.com>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content_type() == "image/png"
    assert image.get_content() == b"\x89PNG\r\n"
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_filename() == "report.pdf"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_content() == b"%PDF-1.7"
    assert [part for part in message.walk() if part["MIME-Version"]] == [message]


def test_a_multipart_email_renders_to_the_same_bytes_every_time() -> None:
    """A resend after a crash in DATA must be the first copy again, boundaries and all."""
    cmd = command(
        html='<p>Logo: <img src="cid:logo"></p>',
        attachments=[attachment("files/report.pdf"), attachment("l.png", content_id="logo")],
    )
    contents = [b"%PDF-1.7", b"\x89PNG\r\n"]

    first, again = (render(build(cmd, contents), smtputf8=False) for _ in range(2))

    assert first == again
    boundaries = [p.get_boundary() for p in parsed(first).walk() if p.is_multipart()]
    assert len(set(boundaries)) == 3, boundaries
    other = render(build(cmd, [b"%PDF-1.6", b"\x89PNG\r\n"]), smtputf8=False)
    assert parsed(other).get_boundary() != parsed(first).get_boundary(), "derived from content"


def test_html_only_with_an_inline_image() -> None:
    cmd = command(
        text=None, html='<img src="cid:logo">', attachments=[attachment("l.png", content_id="logo")]
    )

    message = parsed(render(build(cmd), smtputf8=False))

    assert message.get_content_type() == "multipart/related"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/html", "image/png"]


def test_a_long_content_id_is_not_encoded() -> None:
    cid = "logo." + "x" * 150 + "@example.com"
    cmd = command(html=f'<img src="cid:{cid}">', attachments=[attachment("l.png", content_id=cid)])

    message = parsed(render(build(cmd), smtputf8=False))

    image = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == f"<{cid}>"


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize(
    "name",
    ["Überblick.pdf", "Überblick über den Fall 4711 — Anlage zum Schreiben vom 2. Januar.pdf"],
)
def test_a_non_ascii_filename_is_rfc2231_encoded(name: str, smtputf8: bool) -> None:
    cmd = command(attachments=[attachment("a/x.pdf", filename=name)])

    data = render(build(cmd), smtputf8=smtputf8)

    assert b"filename*" in data
    assert b"utf-8''%C3%9Cberblick" in data
    part = next(parsed(data).iter_attachments())
    assert part.get_filename() == name


def test_the_filename_defaults_to_the_last_part_of_the_path() -> None:
    message = parsed(render(build(command(attachments=[attachment("a/b/c.csv")])), smtputf8=False))

    part = next(message.iter_attachments())
    assert part.get_filename() == "c.csv"
    assert part.get_content_type() == "text/csv"


def test_the_content_type_comes_from_the_attachment_then_the_file() -> None:
    given = attachment("x.bin", content_type="application/vnd.example")
    from_file = Attachment(
        file=FileObject(storage="local", path="y.bin", size=1, content_type="image/gif")
    )
    unknown = attachment("no-extension")

    message = parsed(
        render(build(command(attachments=[given, from_file, unknown])), smtputf8=False)
    )

    assert [p.get_content_type() for p in message.iter_attachments()] == [
        "application/vnd.example",
        "image/gif",
        "application/octet-stream",
    ]


# ----------------------------------------------------------------- threading


def test_a_reply_gets_in_reply_to_and_references() -> None:
    refs = references_for("<parent@example.com>", ["<root@example.com>"])
    cmd = command(in_reply_to="<parent@example.com>")

    message = parsed(render(build(cmd, references=refs), smtputf8=False))

    assert message["In-Reply-To"] == "<parent@example.com>"
    assert message["References"] == "<root@example.com> <parent@example.com>"


def test_a_reply_without_known_references_repeats_in_reply_to() -> None:
    message = parsed(render(build(command(in_reply_to="<parent@example.com>")), smtputf8=False))

    assert message["References"] == "<parent@example.com>"


def test_a_new_email_has_no_threading_headers() -> None:
    message = parsed(render(build(command()), smtputf8=False))

    assert message["In-Reply-To"] is None
    assert message["References"] is None


def test_references_are_the_parents_references_then_its_id() -> None:
    assert references_for("<p@x>", ["<a@x>", "<b@x>"]) == ["<a@x>", "<b@x>", "<p@x>"]


def test_without_references_the_parents_in_reply_to_is_used() -> None:
    assert references_for("<p@x>", [], parent_in_reply_to="<g@x>") == ["<g@x>", "<p@x>"]
    assert references_for("<p@x>", ["<a@x>"], parent_in_reply_to="<g@x>") == ["<a@x>", "<p@x>"]


def test_no_parent_no_references() -> None:
    assert references_for(None, ["<a@x>"]) == []
    assert references_for("not-an-id", ["<a@x>"]) == []


def test_references_drop_repeats_and_what_is_not_a_msg_id() -> None:
    received = ["<a@x>", "junk", "<a@x>", "<b@x>\r\nBcc: v@x", "<" + "c" * 300 + "@x>", "<d@x>"]

    assert references_for("<p@x>", received) == ["<a@x>", "<d@x>", "<p@x>"]


def test_references_are_capped_keeping_the_root_and_the_latest() -> None:
    thread = [f"<m{i}@x>" for i in range(100)]

    refs = references_for("<m100@x>", thread)

    assert len(refs) == MAX_REFERENCES
    assert refs[0] == "<m0@x>"
    assert refs[1:] == [f"<m{i}@x>" for i in range(100 - MAX_REFERENCES + 2, 101)]


def test_long_references_are_folded_between_ids_never_encoded() -> None:
    refs = references_for(
        "<" + "p" * 200 + "@example.com>", [f"<{i}-{'r' * 60}@x>" for i in range(30)]
    )
    cmd = command(in_reply_to=refs[-1])

    data = render(build(cmd, references=refs), smtputf8=False)

    assert b"=?" not in data
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert parsed(data)["References"].split() == refs


# ----------------------------------------------------------------- encoded-word injection

ENCODED_CRLF = "=?utf-8?q?a=0D=0ABcc:_victim@example.com?="


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subject": ENCODED_CRLF}, "subject"),
        ({"to": [EmailAddress(address="a@example.org", name=ENCODED_CRLF)]}, "to.0.name"),
        ({"headers": {"X-Case": ENCODED_CRLF}}, "headers.X-Case"),
        ({"headers": {"X-Case": "=?utf-8?b?YQ1CY2M6IHg=?="}}, "headers.X-Case"),  # base64
    ],
)
def test_encoded_words_that_decode_to_line_breaks_are_refused(
    fields: dict[str, Any], field: str
) -> None:
    problems = check_command(command(**fields))

    assert fields_of(problems) == [field]
    assert "encoded word" in problems[0].message


def test_an_encoded_word_without_line_breaks_is_accepted_and_read_as_such() -> None:
    cmd = command(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=")

    assert check_command(cmd) == []
    assert parsed(render(build(cmd), smtputf8=False))["Subject"] == "Grüße"


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subject": ENCODED_CRLF}, "subject"),
        ({"to": [EmailAddress(address="a@example.org", name=ENCODED_CRLF)]}, "to"),
        ({"headers": {"X-Case": ENCODED_CRLF}}, "headers.X-Case"),
    ],
)
def test_render_refuses_a_header_that_would_inject_even_if_unchecked(
    fields: dict[str, Any], field: str, smtputf8: bool
) -> None:
    # Python < 3.11.10 writes the decoded CR LF out (CVE-2024-6923): the backstop.
    with pytest.raises(InvalidCommand) as raised:
        render(build(command(**fields)), smtputf8=smtputf8)

    assert raised.value.field == field


def test_render_refuses_a_header_line_longer_than_998_octets() -> None:
    message = build(command())
    # Not reachable through a checked command (ids are bounded): the backstop alone.
    message["Content-ID"] = "<" + "x" * 1000 + "@example.com>"

    with pytest.raises(InvalidCommand) as raised:
        render(message, smtputf8=False)

    assert raised.value.field == "headers.Content-ID"
    assert "longer than 998 octets" in raised.value.message


def test_build_leaves_out_references_that_are_not_msg_ids() -> None:
    refs = ["<a@x>", "b@x\r\nBcc: v@x", "<ü@x>", "<c@x>"]

    message = parsed(render(build(command(), references=refs), smtputf8=False))

    assert message["References"] == "<a@x> <c@x>"
