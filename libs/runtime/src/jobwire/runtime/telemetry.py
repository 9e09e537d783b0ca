"""OpenTelemetry setup: traces and metrics over OTLP when an endpoint is configured.

The standard ``OTEL_*`` variables are honoured as the SDK defines them
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``, ``OTEL_SDK_DISABLED`` …);
jobwire only adds the resource attributes it knows (service name, version,
instance id, host). Without an endpoint, spans are still created — trace ids
appear in logs and travel across NATS — but nothing is exported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import (
    HOST_NAME,
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def exporting(signal: str) -> bool:
    """Whether OTLP export is configured for ``signal`` ("traces" or "metrics")."""
    if (_env("OTEL_SDK_DISABLED") or "").lower() == "true":
        return False
    if (_env(f"OTEL_{signal.upper()}_EXPORTER") or "otlp") == "none":
        return False
    return bool(
        _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        """Flush what is buffered; called once at process exit."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_telemetry: Telemetry | None = None


def setup_telemetry(
    service_name: str,
    version: str,
    instance_id: str,
    host: str,
    *,
    span_processors: tuple[SpanProcessor, ...] = (),
    metric_readers: tuple[MetricReader, ...] = (),
) -> Telemetry:
    """Install the process-wide tracer and meter providers (first call wins).

    ``span_processors``/``metric_readers`` add in-process sinks, e.g. for tests.
    """
    global _telemetry
    if _telemetry is not None:
        return _telemetry
    attributes: dict[str, str] = {
        SERVICE_VERSION: version,
        SERVICE_INSTANCE_ID: instance_id,
        HOST_NAME: host,
    }
    if not _env("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = service_name
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME.
    resource = Resource.create(attributes)

    tracer_provider = TracerProvider(resource=resource)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    if exporting("traces"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    readers = list(metric_readers)
    if exporting("metrics"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _telemetry = Telemetry(tracer_provider, meter_provider)
    return _telemetry


def shutdown_telemetry() -> None:
    global _telemetry
    if _telemetry is not None:
        _telemetry.shutdown()
        _telemetry = None


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current W3C trace context (traceparent/tracestate) to ``headers``."""
    inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message carried, to parent the consumer's span."""
    return extract(dict(headers or {}))
