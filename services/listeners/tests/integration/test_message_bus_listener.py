"""The listener runner and supervisor end to end, through the NATS message-bus source."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from jobwire.listeners.supervisor import Supervisor
from jobwire.testing import wait_for

if TYPE_CHECKING:
    from conftest import Listeners

pytestmark = pytest.mark.integration


async def _source_stream(nats_client: NatsClient, namespace: str) -> tuple[str, str]:
    """A stream of some other application, the kind a listener reads."""
    stream, prefix = f"{namespace}_ORDERS", f"{namespace}app.orders"
    await nats_client.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"]))
    return stream, prefix


def _jetstream_params(stream: str, prefix: str, **extra: object) -> dict[str, object]:
    return {
        "workflow": "order-received",
        "mode": "jetstream",
        "stream": stream,
        "subject": f"{prefix}.>",
        "deliver": "all",
        **extra,
    }


def _slots(supervisor: Supervisor) -> list[dict[str, object]]:
    return [s.model_dump() for s in supervisor.statuses()]


async def test_each_message_starts_one_workflow_and_is_acked_after(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    stream, prefix = await _source_stream(nats_client, namespace)
    js = nats_client.jetstream()
    for n in range(300):
        await js.publish(
            f"{prefix}.created", json.dumps({"order": n}).encode(), headers={"x-tenant": "acme"}
        )
    definition = await listeners.define(
        "message-bus-listener",
        _jetstream_params(stream, prefix, input={"correlation_id": "body:/order"}),
    )
    supervisor = listeners.start()

    starts = await listeners.wait_starts(300, timeout=30)

    assert sorted(s.input["body"]["order"] for s in starts) == list(range(300))  # type: ignore[index]
    first = min(starts, key=lambda s: s.origin.coordinates["sequence"])
    assert first.workflow == "order-received"
    assert first.idempotency_key == f"listener:{definition.job_id}:{stream}/1"
    assert first.origin.kind == "listener"
    assert first.origin.job_id == definition.job_id
    assert first.origin.coordinates == {
        "subject": f"{prefix}.created",
        "stream": stream,
        "sequence": 1,
    }
    assert first.input["headers"] == {"x-tenant": "acme"}  # type: ignore[index]
    assert first.correlation_id == "0"
    consumer = await js.consumer_info(stream, f"jobwire-{definition.job_id}")
    await wait_for(
        lambda: _acked(js, stream, f"jobwire-{definition.job_id}"),
        timeout=10,
        description="every source message acked",
    )
    assert consumer.num_pending == 0
    [slot] = _slots(supervisor)
    assert slot["state"] == "Running"
    assert slot["published"] == 300
    assert slot["slot"] == 0


async def test_a_restart_neither_refires_nor_misses(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    stream, prefix = await _source_stream(nats_client, namespace)
    js = nats_client.jetstream()
    await listeners.define("message-bus-listener", _jetstream_params(stream, prefix))
    first = listeners.start()
    for n in range(50):
        await js.publish(f"{prefix}.a", json.dumps(n).encode())
    await listeners.wait_starts(50, timeout=20)
    await listeners.stop(first)
    for n in range(50, 80):  # arrive while no listener runs
        await js.publish(f"{prefix}.a", json.dumps(n).encode())
    listeners.start()

    starts = await listeners.wait_starts(80, timeout=20)

    assert sorted(s.input["body"] for s in starts) == list(range(80))  # type: ignore[index]


async def test_poison_goes_to_the_dead_letter_stream_with_its_reason(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    stream, prefix = await _source_stream(nats_client, namespace)
    js = nats_client.jetstream()
    await js.publish(f"{prefix}.bad", b"{not json")
    await js.publish(f"{prefix}.bad", b"\xff\xfe binary")
    await js.publish(f"{prefix}.big", json.dumps("x" * 5000).encode())
    await js.publish(f"{prefix}.good", b'{"ok": true}')
    await listeners.define(
        "message-bus-listener", _jetstream_params(stream, prefix, max_message_bytes=4096)
    )
    supervisor = listeners.start()

    dead = await wait_for(
        lambda: _when(listeners.dead_letters(), 3), timeout=20, description="3 dead letters"
    )
    starts = await listeners.wait_starts(1, timeout=10)

    assert sorted((d.subject, d.reason) for d in dead) == [
        (f"{prefix}.bad", "undecodable"),
        (f"{prefix}.bad", "undecodable"),
        (f"{prefix}.big", "too_large"),
    ]
    assert sorted(d.payload for d in dead if d.reason == "undecodable") == [
        b"{not json",
        b"\xff\xfe binary",
    ]
    assert all(d.source == "message-bus-listener" for d in dead)
    assert "not JSON" in next(d.detail for d in dead if d.payload == b"{not json")
    assert "5002 bytes" in next(d.detail for d in dead if d.reason == "too_large")
    assert [s.input["body"] for s in starts] == [{"ok": True}]  # type: ignore[index]
    [slot] = _slots(supervisor)
    assert slot["dead_lettered"] == 3
    assert slot["published"] == 1


async def test_core_subject_in_a_queue_group(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    subject = f"{namespace}app.events"
    await listeners.define(
        "message-bus-listener",
        {
            "workflow": "event",
            "mode": "core",
            "subject": subject,
            "queue_group": "q",
            "input": {"body": "text", "wrap": False},
        },
    )
    supervisor = listeners.start()
    await wait_for(lambda: _running(supervisor), timeout=10, description="listener running")
    for n in range(20):
        await nats_client.publish(
            subject, f"event {n}".encode(), headers={"Nats-Msg-Id": f"e{n % 10}"}
        )
    await nats_client.flush()

    starts = await listeners.wait_starts(10, timeout=10)

    # A publisher's own Nats-Msg-Id keeps its duplicates out, even on core NATS.
    assert sorted(s.input for s in starts) == sorted(f"event {n}" for n in range(10))


async def test_definition_changes_are_picked_up_live(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    stream, prefix = await _source_stream(nats_client, namespace)
    js = nats_client.jetstream()
    definition = await listeners.define("message-bus-listener", _jetstream_params(stream, prefix))
    supervisor = listeners.start()
    await wait_for(lambda: _running(supervisor), timeout=10, description="running")

    await listeners.define(
        "message-bus-listener",
        _jetstream_params(stream, prefix, workflow="order-v2"),
        job_id=definition.job_id,
        name=definition.job_name,
        version=2,
    )
    await wait_for(
        lambda: _running(supervisor, version=2), timeout=10, description="restarted as version 2"
    )
    await js.publish(f"{prefix}.x", b"1")
    [start] = await listeners.wait_starts(1, timeout=10)
    assert start.workflow == "order-v2"

    await listeners.undefine(definition.job_id)
    await wait_for(lambda: _none(supervisor), timeout=10, description="listener stopped")
    await js.publish(f"{prefix}.x", b"2")
    with pytest.raises(TimeoutError):
        await listeners.wait_starts(2, timeout=1.5)


async def test_one_replica_runs_the_other_stands_by_and_takes_over(
    listeners: Listeners, nats_client: NatsClient, namespace: str
) -> None:
    stream, prefix = await _source_stream(nats_client, namespace)
    js = nats_client.jetstream()
    await listeners.define("message-bus-listener", _jetstream_params(stream, prefix))
    first = listeners.start()
    await wait_for(lambda: _running(first), timeout=10, description="first running")
    second = listeners.start()
    await wait_for(
        lambda: _states(second) == ["Suspended"], timeout=10, description="second on standby"
    )
    shown = await wait_for(
        lambda: _hosts_table(listeners, "Suspended"),
        timeout=10,
        description="`jobwire hosts` listing both slots",
    )
    assert "Running" in shown
    assert "listener slots" in shown
    for n in range(20):
        await js.publish(f"{prefix}.x", json.dumps(n).encode())
    await listeners.wait_starts(20, timeout=10)

    await listeners.stop(first)  # a graceful stop hands the lease over at once
    await wait_for(lambda: _running(second), timeout=5, description="second took over")
    for n in range(20, 30):
        await js.publish(f"{prefix}.x", json.dumps(n).encode())

    starts = await listeners.wait_starts(30, timeout=10)
    assert sorted(s.input["body"] for s in starts) == list(range(30))  # type: ignore[index]


async def test_an_unknown_secret_fails_the_slot_with_the_secret_named(
    listeners: Listeners,
) -> None:
    await listeners.define(
        "message-bus-listener",
        {
            "workflow": "w",
            "mode": "core",
            "subject": f"x{uuid.uuid4().hex}",
            "servers": ["nats://127.0.0.1:1"],
            "credentials": "remote-nats",
        },
    )
    supervisor = listeners.start()

    [slot] = await wait_for(lambda: _failed(supervisor), timeout=10, description="slot failed")
    assert "remote-nats" in slot["last_error"]
    assert "JOBWIRE_SECRET_REMOTE_NATS" in slot["last_error"]


# -- helpers ------------------------------------------------------------------------


async def _hosts_table(listeners: Listeners, needle: str) -> str | None:
    """What an operator sees: `jobwire hosts`, the real command."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("jobwire")),
        "hosts",
        env={
            **os.environ,
            "JOBWIRE_NATS__URL": listeners.broker.settings.nats.url,
            "JOBWIRE_NAMESPACE": listeners.namespace,
            "COLUMNS": "200",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode()
    return text if needle in text else None


async def _when(coro, count: int):  # type: ignore[no-untyped-def]
    found = await coro
    return found if len(found) >= count else None


async def _acked(js, stream: str, durable: str) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info(stream, durable)
    return info.num_ack_pending == 0 and info.num_pending == 0


def _states(supervisor: Supervisor) -> list[str]:
    return [s.state for s in supervisor.statuses()]


def _running(supervisor: Supervisor, version: int | None = None) -> bool:
    return any(
        s.state == "Running" and (version is None or s.job_version == version)
        for s in supervisor.statuses()
    )


def _none(supervisor: Supervisor) -> bool:
    return not supervisor.statuses() and not supervisor.held


def _failed(supervisor: Supervisor) -> list[dict[str, object]] | None:
    found = [s.model_dump() for s in supervisor.statuses() if s.state == "Failed"]
    return found or None
