"""Shadow scoring: while a canary is loaded (any weight, 0 included: the `shadow` step), every
answered request is also scored by the variant that did not answer, off the request path, and
stored as `<id>#shadow` (prediction_store.SHADOW_SUFFIX), so a rollout compares the two models
on the same inputs even before labels arrive.

The request only offers its rows to a bounded queue (`SERVING_SHADOW_MAX_ROWS` rows, default
20,000): when it is full the shadow scores are dropped and counted, never waited for. One worker
thread at the lowest CPU priority (nice 19; on Linux nice is per thread) predicts queued rows in
batches by variant, in its own thread, not the answers' predict thread. `SERVING_SHADOW=off`
turns it off. At shutdown what is still queued is dropped (counted).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from lib.serving.batching import Variant, one_openmp_thread
from lib.serving.metrics import Metrics
from lib.serving.prediction_store import SHADOW_SUFFIX, PredictionStore
from lib.serving.rows import Row

logger = logging.getLogger(__name__)

BATCH_ROWS = 512  # rows per shadow predict call at most (one request's rows are never split)


@dataclass
class _Item:
    variant: Variant  # the variant that scores in the shadow
    ids: list[str]  # the answered rows' request ids
    rows: list[Row]
    created: float  # the answered request's created_at: its shadow falls in the same window


class ShadowScorer:
    """A bounded queue of answered requests and the thread that scores them in the shadow."""

    def __init__(self, store: PredictionStore, metrics: Metrics, enabled: bool, max_rows: int):
        self.store, self.metrics = store, metrics
        self.enabled, self.max_rows = enabled, max(1, int(max_rows))
        self._items: deque[_Item] = deque()
        self._queued_rows = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.scored = self.dropped = self.failed = 0  # shadow scores (rows) since start

    def offer(self, variant: Variant, ids: list[str], rows: list[Row], created: float) -> None:
        """Queue `rows` (answered under `ids`) for `variant` to score; never waits: a full
        queue (or a stopped scorer) drops them, counted."""
        with self._cv:
            if self._stopping or self._queued_rows + len(rows) > self.max_rows:
                self._drop(len(rows))
                return
            self._items.append(_Item(variant, ids, rows, created))
            self._queued_rows += len(rows)
            self._cv.notify()

    def _drop(self, n: int) -> None:
        """(Under the lock.) Shadow scores not made; the first one, then every 10,000th logged."""
        self.dropped += n
        self.metrics.shadow_dropped.inc(n)
        if self.dropped == n or self.dropped % 10_000 < n:
            logger.warning("shadow scoring: %d score(s) dropped so far (queue full)", self.dropped)

    def start(self) -> None:
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after the batch it is scoring; what is still queued is dropped."""
        with self._cv:
            self._stopping = True
            self._drop_queued()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("shadow scorer still busy after %.0f s: left behind", timeout)
            self._thread = None

    def _drop_queued(self) -> None:
        if self._queued_rows:
            self._drop(self._queued_rows)
        self._items.clear()
        self._queued_rows = 0

    def stats(self) -> dict[str, Any]:
        """/health's view: on or off, rows queued, and shadow scores scored, dropped, failed."""
        return {
            "enabled": self.enabled,
            "queued": self._queued_rows,
            "scored": self.scored,
            "dropped": self.dropped,
            "failed": self.failed,
        }

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):  # not Linux: the thread keeps the process's priority
            logger.debug("shadow scorer runs at the process's priority")
        one_openmp_thread()
        while True:
            with self._cv:
                while not self._items and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                batch = self._take()
            try:
                self._score(batch)
            except Exception:  # (the store refused the rows): the worker carries on
                logger.exception("shadow scoring failed")

    def _take(self) -> list[_Item]:
        """(Under the lock.) The first item and the queued items of its variant, up to
        BATCH_ROWS rows; items of another variant keep their place."""
        batch, keep = [self._items.popleft()], deque()
        rows = len(batch[0].rows)
        while self._items and rows < BATCH_ROWS:
            item = self._items.popleft()
            if item.variant is batch[0].variant and rows + len(item.rows) <= BATCH_ROWS:
                batch.append(item)
                rows += len(item.rows)
            else:
                keep.append(item)
        self._items.extendleft(reversed(keep))
        self._queued_rows -= rows
        return batch

    def _score(self, batch: list[_Item]) -> None:
        """Predict the batch in one call (item by item if it fails: one bad input fails alone)
        and submit the shadow rows."""
        out: list[dict[str, Any]] = []
        try:
            rows = [row for item in batch for row in item.rows]
            out = _predicted(batch, rows)
        except Exception:
            for item in batch:
                started = time.perf_counter()
                try:
                    out.extend(_predicted([item], item.rows))
                except Exception as exc:
                    error, latency = f"{type(exc).__name__}: {exc}", time.perf_counter() - started
                    out.extend(_shadow_rows(item, None, error, latency))
        failed = sum(row["error"] is not None for row in out)
        self.scored += len(out) - failed
        self.failed += failed
        self.metrics.shadow_scored.inc(len(out) - failed)
        self.metrics.shadow_failed.inc(failed)
        self.store.submit(out)


def _predicted(batch: list[_Item], rows: list[Row]) -> list[dict[str, Any]]:
    """The batch's shadow rows from one predict call (raises what the model raises)."""
    started = time.perf_counter()
    proba, labels = batch[0].variant.predictor.predict(rows)
    latency = time.perf_counter() - started
    answers = list(zip(labels.tolist(), proba.tolist(), strict=True))
    out, start = [], 0
    for item in batch:
        out.extend(_shadow_rows(item, answers[start : start + len(item.rows)], None, latency))
        start += len(item.rows)
    return out


def _shadow_rows(
    item: _Item, answers: list[tuple[Any, float]] | None, error: str | None, latency: float
) -> list[dict[str, Any]]:
    """Shadow score rows per the store's contract (features None: the answer has them)."""
    return [
        {
            "request_id": f"{rid}{SHADOW_SUFFIX}",
            "shadow_of": rid,
            "created_at": item.created,
            "variant": item.variant.name,
            "model_version": item.variant.version,
            "label": None if label is None else int(label),
            "probability": p,
            "latency_ms": latency * 1000.0,
            "error": error,
            "features": None,
        }
        for rid, (label, p) in zip(item.ids, answers or [(None, None)] * len(item.ids), strict=True)
    ]
