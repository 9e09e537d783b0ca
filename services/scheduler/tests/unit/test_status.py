from __future__ import annotations

from dataclasses import replace

import pytest

from jobwire.scheduler.domain.status import JobFacts, JobStatus, job_status

IDLE = JobFacts(
    enabled=True,
    group_enabled=True,
    paused=False,
    dispatched=0,
    running_hosts=(),
    queued=0,
    version=1,
    oldest_active_version=None,
)
LIVE = frozenset({"node-a"})


@pytest.mark.parametrize(
    ("facts", "status"),
    [
        (IDLE, JobStatus.READY),
        (replace(IDLE, enabled=False), JobStatus.DISABLED),
        (replace(IDLE, group_enabled=False, dispatched=1), JobStatus.DISABLED),
        (replace(IDLE, paused=True), JobStatus.PAUSED),
        (replace(IDLE, queued=2), JobStatus.QUEUED),
        (
            replace(IDLE, running_hosts=("node-a",), oldest_active_version=1),
            JobStatus.RUNNING,
        ),
        (
            replace(IDLE, running_hosts=("node-gone",), oldest_active_version=1),
            JobStatus.UNKNOWN,
        ),
        (
            replace(IDLE, dispatched=1, version=3, oldest_active_version=2),
            JobStatus.RECYCLE_PENDING,
        ),
    ],
)
def test_status_is_derived_from_facts(facts: JobFacts, status: JobStatus) -> None:
    assert job_status(facts, LIVE) == status
