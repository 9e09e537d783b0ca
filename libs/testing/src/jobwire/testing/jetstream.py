"""JetStream housekeeping for tests sharing one NATS server."""

from __future__ import annotations

import json

import nats
from nats.aio.client import Client as NatsClient

__all__ = ["purge_namespace"]


async def purge_namespace(nats_url: str, namespace: str) -> list[str]:
    """Delete every JetStream stream, KV bucket and object store of ``namespace``.

    Streams are named ``f"{namespace.upper()}_..."``; a KV bucket ``b`` is the
    stream ``KV_b`` (object store: ``OBJ_b``), with ``b`` starting with the
    namespace in either case. Returns the deleted stream names.
    """
    prefixes = tuple(
        f"{kind}{ns}" for kind in ("", "KV_", "OBJ_") for ns in (namespace, namespace.upper())
    )
    client = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = client.jetstream()
        doomed = [name for name in await _stream_names(client) if name.startswith(prefixes)]
        for name in doomed:
            await js.delete_stream(name)
    finally:
        await client.close()
    return doomed


async def _stream_names(client: NatsClient) -> list[str]:
    # $JS.API.STREAM.NAMES is the JetStream API's paged name listing; nats-py
    # exposes only the heavier STREAM.LIST (full stream info).
    names: list[str] = []
    while True:
        reply = await client.request(
            "$JS.API.STREAM.NAMES", json.dumps({"offset": len(names)}).encode(), timeout=5
        )
        body = json.loads(reply.data)
        if "error" in body:
            raise RuntimeError(f"listing JetStream streams failed: {body['error']}")
        page = body.get("streams") or []
        names += page
        if not page or len(names) >= body.get("total", 0):
            return names
