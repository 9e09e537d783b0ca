"""OTLP export and log correlation, observed from outside a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SCRIPT = """
from opentelemetry import metrics, trace
from jobwire.runtime.logs import get_logger, setup_logging
from jobwire.runtime.telemetry import setup_telemetry, shutdown_telemetry

setup_logging("INFO", "json", service="probe")
setup_telemetry("probe", "1.2.3", "probe-1", "host-a")
metrics.get_meter("probe").create_counter("probe.runs").add(3)
with trace.get_tracer("probe").start_as_current_span("probe-span"):
    get_logger("probe").info("inside.span", answer=42)
shutdown_telemetry()
"""


class Receiver(BaseHTTPRequestHandler):
    received: dict[str, list[bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    received: dict[str, list[bytes]] = {}
    handler = type("H", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()
    thread.join()


def run_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_spans_and_metrics_reach_an_otlp_endpoint_with_resource_attributes(
    collector: tuple[str, dict[str, list[bytes]]],
) -> None:
    endpoint, received = collector
    result = run_probe(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        }
    )
    assert "/v1/traces" in received, result.stderr
    request = ExportTraceServiceRequest()
    request.ParseFromString(received["/v1/traces"][0])
    resource_spans = request.resource_spans[0]
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["service.name"] == "probe"
    assert attributes["service.version"] == "1.2.3"
    assert attributes["service.instance.id"] == "probe-1"
    assert attributes["host.name"] == "host-a"
    assert attributes["deployment.environment"] == "test"
    span = resource_spans.scope_spans[0].spans[0]
    assert span.name == "probe-span"

    assert "/v1/metrics" in received
    metrics_request = ExportMetricsServiceRequest()
    metrics_request.ParseFromString(received["/v1/metrics"][-1])
    names = {
        m.name
        for rm in metrics_request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert "probe.runs" in names

    # The log line written inside the span carries its ids.
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["event"] == "inside.span"
    assert line["answer"] == 42
    assert line["service"] == "probe"
    assert line["trace_id"] == span.trace_id.hex()
    assert line["span_id"] == span.span_id.hex()


def test_nothing_is_exported_without_an_endpoint(
    collector: tuple[str, dict[str, list[bytes]]],
) -> None:
    _, received = collector
    env = {k: "" for k in os.environ if k.startswith("OTEL_")}
    result = run_probe(env)
    assert received == {}
    assert json.loads(result.stderr.strip().splitlines()[-1])["event"] == "inside.span"
