"""The email listener end to end: Dovecot (real IMAP), the real runner, NATS JetStream.

Emails are APPENDed with the standard library's imaplib (``ImapTestClient``), so
the test side shares no code with the aioimaplib client under test.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nats.aio.msg import Msg

from jobwire.contracts.envelope import decode
from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.supervisor import Supervisor
from jobwire.runtime.secrets import variable_name
from jobwire.testing import wait_for
from jobwire.testing.dovecot import ImapAccount, ImapTestClient
from jobwire.testing.fleet import Fleet
from jobwire.testing.imap_fixtures import DovecotFactory

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration

JOBWIRE = str(Path(sys.executable).with_name("jobwire"))
WORKFLOW = "email-arrived"


def secrets(account: ImapAccount) -> dict[str, str]:
    return {
        variable_name("imap-user"): account.user,
        variable_name("imap-password"): account.password,
        variable_name("imap-ca"): account.ca_pem,
    }


def params(account: ImapAccount, storage: Path | None = None, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "workflow": WORKFLOW,
        "host": account.host,
        "port": account.port,
        "tls": False,
        "username": "imap-user",
        "password": "imap-password",
        "poll_seconds": 0.5,
    }
    if storage is not None:
        values["attachments"] = {"kind": "local", "root": str(storage)}
    return {**values, **extra}


def tls(account: ImapAccount) -> dict[str, Any]:
    return {"tls": True, "port": account.tls_port, "ca": "imap-ca"}


def email(n: int, *, attachment: bytes | None = None, message_id: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = f"Sender {n} <sender{n}@example.com>"
    message["To"] = "listener@example.com"
    message["Subject"] = f"Order {n}"
    message["Message-ID"] = message_id or make_msgid(f"order{n}", "example.com")
    message.set_content(f"Order number {n}.\n")
    message.add_alternative(f"<p>Order number <b>{n}</b>.</p>\n", subtype="html")
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="pdf", filename=f"order {n}.pdf"
        )
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def attachment_for(n: int, size: int = 2048) -> bytes:
    return (f"%PDF order {n} ".encode() * (size // 10 + 1))[:size]


async def starts(listeners: Listeners, count: int, timeout: float = 30) -> list[StartWorkflow]:
    async def enough() -> list[StartWorkflow] | None:
        found = await listeners.starts()
        return found if len(found) >= count else None

    return await wait_for(enough, timeout=timeout, description=f"{count} StartWorkflow")


def running(supervisor: Supervisor) -> bool:
    return any(s.state == "Running" for s in supervisor.statuses())


async def checkpoint(listeners: Listeners, job_id: str) -> dict[str, int] | None:
    kv = await listeners.broker.js.key_value(f"{listeners.namespace}_email_checkpoints")
    entry = await kv.get(job_id)
    value: dict[str, int] | None = json.loads(entry.value) if entry.value else None
    return value


def by_subject(starts_: list[StartWorkflow]) -> dict[str, StartWorkflow]:
    return {s.input["subject"]: s for s in starts_}  # type: ignore[index]


async def test_500_emails_with_attachments_start_500_workflows_over_imaps(
    listeners: Listeners, imap_account: ImapAccount, tmp_path: Path
) -> None:
    total = 500
    async with ImapTestClient(imap_account) as imap:
        uids = await imap.append_many(email(n, attachment=attachment_for(n)) for n in range(total))
    storage = tmp_path / "attachments"
    storage.mkdir()
    definition = await listeners.define(
        "email-listener", params(imap_account, storage, **tls(imap_account))
    )
    listeners.start(environ=secrets(imap_account))

    found = await starts(listeners, total, timeout=60)

    keys = {s.idempotency_key for s in found}
    assert len(found) == len(keys) == total
    subjects = by_subject(found)
    assert sorted(subjects) == sorted(f"Order {n}" for n in range(total))
    seventh = subjects["Order 7"]
    assert seventh.workflow == WORKFLOW
    assert seventh.input["from"] == {"address": "sender7@example.com", "name": "Sender 7"}  # type: ignore[index]
    assert seventh.input["text"] == "Order number 7.\n"  # type: ignore[index]
    assert seventh.input["html"] == "<p>Order number <b>7</b>.</p>\n"  # type: ignore[index]
    coordinates = seventh.origin.coordinates
    assert coordinates["mailbox"] == "INBOX"
    assert coordinates["uid"] == uids[7]
    assert seventh.idempotency_key == (
        f"listener:{definition.job_id}:INBOX/{coordinates['uidvalidity']}/{uids[7]}"
    )
    for n in (0, 7, total - 1):
        [attachment] = subjects[f"Order {n}"].input["attachments"]  # type: ignore[index]
        assert attachment["storage"] == "local"
        assert attachment["path"] == (
            f"{definition.job_id}/{coordinates['uidvalidity']}/{uids[n]}/1-order {n}.pdf"
        )
        assert (storage / attachment["path"]).read_bytes() == attachment_for(n)
    assert len(list(storage.rglob("*.pdf"))) == total
    async with ImapTestClient(imap_account) as imap:
        flags = await wait_for(
            lambda: _all_flagged(imap, total), timeout=10, description="all flagged \\Seen"
        )
    assert set(flags) == set(uids)
    assert await listeners.dead_letters() == []


async def _all_flagged(imap: ImapTestClient, count: int) -> dict[int, set[str]] | None:
    flags = await imap.flags()
    seen = {uid: f for uid, f in flags.items() if "\\Seen" in f}
    return seen if len(seen) == count else None


async def test_idle_delivers_a_new_email_within_a_second(
    listeners: Listeners, imap_account: ImapAccount
) -> None:
    """Polling is set to a minute, so only IDLE can be this fast. Measured from the
    APPEND to the StartWorkflow arriving on its subject."""
    await listeners.define("email-listener", params(imap_account, idle=True, poll_seconds=60))
    supervisor = listeners.start(environ=secrets(imap_account))
    received: asyncio.Queue[tuple[float, Msg]] = asyncio.Queue()

    async def arrived(msg: Msg) -> None:
        received.put_nowait((time.monotonic(), msg))

    subject = listeners.broker.subjects.workflow_start(WORKFLOW)
    subscription = await listeners.broker.nc.subscribe(subject, cb=arrived)
    latencies: list[float] = []
    try:
        await wait_for(lambda: running(supervisor), timeout=15, description="Running")
        async with ImapTestClient(imap_account) as imap:
            for n in range(5):
                appended = time.monotonic()
                await imap.append(email(n))
                at, msg = await asyncio.wait_for(received.get(), timeout=10)
                assert decode(msg.data, StartWorkflow).data.input["subject"] == f"Order {n}"  # type: ignore[index]
                latencies.append(at - appended)
    finally:
        await subscription.unsubscribe()

    print(f"\nIDLE: APPEND → StartWorkflow in {', '.join(f'{s * 1000:.0f}' for s in latencies)} ms")
    assert max(latencies) < 1.0


async def test_poison_is_dead_lettered_with_its_raw_bytes_and_the_mailbox_moves_on(
    listeners: Listeners, imap_account: ImapAccount
) -> None:
    malformed = (
        b"From: a@example.com\r\nMessage-ID: <broken@example.com>\r\n"
        b"Content-Type: multipart/mixed\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"lost\r\n--b--\r\n"
    )
    klingon = (
        b"From: a@example.com\r\nMessage-ID: <klingon@example.com>\r\n"
        b"Content-Type: text/plain; charset=x-klingon\r\n\r\nnuqneH\r\n"
    )
    big = email(1, attachment=bytes(60_000))
    async with ImapTestClient(imap_account) as imap:
        for raw in (malformed, klingon, big, email(2)):
            await imap.append(raw)
    definition = await listeners.define(
        "email-listener", params(imap_account, max_message_bytes=50_000)
    )
    listeners.start(environ=secrets(imap_account))

    [good] = await starts(listeners, 1)
    dead = await wait_for(
        lambda: _dead_letters(listeners, 3), timeout=15, description="3 dead letters"
    )

    assert good.input["subject"] == "Order 2"  # type: ignore[index]
    by_reason = {d.reason: d for d in dead}
    assert sorted(by_reason) == ["malformed_mime", "too_large", "unknown_charset"]
    assert by_reason["malformed_mime"].payload == malformed
    assert "NoBoundaryInMultipart" in by_reason["malformed_mime"].detail
    assert by_reason["unknown_charset"].payload == klingon
    assert "x-klingon" in by_reason["unknown_charset"].detail
    assert by_reason["too_large"].payload == big
    assert "50000" in by_reason["too_large"].detail
    assert all(d.source == "email-listener" and d.subject == "INBOX" for d in dead)
    assert by_reason["unknown_charset"].headers["jobwire-trigger-key"].startswith("INBOX/")
    position = await wait_for(
        lambda: _checkpoint_at(listeners, definition.job_id, 4),
        timeout=10,
        description="checkpoint past all four",
    )
    assert position["uid"] == 4
    async with ImapTestClient(imap_account) as imap:
        assert await wait_for(lambda: _all_flagged(imap, 4), timeout=10)


async def _dead_letters(listeners: Listeners, count: int):  # type: ignore[no-untyped-def]
    found = await listeners.dead_letters()
    return found if len(found) >= count else None


async def _checkpoint_at(listeners: Listeners, job_id: str, uid: int) -> dict[str, int] | None:
    value = await checkpoint(listeners, job_id)
    return value if value is not None and value["uid"] >= uid else None


async def test_moved_emails_land_in_a_folder_created_for_them(
    listeners: Listeners, imap_account: ImapAccount
) -> None:
    """The folder's name has a space and an umlaut: it travels in modified UTF-7."""
    async with ImapTestClient(imap_account) as imap:
        await imap.append_many(email(n) for n in range(12))
    await listeners.define(
        "email-listener",
        params(imap_account, mark_seen=True, move_to="Erledigte Aufträge", batch_max_messages=5),
    )
    listeners.start(environ=secrets(imap_account))

    await starts(listeners, 12)

    async with ImapTestClient(imap_account) as imap:
        moved = await wait_for(
            lambda: _moved(imap, "Erledigte Auftr&AOQ-ge", 12),
            timeout=10,
            description="12 moved",
        )
        assert await imap.count("INBOX") == 0
    assert all("\\Seen" in flags for flags in moved.values())


