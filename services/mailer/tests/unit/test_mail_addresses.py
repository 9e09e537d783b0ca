"""Addresses and display names: what is accepted, how it is normalised, what is refused."""

from __future__ import annotations

import pytest

from jobwire.mailer.domain.addresses import (
    InvalidCommand,
    address_key,
    check_address,
    check_display_name,
    needs_smtputf8,
    normalize_address,
)


def test_invalid_command_names_its_field() -> None:
    problem = InvalidCommand("to.0.address", "not an address: no @")

    assert problem.field == "to.0.address"
    assert problem.message == "not an address: no @"
    assert str(problem) == "to.0.address: not an address: no @"
    assert isinstance(problem, ValueError)


def test_normalize_lowercases_the_domain_and_keeps_the_local_part() -> None:
    assert normalize_address("  Alice.Smith@Example.COM ") == "Alice.Smith@example.com"


def test_idn_domain_is_idna_encoded_and_the_local_part_needs_smtputf8() -> None:
    normalized = check_address("jörg@bücher.example", "to.0.address")

    assert normalized == "jörg@xn--bcher-kva.example"
    assert needs_smtputf8(normalized)
    assert not needs_smtputf8("joerg@bücher.example")  # the domain never needs it


def test_idna_2008_keeps_sharp_s_distinct() -> None:
    # IDNA 2003 (the stdlib codec) would send this to strasse.de, another domain.
    assert normalize_address("info@straße.de") == "info@xn--strae-oqa.de"


def test_address_key_ignores_case_on_both_sides() -> None:
    assert address_key("Alice@Example.COM") == address_key("alice@example.com")
    assert address_key("Jörg@Bücher.example") == "jörg@xn--bcher-kva.example"


def test_an_a_label_domain_is_kept() -> None:
    assert check_address("a@XN--BCHER-KVA.example", "f") == "a@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("alice.example.com", "no @"),
        ("@example.com", "local part"),
        ("alice@", "domain is empty"),
        ("alice@example.com\r\nBcc: victim@example.com", "line break"),
        ("alice@example.com\nX: y", "line break"),
        ("alice@exa\x00mple.com", "control character"),
        ("alice\u2028@example.com", "line break"),
        ("alice smith@example.com", "' '"),
        ("Alice <alice@example.com>", "' '"),
        ("<alice@example.com>", "'<'"),
        ('"alice"@example.com', "quoted"),
        ("a,b@example.com", "','"),
        (".alice@example.com", "dot"),
        ("alice.@example.com", "dot"),
        ("al..ice@example.com", "dot"),
        ("a" * 65 + "@example.com", "64 octets"),
        ("ä" * 33 + "@example.com", "64 octets"),  # 66 octets in UTF-8
        ("alice@exa_mple.com", "IDNA"),
        ("alice@-example.com", "IDNA"),
        ("alice@example..com", "IDNA"),
        ("alice@example.com.", "ends with a dot"),
        ("alice@[192.0.2.1]", "address literals"),
        ("alice@" + "a" * 64 + ".com", "IDNA"),
        ("alice@😀.example", "IDNA"),
        ("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com", "254 octets"),
    ],
)
def test_check_address_refuses(address: str, why: str) -> None:
    with pytest.raises(InvalidCommand) as raised:
        check_address(address, "cc.1.address")

    assert raised.value.field == "cc.1.address"
    assert why in raised.value.message


def test_the_error_message_shows_a_control_character_as_a_code_point() -> None:
    with pytest.raises(InvalidCommand) as raised:
        check_address("a\r@example.com", "to.0.address")

    assert "\r" not in str(raised.value)
    assert "U+000D" in str(raised.value)


@pytest.mark.parametrize(
    "address", ["a!#$%&'*+-/=?^_`{|}~b@example.com", "x@localhost", "user+tag@sub.example.org"]
)
def test_check_address_accepts_dot_atoms(address: str) -> None:
    assert check_address(address, "to.0.address") == address


def test_normalize_refuses_what_has_no_domain() -> None:
    with pytest.raises(ValueError, match="no @"):
        normalize_address("nobody")


@pytest.mark.parametrize(
    "name", ["Eve\r\nBcc: x@example.com", "Eve\n", "Eve\r", "E\x00ve", "E\x85"]
)
def test_display_name_with_line_breaks_or_nul_is_refused(name: str) -> None:
    with pytest.raises(InvalidCommand) as raised:
        check_display_name(name, "to.0.name")

    assert raised.value.field == "to.0.name"


@pytest.mark.parametrize("name", [None, "", "Jörg Müller", "O'Brien, Pat (Sales)", 'Say "hi"'])
def test_display_name_accepted(name: str | None) -> None:
    assert check_display_name(name, "to.0.name") == name


def test_surrounding_whitespace_is_stripped_not_kept() -> None:
    # Stripped everywhere an address is used (checks, headers, envelope), so a
    # trailing newline pasted with an address cannot reach a header.
    assert check_address(" a@example.com\r\n", "to.0.address") == "a@example.com"


@pytest.mark.parametrize("name", ["=?utf-8?q?a=2C_evil@example.com?=", "=?utf-8?q?=3A?=", "a=?b"])
def test_display_name_with_encoded_word_syntax_is_refused(name: str) -> None:
    # Decoded by the email package and written unquoted, it would add a visible address.
    with pytest.raises(InvalidCommand, match="encoded word"):
        check_display_name(name, "to.0.name")
