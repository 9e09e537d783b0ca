"""A whole service run in the test's own process and event loop, the way ``jobwire dev`` runs it.

``InProcessService(spec, settings)`` runs ``run_service`` in a task; ``start()``
returns once its ``/readyz`` says ready (or raises with the service's own
error, should it stop first), ``stop()`` sets its stop event and waits for a
graceful end. Unlike :mod:`jobwire.testing.fleet` it starts no process: the
test reads the service's database and talks to its HTTP port directly, and a
test that needs two services talking to each other (the mailer asking the
scheduler about a token) runs both.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from jobwire.runtime.service import ServiceSpec, run_service
from jobwire.runtime.settings import ServiceSettings
from jobwire.testing.waiting import wait_for

__all__ = ["InProcessService"]


class InProcessService:
    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        if not settings.http_port:
            raise ValueError("give the service an http_port (jobwire.runtime.embedded.free_port)")
        self.spec = spec
        self.settings = settings
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    async def start(self, timeout: float = 30.0) -> InProcessService:
        self.task = asyncio.create_task(
            run_service(self.spec, self.settings, self.stopping), name=f"test-{self.spec.name}"
        )
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:

            async def ready() -> bool:
                assert self.task is not None
                if self.task.done():
                    self.task.result()  # its error, if it crashed
                    raise RuntimeError(f"{self.spec.name} stopped before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/readyz")).status_code == 200
                return False

            await wait_for(ready, timeout=timeout, description=f"{self.spec.name} ready")
        return self

    async def stop(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=timeout)
