"""Raw emails → EmailObject fields and attachments, or the reason they are dead-lettered."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobwire.contracts.objects import EmailAddress, FileObject, StorageKind
from jobwire.listeners.domain.emails import (
    EmailParseError,
    attachment_name,
    header_message_id,
    parse_email,
    synthetic_message_id,
)


def crlf(text: str) -> bytes:
    """Hand-written emails below use \\n; on the wire lines end in CRLF."""
    return text.replace("\n", "\r\n").encode("utf-8")


ALTERNATIVE = crlf(
    """\
Received: from b.example by a.example; Tue, 3 Mar 2026 10:00:02 +0000
Received: from c.example by b.example; Tue, 3 Mar 2026 10:00:01 +0000
From: Alice Example <alice@example.com>
To: bob@example.com, "Carol C." <carol@example.com>
Cc: dave@example.com
Reply-To: replies@example.com
Subject: Quarterly report
Date: Tue, 3 Mar 2026 11:00:00 +0100
Message-ID: <report-1@example.com>
In-Reply-To: <question-7@example.com>
References: <thread-1@example.com>
 <question-7@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Numbers are up =E2=80=94 see attached.
--alt
Content-Type: text/html; charset=utf-8

<p>Numbers are up &mdash; see attached.</p>
--alt--
"""
)


def test_multipart_alternative_gives_both_bodies_and_every_field() -> None:
    email = parse_email(ALTERNATIVE)

    assert email.message_id == "<report-1@example.com>"
    assert not email.message_id_synthetic
    assert email.from_ == EmailAddress(address="alice@example.com", name="Alice Example")
    assert email.to == [
        EmailAddress(address="bob@example.com"),
        EmailAddress(address="carol@example.com", name="Carol C."),
    ]
    assert email.cc == [EmailAddress(address="dave@example.com")]
    assert email.reply_to == [EmailAddress(address="replies@example.com")]
    assert email.subject == "Quarterly report"
    assert email.date == datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    assert email.date.utcoffset() == timedelta(hours=1)  # type: ignore[union-attr]
    assert email.in_reply_to == "<question-7@example.com>"
    assert email.references == ["<thread-1@example.com>", "<question-7@example.com>"]
    # The CRLF before a boundary belongs to the boundary (RFC 2046).
    assert email.text == "Numbers are up — see attached."
    assert email.html == "<p>Numbers are up &mdash; see attached.</p>"
    assert email.attachments == []
    assert email.size == len(ALTERNATIVE)


def test_headers_are_lower_cased_decoded_and_keep_repeated_fields_in_order() -> None:
    headers = parse_email(ALTERNATIVE).headers

    assert headers["received"] == [
        "from b.example by a.example; Tue, 3 Mar 2026 10:00:02 +0000",
        "from c.example by b.example; Tue, 3 Mar 2026 10:00:01 +0000",
    ]
    assert headers["references"] == ["<thread-1@example.com> <question-7@example.com>"]
    assert headers["content-type"] == ['multipart/alternative; boundary="alt"']
    assert all(name == name.lower() for name in headers)


PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4
CSV = "name;amount\nMüller;12,50\n".encode("cp1252")


def with_attachments() -> bytes:
    pdf = base64.encodebytes(PDF).decode()
    csv = base64.encodebytes(CSV).decode()
    return crlf(
        f"""\
From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>
To: =?iso-8859-1?b?UmVu6Q==?= <rene@example.fr>
Subject: =?utf-8?b?UmVjaG51bmcgZsO8ciBNw6RyeiDinJM=?=
Message-ID: <invoice-3@example.de>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="mixed"

--mixed
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: 8bit

PLACEHOLDER
--alt
Content-Type: text/html; charset=utf-8

<b>Rechnung</b>
--alt--
--mixed
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

{pdf}
--mixed
Content-Type: text/csv
Content-Disposition: attachment; filename*=UTF-8''Bericht%20f%C3%BCr%20M%C3%A4rz.csv
Content-Transfer-Encoding: base64

