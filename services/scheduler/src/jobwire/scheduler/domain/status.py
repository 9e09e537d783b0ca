"""A job's status as an operator reads it in the Jobs Management table.

Derived, never stored: from the definition's flags, the job's active runs and
the host registry, at the moment someone looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    DISABLED = "Disabled"  # the job or its group is disabled
    PAUSED = "Paused"  # firing paused by an operator; the definition is kept as is
    READY = "Ready"  # waiting for its next fire time (or a trigger)
    QUEUED = "Queued"  # a run waits for a free slot (overlap policy queue)
    RUNNING = "Running"  # a run is dispatched or running on a live host
    RECYCLE_PENDING = "RecyclePending"  # changed while running; the change applies to later runs
    UNKNOWN = "Unknown"  # a run is running on a host that no longer reports
    SUSPENDED = "Suspended"  # a listener on standby: no instance runs it, some stand by
    FAILING = "Failing"  # a listener that cannot reach its source (error in the host registry)
    # The firing loop could not handle the job (its next fire, its run): set
    # aside with the error, so that it cannot stop the others, until it is fixed.
    FAULTED = "Faulted"
    ENDED = "Ended"  # a schedule with no fire left: a once that fired, an expired window


@dataclass(frozen=True, slots=True)
class JobFacts:
    enabled: bool
    group_enabled: bool
    paused: bool
    dispatched: int
    running_hosts: tuple[str, ...]  # hosts of runs reported running
    queued: int
    version: int  # of the definition
    oldest_active_version: int | None  # definition version its oldest active run fired with
    fault: str | None = None  # why the firing loop set the job aside
    ended: bool = False  # scheduled, and no fire is left


def job_status(facts: JobFacts, live_hosts: frozenset[str]) -> JobStatus:
    if not facts.enabled or not facts.group_enabled:
        return JobStatus.DISABLED
    if facts.fault is not None:
        return JobStatus.FAULTED
    active = facts.dispatched + len(facts.running_hosts)
    if active:
        if any(host not in live_hosts for host in facts.running_hosts):
            return JobStatus.UNKNOWN
        fired_with = facts.oldest_active_version
        if fired_with is not None and fired_with < facts.version:
            return JobStatus.RECYCLE_PENDING
        return JobStatus.RUNNING
    if facts.paused:
        return JobStatus.PAUSED
    if facts.queued:
        return JobStatus.QUEUED
    if facts.ended:
        return JobStatus.ENDED
    return JobStatus.READY


@dataclass(frozen=True, slots=True)
class SlotFacts:
    """One listener slot as an instance reports it in the host registry."""

    host: str
    state: str  # ListenerSlotStatus.state
    version: int  # the definition version the slot runs


def listener_status(facts: JobFacts, slots: Sequence[SlotFacts]) -> JobStatus:
    """A listener job's status: it has no runs, only slots on live instances."""
    if not facts.enabled or not facts.group_enabled:
        return JobStatus.DISABLED
    if facts.fault is not None:
        return JobStatus.FAULTED
    if facts.paused:
        return JobStatus.PAUSED
    active = [s for s in slots if s.state in ("Starting", "Running", "RecyclePending")]
    if any(s.state == "RecyclePending" or s.version < facts.version for s in active):
        return JobStatus.RECYCLE_PENDING
    if active:
        return JobStatus.RUNNING
    if any(s.state == "Failed" for s in slots):
        return JobStatus.FAILING
    if any(s.state == "Suspended" for s in slots):
        return JobStatus.SUSPENDED
    return JobStatus.READY  # enabled, not (yet) picked up by a listeners instance
