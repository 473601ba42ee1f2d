"""The prediction store's background writer: a queue of answered rows, journaled, written in
batches by one thread, so the service never waits for the database on its request path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lib.serving import store_journal
from lib.serving.store_rows import clean_prediction, safe_text

logger = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class WriteQueue:
    """Rows submitted in order (numbered by sequence), written by `write` in batches; `write`
    returns (rows refused, rows it kept failing on), and the failed ones are parked in the journal
    for the next store opened on the database. Thread-safe: one condition variable guards all."""

    def __init__(
        self,
        write: Callable[[Rows], tuple[int, Rows]],
        batch_size: int,
        min_interval: float,
        max_pending: int,
        journal: store_journal.Journal | None,
    ) -> None:
        self._write = write
        self.batch_size = batch_size
        self.min_interval = min_interval  # at most ~20 commits/s from the writer under load
        self.max_pending = max_pending
        self.journal = journal
        self._cv = threading.Condition()
        self._pending: Rows = []  # rows as submitted, in sequence order
        self._pending_ids: dict[str, int] = {}  # request id -> its rows queued or being written
        self._held: set[str] = set()  # request ids claimed by requests in flight (not submitted)
        self._submitted = 0  # also the sequence number of the next row
        self._done = 0  # written, or given up on (dropped / failed / rejected): flush never hangs
        self._dropped = 0
        self._failed = 0
        self._rejected = 0
        self._flush_requested = False
        self._closed = False  # no more rows: the writer writes what is queued and stops
        self._writer: threading.Thread | None = None

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Append the rows to the journal and queue them; never touches the database (the
        writer thread cleans the rows before inserting them)."""
        if not rows:
            return
        data = store_journal.encode(rows) if self.journal is not None else b""
        keys = [safe_text(row.get("request_id")) for row in rows]
        with self._cv:
            if self._closed:
                logger.warning("prediction store closed: %d row(s) not recorded", len(rows))
                return
            idle = not self._pending
            self._pending.extend(rows)
            self._submitted += len(rows)
            if self.journal is not None:
                self.journal.append(data, self._submitted)
            ids = self._pending_ids
            for key in keys:
                ids[key] = ids.get(key, 0) + 1
            if self._held:  # a claimed id is now a pending row: never free in between
                self._held.difference_update(keys)
            overflow = len(self._pending) - self.max_pending
            if overflow > 0:  # the database is down or too slow: keep memory bounded
                self._forget(self._pending[:overflow])
                del self._pending[:overflow]
                self._dropped += overflow
                self._done += overflow
                if self._dropped == overflow or self._dropped % 10_000 < overflow:
                    logger.error(
                        "prediction store backlog full: %d row(s) dropped so far", self._dropped
                    )
                self._cv.notify_all()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, name="prediction-store-writer", daemon=True
                )
                self._writer.start()
            if idle:  # the writer sleeps until rows come; while it gathers, leave it alone
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

    def wait_written(self, request_id: str, timeout: float) -> bool:
        """If `request_id` is queued, have the writer write now and wait for that id only (False
        after `timeout`); an id not pending returns at once: unknown ids never hurry the writer."""
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
                "written": self._done - self._dropped - self._failed - self._rejected,
                "pending": self._submitted - self._done,
                "dropped": self._dropped,
                "failed": self._failed,
                "rejected": self._rejected,
            }

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every row submitted so far is done; False if the timeout came first."""
        with self._cv:
            target = self._submitted
            if self._done >= target:
                return True
            self._flush_requested = True
            self._cv.notify_all()
            return self._cv.wait_for(lambda: self._done >= target, timeout=timeout)

    def _run(self) -> None:
        last_write = 0.0
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending and self._closed:
                    return
                # Gather for a moment under load: fewer, larger transactions.
                gather_until = last_write + self.min_interval
                while not self._flush_requested and not self._closed:
                    remaining = gather_until - time.monotonic()
                    if remaining <= 0 or len(self._pending) >= self.batch_size:
                        break
                    self._cv.wait(timeout=remaining)
                batch = self._pending[: self.batch_size]
                del self._pending[: len(batch)]
                if not self._pending:
                    self._flush_requested = False
            if not batch:
                continue
            try:
                rejected, failed = self._write([clean_prediction(row) for row in batch])
            except Exception:  # the writer thread must not die
                logger.exception("prediction store: %d row(s) not written", len(batch))
                rejected, failed = 0, batch
            if failed and self.journal is not None:
                self.journal.park(store_journal.encode(failed))
            last_write = time.monotonic()
            with self._cv:
                self._done += len(batch)
                self._rejected += rejected
                self._failed += len(failed)
                self._forget(batch)
                if not self._pending:  # a flush asked during this write is answered now
                    self._flush_requested = False
                if self.journal is not None:
                    # every row before the oldest queued one is done (batches go in order)
                    oldest = self._submitted - len(self._pending)
                    self.journal.release(oldest, idle=not self._pending)
                self._cv.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer. Rows still not written (the writer is
        stuck) stay in the journal for the next store opened on the database."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(timeout)
            if writer.is_alive():
                logger.error("prediction store: writer did not stop within %.0f s", timeout)
        with self._cv:
            if self.journal is not None:
                self.journal.close(complete=self._done >= self._submitted)
