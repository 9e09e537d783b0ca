"""The Service Bus listener through the real runner and the real azure-servicebus SDK,
against jobwire's Service Bus test peer (``jobwire.testing.servicebus_peer``).

The peer speaks the SDK's wire protocol (auth, peek-lock, settlement, lock
renewal, dead-letter sub-queue); it is not Service Bus. What it does not prove
(TLS, Entra ID, sessions, quotas, real lock semantics under load) is listed in
its module.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import pytest
import pytest_asyncio
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusConnectionError
from nats.aio.client import Client as NatsClient

from jobwire.contracts.listeners import ListenerDefinition, ServiceBusListenerParams
from jobwire.contracts.subjects import Stream
from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.sources import SourceContext, Trigger
from jobwire.listeners.sources.servicebus import ServiceBusSource
from jobwire.listeners.supervisor import Supervisor
from jobwire.runtime.embedded import free_port
from jobwire.runtime.secrets import Secrets
from jobwire.testing import wait_for
from jobwire.testing.servicebus_fixtures import ServiceBusPeerFactory
from jobwire.testing.servicebus_peer import EntityCounts, ServiceBusPeer

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration

SECRET = "servicebus-connection"
WORKFLOW = "order-received"

# azure-servicebus 7.15 leaves the socket of a connection the peer dropped to the
# garbage collector (a ResourceWarning when collected). Tests that drop
# connections collect it themselves, under this mark, so that it stays theirs.
DROPPED_SOCKET = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <(socket.socket|function (StreamWriter|_SelectorTransport)"
    ".__del__):pytest.PytestUnraisableExceptionWarning"
)


def environ(peer: ServiceBusPeer) -> dict[str, str]:
    return {"JOBWIRE_SECRET_SERVICEBUS_CONNECTION": peer.connection_string}


def params(queue: str, **extra: Any) -> dict[str, Any]:
    return {"workflow": WORKFLOW, "connection_string": SECRET, "queue": queue, **extra}


async def send(
    peer: ServiceBusPeer, entity: str, bodies: Sequence[bytes], *, prefix: str = "m"
) -> list[str]:
    """Send with the SDK, in batches; the message ids, ``<prefix>-<n>``."""
    ids = [f"{prefix}-{n}" for n in range(len(bodies))]
    async with (
        ServiceBusClient.from_connection_string(peer.connection_string) as client,
        client.get_queue_sender(entity) as sender,
    ):
        for start in range(0, len(bodies), 250):
            batch = [
                ServiceBusMessage(body, message_id=ids[n], application_properties={"n": n})
                for n, body in enumerate(bodies[start : start + 250], start)
            ]
            await asyncio.wait_for(sender.send_messages(batch), 30)
    return ids


def orders(count: int) -> list[bytes]:
    return [json.dumps({"order": n}).encode() for n in range(count)]


async def wait_starts(listeners: Listeners, count: int, timeout: float) -> list[StartWorkflow]:
    """Every StartWorkflow once there are at least ``count``."""

    async def enough() -> list[StartWorkflow]:
        starts = await listeners.starts()
        return starts if len(starts) >= count else []

    return await wait_for(enough, timeout, description=f"{count} StartWorkflow")


def order_numbers(starts: Sequence[StartWorkflow]) -> list[int]:
    return sorted(int(cast(dict[str, Any], s.input)["body"]["order"]) for s in starts)


def running(supervisor: Supervisor) -> bool:
    return any(s.state == "Running" for s in supervisor.statuses())


async def wait_settled(
    peer: ServiceBusPeer, entity: str, completed: int, timeout: float = 10
) -> EntityCounts:
    """The entity's counts once ``completed`` were completed and nothing is pending."""

    def done() -> EntityCounts | None:
        counts = peer.counts(entity)
        return counts if counts.pending == 0 and counts.completed == completed else None

    found = await wait_for(done, timeout, description=f"{completed} completed in {entity}")
    assert found is not None
    return found


# ------------------------------------------------------------------- tests


