"""Property-based fuzzing of every operation in the OpenAPI document: no 500s.

Schemathesis generates requests from the committed document — valid ones
and deliberately invalid ones — and sends them over real HTTP (uvicorn, the
kit's server) with an admin token, to a scheduler on real PostgreSQL and NATS.
Some requests name an existing job, so that the deeper paths (trigger,
explain, backfill, update) are reached, not only the 404s.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from api_helpers import start_workflow_job
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.routing import Mount

from jobwire.runtime.health import HttpServer, Readiness

pytestmark = pytest.mark.integration

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.json"
EXAMPLES_PER_OPERATION = 25
SEED = "fuzz"


def fuzz(base: str, token: str, statuses: Counter[int]) -> list[str]:
    """Run every operation's examples; returns the failures found."""
    schema = schemathesis.openapi.from_dict(json.loads(OPENAPI.read_text()))
    auth = {"Authorization": f"Bearer {token}"}
    session = requests.Session()
    failures: list[str] = []

    def seed() -> None:
        body = start_workflow_job(SEED, schedule={"kind": "interval", "every": "PT1M"})
        session.post(f"{base}/api/v1/jobs", json=body, headers=auth, timeout=30)

    def call(case: Any) -> None:
        response = case.call(base_url=base, headers=auth, session=session, timeout=30)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} → {response.status_code}: "
                f"{response.text[:300]}\n{case.as_curl_command()}"
            )

    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        if "{name}" in operation.path and operation.path.startswith("/api/v1/jobs"):
            # Also as a request on a job that exists (re-made, as fuzzing may delete it).
            strategies.append(
                operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"name": SEED})
            )
        examples(st.one_of(strategies), seed, call)
    return failures


def examples(strategy: Any, seed: Any, call: Any) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if case.path_parameters and case.path_parameters.get("name") == SEED:
            seed()
        call(case)

    run()


async def test_schemathesis_finds_no_server_error(api) -> None:  # type: ignore[no-untyped-def]
    server = HttpServer("127.0.0.1", 0, Readiness(), [Mount("", app=api.app)])
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        statuses: Counter[int] = Counter()
        failures = await asyncio.to_thread(fuzz, base, api.tokens["admin"], statuses)
    finally:
        await server.stop()
    assert not failures, "\n\n".join(failures)
    # It did reach the operations, and not only to be refused.
    assert sum(statuses.values()) >= 20 * 28
    print(sorted(statuses.items()))
    assert statuses[200] + statuses[201] + statuses[202] + statuses[204] >= 100
