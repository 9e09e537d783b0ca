"""The API fuzz test's scheduler process, its helpers and Hypothesis profiles.

Profiles (``JOBWIRE_FUZZ_PROFILE``, default ``ci``) are registered here but only
applied to the fuzz test itself (passed to it explicitly, never loaded
globally): the other property tests of the suite keep their own settings.

``ci``
    Bounded: the whole test, server start and restart included, in about a
    minute on a 2-core machine, so ``make test`` stays fast. The seed is the
    day's date (``JOBWIRE_FUZZ_SEED`` overrides it): a run can be repeated the
    same day with the seed the failure prints, while CI still explores new
    inputs every day instead of the same few forever (``derandomize`` would).
``fuzz``
    ``make fuzz``: many more and longer sequences, strings of a few MB (past NATS'
    1 MB message limit), a random seed; about ten minutes or more.

The server is started once per test module (not per example): the fuzz run's
point is that one long-lived scheduler survives everything thrown at it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import httpx
import nats
import pytest
from hypothesis import HealthCheck, Phase, Verbosity, settings
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from jobwire.contracts.envelope import decode
from jobwire.contracts.subjects import Subjects
from jobwire.contracts.workflows import StartWorkflow
from jobwire.testing.fleet import Fleet, Instance

T = TypeVar("T")

PROFILE_VARIABLE = "JOBWIRE_FUZZ_PROFILE"
SEED_VARIABLE = "JOBWIRE_FUZZ_SEED"


@dataclass(frozen=True)
class FuzzProfile:
    hypothesis: settings
    huge_string: int  # the largest string a body carries, in characters
    timeout: float  # pytest-timeout for the whole test
    seed: int | None


_COMMON = {
    "deadline": None,  # a busy CI machine answers slowly now and then: not a finding
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
    "report_multiple_bugs": True,
    "verbosity": Verbosity.normal,
}
settings.register_profile(
    "jobwire-fuzz-ci",
    max_examples=100,
    stateful_step_count=30,
    # No shrinking in CI: against a live server it costs minutes; the failure's
    # seed reproduces it and `make fuzz` (or a local run) shrinks.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    **_COMMON,  # type: ignore[arg-type]
)
settings.register_profile(
    "jobwire-fuzz-fuzz",
    max_examples=1500,
    stateful_step_count=40,
    **_COMMON,  # type: ignore[arg-type]
)


def fuzz_profile() -> FuzzProfile:
    name = os.environ.get(PROFILE_VARIABLE, "ci")
    if name not in {"ci", "fuzz"}:
        raise pytest.UsageError(f"{PROFILE_VARIABLE} must be ci or fuzz, not {name!r}")
    seed_text = os.environ.get(SEED_VARIABLE)
    seed = int(seed_text) if seed_text else None
    if name == "ci":
        return FuzzProfile(
            settings.get_profile("jobwire-fuzz-ci"),
            huge_string=1_100_000,  # just past NATS' 1 MiB message limit
            timeout=240,
            seed=seed if seed is not None else date.today().toordinal(),
        )
    return FuzzProfile(
        settings.get_profile("jobwire-fuzz-fuzz"),
        huge_string=3 * 1024 * 1024,
        timeout=4 * 3600,
        seed=seed,
    )


class Background:
    """An event loop in a thread of its own, for the async parts (NATS, PostgreSQL,
    the process fleet) of a test that Hypothesis drives synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Arrival:
    run_id: str | None
    received: datetime


@dataclass
class LiveScheduler:
    """The scheduler process under test, its admin token and the canary's arrivals."""

    background: Background
    fleet: Fleet
    nats_url: str
    namespace: str
    database_url: str
    token: str = ""
    instance: Instance | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    _nc: NatsClient | None = None

    @property
    def base_url(self) -> str:
        assert self.instance is not None
        return f"http://127.0.0.1:{self.instance.http_port}"

    def client(self, *, authorized: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if authorized else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def start(self) -> Instance:
        async def started() -> Instance:
            instance = self.fleet.start(self.nats_url)
            await self.fleet.ready(instance, timeout=60)
            return instance

        self.instance = self.background.run(started(), timeout=90)
        return self.instance

    def stop(self) -> int:
        assert self.instance is not None
        return self.background.run(self.fleet.stop(self.instance), timeout=40)

    def alive(self) -> bool:
        return self.instance is not None and self.instance.running

    def log(self) -> str:
        assert self.instance is not None
        return self.instance.log_path.read_text(errors="replace")

    def subscribe_canary(self, workflow: str) -> None:
        subject = Subjects(self.namespace).workflow_start(workflow)

        async def subscribe() -> None:
            self._nc = await nats.connect(self.nats_url, name="jobwire-fuzz-canary")

            async def arrived(msg: Msg) -> None:
                received = datetime.now(UTC)
                try:
                    run_id = decode(msg.data, StartWorkflow).data.origin.run_id
                except Exception:  # a malformed command is counted, and fails the slot check
                    run_id = None
                self.arrivals.append(Arrival(run_id, received))

            await self._nc.subscribe(subject, cb=arrived)
            await self._nc.flush()

        self.background.run(subscribe())

    def close(self) -> None:
        if self._nc is not None:
            self.background.run(self._nc.close())


def scheduler_command() -> list[str]:
    # The production entry point: `jobwire scheduler`, run by this interpreter.
    return [sys.executable, "-m", "jobwire.cli", "scheduler"]