async def _moved(imap: ImapTestClient, folder: str, count: int):  # type: ignore[no-untyped-def]
    try:
        flags = await imap.flags(folder)
    except Exception:  # the folder does not exist yet
        return None
    return flags if len(flags) == count else None


async def test_after_a_uidvalidity_change_handled_message_ids_do_not_fire_again(
    listeners: Listeners, imap_account: ImapAccount
) -> None:
    """The folder is deleted and created again with the same ten emails plus five new
    ones: new UIDVALIDITY, every UID new. Only the five new emails start workflows."""
    folder = "Orders"
    originals = [email(n, message_id=f"<order-{n}@example.com>") for n in range(10)]
    async with ImapTestClient(imap_account) as imap:
        await imap.create(folder)
        await imap.append_many(originals, folder)
        old_validity = await imap.uidvalidity(folder)
    definition = await listeners.define(
        "email-listener", params(imap_account, folder=folder, mark_seen=False, batch_max_messages=4)
    )
    listeners.start(environ=secrets(imap_account))
    await starts(listeners, 10)
    await wait_for(
        lambda: _checkpoint_at(listeners, definition.job_id, 10), timeout=10, description="acked"
    )

    async with ImapTestClient(imap_account) as imap:
        await imap.delete(folder)
        await imap.create(folder)
        # Same emails, same bytes, in a different order; then five new ones.
        await imap.append_many(reversed(originals), folder)
        await imap.append_many(
            (email(n, message_id=f"<order-{n}@example.com>") for n in range(10, 15)), folder
        )
        new_validity = await imap.uidvalidity(folder)
    assert new_validity != old_validity

    position = await wait_for(
        lambda: _rescanned(listeners, definition.job_id, new_validity),
        timeout=30,
        description="the new folder read to its end",
    )
    found = await listeners.starts()

    assert position["uid"] == 15
    subjects = sorted(s.input["subject"] for s in found)  # type: ignore[index]
    assert subjects == sorted(f"Order {n}" for n in range(15))
    validities = {s.origin.coordinates["uidvalidity"] for s in found}
    assert validities == {old_validity, new_validity}
    kv = await listeners.broker.js.key_value(f"{listeners.namespace}_email_checkpoints")
    keys = await kv.keys()
    # Only the new validity's Message-ID batches are left.
    assert {k.split(".")[2] for k in keys if ".ids." in k} == {str(new_validity)}