{csv}
--mixed
Content-Type: image/png
Content-Disposition: inline
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--mixed--
"""
    ).replace(b"PLACEHOLDER", "Grüße aus Köln".encode("iso-8859-1"))


def test_attachments_come_with_decoded_names_types_and_exact_bytes() -> None:
    email = parse_email(with_attachments())

    assert email.text == "Grüße aus Köln"
    assert email.html == "<b>Rechnung</b>"
    assert [(a.filename, a.content_type) for a in email.attachments] == [
        ("invoice.pdf", "application/pdf"),
        ("Bericht für März.csv", "text/csv"),
        ("part-3.png", "image/png"),
    ]
    assert email.attachments[0].data == PDF
    assert email.attachments[1].data == CSV
    assert email.attachments[2].data == b"\x89PNG\r\n\x1a\n"


def test_rfc_2047_names_and_subjects_are_decoded() -> None:
    email = parse_email(with_attachments())

    assert email.from_ == EmailAddress(address="juergen@example.de", name="Jürgen Müller")
    assert email.to == [EmailAddress(address="rene@example.fr", name="René")]
    assert email.subject == "Rechnung für März ✓"
    assert email.headers["subject"] == ["Rechnung für März ✓"]


def test_raw_utf8_in_headers_is_read_as_utf8_and_other_bytes_do_not_break_json() -> None:
    raw = (
        b"From: J\xc3\xbcrgen <j@example.de>\r\n"
        b"To: Ren\xe9 <r@example.fr>\r\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n"
        b"Message-ID: <8bit@example.de>\r\n\r\nhi\r\n"
    )

    email = parse_email(raw)

    assert email.subject == "Grüße"
    assert email.from_.name == "Jürgen"
    assert email.to[0].name == "Ren\ufffd"
    json.dumps(email.email_object().model_dump(mode="json"))


def test_a_missing_message_id_is_made_from_a_hash_of_the_bytes() -> None:
    raw = crlf("From: a@example.com\nSubject: no id\n\nbody\n")

    first, again = parse_email(raw), parse_email(raw)
    other = parse_email(raw.replace(b"body", b"other body"))

    assert first.message_id_synthetic
    assert first.message_id == again.message_id == synthetic_message_id(raw)
    assert first.message_id.startswith("<")
    assert first.message_id.endswith("@jobwire.invalid>")
    assert other.message_id != first.message_id
    assert "message-id" not in first.headers


def test_the_message_id_can_be_read_from_the_header_alone() -> None:
    """For emails that are not parsed (too large, refused): same id as parse_email's."""
    crlf_raw = crlf("From: a@x\nMessage-ID:\n <folded@example.com>\n\nMessage-ID: <body@x>\n")
    lf_raw = b"From: a@x\nMessage-ID: <lf@example.com>\n\nbody\n"

    assert header_message_id(crlf_raw) == "<folded@example.com>"
    assert header_message_id(lf_raw) == "<lf@example.com>"
    assert header_message_id(crlf_raw) == parse_email(crlf_raw).message_id
    assert header_message_id(crlf("From: a@x\n\nMessage-ID: <in-body@x>\n")) is None
    assert header_message_id(with_attachments()) == "<invoice-3@example.de>"


def test_a_plain_text_email_has_no_html_and_an_html_only_email_no_text() -> None:
    plain = parse_email(crlf("From: a@example.com\nMessage-ID: <p@x>\n\nJust text.\n"))
    html = parse_email(
        crlf(
            "From: a@example.com\nMessage-ID: <h@x>\n"
            "Content-Type: text/html; charset=utf-8\n\n<i>only</i>\n"
        )
    )

    assert (plain.text, plain.html, plain.attachments) == ("Just text.\n", None, [])
    assert (html.text, html.html) == (None, "<i>only</i>\n")


def test_an_attached_email_is_kept_whole() -> None:
    raw = crlf(
        """\
From: a@example.com
Message-ID: <fwd@x>
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

See below.
--b
Content-Type: message/rfc822

From: original@example.com
Subject: the original
Content-Type: multipart/mixed

no boundary here, and that is the original's business
--b--
"""
    )

    email = parse_email(raw)

    [attached] = email.attachments
    assert (attached.filename, attached.content_type) == ("message-1.eml", "message/rfc822")
    assert b"Subject: the original" in attached.data
    assert email.text == "See below."


def test_dates_without_zone_are_utc_and_unreadable_dates_are_none() -> None:
    undated = parse_email(crlf("From: a@x\nDate: sometime soon\n\nx\n"))
    unzoned = parse_email(crlf("From: a@x\nDate: Tue, 3 Mar 2026 10:00:00 -0000\n\nx\n"))
    zoned = parse_email(crlf("From: a@x\nDate: Tue, 3 Mar 2026 10:00:00 -0500\n\nx\n"))

    assert undated.date is None
    assert undated.headers["date"] == ["sometime soon"]
    assert unzoned.date == datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    assert zoned.date == datetime(2026, 3, 3, 10, 0, tzinfo=timezone(timedelta(hours=-5)))


