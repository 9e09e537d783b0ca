"""Runs as the scheduler fires them, for tests and benchmarks that stand in for it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from jobwire.contracts.jobs import JobDue


def job_due(job_type: str, params: dict[str, Any] | None = None, **fields: Any) -> JobDue:
    """A first attempt of a one-off run of ``job_type``, due now; ``fields`` override."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "run_id": f"run-{uuid.uuid4().hex[:16]}",
        "job_id": f"job-{job_type}",
        "job_name": job_type,
        "job_type": job_type,
        "scheduled_for": now,
        "fired_at": now,
        "attempt": 1,
        "params": params or {},
    }
    return JobDue(**(values | fields))
