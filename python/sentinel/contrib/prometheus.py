"""Prometheus counters and histograms for Sentinel (extra ``prometheus``: ``prometheus-client``).

    from sentinel.contrib.prometheus import PrometheusObserver
    sentinel.add_observer(PrometheusObserver())          # default registry

Metrics: ``sentinel_events_total{namespace, event}`` and
``sentinel_execution_seconds{namespace, outcome}`` (run time of executed
functions: completed, failed or fenced).
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client import REGISTRY, Counter, Histogram

from .._events import Event

__all__ = ["PrometheusObserver"]


class PrometheusObserver:
    """An observer counting Sentinel events in a Prometheus registry."""

    def __init__(self, registry: Optional[Any] = None) -> None:
        reg = registry if registry is not None else REGISTRY
        self.events = Counter("sentinel_events", "Sentinel events by kind", ["namespace", "event"], registry=reg)
        self.execution_seconds = Histogram(
            "sentinel_execution_seconds", "Run time of functions executed by once()", ["namespace", "outcome"],
            registry=reg,
        )

    def __call__(self, event: Event) -> None:
        self.events.labels(event.namespace, event.kind).inc()
        if event.kind in ("completed", "failed", "fenced") and event.duration_s is not None:
            self.execution_seconds.labels(event.namespace, event.kind).observe(event.duration_s)
