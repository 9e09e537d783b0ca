from __future__ import annotations

import httpx

from jobwire.runtime.health import HttpServer, Readiness


async def test_readyz_reports_each_check() -> None:
    readiness = Readiness()
    server = HttpServer("127.0.0.1", 0, readiness)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            # No check registered yet: not ready (nothing has proven itself).
            assert (await client.get("/readyz")).status_code == 503
            readiness.set("nats", True)
            readiness.set("database", False, "unreachable: OSError")
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["database"] == {
                "ok": False,
                "detail": "unreachable: OSError",
            }
            readiness.set("database", True)
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await server.stop()
