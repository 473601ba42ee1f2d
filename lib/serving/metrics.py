"""Prometheus metrics of the service, in the app's own registry."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lib.serving.batching import Variant

# PredictionStore.stats() key -> help of the counter model_store_rows_<key>_total
STORE_COUNTERS = {
    "submitted": "Prediction rows handed to the store",
    "written": "Prediction rows written to the database",
    "dropped": "Prediction rows dropped: the store's backlog was full (database too slow or down)",
    "failed": "Prediction rows not written: the database kept failing (retried 3 times)",
    "rejected": "Prediction rows the database refused (skipped alone, the rest of the batch "
    "written)",
    "recovered": "Rows answered by a process that died before writing them, written from its "
    "journal when this service opened the store",
    "lost_at_restart": "Rows of a dead process's journal that could not be read back or stored",
}

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip


class Metrics:
    """Prometheus metrics in the app's own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["variant", "model_version"]
        r = self.registry
        self.requests = Counter("model_requests", "Prediction requests", labels, registry=r)
        self.errors = Counter(
            "model_request_errors", "Prediction requests the model failed", labels, registry=r
        )
        self.latency = Histogram(
            "model_request_latency_seconds",
            "Time from request to answer in the service",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "model_predictions", "Predicted rows by label", [*labels, "label"], registry=r
        )
        self.canary_weight = Gauge(
            "model_canary_weight", "Percent of request ids routed to the canary", registry=r
        )
        # which replica this process is (each replica's /metrics is scraped on its own)
        self.replica = Gauge(
            "model_service_replica", "This process's replica id (value 1)", ["replica"], registry=r
        )
        self.routing_generation = Gauge(
            "model_routing_generation", "The shared routing generation applied here", registry=r
        )
        self.invalid = Counter(
            "model_invalid_requests", "Requests refused as invalid input (422)", registry=r
        )
        self.repeated_ids = Counter(
            "model_repeated_request_ids",
            "Requests refused (409): their request id was already used for a prediction",
            registry=r,
        )
        self.unavailable = Counter(
            "model_unavailable_requests", "Requests answered 503: no champion model", registry=r
        )
        self.lease_expiries = Counter(
            "model_canary_lease_expirations", "Canary leases that ran out", registry=r
        )
        self.batch_rows = Histogram(
            "model_batch_rows",
            "Rows per predict call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512, 2048),
            registry=r,
        )
        self.shadow_scored = Counter(
            "model_shadow_scores",
            "Shadow scores stored: the other variant on an answered row",
            registry=r,
        )
        self.shadow_dropped = Counter(
            "model_shadow_scores_dropped",
            "Shadow scores not made: the shadow queue was full, or the service stopped",
            registry=r,
        )
        self.shadow_failed = Counter(
            "model_shadow_scores_failed",
            "Shadow scores the model failed (stored with the error)",
            registry=r,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._label_children: dict[tuple[str, str, Any], Any] = {}

    def for_variant(self, variant: Variant) -> tuple[Any, Any, Any]:
        key = (variant.name, variant.version)
        children = self._children.get(key)
        if children is None:
            metrics = (self.requests, self.errors, self.latency)
            children = self._children[key] = tuple(m.labels(*key) for m in metrics)
        return children

    def count_labels(self, variant: Variant, labels: list[Any]) -> None:
        for label, n in collections.Counter(labels).items():
            key = (variant.name, variant.version, label)
            child = self._label_children.get(key)
            if child is None:
                child = self.predictions.labels(variant.name, variant.version, str(label))
                self._label_children[key] = child
            child.inc(n)

    def watch_store(self, stats: Callable[[], dict[str, int]]) -> None:
        """Expose a prediction store's row counts (`PredictionStore.stats`) at every scrape."""
        self.registry.register(_StoreCollector(stats))


class _StoreCollector(Collector):
    """Reads the store's counts when scraped: nothing to update on the request path."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, documentation in STORE_COUNTERS.items():
            name = f"model_store_rows_{key}"
            yield CounterMetricFamily(name, documentation, value=stats.get(key, 0))
        yield GaugeMetricFamily(
            "model_store_rows_pending",
            "Prediction rows answered and not written to the database yet",
            value=stats.get("pending", 0),
        )