async def _rescanned(listeners: Listeners, job_id: str, validity: int):  # type: ignore[no-untyped-def]
    value = await checkpoint(listeners, job_id)
    if value is None or value["uidvalidity"] != validity or value["uid"] < 15:
        return None
    return value if value["rescan_until"] == 0 else None


async def test_a_dovecot_restart_is_survived_without_loss_or_duplicates(
    listeners: Listeners, dovecot_factory: DovecotFactory
) -> None:
    server = dovecot_factory()
    account = server.add_user()
    async with ImapTestClient(account) as imap:
        await imap.append_many(email(n) for n in range(20))
    await listeners.define("email-listener", params(account, idle=True))
    supervisor = listeners.start(environ=secrets(account))
    await starts(listeners, 20)

    server.stop()
    await wait_for(
        lambda: _failed(supervisor), timeout=15, description="the slot notices the server gone"
    )
    server.start()
    async with ImapTestClient(account) as imap:
        await imap.append_many(email(n) for n in range(20, 40))

    found = await starts(listeners, 40, timeout=30)

    subjects = sorted(s.input["subject"] for s in found)  # type: ignore[index]
    assert subjects == sorted(f"Order {n}" for n in range(40))
    [status] = supervisor.statuses()
    assert status.errors >= 1
    assert "IMAP" in (status.last_error or "") or "connect" in (status.last_error or "")
    await wait_for(lambda: running(supervisor), timeout=15, description="Running again")


