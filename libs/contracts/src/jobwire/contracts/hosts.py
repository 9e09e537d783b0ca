"""What a running service instance says about itself in the host registry.

The registry is a NATS KV bucket ``<namespace>_hosts`` whose entries expire
after a few missed heartbeats, so "listed" means "alive".
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, Field

from jobwire.contracts.envelope import Versioned
from jobwire.contracts.subjects import Bucket, bucket_name


class HostInfo(Versioned):
    """One live service instance, as stored under its instance id in the registry."""

    service: str = Field(description="service name, e.g. scheduler")
    instance_id: str = Field(description="unique per process; the registry key")
    host: str = Field(description="host (pod) name")
    jobwire_version: str = Field(description="jobwire release the instance runs")
    started_at: AwareDatetime
    heartbeat_at: AwareDatetime = Field(description="time of the latest heartbeat")
    ready: bool = Field(description="whether the instance passes its readiness checks")
    status: dict[str, Any] = Field(
        default_factory=dict,
        description="service-specific status, e.g. the listener slots it holds",
    )

    @staticmethod
    def bucket(namespace: str) -> str:
        return bucket_name(namespace, Bucket.HOSTS)
