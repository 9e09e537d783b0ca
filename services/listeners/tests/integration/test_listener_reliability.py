"""Listeners under fire: real ``jobwire listeners`` processes killed by PID (SIGKILL),
NATS stopped under them, poison in the stream. Whatever happens, each message or
file starts exactly one workflow: the WORKFLOWS stream holds one StartWorkflow per
source message, and the source is acked only after that.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from jobwire.contracts.listeners import ListenerSlotStatus
from jobwire.runtime.hosts import live_hosts
from jobwire.testing import wait_for
from jobwire.testing.fleet import Fleet, Instance

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration

JOBWIRE = str(Path(sys.executable).with_name("jobwire"))


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


async def slot_states(js: Any, namespace: str, job_id: str) -> dict[str, list[str]]:
    """Instance id → states it reports for the job (host registry)."""
    found: dict[str, list[str]] = {}
    for host in await live_hosts(js, namespace):
        for raw in host.status.get("listeners", []):
            status = ListenerSlotStatus.model_validate(raw)
            if status.job_id == job_id:
                found.setdefault(host.instance_id, []).append(status.state)
    return found


async def owner(js: Any, namespace: str, job_id: str) -> str | None:
    states = await slot_states(js, namespace, job_id)
    running = [instance for instance, s in states.items() if "Running" in s]
    return running[0] if len(running) == 1 else None


async def test_the_standby_takes_over_within_the_lease_time_and_nothing_fires_twice(
    listeners: Listeners, fleet: Fleet, nats_client: NatsClient, nats_url: str, namespace: str
) -> None:
    """Two instances, one listener (replicas = 1), default lease settings (10 s TTL,
    2 s renewal). Messages keep arriving; the owner is SIGKILLed mid-flow. The standby
    must run the listener within 15 s, and every message must start one workflow."""
    js = nats_client.jetstream()
    stream, subject = f"{namespace}_IN", f"{namespace}in.orders"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    definition = await listeners.define(
        "message-bus-listener",
        {
            "workflow": "order",
            "mode": "jetstream",
            "stream": stream,
            "subject": subject,
            "deliver": "all",
        },
    )
    instances = {i.name: i for i in (fleet.start(nats_url), fleet.start(nats_url))}
    sent = 0

    async def produce(stop: asyncio.Event) -> None:
        nonlocal sent
        while not stop.is_set():
            await js.publish(subject, json.dumps({"n": sent}).encode())
            sent += 1
            await asyncio.sleep(0.005)  # a steady trickle, ~150 messages/s

    with fleet.explained():
        for instance in instances.values():
            await fleet.ready(instance)
        first = await wait_for(
            lambda: owner(js, namespace, definition.job_id), timeout=20, description="an owner"
        )
        standby_states = await wait_for(
            lambda: _standby(js, namespace, definition.job_id, first),
            timeout=10,
            description="the other instance reports Suspended",
        )
        assert standby_states == ["Suspended"]
        stop = asyncio.Event()
        producer = asyncio.create_task(produce(stop))
        await wait_for(lambda: _count(listeners, 300), timeout=20, description="flowing")

        victim = _instance(fleet, first)
        fleet.kill(victim)
        killed_at = time.monotonic()
        second = await wait_for(
            lambda: _new_owner(js, namespace, definition.job_id, first),
            timeout=20,
            interval=0.05,
            description="the standby running the listener",
        )
        takeover = time.monotonic() - killed_at
        await asyncio.sleep(1.0)  # let messages flow through the new owner, then stop
        stop.set()
        await producer

        starts = await wait_for(
            # What the victim had in flight comes back after the consumer's ack wait (15 s).
            lambda: _count(listeners, sent),
            timeout=40,
            description=f"{sent} starts",
        )

    keys = [s.idempotency_key for s in starts]
    assert len(keys) == len(set(keys)) == sent, "one StartWorkflow per message"
    assert sorted(s.input["body"]["n"] for s in starts) == list(range(sent))  # type: ignore[index]
    assert second != first
    assert takeover <= 15.0, f"took over after {takeover:.1f} s"
    print(
        f"\nfailover: SIGKILL → standby Running in {takeover:.2f} s "
        f"(lease TTL 10 s, renewal every 2 s); {sent} messages, {sent} workflows started"
    )


async def test_too_large_for_nats_is_dead_lettered_with_its_bytes_kept(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    """A 900 KB message fits NATS; base64 in a StartWorkflow it does not. The dead
    letter cannot carry it either: its bytes go to the object store, named in it."""
    js = nats_client.jetstream()
    stream, subject = f"{namespace}_BIG", f"{namespace}big.files"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    payload = bytes(range(256)) * 3600  # 921,600 bytes
    await js.publish(subject, payload)
    await js.publish(subject, b"small")
    await listeners.define(
        "message-bus-listener",
        {
            "workflow": "w",
            "mode": "jetstream",
            "stream": stream,
            "subject": subject,
            "deliver": "all",
            "max_message_bytes": 4 * 1024 * 1024,
            "input": {"body": "base64"},
        },
    )
    listeners.start()

    [dead] = await wait_for(lambda: _dead(listeners), timeout=20, description="a dead letter")
    [start] = await wait_for(lambda: _count(listeners, 1), timeout=10, description="1 start")

    assert dead.reason == "too_large"
    assert "NATS allows" in dead.detail
    assert dead.payload == b""
    bucket, _, name = dead.headers["jobwire-payload-object"].partition("/")
    kept = await (await js.object_store(bucket)).get(name)
    assert kept.data == payload
    assert start.input["body"] == "c21hbGw="  # type: ignore[index]


# -- helpers ------------------------------------------------------------------------


def _instance(fleet: Fleet, instance_id: str) -> Instance:
    [found] = [i for i in fleet.replicas if instance_id.endswith(i.name)]
    return found


async def _standby(js: Any, namespace: str, job_id: str, owner_id: str) -> list[str] | None:
    states = await slot_states(js, namespace, job_id)
    others = [s for instance, s in states.items() if instance != owner_id]
    return others[0] if others else None


async def _new_owner(js: Any, namespace: str, job_id: str, old: str) -> str | None:
    states = await slot_states(js, namespace, job_id)
    for instance, found in states.items():
        if instance != old and "Running" in found:
            return instance
    return None


async def _count(listeners: Listeners, count: int):  # type: ignore[no-untyped-def]
    found = await listeners.starts()
    return found if len(found) >= count else None


async def _dead(listeners: Listeners):  # type: ignore[no-untyped-def]
    return await listeners.dead_letters() or None
