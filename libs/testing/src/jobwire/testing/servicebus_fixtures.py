"""pytest fixtures: an Azure Service Bus test peer (see ``jobwire.testing.servicebus_peer``).

``servicebus_peer``
    One peer for the session, on a free loopback port; its ``connection_string``
    is what the SDK (and a listener's secret) takes. It is always started here:
    tests inspect it (counts, dead letters), which a real namespace cannot offer.
``servicebus_queue``
    A unique queue on that peer, deleted after the test. Its lock duration:
    ``@pytest.mark.servicebus_queue(lock_duration=5)``, else the peer's (30 s).
``servicebus_peer_factory``
    Dedicated peers a test owns (to stop and restart them), stopped after it.

The peer is not Service Bus: what it does not prove is listed in its module.
"""

from __future__ import annotations

import gc
import secrets
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from jobwire.testing.servicebus_peer import ServiceBusPeer

__all__ = ["ServiceBusPeerFactory"]


class ServiceBusPeerFactory(Protocol):
    def __call__(self, port: int | None = None, **options: Any) -> ServiceBusPeer: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "servicebus_queue(lock_duration=None): options for the queue the servicebus_queue "
        "fixture creates",
    )


@pytest.fixture(scope="session")
def servicebus_peer() -> Iterator[ServiceBusPeer]:
    """A Service Bus test peer for the whole session (not Service Bus itself)."""
    with ServiceBusPeer() as peer:
        yield peer


@pytest.fixture
def servicebus_queue(
    request: pytest.FixtureRequest, servicebus_peer: ServiceBusPeer
) -> Iterator[str]:
    """A unique ``q<10 hex>`` queue on the session peer; deleted after the test."""
    marker = request.node.get_closest_marker("servicebus_queue")
    lock_duration = marker.kwargs.get("lock_duration") if marker is not None else None
    name = servicebus_peer.create_queue(f"q{secrets.token_hex(5)}", lock_duration=lock_duration)
    try:
        yield name
    finally:
        servicebus_peer.delete(name)


@pytest.fixture
def servicebus_peer_factory() -> Iterator[ServiceBusPeerFactory]:
    """Start peers this test owns; ``peer.stop()`` / ``peer.start()`` keep port and messages."""
    peers: list[ServiceBusPeer] = []

    def start(port: int | None = None, **options: Any) -> ServiceBusPeer:
        peer = ServiceBusPeer(port, **options)
        peers.append(peer)
        peer.start()
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            peer.stop()


_PEER_FIXTURES = {"servicebus_peer", "servicebus_queue", "servicebus_peer_factory"}


@pytest.fixture(autouse=True)
def _servicebus_sdk_sockets(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close, right after a test that used the peer, the sockets the
    azure-servicebus SDK leaves to the garbage collector when a connection
    drops (a known SDK behaviour): collected later, their ResourceWarning would
    fail whichever unrelated test happened to be running (warnings are errors)."""
    yield
    if _PEER_FIXTURES & set(request.fixturenames):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