def _failed(supervisor: Supervisor) -> bool:
    return any(s.errors > 0 for s in supervisor.statuses())


async def test_a_refused_login_is_reported_without_the_credentials(
    listeners: Listeners, dovecot_factory: DovecotFactory
) -> None:
    # A server of its own: Dovecot delays later logins from 127.0.0.1 after a failure.
    account = dovecot_factory().add_user()
    await listeners.define("email-listener", params(account, **tls(account)))
    wrong = {**secrets(account), variable_name("imap-password"): "not-the-password"}
    supervisor = listeners.start(environ=wrong)

    [status] = await wait_for(
        lambda: [s for s in supervisor.statuses() if s.last_error] or None,
        timeout=15,
        description="a reported error",
    )

    error = status.last_error or ""
    assert "refused the login" in error
    assert "AUTHENTICATIONFAILED" in error
    assert account.user not in error
    assert "not-the-password" not in error
    assert status.state == "Failed"


@pytest.fixture
def fleet(tmp_path: Path, namespace: str) -> Iterator[Fleet]:
    fleet = Fleet(
        tmp_path,
        [JOBWIRE, "listeners"],
        namespace=namespace,
        env={"JOBWIRE_HEARTBEAT_SECONDS": "0.5"},
        prefix="listeners",
    )
    try:
        yield fleet
    finally:
        fleet.close()


async def test_sigkill_mid_batch_loses_and_duplicates_no_email(
    listeners: Listeners,
    fleet: Fleet,
    imap_account: ImapAccount,
    nats_url: str,
    tmp_path: Path,
) -> None:
    """Two `jobwire listeners` processes, one listener. The owner is SIGKILLed while
    emails flow; the standby resumes from the checkpoint. Emails published but not
    yet checkpointed come again with the same idempotency key and JetStream drops
    them; every email ends up flagged \\Seen (the ack's repair on open)."""
    total = 600
    storage = tmp_path / "attachments"
    storage.mkdir()
    definition = await listeners.define(
        "email-listener", params(imap_account, storage, batch_max_messages=20)
    )
    fast = {"JOBWIRE_LISTENERS__LEASE_TTL_SECONDS": "4", "JOBWIRE_LISTENERS__POLL_SECONDS": "1"}
    instances = [
        fleet.start(nats_url, **fast, **secrets(imap_account)),
        fleet.start(nats_url, **fast, **secrets(imap_account)),
    ]
    with fleet.explained():
        for instance in instances:
            await fleet.ready(instance)
        async with ImapTestClient(imap_account) as imap:
            feeder = asyncio.create_task(_trickle(imap, total))
            await starts(listeners, 150, timeout=60)
            owner = await wait_for(
                lambda: _owner(fleet, listeners, definition.job_id),
                timeout=10,
                description="the owner",
            )
            fleet.kill(owner)
            await feeder
            found = await starts(listeners, total, timeout=90)
            await wait_for(
                lambda: _all_flagged(imap, total), timeout=30, description="all flagged \\Seen"
            )

    keys = [s.idempotency_key for s in found]
    assert len(keys) == len(set(keys)) == total
    assert sorted(s.input["subject"] for s in found) == sorted(  # type: ignore[index]
        f"Order {n}" for n in range(total)
    )
    assert len(list(storage.rglob("*.pdf"))) == total


async def _trickle(imap: ImapTestClient, total: int, batch: int = 50) -> None:
    """Emails arrive over several seconds, so the kill lands mid-flow."""
    for first in range(0, total, batch):
        await imap.append_many(
            email(n, attachment=attachment_for(n)) for n in range(first, first + batch)
        )
        await asyncio.sleep(0.2)


async def _owner(fleet: Fleet, listeners: Listeners, job_id: str):  # type: ignore[no-untyped-def]
    from jobwire.contracts.listeners import ListenerSlotStatus
    from jobwire.runtime.hosts import live_hosts

    for host in await live_hosts(listeners.broker.js, listeners.namespace):
        for raw in host.status.get("listeners", []):
            status = ListenerSlotStatus.model_validate(raw)
            if status.job_id == job_id and status.state == "Running":
                for instance in fleet.replicas:
                    if host.instance_id.endswith(instance.name) and instance.running:
                        return instance
    return None