async def test_two_competing_replicas_start_every_message_exactly_once(
    listeners: Listeners, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    definition = await listeners.define("servicebus-listener", params(servicebus_queue), replicas=2)
    first = listeners.start(environ=environ(servicebus_peer))
    second = listeners.start(environ=environ(servicebus_peer))
    await wait_for(lambda: running(first), 20, description="first instance's slot running")
    await wait_for(lambda: running(second), 20, description="second instance's slot running")

    ids = await send(servicebus_peer, servicebus_queue, orders(1000))

    starts = await wait_starts(listeners, 1000, 60)
    counts = await wait_settled(servicebus_peer, servicebus_queue, 1000, 20)
    assert len(starts) == 1000
    assert order_numbers(starts) == list(range(1000))
    assert {s.idempotency_key for s in starts} == {f"listener:{definition.job_id}:{i}" for i in ids}
    # Each message reached a runner once: none was abandoned or outlived its lock.
    assert (counts.redelivered, counts.dead_lettered) == (0, 0)
    # Both slots (one per instance) did part of the work.
    by_slot = servicebus_peer.completed_by(servicebus_queue)
    assert sorted(by_slot) == [f"jobwire-{definition.job_id}-{slot}" for slot in (0, 1)]
    assert sum(by_slot.values()) == 1000
    assert min(by_slot.values()) > 0
    sample = next(s for s in starts if s.origin.coordinates["message_id"] == "m-7")
    assert sample.workflow == WORKFLOW
    assert sample.origin.coordinates == {
        "entity": servicebus_queue,
        "message_id": "m-7",
        "sequence_number": 8,
    }
    assert sample.input == {
        "body": {"order": 7},
        "key": "m-7",
        "headers": {"n": "7"},
        "source": sample.origin.coordinates,
    }


@pytest.mark.servicebus_queue(lock_duration=60)
async def test_a_batch_not_published_before_stopping_is_abandoned_and_redelivered_at_once(
    listeners: Listeners, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    """JetStream's WORKFLOWS stream is gone for a while: every publish fails, the
    runner retries, and is stopped meanwhile. It abandons the batch, so the next
    instance gets it at once — not after the 60 s lock."""
    await listeners.define("servicebus-listener", params(servicebus_queue))
    broker = listeners.broker
    await broker.js.delete_stream(broker.subjects.stream_name(Stream.WORKFLOWS))
    first = listeners.start(environ=environ(servicebus_peer))
    await wait_for(lambda: running(first), 20, description="slot running")
    await send(servicebus_peer, servicebus_queue, orders(20))

    def failing_to_publish() -> bool:
        return (
            any(s.errors and s.received == 20 for s in first.statuses())
            and servicebus_peer.counts(servicebus_queue).locked == 20
        )

    await wait_for(failing_to_publish, 20, description="20 received and failing to publish")
    await listeners.stop(first)

    counts = servicebus_peer.counts(servicebus_queue)
    assert (counts.active, counts.locked, counts.redelivered) == (20, 0, 20)
    assert all(m.delivery_count == 1 for m in servicebus_peer.messages(servicebus_queue))

    await broker.ensure_streams()
    started = time.monotonic()
    listeners.start(environ=environ(servicebus_peer))
    starts = await wait_starts(listeners, 20, 20)
    await wait_settled(servicebus_peer, servicebus_queue, 20, 10)
    assert time.monotonic() - started < 30  # well within the lock duration
    assert order_numbers(starts) == list(range(20))
    assert servicebus_peer.counts(servicebus_queue).redelivered == 20


async def test_poison_is_dead_lettered_in_service_bus_and_in_jobwire(
    listeners: Listeners, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await listeners.define("servicebus-listener", params(servicebus_queue))
    listeners.start(environ=environ(servicebus_peer))
    await send(servicebus_peer, servicebus_queue, [b"{not json", b'{"order": 1}'])

    dead = await wait_for(listeners.dead_letters, 20, description="a jobwire dead letter")
    await wait_starts(listeners, 1, 10)
    in_service_bus = await wait_for(
        lambda: servicebus_peer.dead_letters(servicebus_queue), 10, description="SB dead letter"
    )

    [record] = dead
    assert record.reason == "undecodable"
    assert record.payload == b"{not json"
    assert record.subject == servicebus_queue
    assert record.headers["jobwire-trigger-key"] == "m-0"
    [message] = in_service_bus
    assert message.message_id == "m-0"
    assert message.body == b"{not json"
    assert message.application_properties["DeadLetterReason"] == "undecodable"
    assert message.application_properties["DeadLetterErrorDescription"] == record.detail
    assert "not JSON" in record.detail
    counts = await wait_settled(servicebus_peer, servicebus_queue, 1, 10)
    assert counts.dead_lettered == 1


@pytest.mark.servicebus_queue(lock_duration=5)
async def test_locks_are_renewed_while_publishing_takes_longer_than_the_lock(
    listeners: Listeners, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    """Publishing fails for ~12 s (the WORKFLOWS stream is gone), more than twice
    the 5 s lock: the SDK's AutoLockRenewer keeps the locks, so the batch is
    completed once published and nothing is redelivered."""
    await listeners.define("servicebus-listener", params(servicebus_queue))
    broker = listeners.broker
    await broker.js.delete_stream(broker.subjects.stream_name(Stream.WORKFLOWS))
    listeners.start(environ=environ(servicebus_peer))
    await send(servicebus_peer, servicebus_queue, orders(10))
    await wait_for(
        lambda: servicebus_peer.counts(servicebus_queue).locked == 10, 20, description="locked"
    )
    locked_at = time.monotonic()

    async def lock_outlived_twice() -> bool:
        return time.monotonic() - locked_at > 12

    await wait_for(lock_outlived_twice, 20, interval=0.5)
    assert servicebus_peer.counts(servicebus_queue).locked == 10
    await broker.ensure_streams()

    starts = await wait_starts(listeners, 10, 40)
    counts = await wait_settled(servicebus_peer, servicebus_queue, 10, 10)
    assert counts.redelivered == 0
    assert order_numbers(starts) == list(range(10))


@DROPPED_SOCKET
async def test_a_peer_restart_under_a_running_listener_loses_nothing(
    listeners: Listeners, servicebus_peer_factory: ServiceBusPeerFactory
) -> None:
    peer = servicebus_peer_factory(lock_duration=5)
    queue = peer.create_queue("orders")
    await listeners.define("servicebus-listener", params(queue))
    supervisor = listeners.start(environ=environ(peer))
    await send(peer, queue, orders(200))
    await wait_starts(listeners, 50, 20)

    peer.stop()
    await wait_for(
        lambda: any(s.errors for s in supervisor.statuses()), 20, description="listener noticed"
    )
    peer.start()
    await send(
        peer, queue, [json.dumps({"order": n}).encode() for n in range(200, 300)], prefix="n"
    )

    starts = await wait_starts(listeners, 300, 60)
    await wait_for(lambda: peer.counts(queue).pending == 0, 30, description="queue drained")
    assert order_numbers(starts) == list(range(300))
    assert len({s.idempotency_key for s in starts}) == 300
    [slot] = supervisor.statuses()
    assert slot.state == "Running"
    assert peer.counts(queue).dead_lettered == 0
    await listeners.stop(supervisor)
    gc.collect()  # see DROPPED_SOCKET


async def test_a_topic_subscription_listener_gets_its_copy_only(
    listeners: Listeners, servicebus_peer: ServiceBusPeer
) -> None:
    topic = f"t{time.monotonic_ns()}"
    ours = servicebus_peer.create_subscription(topic, "jobwire")
    theirs = servicebus_peer.create_subscription(topic, "billing")
    await listeners.define(
        "servicebus-listener",
        {
            "workflow": WORKFLOW,
            "connection_string": SECRET,
            "topic": topic,
            "subscription": "jobwire",
            "input": {"body": "text", "wrap": False},
        },
    )
    listeners.start(environ=environ(servicebus_peer))
    await send(servicebus_peer, topic, [b"a", b"b", b"c"])

    starts = await wait_starts(listeners, 3, 20)
    await wait_settled(servicebus_peer, ours, 3, 10)
    assert sorted(str(s.input) for s in starts) == ["a", "b", "c"]
    assert {s.origin.coordinates["entity"] for s in starts} == {f"{topic}/Subscriptions/jobwire"}
    assert servicebus_peer.counts(theirs).active == 3
    servicebus_peer.delete(ours)
    servicebus_peer.delete(theirs)


# ------------------------------------------------------ the source on its own


@pytest_asyncio.fixture(loop_scope="session")
async def make_source(nats_client: NatsClient, namespace: str) -> AsyncIterator[Any]:
    made: list[ServiceBusSource] = []

    def make(values: dict[str, Any], env: dict[str, str], **options: Any) -> ServiceBusSource:
        model = ServiceBusListenerParams(**{"workflow": WORKFLOW, **values})
        definition = ListenerDefinition(
            job_id="sb-job",
            job_name="sb",
            job_type="servicebus-listener",
            job_version=1,
            replicas=1,
            params=model.model_dump(mode="json"),
        )
        context = SourceContext(
            definition=definition,
            slot=0,
            secrets=Secrets(None, env),
            nc=nats_client,
            js=nats_client.jetstream(),
            namespace=namespace,
        )
        source = ServiceBusSource(model, context, **options)
        made.append(source)
        return source

    try:
        yield make
    finally:
        for source in made:
            await source.close()


async def receive(source: ServiceBusSource, count: int) -> list[Trigger]:
    got: list[Trigger] = []

    async def enough() -> bool:
        got.extend(await source.receive(100, 0.5))
        return len(got) >= count

    await wait_for(enough, 20, interval=0, description=f"{count} triggers")
    return got


async def test_trigger_carries_ids_properties_and_prefixed_message_properties(
    make_source: Any, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    async with (
        ServiceBusClient.from_connection_string(servicebus_peer.connection_string) as client,
        client.get_queue_sender(servicebus_queue) as sender,
    ):
        await sender.send_messages(
            ServiceBusMessage(
                b'{"id": 1}',
                message_id="order-1",
                content_type="application/json",
                correlation_id="c-9",
                subject="created",
                application_properties={"tenant": "acme", "attempt": 2},
            )
        )
    # From another AMQP client: no message id, a binary property that is not UTF-8.
    servicebus_peer.send(servicebus_queue, b"no id", application_properties={"raw": b"\xffok"})
    source = make_source(params(servicebus_queue), environ(servicebus_peer))
    await source.open()

    first, second = await receive(source, 2)

    assert first.key == "order-1"
    assert first.subject == servicebus_queue
    assert first.coordinates == {
        "entity": servicebus_queue,
        "message_id": "order-1",
        "sequence_number": 1,
    }
    assert first.body == b'{"id": 1}'
    assert first.message_key == b"order-1"
    assert first.headers == {
        "tenant": "acme",
        "attempt": "2",
        "servicebus.content_type": "application/json",
        "servicebus.correlation_id": "c-9",
        "servicebus.subject": "created",
    }
    assert first.poison is None
    assert second.key == "seq-2"
    assert second.coordinates["message_id"] == ""
    assert second.message_key is None
    assert second.body == b"no id"
    assert second.headers == {"raw": "\\xffok"}
    assert source.lag() is None
    await source.ack([first, second])
    await wait_settled(servicebus_peer, servicebus_queue, 2, 10)


async def test_ack_after_the_lock_expired_logs_and_the_message_comes_again(
    make_source: Any, servicebus_peer: ServiceBusPeer
) -> None:
    queue = servicebus_peer.create_queue(f"q{time.monotonic_ns()}", lock_duration=1)
    servicebus_peer.send(queue, b"{}", message_id="late")
    # Renewals stop after 0.5 s: the 1 s lock runs out, as when handling outlasts
    # max_lock_renewal_seconds.
    source = make_source(params(queue, max_lock_renewal_seconds=0.5), environ(servicebus_peer))
    await source.open()
    [late] = await receive(source, 1)
    await wait_for(
        lambda: servicebus_peer.counts(queue).redelivered >= 1, 10, description="lock expired"
    )

    await source.ack([late])  # must not raise: the message comes again

    [again] = await receive(source, 1)
    assert again.key == "late"
    assert again.token.delivery_count >= 1
    servicebus_peer.delete(queue)


async def test_release_abandons_at_once(
    make_source: Any, servicebus_peer: ServiceBusPeer, servicebus_queue: str
) -> None:
    await send(servicebus_peer, servicebus_queue, orders(3))
    source = make_source(params(servicebus_queue), environ(servicebus_peer))
    await source.open()
    batch = await receive(source, 3)

    await source.release(batch)

    assert servicebus_peer.counts(servicebus_queue).redelivered == 3
    again = await receive(source, 3)
    assert sorted(t.key for t in again) == ["m-0", "m-1", "m-2"]
    assert {t.token.delivery_count for t in again} == {1}


async def test_open_gives_up_within_its_bound_on_a_silent_server(make_source: Any) -> None:
    # Accepts TCP connections (the kernel's backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        connection = (
            f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;"
            "SharedAccessKey=s3cr3t-key;UseDevelopmentEmulator=true"
        )
        source = make_source(
            params("orders"),
            {"JOBWIRE_SECRET_SERVICEBUS_CONNECTION": connection},
            open_timeout=1.0,
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not open within 1 s") as raised:
            await source.open()
        assert time.monotonic() - started < 5
    assert "s3cr3t" not in str(raised.value)
    await source.close()
    await source.close()  # twice: still no error


async def test_credentials_never_show_in_errors(make_source: Any) -> None:
    malformed = make_source(
        params("orders"), {"JOBWIRE_SECRET_SERVICEBUS_CONNECTION": "s3cr3t;not=a;connection"}
    )
    with pytest.raises(ValueError, match="'servicebus-connection'") as raised:
        await malformed.open()
    assert "s3cr3t" not in str(raised.value)

    # A namespace with a SAS key: the SDK uses TLS on 5671, where nothing listens.
    by_key = make_source(
        {
            "queue": "orders",
            "fully_qualified_namespace": f"127.0.0.1:{free_port()}",
            "sas_key_name": "listen",
            "sas_key": "servicebus-key",
        },
        {"JOBWIRE_SECRET_SERVICEBUS_KEY": "s3cr3t-sas-key"},
        open_timeout=1.5,
    )
    with pytest.raises((ServiceBusConnectionError, TimeoutError)) as failed:
        await by_key.open()
    assert "s3cr3t" not in repr(failed.value)
