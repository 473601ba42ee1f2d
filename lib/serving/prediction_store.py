"""Where the model service logs predictions and ground-truth feedback, for canary analysis.

SQLAlchemy Core with portable SQL only, so the default SQLite file and a PostgreSQL URL run the
same code. On SQLite the database is switched to WAL with a busy timeout: the service (writer) and
the analysis notebooks (readers, in other processes) work at the same time without "database is
locked". The service answers a prediction only once its row is committed (`record`): one
writer thread commits the rows queued meanwhile in one transaction, so waiting requests share a
commit. SQLite's own write-ahead log then keeps every answered row through a kill -9 of the
service, with no recovery step of ours. A row the database refuses costs only itself: the batch
is then inserted row by row, and the refused rows are counted and logged.

A request id names one answered prediction (feedback joins it by that id): before the service
predicts under a caller's id it `claim`s it, and a used one (stored, pending, or held by a
request in flight) is refused. The primary key keeps the first row of an id whatever gets past
that check (another replica at the same moment, a database the check could not read).

The service's `PredictionStore` is the only writer. Analyses in other processes (canary steps,
06 monitor) read with a `PredictionReader`: read-only, it never creates a table or a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
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
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Select

from lib.serving import store_queue
from lib.serving.store_rows import clean_prediction, safe_text

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
_ID = predictions.c.request_id
_STORED_ID = select(_ID).where(_ID == bindparam("id")).limit(1)
_INSERT = insert(predictions)
_STORED_IDS = select(_ID).where(_ID.in_(bindparam("ids", expanding=True))).limit(1)
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
# the database itself failed (locked, down, connection lost): retry the rows later
TRANSIENT_ERRORS = (OperationalError, DisconnectionError, PoolTimeoutError)


class FeedbackRefused(ValueError):
    """Feedback for a prediction that has no outcome to judge (the model failed on it)."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL given as a path; None for other databases, in-memory
    SQLite and `file:` URIs (whose file the read-only reader cannot find)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


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
            # With WAL, NORMAL makes a commit survive the death of the process (the log is in
            # the OS's hands when COMMIT returns) without an fsync per commit; a power loss or
            # a kernel panic may roll back the last commits (never corrupts). FULL would fsync
            # the log at every commit to survive those too.
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    return engine


def make_engine(url: str) -> Engine:
    """An engine for the store; SQLite gets WAL + busy timeout, other databases are untouched."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True)


def _window_statement(
    since: float, until: float | None, variant: str | None, features: bool
) -> Select:
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
    return stmt


def _window_frame(rows: list[Any], features: bool) -> pd.DataFrame:
    """The window's rows as typed columns: the same dtypes whether it holds rows or none."""
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


def _read_window(
    engine: Engine, since: float, until: float | None, variant: str | None, features: bool
) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(_window_statement(since, until, variant, features)).all()
    return _window_frame(rows, features)


