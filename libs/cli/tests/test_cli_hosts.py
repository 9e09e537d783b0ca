"""`jobwire hosts` against a real NATS: -o in both positions, only the result on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import yaml

from jobwire.runtime.broker import Broker
from jobwire.runtime.hosts import HostRegistry
from jobwire.runtime.settings import ServiceSettings

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def registered(nats_url: str, namespace: str) -> AsyncIterator[str]:
    """One live instance in the host registry; its instance id."""
    settings = ServiceSettings(nats={"url": nats_url}, namespace=namespace)
    broker = Broker(settings, source="/jobwire/cli/tests")
    await broker.connect()
    await broker.ensure_streams()
    registry = HostRegistry(
        broker.js,
        namespace=namespace,
        service="scheduler",
        instance_id="hosts-test-1",
        host="test-host",
        version="0.0.0",
        heartbeat_seconds=5,
        ready=lambda: True,
        status=lambda: {},
    )
    await registry.start()
    await registry.beat()
    try:
        yield "hosts-test-1"
    finally:
        await registry.stop()
        await broker.close()


async def _hosts(nats_url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "JOBWIRE_NATS__URL": nats_url,
        "JOBWIRE_NAMESPACE": namespace,
        # Logs that used to land on stdout: the kit's info lines, as JSON.
        "JOBWIRE_LOG_FORMAT": "json",
        "JOBWIRE_LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobwire.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    "args",
    [("-o", "json", "hosts"), ("hosts", "-o", "json"), ("hosts", "--output", "json")],
    ids=["global-option", "command-option", "long-option"],
)
async def test_hosts_prints_json_and_nothing_else_on_stdout(
    nats_url: str, namespace: str, registered: str, args: tuple[str, ...]
) -> None:
    code, out, err = await _hosts(nats_url, namespace, *args)
    assert code == 0, err
    found = json.loads(out)  # the whole of stdout is the document
    assert [(h["instance_id"], h["service"], h["ready"]) for h in found] == [
        (registered, "scheduler", True)
    ]


async def test_hosts_yaml_and_the_table(nats_url: str, namespace: str, registered: str) -> None:
    code, out, err = await _hosts(nats_url, namespace, "hosts", "-o", "yaml")
    assert code == 0, err
    assert [h["instance_id"] for h in yaml.safe_load(out)] == [registered]
    code, out, err = await _hosts(nats_url, namespace, "hosts")
    assert code == 0, err
    assert registered in out
    assert "nats.connected" not in out
