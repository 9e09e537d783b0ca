"""py-spy on this very process while one round runs: where a side's CPU goes.

Only used after the measured rounds (py-spy's sampling costs CPU on a 2-core
machine), and only when py-spy is there: it is in the ``bench`` dependency
group, so ``.venv`` may lack it; the bench environment's copy is used then.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from _measure import BENCH

RATE = 500  # samples per second
# Shares of the profiled round's samples (inclusive, so they overlap), by what
# the frames say the time went to. "path:name" names one function of a file.
GROUPS = {
    "KafkaSource: record → Trigger": ("sources/kafka.py:_trigger",),
    "aiokafka: fetch + record decoding": ("aiokafka/consumer/fetcher.py", "aiokafka/record/"),
    "aiokafka: commit + heartbeat": ("aiokafka/consumer/group_coordinator.py",),
    "runner: Trigger → StartWorkflow (mapping, pydantic)": ("listeners/domain/mapping.py",),
    "runner: CloudEvents envelope (Broker.encode)": ("runtime/broker.py:encode",),
    "nats-py: publish_async (send path)": ("js/client.py:publish_async",),
    "nats-py: acks (read loop, PubAck parsing)": (
        "aio/client.py:_read_loop",
        "aio/subscription.py:_wait_for_msgs",
    ),
    "opentelemetry: span + metrics": ("opentelemetry/",),
}


def find_py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    bench_venv = BENCH.parent / ".jobwire" / "bench-venv" / "bin" / "py-spy"
    for candidate in (shutil.which("py-spy"), here, bench_venv):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


class Profile:
    def __init__(self, py_spy: str, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(os.getpid()),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--output",
                str(out),
                # Sampling without stopping the process: it disturbs the timing less.
                "--nonblocking",
                "--threads",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> dict[str, Any]:
        """SIGINT (py-spy then writes what it sampled), by the PID we started."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return {"error": "py-spy did not stop within 60 s"}
        if not self.out.exists():
            return {"error": f"py-spy exited {self.process.returncode}: {stderr.decode()[-500:]}"}
        return summarize(self.out)


def _function(frame: str) -> str:
    """``name (path/to/module.py:123)`` → ``name (module.py)``: lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarize(raw: Path) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        thread, *frames = stack.split(";")
        # "thread (123): MainThread" or "thread (123)" for unnamed ones.
        threads[thread.partition(": ")[2] or "other threads"] += count
        if not frames:
            continue
        functions = [_function(f) for f in frames]
        own[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
        for group, markers in GROUPS.items():
            if any(_matches(frame, marker) for frame in frames for marker in markers):
                groups[group] += count
    if not samples:
        return {"error": "no samples"}

    def top(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": function, "share": round(count / samples, 3)}
            for function, count in counter.most_common(n)
        ]

    return {
        "samples": samples,
        "rate_hz": RATE,
        "threads": {name: round(count / samples, 3) for name, count in threads.most_common()},
        "groups_inclusive": {g: round(groups[g] / samples, 3) for g in GROUPS},
        "top_self": top(own, 20),
        "top_inclusive": top(inclusive, 40),
    }


def _matches(frame: str, marker: str) -> bool:
    path, _, name = marker.partition(":")
    if path not in frame:
        return False
    # py-spy names methods "Class.method".
    return not name or frame.split(" (", 1)[0].rsplit(".", 1)[-1] == name
