"""The prediction store's writer: one thread commits queued rows, a micro-batch per transaction.

A request is answered only once its rows are committed (`PredictionStore.record`), so what was
answered is in the database: SQLite's own write-ahead log keeps it through a kill -9, and no
journal of ours is needed. The rows that queue up while a transaction commits go in the next
one (group commit): the more requests in flight, the more rows per commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lib.serving.store_rows import clean_prediction, safe_text

logger = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
Done = Callable[[bool], None]  # told True once the rows are committed, False if they never will


class WriteQueue:
    """Rows submitted in order, written by `write` in batches of whole submissions.

    `write(batch)` returns (how many rows the database refused, the rows it kept failing on).
    A submission is done (its `done` called) after the batch that holds it: True unless the
    database failed on one of its rows. Thread-safe; all state is guarded by one condition.
    """

    def __init__(
        self, write: Callable[[Rows], tuple[int, Rows]], batch_size: int, min_interval: float
    ) -> None:
        self._write = write
        self.batch_size = batch_size
        self.min_interval = min_interval  # gather this long after a commit (0: commit at once)
        self._cv = threading.Condition()
        self._pending: deque[tuple[Rows, Done | None]] = deque()  # submissions, in order
        self._pending_ids: dict[str, int] = {}  # request id -> its rows queued or being written
        self._held: set[str] = set()  # request ids claimed by requests in flight (not submitted)
        self._submitted = 0
        self._done = 0  # written, or given up on (failed / rejected): flush never hangs
        self._failed = 0
        self._rejected = 0
        self._flush_requested = False
        self._stopping = False
        self._closed = False
        self._writer: threading.Thread | None = None

    def submit(self, rows: Rows, done: Done | None = None) -> None:
        """Queue the rows for the writer thread; never touches the database. `done` is called
        from the writer thread once they are committed (True) or failed (False)."""
        if not rows:
            if done is not None:
                done(True)
            return
        keys = [safe_text(row.get("request_id")) for row in rows]
        with self._cv:
            if self._closed:
                logger.warning("prediction store closed: %d row(s) not recorded", len(rows))
                if done is not None:
                    done(False)
                return
            idle = not self._pending
            self._pending.append((rows, done))
            self._submitted += len(rows)
            ids = self._pending_ids
            for key in keys:
                ids[key] = ids.get(key, 0) + 1
            if self._held:  # a claimed id is now a pending row: never free in between
                self._held.difference_update(keys)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, name="prediction-store-writer", daemon=True
                )
                self._writer.start()
            if idle:  # the writer sleeps until rows come
                self._cv.notify_all()

    def _forget(self, rows: Rows) -> None:
        """These rows are done (call under _cv): their ids are no longer pending."""
        ids = self._pending_ids
        for row in rows:
            rid = safe_text(row.get("request_id"))
            left = ids.get(rid, 0) - 1
            if left > 0:
                ids[rid] = left
            else:
                ids.pop(rid, None)

    def hold(self, keys: list[str]) -> str | None:
        """Claim request ids for a request in flight: the first one pending or already held
        (then nothing is held), else None and all are held until `submit` or `release`."""
        with self._cv:
            for key in keys:
                if key in self._pending_ids or key in self._held:
                    return key
            self._held.update(keys)
        return None

    def release(self, keys: list[str]) -> None:
        """Free the ids a request held and did not submit (submitted ones are pending rows)."""
        with self._cv:
            if self._held:
                self._held.difference_update(keys)

    def is_pending(self, request_id: str) -> bool:
        with self._cv:
            return request_id in self._pending_ids

    def wait_written(self, request_id: str, timeout: float) -> bool:
        """If `request_id` is queued, have the writer write now and wait for that id only.

        False if it is still pending after `timeout`. An id that is not pending returns at
        once: feedback for unknown ids never makes the writer hurry.
        """
        with self._cv:
            if request_id not in self._pending_ids:
                return True
            self._flush_requested = True
            self._cv.notify_all()
            return self._cv.wait_for(lambda: request_id not in self._pending_ids, timeout=timeout)

    def counts(self) -> dict[str, int]:
        with self._cv:
            return {
                "submitted": self._submitted,
                "written": self._done - self._failed - self._rejected,
                "pending": self._submitted - self._done,
                "failed": self._failed,
                "rejected": self._rejected,
            }

    def pending_rows(self) -> int:
        with self._cv:
            return self._submitted - self._done

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every row submitted so far is done; False if the timeout came first."""
        with self._cv:
            target = self._submitted
            if self._done >= target:
                return True
            self._flush_requested = True
            self._cv.notify_all()
            return self._cv.wait_for(lambda: self._done >= target, timeout=timeout)

    def _next_batch(self, last_write: float) -> list[tuple[Rows, Done | None]] | None:
        """Whole submissions up to batch_size rows (at least one), or None to stop."""
        with self._cv:
            while not self._pending and not self._stopping:
                self._cv.wait()
            if not self._pending:
                return None
            gather_until = last_write + self.min_interval
            while not self._flush_requested and not self._stopping:
                remaining = gather_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(timeout=remaining)
            batch = [self._pending.popleft()]
            size = len(batch[0][0])
            while self._pending and size + len(self._pending[0][0]) <= self.batch_size:
                size += len(self._pending[0][0])
                batch.append(self._pending.popleft())
            if not self._pending:
                self._flush_requested = False
            return batch

    def _run(self) -> None:
        last_write = 0.0
        while (batch := self._next_batch(last_write)) is not None:
            rows = [row for submitted, _done in batch for row in submitted]
            try:
                rejected, failed = self._write([clean_prediction(row) for row in rows])
            except Exception:  # the writer thread must not die
                logger.exception("prediction store: %d row(s) not written", len(rows))
                rejected, failed = 0, rows
            last_write = time.monotonic()
            with self._cv:
                self._done += len(rows)
                self._rejected += rejected
                self._failed += len(failed)
                self._forget(rows)
                if not self._pending:  # a flush asked during this write is answered now
                    self._flush_requested = False
                self._cv.notify_all()
            lost = {safe_text(row.get("request_id")) for row in failed}
            for submitted, done in batch:
                if done is not None:
                    done(
                        not lost
                        or all(safe_text(r.get("request_id")) not in lost for r in submitted)
                    )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._cv.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(timeout)
            if writer.is_alive():
                logger.error("prediction store: writer did not stop within %.0f s", timeout)
