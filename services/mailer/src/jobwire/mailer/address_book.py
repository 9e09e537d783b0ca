"""An `address-book-populate` run: every address of the conversation log into the address book.

The log holds the email the mailer sent and the email listeners received. A
run takes, in batches, the messages not yet taken in, folds their addresses
into the address book and marks them taken in one transaction — so a run
starts where the last one stopped, a crash mid-run loses nothing, and a
rerun over the same messages changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from jobwire.contracts.mail import AddressBookPopulateParams
from jobwire.mailer.adapters.queue import ContactsRace, ConversationMessage, MailQueue
from jobwire.mailer.domain.contacts import Exclusions, Sighting, merge, sightings
from jobwire.runtime.worker import RunContext


def sightings_of(message: ConversationMessage) -> list[Sighting]:
    """The recipients of what the mailer sent; sender and recipients of what it received."""
    if message.direction == "sent":
        return sightings(message.recipients, "sent", message.at, message.conversation_id)
    mailboxes = [message.sender, *message.recipients] if message.sender else message.recipients
    return sightings(mailboxes, "received", message.at, message.conversation_id)


class AddressBook:
    def __init__(self, queue: MailQueue, system_addresses: Iterable[str]) -> None:
        self.queue = queue
        self.system_addresses = list(system_addresses)

    async def run(self, run: RunContext) -> dict[str, Any]:
        try:
            params = AddressBookPopulateParams.model_validate(run.due.params)
        except ValidationError as exc:
            raise ValueError(f"params: {exc}") from None
        exclusions = Exclusions(
            self.system_addresses, params.exclude, no_reply=params.exclude_no_reply
        )
        counts: Counter[str] = Counter()
        while not run.cancelled.is_set():
            batch = await self.queue.contacts_todo(params.batch_size)
            if not batch:
                break
            seen = [s for m in batch for s in sightings_of(m)]
            kept = [s for s in seen if not exclusions.excluded(s.address)]
            contacts = merge(kept)
            try:
                await self.queue.add_contacts(
                    list(contacts.values()), [m.message_id for m in batch]
                )
            except ContactsRace:
                counts["raced"] += 1
                continue  # another run took part of it in: take what is left again
            counts["messages"] += len(batch)
            counts["addresses"] += len(kept)
            counts["excluded"] += len(seen) - len(kept)
            await run.progress(counters=dict(counts))
        return {key: counts[key] for key in ("messages", "addresses", "excluded")}
