"""Where the model service logs predictions and ground-truth feedback, for canary analysis.

SQLAlchemy Core with portable SQL only, so the default SQLite file and a PostgreSQL URL run the
same code. On SQLite the database is switched to WAL with a busy timeout: the service (writer) and
the analysis notebooks (readers, in other processes) work at the same time without "database is
locked". The service never writes on its request path: `submit` hands rows to a background writer
thread that inserts them in batches.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

logger = logging.getLogger(__name__)

metadata = MetaData()

predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String(255), primary_key=True),
    Column("created_at", Double, nullable=False),
    Column("variant", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("label", Integer, nullable=True),
    Column("probability", Double, nullable=True),
    Column("latency_ms", Double, nullable=False),
    Column("error", Text, nullable=True),
    Column("features", Text, nullable=True),  # JSON of the model's input row
)
Index("ix_predictions_created_at", predictions.c.created_at)
Index("ix_predictions_variant_created_at", predictions.c.variant, predictions.c.created_at)

feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(255), primary_key=True),
    Column("created_at", Double, nullable=False),
    Column("rating", Double, nullable=True),  # None when the caller sent only a label
    Column("label", Integer, nullable=False),
)

PREDICTION_FIELDS = [c.name for c in predictions.columns]
WINDOW_COLUMNS = [
    "request_id",
    "created_at",
    "variant",
    "model_version",
    "label",
    "probability",
    "latency_ms",
    "error",
    "true_label",
    "rating",
]

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _json_value(value: Any) -> Any:
    """NaN is not JSON: a missing size is stored as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_value(value.item())
    return value


def features_json(features: Any) -> str | None:
    """The model's input row as JSON text (a dict of column -> value), None if absent."""
    if features is None or isinstance(features, str):
        return features
    return json.dumps({str(k): _json_value(v) for k, v in dict(features).items()})


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        # One shared connection, or the writer thread would write into its own private database.
        return create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; no fsync per commit
        finally:
            cursor.close()

    return engine


