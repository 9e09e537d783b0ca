"""The address book's rules: who was seen on which email, who is left out, what is kept. No I/O.

A run of ``address-book-populate`` turns each email into :class:`Sighting`\\ s
(:func:`sightings_of_sent`, :func:`sightings_of_received`), drops the excluded
ones (:class:`Exclusions`), aggregates them per address (:func:`merge`) and
upserts the result. What counts:

- **sent**: every To, Cc and Bcc recipient of an email the mailer sent. The
  sender (an account's own address) is not a contact.
- **received**: on an email an email listener received, its From and
  Reply-To — the people who wrote — and also its To and Cc: the others in
  the conversation, whom a reply-all reaches. The system's own addresses are
  among those and are removed by :class:`Exclusions`, not here.
- One email counts once per address, whatever headers name it twice.
- Addresses are counted by :func:`~jobwire.mailer.domain.addresses.address_key`
  (``Alice@Example.COM`` and ``alice@example.com`` are one contact); an address
  that cannot be normalised (received email is not checked) is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import idna

from jobwire.contracts.mail import SendEmail
from jobwire.contracts.objects import EmailAddress, EmailObject
from jobwire.mailer.domain.addresses import address_key, normalize_address

__all__ = [
    "NO_REPLY_LOCAL_PARTS",
    "Contact",
    "Exclusions",
    "Sighting",
    "merge",
    "sightings_of_received",
    "sightings_of_sent",
]

Direction = Literal["sent", "received"]

# Local parts (before any +tag) of senders nobody writes back to.
NO_REPLY_LOCAL_PARTS = (
    "no-reply",
    "noreply",
    "no_reply",
    "donotreply",
    "do-not-reply",
    "do_not_reply",
    "mailer-daemon",
    "postmaster",
    "bounce*",
)


@dataclass(frozen=True)
class Sighting:
    """One address seen on one email."""

    address: str
    """Normalised (:func:`~jobwire.mailer.domain.addresses.normalize_address`)."""
    name: str | None
    direction: Direction
    at: datetime
    conversation_id: str | None


@dataclass(frozen=True)
class Contact:
    """What the address book keeps of one address, from the sightings of a run."""

    key: str
    """:func:`~jobwire.mailer.domain.addresses.address_key`: what the upsert matches on."""
    address: str
    """As last seen, normalised."""
    name: str | None
    """The display name of the latest sighting that had one."""
    first_seen: datetime
    last_seen: datetime
    sent: int
    received: int
    last_conversation_id: str | None
    """The conversation of the latest sighting that had one."""


def sightings_of_sent(command: SendEmail, at: datetime) -> list[Sighting]:
    """The recipients (To, Cc, Bcc) of an email the mailer sent, as "sent"."""
    return sightings([*command.to, *command.cc, *command.bcc], "sent", at, command.conversation_id)


def sightings_of_received(
    email: EmailObject, conversation_id: str | None, at: datetime
) -> list[Sighting]:
    """From, Reply-To, To and Cc of a received email, as "received" (see the module docstring)."""
    mailboxes = [email.from_, *email.reply_to, *email.to, *email.cc]
    return sightings(mailboxes, "received", at, conversation_id)


def sightings(
    mailboxes: Sequence[EmailAddress],
    direction: Direction,
    at: datetime,
    conversation_id: str | None,
) -> list[Sighting]:
    """One sighting per address among ``mailboxes`` (unusable addresses are skipped)."""
    found: dict[str, Sighting] = {}
    for mailbox in mailboxes:
        try:
            address, key = normalize_address(mailbox.address), address_key(mailbox.address)
        except ValueError:
            continue
        earlier = found.get(key)
        if earlier is None:
            found[key] = Sighting(address, mailbox.name or None, direction, at, conversation_id)
        elif earlier.name is None and mailbox.name:
            # Named twice (From and Reply-To, say): one sighting, named if either is.
            found[key] = Sighting(earlier.address, mailbox.name, direction, at, conversation_id)
    return list(found.values())


class Exclusions:
    """Addresses the address book leaves out.

    ``system``: the system's own addresses (the accounts' From addresses),
    compared as address keys. ``patterns``: addresses where ``*`` matches any
    characters, compared case-insensitively with both the IDNA and the Unicode
    form of the domain (``*@bücher.example`` and ``*@xn--bcher-kva.example`` are
    the same). ``no_reply``: also leave out the local parts of
    :data:`NO_REPLY_LOCAL_PARTS`, with or without a ``+tag``.
    """

    def __init__(
        self, system: Iterable[str] = (), patterns: Iterable[str] = (), *, no_reply: bool = True
    ) -> None:
        self._system = {_key_or_none(a) for a in system} - {None}
        self._patterns = [_glob(p.strip()) for p in patterns if p.strip()]
        self._no_reply = [_glob(p) for p in NO_REPLY_LOCAL_PARTS] if no_reply else []

    def excluded(self, address: str) -> bool:
        key = _key_or_none(address)
        if key is None:
            return True  # not an address the book could hold
        if key in self._system:
            return True
        local, _, domain = key.rpartition("@")
        forms = (key, f"{local}@{_unicode_domain(domain)}")
        if any(p.fullmatch(form) for p in self._patterns for form in forms):
            return True
        base = local.partition("+")[0]
        return any(p.fullmatch(base) for p in self._no_reply)


def merge(sightings: Iterable[Sighting]) -> dict[str, Contact]:
    """Contacts by address key, aggregated over ``sightings`` in time order
    (sightings at the same time in the order given)."""
    contacts: dict[str, Contact] = {}
    for sighting in sorted(sightings, key=lambda s: s.at):
        key = address_key(sighting.address)
        contacts[key] = _seen(contacts.get(key), key, sighting)
    return contacts


def _seen(contact: Contact | None, key: str, sighting: Sighting) -> Contact:
    sent = int(sighting.direction == "sent")
    if contact is None:
        return Contact(
            key=key,
            address=sighting.address,
            name=sighting.name,
            first_seen=sighting.at,
            last_seen=sighting.at,
            sent=sent,
            received=1 - sent,
            last_conversation_id=sighting.conversation_id,
        )
    return Contact(
        key=key,
        address=sighting.address,
        name=sighting.name or contact.name,
        first_seen=contact.first_seen,
        last_seen=sighting.at,
        sent=contact.sent + sent,
        received=contact.received + 1 - sent,
        last_conversation_id=sighting.conversation_id or contact.last_conversation_id,
    )


def _key_or_none(address: str) -> str | None:
    try:
        return address_key(address)
    except ValueError:
        return None


def _unicode_domain(domain: str) -> str:
    try:
        return idna.decode(domain)
    except idna.IDNAError:
        return domain


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE)
