"""Traffic for analysis windows when there are no real users (locally, in CI): held-out apps
sent to the production service as real HTTP requests, so the canary analysis and the monitor
judge real requests through the real routing. Like real users, only a share of them ever rate
the app (`label_share`), after a delay (`label_delay`, seconds, drawn uniformly); a label not due
when the replayer stops stays pending (`deliver_pending` posts it later, as a late rating)."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


def holdout_apps(
    apps: pd.DataFrame, target_threshold: float, test_size: float, seed: int
) -> pd.DataFrame:
    """Typed rows (data columns) of the identity-stable holdout of pipeline.training: apps no
    candidate was trained on, each with its true rating."""
    from lib.pipeline import training

    data = training.labeled_data(apps, target_threshold)
    _, test_idx = training.holdout_split(data.keys, data.y, test_size, seed)
    keys = set(data.keys.iloc[test_idx])
    unique = apps[apps["rating"].notna()].drop_duplicates("app_key", keep="last")
    return unique[unique["app_key"].isin(keys)].reset_index(drop=True)


def app_request(row: pd.Series) -> dict[str, Any]:
    """A typed app (lib.pipeline.data columns) as a /predict body in the snake_case schema."""

    def num(value: Any) -> float | None:
        return None if pd.isna(value) else float(value)

    def text(value: Any) -> str | None:
        return None if value is None or pd.isna(value) else str(value)

    updated = row["last_updated"]
    body: dict[str, Any] = {k: str(row[k]) for k in ("app", "category", "type", "content_rating")}
    body |= {k: num(row[k]) for k in ("reviews", "size_mb", "installs", "price")}
    body |= {k: text(row.get(k)) for k in ("genres", "current_ver", "android_ver")}
    body["last_updated"] = None if pd.isna(updated) else pd.Timestamp(updated).date().isoformat()
    return body


@dataclass
class ReplayStats:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    feedback: int = 0
    labels_pending: int = 0  # drawn to arrive, not due yet
    by_variant: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


class Replayer:
    """Sends requests at `rate` per second in a background thread until stopped."""

    def __init__(
        self,
        url: str,
        records: list[tuple[dict[str, Any], float]],
        rate: float = 20.0,
        feedback: bool = True,
        label_flip: bool = False,
        timeout: float = 10.0,
        label_share: float = 1.0,
        label_delay: tuple[float, float] = (0.0, 0.0),
        seed: int = 0,
        feedback_token: str | None = None,
    ) -> None:
        if not records:
            raise ValueError("the replayer needs at least one labeled record")
        low, high = label_delay
        if not 0 <= label_share <= 1 or not 0 <= low <= high:
            raise ValueError(
                f"label_share must be in [0, 1] and label_delay a range [low, high] of seconds "
                f">= 0; got {label_share} and {list(label_delay)}"
            )
        self.url = url.rstrip("/")
        self.records = records
        self.rate = rate
        self.feedback = feedback
        self.label_flip = label_flip  # tests: feedback that disagrees with reality
        self.label_share, self.label_delay = label_share, (low, high)
        self._random = random.Random(seed)
        token = feedback_token or os.environ.get("SERVING_FEEDBACK_TOKEN")  # labels need it
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._pending: list[tuple[float, int, dict[str, Any]]] = []  # (due, seq, body): a heap
        self.timeout = timeout
        self.stats = ReplayStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Replayer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="replayer", daemon=True)
        self._thread.start()

    def stop(self) -> ReplayStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
            self._thread = None
        return self.stats

    def _loop(self) -> None:
        import httpx

        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        with httpx.Client(timeout=self.timeout) as client:
            next_at = time.monotonic()
            for body, rating in itertools.cycle(self.records):
                if self._stop.is_set():
                    return
                self.send_one(client, body, rating)
                self._deliver(client, due_by=time.monotonic())
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()

    def send_one(self, client: Any, body: dict[str, Any], rating: float) -> None:
        request_id = uuid.uuid4().hex
        self.stats.sent += 1
        try:
            resp = client.post(
                f"{self.url}/predict", json=body, headers={"X-Request-ID": request_id}
            )
        except Exception as exc:  # service down or timing out: counted, the window goes on
            self._error(f"{type(exc).__name__}: {exc}")
            return
        if resp.status_code != 200:
            self._error(f"HTTP {resp.status_code}: {resp.text[:200]}")
            return
        answer = resp.json()
        with self._lock:
            self.stats.ok += 1
            variant = answer.get("variant", "?")
            self.stats.by_variant[variant] = self.stats.by_variant.get(variant, 0) + 1
        if self.feedback and self._random.random() < self.label_share:
            true_rating = (5.0 if rating <= 4.0 else 1.0) if self.label_flip else rating
            feedback = {"request_id": answer.get("request_id", request_id), "rating": true_rating}
            due = time.monotonic() + self._random.uniform(*self.label_delay)
            with self._lock:
                heapq.heappush(self._pending, (due, self.stats.sent, feedback))
                self.stats.labels_pending = len(self._pending)
            if self.label_delay[1] == 0:
                self._deliver(client, due_by=due)

    def deliver_pending(self) -> int:
        """Post every label still pending now (ratings that arrive after the rollout)."""
        import httpx

        with httpx.Client(timeout=self.timeout) as client:
            return self._deliver(client, due_by=float("inf"))

    def _deliver(self, client: Any, due_by: float) -> int:
        """Post the pending labels due by `due_by`; returns how many were accepted."""
        accepted = 0
        while True:
            with self._lock:
                if not self._pending or self._pending[0][0] > due_by:
                    self.stats.labels_pending = len(self._pending)
                    return accepted
                feedback = heapq.heappop(self._pending)[2]
            try:
                fb = client.post(f"{self.url}/feedback", json=feedback, headers=self._auth)
                if fb.status_code == 200:
                    accepted += 1
                    with self._lock:
                        self.stats.feedback += 1
                else:
                    self._error(f"feedback: HTTP {fb.status_code}: {fb.text[:200]}")
            except Exception as exc:
                self._error(f"feedback: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        with self._lock:
            self.stats.errors += 1
            self.stats.last_error = text
        log.debug("replayer: %s", text)