def make_engine(url: str) -> Engine:
    """An engine for the store; SQLite gets WAL + busy timeout, other databases are untouched."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True)


class PredictionStore:
    """Predictions and feedback in one database; tables are created on first use.

    Thread-safe. `submit` is the service's non-blocking path; `record_predictions` writes at once.
    """

    def __init__(
        self,
        url: str,
        batch_size: int = 500,
        min_interval: float = 0.05,
        max_pending: int = 200_000,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.batch_size = batch_size
        self.min_interval = min_interval  # at most ~20 commits/s from the writer under load
        self.max_pending = max_pending
        self._tables_ready = False
        self._tables_lock = threading.Lock()
        # writer state, all guarded by _cv
        self._cv = threading.Condition()
        self._pending: list[dict[str, Any]] = []
        self._submitted = 0
        self._done = 0  # written, or given up on (dropped / failed): flush never hangs
        self._dropped = 0
        self._failed = 0
        self._flush_requested = False
        self._stopping = False
        self._closed = False
        self._writer: threading.Thread | None = None

    # ---------------------------------------------------------------------------------- setup

    def _ensure_tables(self) -> None:
        if self._tables_ready:
            return
        with self._tables_lock:
            if self._tables_ready:
                return
            try:
                metadata.create_all(self.engine)
            except SQLAlchemyError:
                # Another process may have created them between the check and the CREATE.
                names = set(inspect(self.engine).get_table_names())
                if not {"predictions", "feedback"} <= names:
                    raise
            self._tables_ready = True

    # ------------------------------------------------------------------------ direct writes

    def record_predictions(self, rows: list[dict[str, Any]]) -> int:
        """Bulk-insert prediction rows; a repeated request id replaces the earlier row."""
        if not rows:
            return 0
        self._ensure_tables()
        by_id: dict[str, dict[str, Any]] = {}
        for row in rows:  # last one wins inside a batch too
            clean = {name: row.get(name) for name in PREDICTION_FIELDS}
            clean["features"] = features_json(clean["features"])
            clean["request_id"] = str(clean["request_id"])
            clean["model_version"] = str(clean["model_version"])
            by_id[clean["request_id"]] = clean
        values = list(by_id.values())
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(predictions), values)
        except IntegrityError:
            # A client reused a request id (a retry): portable upsert, delete then insert.
            with self.engine.begin() as conn:
                ids = list(by_id)
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    conn.execute(delete(predictions).where(predictions.c.request_id.in_(chunk)))
                conn.execute(insert(predictions), values)
        return len(values)

    def _prediction(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    predictions.c.variant,
                    predictions.c.model_version,
                    predictions.c.label,
                    predictions.c.probability,
                    predictions.c.error,
                ).where(predictions.c.request_id == request_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def record_feedback(
        self,
        request_id: str,
        rating: float | None,
        target_threshold: float = 4.0,
        label: int | None = None,
    ) -> dict[str, Any] | None:
        """Store the true rating (or label) of a prediction; None if the request id is unknown.

        A second feedback for the same id replaces the first. Feedback can arrive before the
        writer thread stored its prediction: then the pending rows are flushed and it looks again.
        """
        if rating is None and label is None:
            raise ValueError("feedback needs a rating or a label")
        self._ensure_tables()
        request_id = str(request_id)
        found = self._prediction(request_id)
        if found is None and self.pending_rows():
            self.flush(timeout=10.0)
            found = self._prediction(request_id)
        if found is None:
            return None
        true_label = int(rating > target_threshold) if rating is not None else int(label)
        row = {
            "request_id": request_id,
            "created_at": time.time(),
            "rating": None if rating is None else float(rating),
            "label": true_label,
        }
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    gone = conn.execute(delete(feedback).where(feedback.c.request_id == request_id))
                    conn.execute(insert(feedback), [row])
                break
            except IntegrityError:  # two feedbacks for one id at the same moment: retry
                if attempt == 2:
                    raise
        return {**row, "replaced": bool(gone.rowcount), "prediction": found}

    # ------------------------------------------------------------------------------- reading

    def window(
        self,
        since: float,
        until: float | None = None,
        variant: str | None = None,
        features: bool = False,
    ) -> pd.DataFrame:
        """Predictions with created_at in [since, until), left-joined with their feedback.

        Columns: WINDOW_COLUMNS (true_label/rating are missing without feedback), plus
        `features` (dicts) when asked, for drift statistics.
        """
        self._ensure_tables()
        if self.pending_rows():
            self.flush(timeout=10.0)  # this process's own unwritten rows belong in the window
        columns = [
            predictions.c.request_id,
            predictions.c.created_at,
            predictions.c.variant,
            predictions.c.model_version,
            predictions.c.label,
            predictions.c.probability,
            predictions.c.latency_ms,
            predictions.c.error,
            feedback.c.label.label("true_label"),
            feedback.c.rating,
        ]
        if features:
            columns.append(predictions.c.features)
        stmt = (
            select(*columns)
            .select_from(
                predictions.outerjoin(feedback, predictions.c.request_id == feedback.c.request_id)
            )
            .where(predictions.c.created_at >= since)
            .order_by(predictions.c.created_at, predictions.c.request_id)
        )
        if until is not None:
            stmt = stmt.where(predictions.c.created_at < until)
        if variant is not None:
            stmt = stmt.where(predictions.c.variant == variant)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        names = WINDOW_COLUMNS + (["features"] if features else [])
        values = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        dtypes = {
            "created_at": "float64",
            "label": "Int64",
            "probability": "float64",
            "latency_ms": "float64",
            "true_label": "Int64",
            "rating": "float64",
        }
        data: dict[str, pd.Series] = {}
        for name, column in zip(names, values, strict=True):
            if name == "features":
                column = [json.loads(f) if f else None for f in column]
            # text columns stay object so that "no error" is None, not NaN
            data[name] = pd.Series(list(column), dtype=dtypes.get(name, object))
        return pd.DataFrame(data, columns=names)

    # --------------------------------------------------------------------- background writer

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue prediction rows for the writer thread; never blocks on the database."""
        if not rows:
            return
        with self._cv:
            if self._closed:
                logger.warning("prediction store closed: %d row(s) not recorded", len(rows))
                return
            idle = not self._pending
            self._pending.extend(rows)
            self._submitted += len(rows)
            overflow = len(self._pending) - self.max_pending
            if overflow > 0:  # the database is down or too slow: keep memory bounded
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
                    target=self._run_writer, name="prediction-store-writer", daemon=True
                )
                self._writer.start()
            if idle:  # the writer sleeps until rows come; while it gathers, leave it alone
                self._cv.notify_all()

    def pending_rows(self) -> int:
        """Rows submitted but not yet written (or given up on)."""
        with self._cv:
            return self._submitted - self._done

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {
                "submitted": self._submitted,
                "written": self._done - self._dropped - self._failed,
                "pending": self._submitted - self._done,
                "dropped": self._dropped,
                "failed": self._failed,
            }

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every row submitted so far is written; False if the timeout came first."""
        with self._cv:
            target = self._submitted
            if self._done >= target:
                return True
            self._flush_requested = True
            self._cv.notify_all()
            return self._cv.wait_for(lambda: self._done >= target, timeout=timeout)

    def _run_writer(self) -> None:
        last_write = 0.0
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if not self._pending and self._stopping:
                    return
                # Gather for a moment under load: fewer, larger transactions.
                gather_until = last_write + self.min_interval
                while not self._flush_requested and not self._stopping:
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
            ok = self._write_with_retries(batch)
            last_write = time.monotonic()
            with self._cv:
                self._done += len(batch)
                if not ok:
                    self._failed += len(batch)
                self._cv.notify_all()

    def _write_with_retries(self, batch: list[dict[str, Any]], attempts: int = 3) -> bool:
        for attempt in range(1, attempts + 1):
            try:
                self.record_predictions(batch)
                return True
            except Exception:  # the database is the only thing that can fail here
                if attempt == attempts:
                    logger.exception(
                        "prediction store: %d row(s) lost after %d attempts", len(batch), attempts
                    )
                    return False
                logger.warning("prediction store: write failed (attempt %d), retrying", attempt)
                time.sleep(0.2 * attempt)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, stop the writer and release the database."""
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
        self.engine.dispose()

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
