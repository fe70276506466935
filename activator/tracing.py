"""OpenTelemetry traces, an optional extra (``pip install 'dormant[otel]'``), off by default.

With ``tracing: otlp`` (spans sent over OTLP/HTTP to the endpoint the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables name;
default ``http://localhost:4318``) or ``tracing: console`` (one JSON span after another on
stdout), every request gets one server span, ``HTTP METHOD``, a child of the client's W3C
``traceparent`` when it sends one, with the workload, status, outcome and upstream status
as attributes. A request that waited for its workload to wake gets a child span, ``wake``,
covering the part of the wake it waited through, with the wake's path (boot, restore,
resume) and its whole duration.

Off (``tracing: off``, the default), nothing of OpenTelemetry's SDK is imported and a
request pays one ``is None`` test (docs/measurements.md measures both).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from activator.access import AccessRecord

__all__ = ["RequestTracer", "TracingUnavailable", "make_tracer"]

_NS = 1_000_000_000


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the ``otel`` extra is not installed."""


class RequestTracer:
    """Opens a request's span and closes it with what its access line says."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        self._provider = provider
        self._tracer = provider.get_tracer("dormant.activator")
        self._extract = extract
        self._server = trace.SpanKind.SERVER
        self._set_in_context = trace.set_span_in_context
        self._error = trace.Status(trace.StatusCode.ERROR)

    def start(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Any:
        """The request's span, started now (a child of the client's traceparent)."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        return self._tracer.start_span(
            f"HTTP {method}",
            context=self._extract(carrier),
            kind=self._server,
            attributes={"http.request.method": method, "url.path": path},
        )

    def finish(self, span: Any, rec: AccessRecord, status: int, outcome: str) -> None:
        """End ``span`` with the request's outcome, and its wake as a child span."""
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("dormant.outcome", outcome)
        if rec.workload:
            span.set_attribute("dormant.workload", rec.workload)
        if rec.upstream:
            span.set_attribute("dormant.upstream.status_code", rec.upstream)
        if status >= 500:
            span.set_status(self._error)
        if rec.wake is not None:
            ready_ns = int(rec.wake.at * _NS)
            began_ns = ready_ns - int(rec.wake.seconds * _NS)
            start_ns = max(began_ns, span.start_time or began_ns)
            wake = self._tracer.start_span(
                "wake",
                context=self._set_in_context(span),
                start_time=start_ns,
                attributes={
                    "dormant.wake.path": rec.wake.path,
                    "dormant.wake.seconds": rec.wake.seconds,
                },
            )
            wake.end(end_time=max(ready_ns, start_ns))
        span.end()

    def shutdown(self) -> None:
        """Send what is still buffered (at Dormant's exit)."""
        self._provider.shutdown()


def make_tracer(kind: str, exporter: Any = None) -> RequestTracer | None:
    """The tracer ``tracing:`` names: None for 'off'; 'otlp' or 'console' build an SDK
    provider with that exporter (``exporter`` replaces it, for tests). Raises
    TracingUnavailable without the ``otel`` extra."""
    if kind == "off" and exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing: {kind} needs the otel extra ({exc}): pip install 'dormant[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": "dormant"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailable(
                f"tracing: otlp needs the otel extra ({exc}): pip install 'dormant[otel]'"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return RequestTracer(provider)
