"""Service instances as processes of their own, for reliability tests.

A test starts real ``jobwire <service>``-style processes (the production entry
point, signal handling and shutdown), kills them by PID with SIGKILL for a real
crash or stops them with SIGTERM, and reads their /readyz. Everything started
is stopped by PID at the end, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jobwire.runtime.embedded import child_options, free_port
from jobwire.testing.waiting import wait_for

__all__ = ["Fleet", "Instance"]


@dataclass(eq=False)
class Instance:
    name: str
    popen: subprocess.Popen[bytes]
    http_port: int
    log_path: Path
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def crash(self) -> str:
        """The exception types (and messages) in the instance's ``service.crashed`` line."""
        for line in reversed(self.log_tail(lines=50).splitlines()):
            if '"service.crashed"' in line:
                errors = re.findall(
                    r"^[\s|+-]*([\w.]+(?:Error|Exception|Group)\b.*)$", _exception_text(line), re.M
                )
                return "; ".join(errors)
        return "(no crash logged)"

    async def readyz(self) -> dict[str, Any] | None:
        """The readiness report, or None while the HTTP server does not answer."""
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                response = await client.get(f"http://127.0.0.1:{self.http_port}/readyz")
        except httpx.TransportError:
            return None
        report: dict[str, Any] = response.json()
        return report


def _exception_text(line: str) -> str:
    try:
        return str(json.loads(line).get("exception", ""))
    except ValueError:
        return line


class Fleet:
    """Instances of one service started from ``command`` with ``JOBWIRE_*`` settings.

    Each gets its own HTTP port, instance id and log file under ``tmp_path``,
    JSON logs and a 10 s shutdown grace; ``env`` adds to or overrides that.
    """

    def __init__(
        self,
        tmp_path: Path,
        command: Sequence[str],
        *,
        namespace: str,
        env: Mapping[str, str] | None = None,
        prefix: str = "replica",
    ) -> None:
        self.tmp_path = tmp_path
        self.command = list(command)
        self.namespace = namespace
        self.env = dict(env or {})
        self.prefix = prefix
        self.replicas: list[Instance] = []

    def start(self, nats_url: str, **env: str) -> Instance:
        name = f"{self.prefix}-{len(self.replicas)}"
        port = free_port()
        log_path = self.tmp_path / f"{name}.log"
        environment = {
            **os.environ,
            "JOBWIRE_NATS__URL": nats_url,
            "JOBWIRE_NAMESPACE": self.namespace,
            "JOBWIRE_HTTP_PORT": str(port),
            "JOBWIRE_INSTANCE_ID": f"{self.namespace}-{name}",
            "JOBWIRE_SHUTDOWN_GRACE_SECONDS": "10",
            "JOBWIRE_LOG_FORMAT": "json",
            **self.env,
            **env,
        }
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                self.command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session, SIGINT/SIGTERM at their defaults whatever the
                # test run inherited, and it dies with the test run.
                **child_options(),
            )
        instance = Instance(name, popen, port, log_path)
        self.replicas.append(instance)
        return instance

    def running(self) -> list[Instance]:
        return [r for r in self.replicas if r.running]

    async def ready(self, instance: Instance, timeout: float = 30.0) -> None:
        async def is_ready() -> bool:
            if not instance.running:
                raise AssertionError(
                    f"{instance.name} exited with {instance.popen.returncode}:\n"
                    f"{instance.log_tail()}"
                )
            report = await instance.readyz()
            return bool(report and report["ready"])

        await wait_for(is_ready, timeout=timeout, description=f"{instance.name} /readyz")

    def kill(self, instance: Instance) -> None:
        """SIGKILL by PID: a crash, nothing flushed, nothing deregistered."""
        instance.popen.send_signal(signal.SIGKILL)
        instance.popen.wait(timeout=10)

    async def stop(self, instance: Instance, timeout: float = 20.0) -> int:
        """SIGTERM by PID (graceful stop) and wait for the exit code."""
        if instance.running:
            instance.popen.send_signal(signal.SIGTERM)
        await wait_for(
            lambda: instance.popen.poll() is not None,
            timeout=timeout,
            description=f"{instance.name} to exit after SIGTERM",
        )
        return instance.popen.returncode

    def close(self) -> None:
        for instance in self.replicas:
            if instance.running:
                instance.popen.send_signal(signal.SIGTERM)
        for instance in self.replicas:
            try:
                instance.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                instance.popen.send_signal(signal.SIGKILL)
                instance.popen.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {r.name} (pid {r.pid}, exit {r.popen.poll()}) ---\n{r.log_tail()}"
            for r in self.replicas
        )

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Failures inside carry the instances' last log lines."""
        try:
            yield
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from exc
