"""Job definitions and assertions shared by the API tests."""

from __future__ import annotations

from typing import Any

import httpx


def start_workflow_job(name: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "start-workflow",
        "description": f"{name}: starts the hello workflow",
        "schedule": {"kind": "cron", "expression": "0 3 * * *", "timezone": "Europe/Berlin"},
        "params": {"workflow": "hello", "input": {"n": 1}},
        **extra,
    }


def worker_job(name: str = "work", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "test-work",
        "schedule": {"kind": "interval", "every": "PT1H"},
        "params": {"seconds": 0.0},
        **extra,
    }


def fields(response: httpx.Response) -> set[str]:
    """The fields a problem+json response names."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return {error["field"] for error in response.json()["errors"]}
