"""`bench/search.py --quick` end to end: the benchmark still runs against the service as it is,
and what it reports holds together (every change seen, no stale document)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "search.py"

pytestmark = pytest.mark.integration


@pytest.mark.timeout(110)
def test_the_quick_search_benchmark_runs_and_finds_nothing_missed_or_stale(
    tmp_path: Path,
) -> None:
    out = tmp_path / "search.json"
    # Its own PostgreSQL, NATS and osmem-server, as `make bench-search` runs it.
    subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        check=True,
        timeout=100,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["cases"] == 2_000
    assert result["full_load"]["run_result"]["indexed"] == 2_000
    assert result["bare"]["documents_per_s"] > 0
    assert result["ratio"] > 0
    latency = result["incremental"]["latency"]
    assert latency["seen"] > 0
    assert result["missed"] == 0
    assert result["stale"] == 0
    assert result["incremental"]["runs"]["statuses"] == {
        "succeeded": result["incremental"]["runs"]["fired"]
    }
