from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobwire.runtime.telemetry import setup_telemetry


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span this test process ends, kept in memory (the kit's real SDK setup)."""
    exporter = InMemorySpanExporter()
    setup_telemetry(
        "runtime-tests", "0", "tests", "localhost", span_processors=(SimpleSpanProcessor(exporter),)
    )
    return exporter


@pytest.fixture(scope="session", autouse=True)
def _structured_logs() -> None:
    # The kit's own logging pipeline, so caplog sees what operators would.
    from jobwire.runtime.logs import setup_logging

    setup_logging("INFO", "json")