def test_sender_stands_in_for_a_missing_from_and_neither_is_malformed() -> None:
    sender = parse_email(crlf("Sender: list@example.com\nMessage-ID: <s@x>\n\nx\n"))

    assert sender.from_ == EmailAddress(address="list@example.com")
    with pytest.raises(EmailParseError) as caught:
        parse_email(crlf("To: b@example.com\nSubject: who sent this?\n\nx\n"))
    assert caught.value.reason == "malformed_mime"
    assert "From" in caught.value.detail


def test_a_body_in_an_unknown_charset_is_refused_not_guessed() -> None:
    raw = crlf(
        "From: a@example.com\nMessage-ID: <c@x>\n"
        "Content-Type: text/plain; charset=x-klingon\n\nnuqneH\n"
    )

    with pytest.raises(EmailParseError) as caught:
        parse_email(raw)

    assert caught.value.reason == "unknown_charset"
    assert "x-klingon" in caught.value.detail


def test_invalid_bytes_in_a_known_charset_are_replaced() -> None:
    raw = crlf("From: a@x\nContent-Type: text/plain; charset=utf-8\n\nPLACEHOLDER\n")
    raw = raw.replace(b"PLACEHOLDER", b"caf\xe9 ok")

    assert parse_email(raw).text == "caf\ufffd ok\n"


@pytest.mark.parametrize(
    ("content_type", "defect"),
    [
        ("multipart/mixed", "NoBoundaryInMultipart"),
        ('multipart/mixed; boundary="not-there"', "StartBoundaryNotFound"),
    ],
)
def test_a_multipart_whose_parts_cannot_be_found_is_malformed(
    content_type: str, defect: str
) -> None:
    raw = crlf(
        f"""\
From: a@example.com
Message-ID: <broken@x>
Content-Type: {content_type}

--b
Content-Type: text/plain

hello
--b--
"""
    )

    with pytest.raises(EmailParseError) as caught:
        parse_email(raw)

    assert caught.value.reason == "malformed_mime"
    assert defect in caught.value.detail


def test_base64_that_cannot_be_decoded_is_malformed() -> None:
    raw = crlf(
        """\
From: a@example.com
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: application/pdf
Content-Disposition: attachment; filename="x.pdf"
Content-Transfer-Encoding: base64

QUJDR
--b--
"""
    )

    with pytest.raises(EmailParseError) as caught:
        parse_email(raw)

    assert caught.value.reason == "malformed_mime"
    assert "base64" in caught.value.detail


def test_a_missing_closing_boundary_loses_nothing_and_is_accepted() -> None:
    raw = crlf(
        """\
From: a@example.com
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

all here
"""
    )

    assert parse_email(raw).text == "all here"


def test_the_email_object_carries_the_stored_attachments() -> None:
    email = parse_email(with_attachments())
    stored = FileObject(storage=StorageKind.LOCAL, path="job/1/2/1-invoice.pdf", size=len(PDF))

    obj = email.email_object([stored])

    dumped = obj.model_dump(mode="json")
    assert dumped["from"] == {"address": "juergen@example.de", "name": "Jürgen Müller"}
    assert dumped["attachments"][0]["path"] == "job/1/2/1-invoice.pdf"
    assert dumped["size"] == email.size
    assert email.email_object().attachments == []


@pytest.mark.parametrize(
    ("index", "filename", "expected"),
    [
        (1, "invoice.pdf", "1-invoice.pdf"),
        (2, "../../etc/passwd", "2-etc_passwd"),
        (3, "Bericht für März.csv", "3-Bericht für März.csv"),
        (4, 'a\\b:c*d?"e<f>|g\x00.txt', "4-a_b_c_d_e_f_g_.txt"),
        (5, "...", "5-attachment"),
        (6, "", "6-attachment"),
        (7, "x" * 300 + ".pdf", "7-" + "x" * 116 + ".pdf"),
    ],
)
def test_attachment_names_are_safe_path_segments(index: int, filename: str, expected: str) -> None:
    assert attachment_name(index, filename) == expected
