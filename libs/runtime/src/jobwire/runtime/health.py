"""Liveness and readiness over HTTP (``/healthz``, ``/readyz``).

Readiness is the conjunction of named checks that components flip as they
connect and disconnect (``nats``, ``database``, ``migrations`` …), so a
Kubernetes probe sees *why* a pod is not ready, not just that it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route


class Readiness:
    """Named readiness checks; the service is ready when all are."""

    def __init__(self) -> None:
        self._checks: dict[str, tuple[bool, str]] = {}

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        self._checks[name] = (ok, detail)

    @property
    def ready(self) -> bool:
        return bool(self._checks) and all(ok for ok, _ in self._checks.values())

    def report(self) -> dict[str, dict[str, object]]:
        return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in self._checks.items()}


def health_routes(readiness: Readiness) -> list[BaseRoute]:
    async def healthz(_: Request) -> JSONResponse:
        # Answering at all proves the event loop is not wedged.
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        return JSONResponse(
            {"ready": readiness.ready, "checks": readiness.report()},
            status_code=200 if readiness.ready else 503,
        )

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


class _EmbeddedServer(uvicorn.Server):
    # The service owns SIGTERM/SIGINT (one shutdown path for everything);
    # uvicorn must not install handlers of its own.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """uvicorn serving the health routes plus any routes a service adds."""

    def __init__(
        self, host: str, port: int, readiness: Readiness, routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = Starlette(routes=[*health_routes(readiness), *routes])
        config = uvicorn.Config(
            self.app, host=host, port=port, log_config=None, lifespan="off", access_log=False
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self._socket is not None, "server not started"
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        # Bind first so that the port is known (port 0 = pick one) and a
        # taken port fails here, loudly, instead of inside a background task.
        config = self._server.config
        self._socket = socket.create_server((config.host, config.port), reuse_port=False)
        # asyncio leaves Nagle on for sockets it is handed: every small response
        # would wait for a delayed ACK (~40 ms) without this.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
        if self._socket is not None:
            self._socket.close()
