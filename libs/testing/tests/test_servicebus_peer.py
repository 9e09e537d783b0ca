"""The Service Bus test peer, driven by the real azure-servicebus aio SDK.

These pin down what the peer answers; what it does not prove (TLS, Entra ID,
sessions, quotas, real lock semantics under load) is listed in its module.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import socket
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

pytest.importorskip("azure.servicebus")  # a dependency of the listeners, not of this lib

from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusConnectionError

from jobwire.testing import wait_for
from jobwire.testing.servicebus_fixtures import ServiceBusPeerFactory
from jobwire.testing.servicebus_peer import ServiceBusPeer

pytestmark = pytest.mark.integration

# azure-servicebus 7.15 leaves the socket of a connection the peer dropped to the
# garbage collector (a ResourceWarning when collected). Tests that drop
# connections collect it themselves, under this mark, so that it stays theirs.
DROPPED_SOCKET = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <(socket.socket|function (StreamWriter|_SelectorTransport)"
    ".__del__):pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture
async def client(servicebus_peer: ServiceBusPeer) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(servicebus_peer.connection_string) as sb:
        yield sb


async def send(client: ServiceBusClient, entity: str, *messages: ServiceBusMessage) -> None:
    async with client.get_queue_sender(entity) as sender:
        await asyncio.wait_for(sender.send_messages(list(messages)), 10)


async def receive(
    receiver: ServiceBusReceiver,
    count: int,
    timeout: float = 10,
    *,
    wait: float = 0.5,
    ignore: tuple[type[Exception], ...] = (),
) -> list[ServiceBusReceivedMessage]:
    got: list[ServiceBusReceivedMessage] = []

    async def enough() -> bool:
        got.extend(
            await receiver.receive_messages(max_message_count=count - len(got), max_wait_time=wait)
        )
        return len(got) >= count

    await wait_for(enough, timeout, interval=0, description=f"{count} messages", ignore=ignore)
    return got


def bodies(messages: Sequence[ServiceBusReceivedMessage]) -> list[bytes]:
    return [b"".join(m.body) for m in messages]


async def test_send_receive_complete_with_service_bus_annotations(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    before = datetime.datetime.now(datetime.UTC)
    await send(
        client,
        servicebus_queue,
        ServiceBusMessage(b"one", message_id="m1", application_properties={"k": "v"}),
        ServiceBusMessage(b"two", message_id="m2", subject="s", correlation_id="c"),
    )
    assert servicebus_peer.counts(servicebus_queue).active == 2

    async with client.get_queue_receiver(servicebus_queue) as receiver:
        first, second = await receive(receiver, 2)
        assert servicebus_peer.counts(servicebus_queue).locked == 2

        assert bodies([first, second]) == [b"one", b"two"]
        assert (first.message_id, second.message_id) == ("m1", "m2")
        assert first.application_properties == {b"k": b"v"}
        assert (second.subject, second.correlation_id) == ("s", "c")
        assert (first.sequence_number, second.sequence_number) == (1, 2)
        assert first.delivery_count == 0
        assert isinstance(first.lock_token, uuid.UUID)
        assert first.lock_token != second.lock_token
        assert first.enqueued_time_utc is not None
        assert first.enqueued_time_utc >= before - datetime.timedelta(seconds=1)
        assert first.locked_until_utc is not None
        remaining = (first.locked_until_utc - datetime.datetime.now(datetime.UTC)).total_seconds()
        assert 25 < remaining <= 30  # the peer's default lock duration

        await receiver.complete_message(first)
        await receiver.complete_message(second)

    counts = servicebus_peer.counts(servicebus_queue)
    assert (counts.active, counts.locked, counts.completed) == (0, 0, 2)


async def test_a_batch_is_one_transfer_of_whole_messages(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await send(
        client,
        servicebus_queue,
        *(ServiceBusMessage(f"b{n}", message_id=f"b{n}") for n in range(300)),
    )

    held = servicebus_peer.messages(servicebus_queue)
    assert [m.message_id for m in held] == [f"b{n}" for n in range(300)]
    assert [m.sequence_number for m in held] == list(range(1, 301))
    assert held[7].body == b"b7"


async def test_abandon_redelivers_with_the_delivery_count_raised(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await send(client, servicebus_queue, ServiceBusMessage(b"x", message_id="a"))
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [first] = await receive(receiver, 1)
        await receiver.abandon_message(first)
        [again] = await receive(receiver, 1)
        assert again.message_id == "a"
        assert again.delivery_count == 1
        assert again.lock_token != first.lock_token
        await receiver.complete_message(again)
    assert servicebus_peer.counts(servicebus_queue).redelivered == 1


async def test_dead_letter_moves_the_message_to_the_dead_letter_sub_queue(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await send(client, servicebus_queue, ServiceBusMessage(b"bad", message_id="d"))
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receive(receiver, 1)
        await receiver.dead_letter_message(message, reason="poison", error_description="why")

    [held] = servicebus_peer.dead_letters(servicebus_queue)
    assert held.application_properties == {
        "DeadLetterReason": "poison",
        "DeadLetterErrorDescription": "why",
    }
    assert servicebus_peer.counts(servicebus_queue).dead_lettered == 1
    async with client.get_queue_receiver(
        servicebus_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dead:
        [message] = await receive(dead, 1)
        assert message.message_id == "d"
        assert (message.dead_letter_reason, message.dead_letter_error_description) == (
            "poison",
            "why",
        )
        assert message.dead_letter_source == servicebus_queue
        await dead.complete_message(message)
    assert servicebus_peer.counts(servicebus_queue).dead_lettered == 0


@pytest.mark.servicebus_queue(lock_duration=2)
async def test_renew_lock_keeps_a_message_past_its_first_lock(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await send(client, servicebus_queue, ServiceBusMessage(b"slow", message_id="r"))
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receive(receiver, 1)
        first_expiry = message.locked_until_utc
        assert first_expiry is not None

        async def renewed_past_the_first_lock() -> bool:
            await receiver.renew_message_lock(message)
            return datetime.datetime.now(datetime.UTC) > first_expiry + datetime.timedelta(
                seconds=0.5
            )

        await wait_for(renewed_past_the_first_lock, 10, interval=0.5)
        assert message.locked_until_utc is not None
        assert message.locked_until_utc > first_expiry
        await receiver.complete_message(message)
    counts = servicebus_peer.counts(servicebus_queue)
    assert (counts.completed, counts.redelivered) == (1, 0)


@pytest.mark.servicebus_queue(lock_duration=1)
async def test_an_expired_lock_redelivers_and_its_settlement_is_refused(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await send(client, servicebus_queue, ServiceBusMessage(b"x", message_id="e"))
    async with client.get_queue_receiver(servicebus_queue) as receiver:
        [message] = await receive(receiver, 1)
        await wait_for(
            lambda: servicebus_peer.counts(servicebus_queue).redelivered == 1,
            5,
            description="the lock expired",
        )
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(message)
        [again] = await receive(receiver, 1)
        assert again.delivery_count == 1
        await receiver.complete_message(again)


async def test_a_lock_the_peer_no_longer_knows_is_refused_as_lost(
    client: ServiceBusClient, servicebus_peer_factory: ServiceBusPeerFactory
) -> None:
    # The peer's own check, not the SDK's: the client still believes in the lock.
    peer = servicebus_peer_factory()
    async with ServiceBusClient.from_connection_string(peer.connection_string) as own:
        await send(own, "q", ServiceBusMessage(b"x", message_id="gone"))
        async with own.get_queue_receiver("q") as receiver:
            [message] = await receive(receiver, 1)
            peer.delete("q")
            with pytest.raises(MessageLockLostError):
                await receiver.complete_message(message)


async def test_after_max_deliveries_a_message_is_dead_lettered(
    servicebus_peer_factory: ServiceBusPeerFactory,
) -> None:
    peer = servicebus_peer_factory(max_delivery_count=2)
    peer.send("q", b"x", message_id="p")
    async with (
        ServiceBusClient.from_connection_string(peer.connection_string) as client,
        client.get_queue_receiver("q") as receiver,
    ):
        for _ in range(2):
            [message] = await receive(receiver, 1)
            await receiver.abandon_message(message)
    [dead] = peer.dead_letters("q")
    assert dead.application_properties["DeadLetterReason"] == "MaxDeliveryCountExceeded"
    assert dead.delivery_count == 2


async def test_a_topic_copies_each_message_to_every_subscription(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer
) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}"
    servicebus_peer.create_subscription(topic, "a")
    await send(client, topic, ServiceBusMessage(b"1"), ServiceBusMessage(b"2"))
    # Subscribing by attaching a receiver; it gets only what was sent after.
    async with client.get_subscription_receiver(topic, "b") as late:
        await send(client, topic, ServiceBusMessage(b"3"))
        assert bodies(await receive(late, 1)) == [b"3"]
    async with client.get_subscription_receiver(topic, "a") as early:
        messages = await receive(early, 3)
        assert bodies(messages) == [b"1", b"2", b"3"]
        for message in messages:
            await early.complete_message(message)
    assert servicebus_peer.counts(f"{topic}/Subscriptions/a").completed == 3


async def test_receive_and_delete_settles_on_delivery(
    client: ServiceBusClient, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    servicebus_peer.send(servicebus_queue, b"gone", message_id="rd")
    async with client.get_queue_receiver(
        servicebus_queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        [message] = await receive(receiver, 1)
    assert message.message_id == "rd"
    counts = servicebus_peer.counts(servicebus_queue)
    assert (counts.pending, counts.completed) == (0, 1)


@DROPPED_SOCKET
async def test_a_restart_on_the_same_port_keeps_messages_and_locks(
    servicebus_peer_factory: ServiceBusPeerFactory,
) -> None:
    peer = servicebus_peer_factory()
    port = peer.port
    for n in range(3):
        peer.send("q", b"%d" % n, message_id=f"r{n}")
    async with (
        ServiceBusClient.from_connection_string(peer.connection_string) as client,
        client.get_queue_receiver("q") as receiver,
    ):
        [locked] = await receive(receiver, 1)
        await wait_for(lambda: peer.connections > 0, 5, description="a connection")

        peer.stop()
        assert peer.connections == 0
        assert not peer.running
        peer.start()

        assert peer.port == port
        counts = peer.counts("q")
        assert (counts.active, counts.locked) == (2, 1)
        # The SDK's next receive raises the dropped connection; the one after
        # reconnects the same receiver, within its wait: 0.5 s is too short for
        # the SDK to authenticate and attach again.
        rest = await receive(receiver, 2, timeout=30, wait=5, ignore=(ServiceBusConnectionError,))
        assert sorted(str(m.message_id) for m in rest) == ["r1", "r2"]
        for message in rest:
            await receiver.complete_message(message)
    assert locked.message_id == "r0"
    assert peer.counts("q").completed == 2
    gc.collect()  # see DROPPED_SOCKET


def test_start_fails_on_a_port_in_use_and_stop_is_idempotent() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        peer = ServiceBusPeer(taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="is in use"):
            peer.start()
    assert not peer.running
    peer.stop()
    peer.stop()


def test_connection_string_selects_the_sdks_plain_tcp_mode(servicebus_peer: ServiceBusPeer) -> None:
    parts = dict(p.split("=", 1) for p in servicebus_peer.connection_string.split(";"))
    assert parts["Endpoint"] == f"sb://127.0.0.1:{servicebus_peer.port}"
    assert parts["UseDevelopmentEmulator"] == "true"
    assert servicebus_peer.running
