"""OpenTelemetry spans and metrics for Sentinel (extra ``otel``: ``opentelemetry-api`` only).

    from sentinel.contrib.otel import OpenTelemetryObserver
    sentinel.add_observer(OpenTelemetryObserver())

Spans: ``sentinel.execute`` from ``acquired`` to ``completed``/``failed``/
``fenced``/``uncertain`` (status ERROR unless completed), and a short
``sentinel.<kind>`` span for every other event (an ``uncertain`` met by a
caller, with no execution of this process open under that fence, is one).
Metrics: counter ``sentinel.events`` (attributes ``sentinel.event``,
``sentinel.namespace``) and histogram
``sentinel.execution.duration`` in seconds (attribute ``sentinel.outcome``).
The providers default to the global ones your SDK set up.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Tuple

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from .._events import Event

__all__ = ["OpenTelemetryObserver"]

_ENDS = {"completed", "failed", "fenced"}


class OpenTelemetryObserver:
    """An observer turning Sentinel events into OpenTelemetry spans and metrics."""

    def __init__(self, tracer_provider: Optional[Any] = None, meter_provider: Optional[Any] = None) -> None:
        self._tracer = trace.get_tracer("sentinel", tracer_provider=tracer_provider)
        meter = metrics.get_meter("sentinel", meter_provider=meter_provider)
        self._events = meter.create_counter("sentinel.events", description="Sentinel events by kind")
        self._duration = meter.create_histogram(
            "sentinel.execution.duration", unit="s", description="Run time of functions executed by once()"
        )
        self._open: Dict[Tuple[str, str, Optional[int]], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        attrs = {"sentinel.event": event.kind, "sentinel.namespace": event.namespace}
        self._events.add(1, attrs)
        span_attrs: Dict[str, Any] = {
            "sentinel.namespace": event.namespace,
            "sentinel.key": event.key,
            "sentinel.fence": event.fence if event.fence is not None else -1,
            "sentinel.attempt": event.attempt if event.attempt is not None else -1,
        }
        ident = (event.namespace, event.key, event.fence)
        if event.kind == "acquired":
            span = self._tracer.start_span("sentinel.execute", attributes=span_attrs)
            with self._lock:
                self._open[ident] = span
            return
        if event.kind in _ENDS or event.kind == "uncertain":
            with self._lock:
                span = self._open.pop(ident, None)
            if event.duration_s is not None:
                self._duration.record(event.duration_s, {"sentinel.namespace": event.namespace,
                                                         "sentinel.outcome": event.kind})
            if span is not None:
                span.set_attribute("sentinel.outcome", event.kind)
                if event.kind != "completed":
                    span.set_status(Status(StatusCode.ERROR, event.kind))
                    if event.error is not None:
                        span.record_exception(event.error)
                span.end()
                return
        with self._tracer.start_as_current_span(f"sentinel.{event.kind}", attributes=span_attrs) as span:
            for k, v in event.details.items():
                if isinstance(v, (str, bool, int, float)):
                    span.set_attribute(f"sentinel.{k}", v)
