"""NATS fixtures: shared server, per-test namespace cleanup, dedicated servers for outages."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from jobwire.runtime.embedded import pid_alive
from jobwire.testing import purge_namespace, wait_for
from jobwire.testing.plugin import NatsServerFactory

pytestmark = pytest.mark.integration


async def test_nats_client_is_connected(nats_client: NatsClient, namespace: str) -> None:
    subscription = await nats_client.subscribe(f"{namespace}.ping")
    await nats_client.publish(f"{namespace}.ping", b"pong")
    message = await subscription.next_msg(timeout=2)
    assert message.data == b"pong"


async def test_purge_namespace_deletes_its_streams_and_buckets_only(
    nats_client: NatsClient, nats_url: str, namespace: str
) -> None:
    js = nats_client.jetstream()
    upper = namespace.upper()
    await js.add_stream(name=f"{upper}_JOBS", subjects=[f"{namespace}.jobs.>"])
    await js.create_key_value(bucket=f"{namespace}_state")
    await js.create_key_value(bucket=f"{upper}_LOCKS")
    await js.add_stream(name="KEEP_" + upper, subjects=[f"keep.{namespace}"])
    try:
        deleted = await purge_namespace(nats_url, namespace)
        assert sorted(deleted) == sorted(
            [f"{upper}_JOBS", f"KV_{namespace}_state", f"KV_{upper}_LOCKS"]
        )
        with pytest.raises(NotFoundError):
            await js.stream_info(f"{upper}_JOBS")
        assert (await js.stream_info("KEEP_" + upper)).config.name == "KEEP_" + upper
    finally:
        await js.delete_stream("KEEP_" + upper)


_namespaces: list[str] = []


async def test_namespace_is_unique(namespace: str, nats_client: NatsClient) -> None:
    assert namespace.startswith("t")
    assert len(namespace) == 11
    assert namespace not in _namespaces
    await nats_client.jetstream().add_stream(
        name=f"{namespace.upper()}_JOBS", subjects=[f"{namespace}.jobs.>"]
    )
    _namespaces.append(namespace)


async def test_namespace_streams_were_deleted_after_the_test(nats_client: NatsClient) -> None:
    assert len(_namespaces) == 1
    with pytest.raises(NotFoundError):
        await nats_client.jetstream().stream_info(f"{_namespaces[0].upper()}_JOBS")


_outage_pids: list[int] = []


async def test_nats_server_factory_survives_an_outage(
    nats_server_factory: NatsServerFactory, nats_url: str
) -> None:
    server = nats_server_factory()
    assert server.url != nats_url
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    client = await nats.connect(
        server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1, reconnected_cb=on_reconnect
    )
    try:
        js = client.jetstream()
        await js.add_stream(name="OUTAGE", subjects=["outage.>"])
        await js.publish("outage.before", b"1")
        first_pid = server.pid
        assert first_pid is not None

        server.stop()
        assert not pid_alive(first_pid)
        await wait_for(lambda: client.is_reconnecting, timeout=5, description="client notices")
        server.start()
        await wait_for(reconnected.is_set, timeout=5, description="client reconnects")

        await js.publish("outage.after", b"2")
        assert (await js.stream_info("OUTAGE")).state.messages == 2
        assert server.pid is not None
        _outage_pids.append(server.pid)
    finally:
        await client.close()


def test_nats_server_factory_stopped_its_servers() -> None:
    assert len(_outage_pids) == 1
    assert not pid_alive(_outage_pids[0])
