"""The search sync service: wiring only. ``jobwire search-sync`` runs it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Mount

from jobwire.runtime.embedded import dev_api_url
from jobwire.runtime.rest import TokenChecker
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.service import ServiceContext, ServiceSpec
from jobwire.runtime.validation import serve_validation
from jobwire.runtime.worker import Worker
from jobwire.search_sync import full_load, incremental
from jobwire.search_sync.api import SearchApi, create_app
from jobwire.search_sync.full_load import FullLoad
from jobwire.search_sync.incremental import Incremental
from jobwire.search_sync.settings import SearchSyncSettings
from jobwire.search_sync.sync import PARAMS, Jobs

SERVICE = "search-sync"

# The kit builds routes before main runs; main finds the API it must complete here.
_apis: dict[int, SearchApi] = {}


def routes(ctx: ServiceContext) -> Sequence[BaseRoute]:
    settings = ctx.settings
    assert isinstance(settings, SearchSyncSettings)
    options = settings.search
    url = str(options.scheduler_url) if options.scheduler_url else None
    tokens = TokenChecker(url, options.token_cache_seconds, "JOBWIRE_SEARCH__SCHEDULER_URL")
    api = _apis[id(ctx)] = SearchApi(tokens)
    return [Mount("", app=create_app(api))]


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, SearchSyncSettings)
    options = settings.search
    # Secrets are named by each job's parameters, so their variables cannot be declared ahead.
    jobs = Jobs(ctx.broker, Secrets(options.secrets_dir, os.environ), options)
    api = _apis.pop(id(ctx), None)
    if api is not None:
        api.jobs = jobs
    workers = [
        Worker(
            ctx.broker,
            job_type=full_load.JOB_TYPE,
            handler=FullLoad(jobs).run,
            concurrency=options.full_load_concurrency,
        ),
        Worker(
            ctx.broker,
            job_type=incremental.JOB_TYPE,
            handler=Incremental(jobs).run,
            concurrency=options.incremental_concurrency,
        ),
    ]
    try:
        async with asyncio.TaskGroup() as tasks:
            for worker in workers:
                tasks.create_task(worker.run(ctx.stopping))
            for job_type, model in PARAMS.items():
                check = jobs.checker(model)
                tasks.create_task(serve_validation(ctx.broker, job_type, check, ctx.stopping))
    finally:
        if api is not None:
            await api.tokens.close()


def dev_overrides(data: Path) -> dict[str, Any]:
    """`jobwire dev`: tokens are the admin API's; secrets are files in `<data>/secrets/`."""
    return {"search": {"scheduler_url": dev_api_url(), "secrets_dir": str(data / "secrets")}}


spec = ServiceSpec(
    name=SERVICE,
    main=main,
    settings=SearchSyncSettings,
    routes=routes,
    dev_overrides=dev_overrides,
)
