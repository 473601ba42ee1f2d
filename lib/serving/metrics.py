"""Prometheus metrics of the service, in the app's own registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lib.serving.batching import Variant

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
        self.invalid = Counter(
            "model_invalid_requests", "Requests refused as invalid input (422)", registry=r
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
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._label_children: dict[tuple[str, str, Any], Any] = {}

    def for_variant(self, variant: Variant) -> tuple[Any, Any, Any]:
        key = (variant.name, variant.version)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(*key),
                self.errors.labels(*key),
                self.latency.labels(*key),
            )
            self._children[key] = children
        return children

    def count_labels(self, variant: Variant, labels: list[Any]) -> None:
        counts: dict[Any, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            key = (variant.name, variant.version, label)
            child = self._label_children.get(key)
            if child is None:
                child = self.predictions.labels(variant.name, variant.version, str(label))
                self._label_children[key] = child
            child.inc(n)