class PredictionStore:
    """Predictions and feedback in one database; tables are created on first use.

    Thread-safe. `record` is the service's path (answer once committed); `submit` queues rows
    without waiting, `record_predictions` writes at once.
    """

    def __init__(self, url: str, batch_size: int = 500, min_interval: float = 0.0) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._tables_ready = False
        self._tables_lock = threading.Lock()
        self._claims_unchecked = False  # the last claim could not read the database
        self._writer_conn: Connection | None = None  # the writer thread's own
        self._queue = store_queue.WriteQueue(self._write_with_retries, batch_size, min_interval)

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
        """Insert prediction rows at once: how many were written. A request id already stored
        keeps its first row (the repeat is refused alone, logged); a database error raises."""
        if not rows:
            return 0
        written, refused, transient = self._insert_isolating([clean_prediction(r) for r in rows])
        if transient:
            raise transient[0][1]
        self._log_refused(refused)
        return written

    def _insert(self, rows: list[dict[str, Any]], writer: bool = False) -> int:
        """Insert clean rows in one transaction; a repeated request id fails it (IntegrityError:
        the primary key keeps an id's first answer, which its feedback joins). The writer
        thread keeps its connection (a third of the cost of a one-row commit), dropped when the
        database fails."""
        self._ensure_tables()
        if not writer:
            with self.engine.begin() as conn:
                conn.execute(_INSERT, rows)
            return len(rows)
        if self._writer_conn is None:
            self._writer_conn = self.engine.connect()
        try:
            with self._writer_conn.begin():
                self._writer_conn.execute(_INSERT, rows)
        except TRANSIENT_ERRORS:
            with contextlib.suppress(SQLAlchemyError):
                self._writer_conn.close()
            self._writer_conn = None
            raise
        return len(rows)

    def _insert_isolating(
        self, rows: list[dict[str, Any]], writer: bool = False
    ) -> tuple[int, list[tuple[dict[str, Any], Exception]], list[tuple[dict[str, Any], Exception]]]:
        """Insert clean rows; if the batch fails for a reason of its rows, insert them one by one
        so that a bad row costs only itself. (written, refused rows, rows to retry)."""
        if not rows:
            return 0, [], []
        try:
            return self._insert(rows, writer), [], []
        except TRANSIENT_ERRORS as exc:
            return 0, [], [(row, exc) for row in rows]
        except Exception as exc:
            if len(rows) == 1:
                return 0, [(rows[0], exc)], []
        written = 0
        refused: list[tuple[dict[str, Any], Exception]] = []
        transient: list[tuple[dict[str, Any], Exception]] = []
        for row in rows:
            try:
                written += self._insert([row], writer)
            except TRANSIENT_ERRORS as exc:
                transient.append((row, exc))
            except Exception as exc:
                refused.append((row, exc))
        return written, refused, transient

    @staticmethod
    def _log_refused(refused: list[tuple[dict[str, Any], Exception]]) -> None:
        for row, exc in refused[:20]:
            logger.error(
                "prediction store: row %r refused by the database, skipped: %s: %s",
                row.get("request_id"), type(exc).__name__, str(exc).splitlines()[0][:300],
            )  # fmt: skip
        if len(refused) > 20:
            logger.error(
                "prediction store: %d more row(s) of this batch refused", len(refused) - 20
            )

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

    # ---------------------------------------------------------------------- request ids

    def claim(self, request_ids: list[str]) -> str | None:
        """Hold request ids for a prediction about to be answered; or the first one used.

        `hold`, then `stored` (blocking: call it from a thread), releasing what it held if the
        database has one of them. The service runs the two steps itself, so that the look-up
        overlaps the prediction.
        """
        used = self.hold(request_ids)
        if used is not None:
            return used
        used = self.stored(request_ids)
        if used is not None:
            self.release(request_ids)
        return used

    def hold(self, request_ids: list[str]) -> str | None:
        """The first id held by a request in flight or pending in this process's writer; else
        None, and the ids are held until `submit` (they become pending rows) or `release`.
        Memory only: `stored` says whether the database has one from before (a restart,
        another replica)."""
        return self._queue.hold([safe_text(str(i)) for i in request_ids])

    def release(self, request_ids: list[str]) -> None:
        """Free the ids a request held and did not submit (e.g. it answered 503 or 409)."""
        self._queue.release([safe_text(str(i)) for i in request_ids])

    def stored(self, request_ids: list[str]) -> str | None:
        """The first id the database holds a prediction for, else None: one indexed read.

        A database that cannot be read answers None (logged once per outage): predictions go
        on, checked in memory only, and the primary key keeps the first row of an id."""
        try:
            found = self._first_stored([safe_text(str(i)) for i in request_ids])
        except SQLAlchemyError as exc:
            if not self._claims_unchecked:
                logger.warning(
                    "prediction store: request ids not checked against the database (%s); "
                    "until it answers, only ids of this process are refused",
                    type(exc).__name__,
                )
            self._claims_unchecked = True
            return None
        if self._claims_unchecked:
            self._claims_unchecked = False
            logger.info("prediction store: request ids checked against the database again")
        return found

    def _first_stored(self, keys: list[str]) -> str | None:
        """The first of `keys` the predictions table holds, None if none (raises on a database
        error). On the request path: statements built once (a third of the cost of building
        them per call)."""
        self._ensure_tables()
        with self.engine.connect() as conn:
            if len(keys) == 1:
                return conn.execute(_STORED_ID, {"id": keys[0]}).scalar()
            for start in range(0, len(keys), 500):
                found = conn.execute(_STORED_IDS, {"ids": keys[start : start + 500]}).scalar()
                if found is not None:
                    return found
        return None

    def is_pending(self, request_id: str) -> bool:
        """Submitted in this process and not written (or given up on) yet."""
        return self._queue.is_pending(safe_text(str(request_id)))

    def record_feedback(
        self,
        request_id: str,
        rating: float | None,
        target_threshold: float = 4.0,
        label: int | None = None,
        wait: float = 10.0,
    ) -> dict[str, Any] | None:
        """Store the true rating (or label) of a prediction; None if the request id is unknown.

        A second feedback for the same id replaces the first. Feedback can arrive before the
        writer thread stored its prediction: only then (the id is pending in this process) is
        the writer made to write at once; an unknown id costs one indexed read, never a flush.
        Raises FeedbackRefused for a prediction the model failed on (nothing to compare), and
        TimeoutError if its prediction is still not written after `wait` seconds (the database
        is slow or down: not an unknown id).
        """
        if rating is None and label is None:
            raise ValueError("feedback needs a rating or a label")
        self._ensure_tables()
        request_id = safe_text(str(request_id))
        if not self._queue.wait_written(request_id, timeout=wait):
            raise TimeoutError(f"the prediction {request_id!r} is not written yet")
        found = self._prediction(request_id)
        if found is None:
            return None
        if found["error"] is not None or found["label"] is None:
            raise FeedbackRefused(
                f"prediction {request_id!r} failed ({found['error'] or 'no label'}): there is "
                "no predicted label to compare the feedback with"
            )
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
        return _read_window(self.engine, since, until, variant, features)

    # --------------------------------------------------------------------- background writer

    async def record(self, rows: list[dict[str, Any]]) -> bool:
        """Queue prediction rows for the writer thread and wait until they are committed: True,
        or False when the database kept failing on them (not stored: do not answer as if).

        A row the database refuses (a request id another replica stored first) is counted and
        logged, and does not make this False."""
        loop = asyncio.get_running_loop()
        committed = loop.create_future()

        def done(ok: bool) -> None:  # in the writer thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, committed, ok)

        self._queue.submit(rows, done)
        return await committed

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue prediction rows for the writer thread without waiting (`flush` waits)."""
        self._queue.submit(rows)

    def pending_rows(self) -> int:
        """Rows submitted but not yet written (or given up on)."""
        return self._queue.pending_rows()

    def stats(self) -> dict[str, int]:
        """Row counts since this store was opened: submitted, written, pending, failed
        (database down: not stored), rejected (refused by the database)."""
        return self._queue.counts()

    def checkpoint(self) -> bool | None:
        """Move SQLite's write-ahead log into the database file and empty it (`store-recover`):
        True when done, False when another connection kept it busy past the busy timeout, None
        for other databases and in-memory SQLite (nothing to do). Not needed for safety: SQLite
        recovers its log by itself when the next connection opens the database."""
        if sqlite_file(self.url) is None:  # another database, or SQLite in memory
            return None
        self._ensure_tables()
        with self.engine.connect() as conn:
            busy, _log, _moved = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        return busy == 0

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every row submitted so far is written; False if the timeout came first."""
        return self._queue.flush(timeout)

    def _write_with_retries(
        self, batch: list[dict[str, Any]], attempts: int = 3
    ) -> tuple[int, list[dict[str, Any]]]:
        """Write clean rows: (how many the database refused, the rows it failed on `attempts`
        times). Refused rows are skipped at once; rows it failed on (locked, down) are retried."""
        rows = batch
        rejected = 0
        for attempt in range(1, attempts + 1):
            try:
                _written, refused, transient = self._insert_isolating(rows, writer=True)
            except Exception as exc:  # e.g. the tables cannot be created: retry it all
                refused, transient = [], [(row, exc) for row in rows]
            if refused:
                rejected += len(refused)
                self._log_refused(refused)
            if not transient:
                return rejected, []
            rows = [row for row, _exc in transient]
            if attempt == attempts:
                logger.error(
                    "prediction store: %d row(s) not written after %d attempts (not stored; "
                    "their requests are not answered as predictions): %s",
                    len(rows), attempts, transient[0][1],
                )  # fmt: skip
                return rejected, rows
            logger.warning("prediction store: write failed (attempt %d), retrying", attempt)
            time.sleep(0.2 * attempt)
        return rejected, []

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, stop the writer and release the database."""
        self._queue.close(timeout)
        if self._writer_conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._writer_conn.close()
        self.engine.dispose()

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PredictionReader:
    """The store's windows, read-only, for analyses in other processes than the service (canary
    steps, 06 monitor): a look at a window changes nothing.

    It creates no table and no database (a store that does not exist yet, or has no tables
    yet, reads as empty; beside an existing SQLite file, SQLite itself may leave its empty -wal
    and -shm files) and never inserts. Nothing to flush either: the service answered only what
    it committed, and a dead service's commits are read from SQLite's log as they are.
    An in-memory SQLite store belongs to its process: another reads it as empty.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._file = sqlite_file(url)
        self.engine = _read_only_engine(url, self._file)
        self._tables_seen = False

    def _has_tables(self) -> bool:
        if self._tables_seen:
            return True
        if self.engine is None or (self._file is not None and not self._file.exists()):
            return False
        names = set(inspect(self.engine).get_table_names())
        self._tables_seen = {"predictions", "feedback"} <= names
        return self._tables_seen

    def window(
        self,
        since: float,
        until: float | None = None,
        variant: str | None = None,
        features: bool = False,
    ) -> pd.DataFrame:
        """Predictions with created_at in [since, until), left-joined with their feedback, as
        `PredictionStore.window` returns them (WINDOW_COLUMNS, plus `features` when asked)."""
        if not self._has_tables():
            return _window_frame([], features)
        return _read_window(self.engine, since, until, variant, features)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def __enter__(self) -> PredictionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():  # (cancelled: the client went away)
        future.set_result(ok)


def _read_only_engine(url: str, file: Path | None) -> Engine | None:
    """An engine that cannot write: a SQLite file opened with mode=ro (SQLite refuses any
    write, and a missing file is an error instead of a new database); None for in-memory
    SQLite (nothing of another process to read). Other databases: only SELECTs are sent."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if file is None:
        if (parsed.database or "").startswith("file:"):
            return create_engine(url)  # a URI the user wrote: its own mode
        return None
    uri = f"{file.as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )

    return create_engine(url, creator=connect)
