"""Settings of the search sync (``JOBWIRE_SEARCH__*`` plus the kit's).

What to index, from which database into which engine, is in each job's
parameters; here is only what belongs to the deployment: where secrets are
found, how long an engine may be away before a run fails, who checks tokens.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from jobwire.runtime.settings import ServiceSettings


class SearchSyncOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secrets_dir: Path | None = Field(
        Path("/var/run/secrets/jobwire"),
        description="secret files; a secret `x` is the file `<dir>/x`, else JOBWIRE_SECRET_X",
    )
    engine_retry_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="how long an unreachable or overloaded engine is retried before the run fails",
    )
    full_load_concurrency: int = Field(1, ge=1, le=16, description="full loads at once per replica")
    incremental_concurrency: int = Field(
        4, ge=1, le=64, description="incremental runs at once per replica"
    )
    check_seconds: float = Field(
        3.0, gt=0, le=60, description="limit of checking a profile against the live source"
    )
    elasticsearch_node_class: str | None = Field(
        None,
        description="`module:Class` of the Elasticsearch client's HTTP node; empty = the "
        "client's own (tests point it at a node for servers that speak plain JSON only)",
    )
    scheduler_url: HttpUrl | None = Field(
        None,
        description="the admin API that knows the API tokens; the search API asks it who a "
        "token belongs to (empty = the search API refuses every request)",
    )
    token_cache_seconds: float = Field(
        30.0, ge=0, description="how long a checked token is trusted without asking again"
    )


class SearchSyncSettings(ServiceSettings):
    search: SearchSyncOptions = Field(default_factory=SearchSyncOptions)
