"""The listeners service: wiring only. ``jobwire listeners`` runs it."""

from __future__ import annotations

import os

from jobwire.listeners.settings import ListenersSettings
from jobwire.listeners.sources import source_factory
from jobwire.listeners.supervisor import SERVICE, Supervisor
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.service import ServiceContext, ServiceSpec


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, ListenersSettings)
    options = settings.listeners
    supervisor = Supervisor(
        ctx.broker,
        options,
        # The one place the environment is read besides settings: secrets are
        # named by job definitions, so their variables cannot be declared ahead.
        Secrets(options.secrets_dir, os.environ),
        instance_id=settings.instance_id,
        factories=source_factory,
        status=ctx.status,
    )
    await supervisor.run(ctx.stopping)


spec = ServiceSpec(name=SERVICE, main=main, settings=ListenersSettings)
