from __future__ import annotations

from dataclasses import replace

import pytest

from jobwire.scheduler.domain.status import (
    JobFacts,
    JobStatus,
    SlotFacts,
    job_status,
    listener_status,
)

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


# -- listener jobs: status from the slots instances report ----------------------------

LISTENER = JobFacts(
    enabled=True,
    group_enabled=True,
    paused=False,
    dispatched=0,
    running_hosts=(),
    queued=0,
    version=3,
    oldest_active_version=None,
)


@pytest.mark.parametrize(
    ("slots", "expected"),
    [
        ([], JobStatus.READY),
        ([SlotFacts("a", "Suspended", 3)], JobStatus.SUSPENDED),
        ([SlotFacts("a", "Running", 3), SlotFacts("b", "Suspended", 3)], JobStatus.RUNNING),
        ([SlotFacts("a", "Running", 2)], JobStatus.RECYCLE_PENDING),
        ([SlotFacts("a", "RecyclePending", 3)], JobStatus.RECYCLE_PENDING),
        ([SlotFacts("a", "Failed", 3), SlotFacts("b", "Suspended", 3)], JobStatus.FAILING),
        ([SlotFacts("a", "Failed", 3), SlotFacts("b", "Running", 3)], JobStatus.RUNNING),
    ],
)
def test_listener_status(slots: list[SlotFacts], expected: JobStatus) -> None:
    assert listener_status(LISTENER, slots) == expected


def test_a_disabled_or_paused_listener() -> None:
    running = [SlotFacts("a", "Running", 3)]
    assert listener_status(replace(LISTENER, enabled=False), running) == JobStatus.DISABLED
    assert listener_status(replace(LISTENER, paused=True), running) == JobStatus.PAUSED


def test_a_faulted_job_says_so_whatever_else_is_true() -> None:
    base = IDLE
    assert job_status(replace(base, fault="its run cannot be built"), frozenset()) == "Faulted"
    running = replace(base, dispatched=1, fault="x")
    assert job_status(running, frozenset()) == "Faulted"
    assert job_status(replace(base, enabled=False, fault="x"), frozenset()) == "Disabled"


def test_a_schedule_with_no_fire_left_is_ended_not_ready() -> None:
    assert job_status(replace(IDLE, ended=True), frozenset()) == "Ended"
    assert job_status(replace(IDLE, ended=True, paused=True), frozenset()) == "Paused"


def test_a_faulted_listener_says_so() -> None:
    assert listener_status(replace(IDLE, fault="its stored definition is invalid"), []) == "Faulted"
