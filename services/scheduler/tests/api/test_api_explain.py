"""Explain: why a job did or did not run at a time, from runs, schedule and audit log.

The API's clock is set by the test, so that jobs are created, disabled and
claimed at chosen instants and the audit log records those instants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_helpers import start_workflow_job

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def every_10s(name: str, **extra: Any) -> dict[str, Any]:
    schedule = {"kind": "interval", "every": "PT10S", "anchor": T0.isoformat()}
    return start_workflow_job(name, schedule=schedule, **extra)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_explain_names_each_reason_a_slot_did_or_did_not_run(make_api) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(T0)
    api = await make_api(start=False, clock=clock)
    jobs = [
        every_10s("tick", misfire={"policy": "skip"}),
        every_10s("folded", misfire={"policy": "fire_once"}),
        every_10s("off"),
        every_10s("held"),
        every_10s("grouped", group="night"),
        every_10s("expiring", expires_at=iso(T0 + timedelta(seconds=60))),
    ]
    for job in jobs:
        assert (await api.admin.post("/api/v1/jobs", json=job)).status_code == 201
    clock.now = T0 + timedelta(seconds=30)
    assert (await api.operator.post("/api/v1/jobs/off/disable")).status_code == 200
    assert (await api.operator.post("/api/v1/jobs/held/pause")).status_code == 200
    assert (await api.operator.post("/api/v1/groups/night/disable")).status_code == 200
    # Nothing fired for five minutes (an outage); then a claim catches up.
    clock.now = T0 + timedelta(minutes=5)
    await api.harness.scheduler.firer.fire_due(clock.now)

    async def explain(name: str, at: datetime) -> dict[str, Any]:
        response = await api.viewer.get(f"/api/v1/jobs/{name}/explain", params={"at": iso(at)})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    fired = await explain("tick", T0 + timedelta(minutes=5))
    assert fired["verdict"] == "fired"
    assert fired["run"]["status"] == "dispatched"
    assert fired["run"]["scheduled_for"] == iso(T0 + timedelta(minutes=5))

    missed = await explain("tick", T0 + timedelta(seconds=10))
    assert missed["verdict"] == "missed"
    assert missed["run"]["status"] == "missed"
    assert "misfire" in missed["detail"]

    assert (await explain("folded", T0 + timedelta(seconds=10)))["verdict"] == "coalesced"

    between = await explain("tick", T0 + timedelta(seconds=15))
    assert between["verdict"] == "not_a_slot"
    assert between["slot_before"] == iso(T0 + timedelta(seconds=10))
    assert between["slot_after"] == iso(T0 + timedelta(seconds=20))

    ahead = await explain("tick", T0 + timedelta(minutes=5, seconds=10))
    assert ahead["verdict"] == "not_yet_due"

    disabled = await explain("off", T0 + timedelta(seconds=60))
    assert disabled["verdict"] == "disabled"
    assert "operator-token" in disabled["detail"]
    assert (await explain("off", T0 + timedelta(seconds=20)))["verdict"] != "disabled"
    assert (await explain("held", T0 + timedelta(seconds=60)))["verdict"] == "paused"
    assert (await explain("grouped", T0 + timedelta(seconds=60)))["verdict"] == "group_disabled"
    assert (await explain("expiring", T0 + timedelta(seconds=70)))["verdict"] == "expired"
    assert (await explain("tick", T0))["verdict"] == "before_start"

    unscheduled = start_workflow_job("manual-only", schedule=None)
    assert (await api.admin.post("/api/v1/jobs", json=unscheduled)).status_code == 201
    assert (await explain("manual-only", T0))["verdict"] == "not_a_slot"

    naive = await api.viewer.get("/api/v1/jobs/tick/explain", params={"at": "2026-11-21T12:00"})
    assert naive.status_code == 422
    missing = await api.viewer.get("/api/v1/jobs/nope/explain", params={"at": iso(T0)})
    assert missing.status_code == 404


async def test_explain_uses_the_definition_in_force_at_that_time(make_api) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(T0)
    api = await make_api(start=False, clock=clock)
    assert (await api.admin.post("/api/v1/jobs", json=every_10s("tick"))).status_code == 201
    clock.now = T0 + timedelta(minutes=1)
    hourly = start_workflow_job(
        "tick", schedule={"kind": "interval", "every": "PT1H", "anchor": T0.isoformat()}
    )
    updated = await api.admin.put("/api/v1/jobs/tick", json={**hourly, "version": 1})
    assert updated.status_code == 200
    clock.now = T0 + timedelta(minutes=2)
    # Under the first definition, T0+30s was a slot; under the current one it is not.
    old = await api.viewer.get(
        "/api/v1/jobs/tick/explain", params={"at": iso(T0 + timedelta(seconds=30))}
    )
    assert old.json()["verdict"] != "not_a_slot"
    new = await api.viewer.get(
        "/api/v1/jobs/tick/explain", params={"at": iso(T0 + timedelta(seconds=90))}
    )
    assert new.json()["verdict"] == "not_a_slot"
