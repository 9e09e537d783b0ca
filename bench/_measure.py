"""What every benchmark measures the same way: percentiles, CPU time from /proc,
the machine a result was measured on, a process's CPU and RSS while it works,
and py-spy profiles of it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def rounded(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


# -- machine and processes -------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int | None, children: bool = False) -> float | None:
    """CPU time of ``pid`` (plus its reaped children, plus its live children)."""
    if pid is None:
        return None
    fields = _proc_stat(pid)
    if fields is None:
        return None
    # After "(comm) ": state=0 … utime=11 stime=12 cutime=13 cstime=14
    total = int(fields[11]) + int(fields[12])
    if children:
        total += int(fields[13]) + int(fields[14])
        for child in _children(pid):
            sub = _proc_stat(child)
            if sub is not None:
                total += int(sub[11]) + int(sub[12])
    return total / CLK_TCK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def machine_info(packages: Sequence[str]) -> dict[str, Any]:
    """What a result was measured on: machine, versions, commit."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    commit = dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "services/scheduler/src", "libs"],
                cwd=BENCH.parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    return {
        "git_commit": commit,
        "scheduler_or_libs_uncommitted_changes": dirty,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "packages": versions,
    }


def merge_results(path: Path, updates: dict[str, Any]) -> None:
    """Write ``updates`` into the JSON results at ``path``, keeping the keys other
    benchmarks wrote there (the listener benchmarks share one file)."""
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        document = {}
    document.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- a process while it works (moved here from bench/mailer.py) ----------------------------


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Window:
    """CPU and wall time between two instants, with what the rest of the machine did.

    As bench/_listeners_common.py's, but PostgreSQL's CPU is its backends'
    (children of the postmaster, those that ended included: the postmaster
    reaped them), where a service's queries are answered.
    ``others_busy_fraction`` is the share of all CPUs other processes used.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.cpu = self._cpu()
        self.busy = machine_busy()
        self.started = time.perf_counter()

    def _cpu(self) -> dict[str, float | None]:
        return {
            name: cpu_seconds(pid, children=name == "postgresql") for name, pid in self.pids.items()
        }

    def close(self, end: float | None = None) -> dict[str, Any]:
        """The window up to ``end`` (a perf_counter instant, default now); CPU up to now."""
        seconds = (end if end is not None else time.perf_counter()) - self.started
        busy, total = machine_busy()
        now = self._cpu()
        used: dict[str, float | None] = {}
        for name, then in self.cpu.items():
            current = now[name]
            used[name] = None if current is None or then is None else round(current - then, 2)
        busy_s = (busy - self.busy[0]) / CLK_TCK
        total_s = max((total - self.busy[1]) / CLK_TCK, 1e-9)
        ours = sum(v for v in used.values() if v is not None)
        return {
            "seconds": round(seconds, 3),
            "cpu_seconds": used,
            "machine_busy_fraction": round(busy_s / total_s, 3),
            "others_busy_fraction": round(max(0.0, busy_s - ours) / total_s, 3),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, per minute."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return None
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread


class RssSampler:
    """RSS of ``pid`` every ``interval`` seconds while running; flat = max - min of the
    samples within ``flat_bound_mib``."""

    def __init__(self, pid: int, interval: float, flat_bound_mib: float = 32) -> None:
        self.pid = pid
        self.interval = interval
        self.flat_bound_mib = flat_bound_mib
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._started = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rss = rss_mib(self.pid)
            if rss is not None:
                self.samples.append((round(time.perf_counter() - self._started, 2), rss))
            await asyncio.sleep(self.interval)

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rss = rss_mib(self.pid)
        if rss is not None:
            self.samples.append((round(time.perf_counter() - self._started, 2), rss))
        values = [v for _, v in self.samples]
        spread = round(max(values) - min(values), 1) if values else None
        # Growth once warm: caches and the heap's high-water mark fill in the first half.
        late = values[len(values) // 2 :]
        late_spread = round(max(late) - min(late), 1) if late else None
        bound = self.flat_bound_mib
        return {
            "samples_mib": [[t, v] for t, v in self.samples],
            "interval_seconds": self.interval,
            "min_mib": min(values, default=None),
            "max_mib": max(values, default=None),
            "first_mib": values[0] if values else None,
            "last_mib": values[-1] if values else None,
            "max_minus_min_mib": spread,
            "second_half_max_minus_min_mib": late_spread,
            "slope_mib_per_minute": rounded(slope_per_minute(self.samples), 2),
            "second_half_slope_mib_per_minute": rounded(
                slope_per_minute(self.samples[len(self.samples) // 2 :]), 2
            ),
            "flat_bound_mib": bound,
            "flat": spread is not None and spread <= bound,
            "flat_after_warmup": late_spread is not None and late_spread <= bound,
        }


# -- py-spy (in the bench group: run from .jobwire/bench-venv) --------------------------------


def start_profile(pid: int, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` into ``out`` (raw, collapsed stacks) until
    :func:`finish_profile`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    return subprocess.Popen(
        [*command, "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def finish_profile(
    process: subprocess.Popen[bytes], out: Path, saved_as: str
) -> dict[str, Any]:
    """Stop py-spy, keep its profile as ``bench/results/<saved_as>``, summarise it."""
    process.send_signal(signal.SIGINT)  # py-spy writes what it recorded and exits
    await asyncio.to_thread(process.wait, 60)
    return await asyncio.to_thread(summarize_profile, process, out, saved_as)


def summarize_profile(process: subprocess.Popen[bytes], out: Path, saved_as: str) -> dict[str, Any]:
    if not out.exists():
        return {"error": f"py-spy exited {process.returncode} without a profile"}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    saved = BENCH / "results" / saved_as
    shutil.copy2(out, saved)

    def top(counter: Counter[str], k: int) -> list[dict[str, Any]]:
        return [{"frame": f, "share": round(c / samples, 3)} for f, c in counter.most_common(k)]

    return {
        "samples": samples,
        "raw": str(saved.relative_to(BENCH.parent)),
        "top_self": top(own, 15),
        "top_inclusive": top(inclusive, 40),
    }
