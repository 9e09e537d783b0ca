"""The address book's rules: sightings of sent and received email, exclusions, merging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobwire.contracts.mail import SendEmail
from jobwire.contracts.objects import EmailAddress, EmailObject
from jobwire.mailer.domain.contacts import (
    Exclusions,
    Sighting,
    merge,
    sightings_of_received,
    sightings_of_sent,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def mailbox(address: str, name: str | None = None) -> EmailAddress:
    return EmailAddress(address=address, name=name)


def sighting(
    address: str,
    minutes: int,
    direction: str = "sent",
    name: str | None = None,
    conversation: str | None = None,
) -> Sighting:
    return Sighting(address, name, direction, at(minutes), conversation)  # type: ignore[arg-type]


def test_recipients_of_a_sent_email_are_sent_once_each_normalised() -> None:
    command = SendEmail(
        idempotency_key="k",
        from_=mailbox("agent@example.com"),
        to=[mailbox("Alice@Example.ORG", "Alice")],
        cc=[mailbox("bob@bücher.example"), mailbox("alice@example.org")],
        bcc=[mailbox("carol@example.org")],
        text="x",
        conversation_id="case-1",
    )

    found = sightings_of_sent(command, at(0))

    assert found == [
        Sighting("Alice@example.org", "Alice", "sent", at(0), "case-1"),
        Sighting("bob@xn--bcher-kva.example", None, "sent", at(0), "case-1"),
        Sighting("carol@example.org", None, "sent", at(0), "case-1"),
    ]


def test_a_received_email_counts_its_sender_reply_to_and_co_recipients() -> None:
    email = EmailObject(
        message_id="<m@x>",
        from_=mailbox("customer@example.org", "Customer"),
        reply_to=[mailbox("customer@example.org"), mailbox("desk@example.org", "Desk")],
        to=[mailbox("cases@example.com")],
        cc=[mailbox("colleague@example.org"), mailbox("not an address")],
        size=10,
    )

    found = sightings_of_received(email, "case-1", at(5))

    assert [(s.address, s.name, s.direction) for s in found] == [
        ("customer@example.org", "Customer", "received"),
        ("desk@example.org", "Desk", "received"),
        ("cases@example.com", None, "received"),
        ("colleague@example.org", None, "received"),
    ]
    assert {s.conversation_id for s in found} == {"case-1"}


@pytest.mark.parametrize(
    "address",
    [
        "no-reply@example.com",
        "NoReply@Example.com",
        "no_reply@x.example",
        "donotreply@x.example",
        "do-not-reply@x.example",
        "mailer-daemon@x.example",
        "postmaster@x.example",
        "bounce@x.example",
        "bounces+abc=example.org@x.example",
        "noreply+tag@x.example",
    ],
)
def test_no_reply_senders_are_excluded(address: str) -> None:
    assert Exclusions().excluded(address)
    assert not Exclusions(no_reply=False).excluded(address)


@pytest.mark.parametrize(
    "address", ["reply@example.com", "norepl@example.com", "alice.noreply.fan@example.com"]
)
def test_similar_addresses_are_not_no_reply(address: str) -> None:
    assert not Exclusions().excluded(address)


def test_the_systems_own_addresses_are_excluded_whatever_their_case() -> None:
    exclusions = Exclusions(system=["Cases@Example.com", "not-an-address"], no_reply=False)

    assert exclusions.excluded("cases@example.COM")
    assert not exclusions.excluded("case@example.com")


def test_patterns_are_globs_matched_case_insensitively_on_both_domain_forms() -> None:
    exclusions = Exclusions(
        patterns=["*@internal.example", "alerts@example.com", "*@bücher.example", " "],
        no_reply=False,
    )

    assert exclusions.excluded("anyone@Internal.Example")
    assert exclusions.excluded("ALERTS@example.com")
    assert exclusions.excluded("jörg@xn--bcher-kva.example")
    assert exclusions.excluded("jörg@BÜCHER.example")
    assert not exclusions.excluded("anyone@internal.example.org")
    assert not exclusions.excluded("alerts2@example.com")
    assert not exclusions.excluded("x@example.com")
    assert Exclusions(patterns=["*@xn--bcher-kva.example"]).excluded("a@bücher.example")


def test_what_is_not_an_address_is_excluded() -> None:
    assert Exclusions().excluded("nobody")


def test_merge_aggregates_per_address_key() -> None:
    contacts = merge(
        [
            sighting("Alice@example.org", 10, "received", "Alice S.", "case-2"),
            sighting("alice@example.org", 0, "sent", "Alice", "case-1"),
            sighting("alice@example.org", 20, "sent", None, None),
            sighting("bob@example.org", 5, "received"),
        ]
    )

    assert set(contacts) == {"alice@example.org", "bob@example.org"}
    alice = contacts["alice@example.org"]
    assert alice.address == "alice@example.org"  # as last seen
    assert alice.name == "Alice S."  # the latest sighting with a name
    assert (alice.first_seen, alice.last_seen) == (at(0), at(20))
    assert (alice.sent, alice.received) == (2, 1)
    assert alice.last_conversation_id == "case-2"  # the latest with one
    bob = contacts["bob@example.org"]
    assert (bob.sent, bob.received, bob.name, bob.last_conversation_id) == (0, 1, None, None)


def test_merge_does_not_depend_on_the_order_of_sightings() -> None:
    sightings = [sighting(f"u{i % 3}@example.org", i, "sent", f"n{i}", f"c{i}") for i in range(9)]

    assert merge(sightings) == merge(list(reversed(sightings)))


def test_merge_of_nothing_is_empty() -> None:
    assert merge([]) == {}
