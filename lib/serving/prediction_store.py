"""Where the model service logs predictions and ground-truth feedback, for canary analysis.

SQLAlchemy Core, portable SQL: a SQLite file (WAL, busy timeout: the service writes while
notebooks read) or a PostgreSQL URL. `submit` never touches the database: rows go to a journal
file (`store_journal`: what a kill -9 must not lose) and a writer thread inserts them in batches;
a row the database refuses costs only itself. One request id names one answered prediction: a
used id is refused (`hold`, `stored`), and the primary key keeps an id's first row.

`PredictionStore` is the only writer; analyses in other processes read with a read-only
`PredictionReader`, which never replays a dead writer's journal (the next service or
`runner.py store-recover` does).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
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
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Select

from lib.serving import store_journal, store_queue, store_schema
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
    # a shadow score: the other variant's answer to the request named here (its id is
    # "<that id>#shadow", which no caller can send); None for answered predictions
    Column("shadow_of", String(255), nullable=True),
)
Index("ix_predictions_created_at", predictions.c.created_at)
Index("ix_predictions_variant_created_at", predictions.c.variant, predictions.c.created_at)
Index("ix_predictions_shadow_of", predictions.c.shadow_of)
SHADOW_SUFFIX = "#shadow"

feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(255), primary_key=True),
    Column("created_at", Double, nullable=False),
    Column("rating", Double, nullable=True),  # None when the caller sent only a label
    Column("label", Integer, nullable=False),
    Column("source", String(64), nullable=True),  # who sent it (the body's `source`)
)
Index("ix_feedback_created_at", feedback.c.created_at)  # (revision 0004: the window's labels)

PREDICTION_FIELDS = [c.name for c in predictions.columns]
_SHADOW = predictions.alias("shadow")
# each answered row's shadow score, when the service made one (None otherwise)
SHADOW_COLUMNS = [
    "shadow_variant", "shadow_version", "shadow_label", "shadow_probability",
    "shadow_latency_ms", "shadow_error",
]  # fmt: skip
_SHADOW_SOURCES = ["variant", "model_version", "label", "probability", "latency_ms", "error"]
_ID = predictions.c.request_id
_STORED_ID = select(_ID).where(_ID == bindparam("id")).limit(1)
_ALL_STORED_IDS = select(_ID).where(_ID.in_(bindparam("ids", expanding=True)))
_STORED_IDS = _ALL_STORED_IDS.limit(1)
_SERVED = PREDICTION_FIELDS[:-2]  # (features when asked; shadow_of is None on served rows)
# labeled_at: when the label arrived (its lag), label_source: from whom
WINDOW_COLUMNS = [*_SERVED, "true_label", "rating", "labeled_at", "label_source", *SHADOW_COLUMNS]

SQLITE_BUSY_TIMEOUT_MS = 10_000
FEEDBACK_CLOCK_SKEW = 300.0  # s: feedback stamped by a replica whose clock is behind (NTP)
# the database itself failed (locked, down, connection lost): retry the rows later
TRANSIENT_ERRORS = (OperationalError, DisconnectionError, PoolTimeoutError)
Failures = list[tuple[dict[str, Any], Exception]]  # rows, each with what the database raised


class FeedbackRefused(ValueError):
    """Feedback for a prediction that has no outcome to judge (the model failed on it)."""


def make_engine(url: str) -> Engine:
    """An engine for the store; SQLite gets WAL + busy timeout, other databases are untouched."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        # One shared connection, or the writer thread would write into its own private database.
        return create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; no fsync per commit

    return engine


def _window_statement(
    since: float, until: float | None, variant: str | None, features: bool
) -> Select:
    columns = [predictions.c[name] for name in _SERVED]
    columns += [feedback.c.label.label("true_label"), feedback.c.rating]
    columns += [feedback.c.created_at.label("labeled_at"), feedback.c.source.label("label_source")]
    columns += [
        _SHADOW.c[source].label(name)
        for name, source in zip(SHADOW_COLUMNS, _SHADOW_SOURCES, strict=True)
    ]
    if features:
        columns.append(predictions.c.features)
    # Each join also bounds the joined table's time, so that PostgreSQL reads only the window's
    # part of it (an index range) instead of all of it (at 10 M rows a seq scan of feedback and
    # a full scan of the shadow_of index: bench/store.py). Both bounds hold for every match: a
    # shadow row carries its answer's created_at, and feedback arrives after its prediction
    # (FEEDBACK_CLOCK_SKEW covers replicas whose clocks differ: by more, labels are missed).
    labels = (predictions.c.request_id == feedback.c.request_id) & (
        feedback.c.created_at >= since - FEEDBACK_CLOCK_SKEW
    )
    shadows = (_SHADOW.c.shadow_of == predictions.c.request_id) & (_SHADOW.c.created_at >= since)
    joined = predictions.outerjoin(feedback, labels).outerjoin(_SHADOW, shadows)
    stmt = (
        select(*columns)
        .select_from(joined)
        .where(predictions.c.created_at >= since, predictions.c.shadow_of.is_(None))
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
    floats = ("created_at", "probability", "latency_ms", "rating", "labeled_at")
    floats += ("shadow_probability", "shadow_latency_ms")
    ints = ("label", "true_label", "shadow_label")
    dtypes = {**dict.fromkeys(ints, "Int64"), **dict.fromkeys(floats, "float64")}
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


class PredictionStore(AbstractContextManager["PredictionStore"]):
    """Predictions and feedback in one database; its schema is created or migrated (store_schema,
    Alembic) as it opens. Thread-safe.
    Opening a store replays the journal of a process that died with rows not written yet."""

    def __init__(
        self,
        url: str,
        batch_size: int = 500,
        min_interval: float = 0.05,
        max_pending: int = 200_000,
        journal_dir: str | Path | None = None,
        journal: bool = True,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._tables_ready = False
        self._tables_lock = threading.Lock()
        self._recovered = 0
        self._lost_at_restart = 0
        self._segments_kept = 0  # dead writers' segments not replayed (the database failed)
        self._claims_unchecked = False  # the last claim could not read the database
        if journal_dir is None and journal:
            journal_dir = store_journal.default_dir(url)
        self.journal_dir = Path(journal_dir) if journal and journal_dir else None
        if not store_journal.available():
            self.journal_dir = None
        self._queue = store_queue.WriteQueue(
            self._write_with_retries,
            batch_size,
            min_interval,
            max_pending,
            None if self.journal_dir is None else store_journal.Journal(self.journal_dir),
        )
        try:
            self._ensure_tables()  # migrated as it opens, not by its first request
        except SQLAlchemyError as exc:  # (no detail: a connection error may name the server)
            logger.warning(
                "prediction store: schema not checked at start (%s): again at first use",
                type(exc).__name__,
            )
        if self.journal_dir is not None:
            self._recover()

    # ---------------------------------------------------------------------------------- setup

    def _ensure_tables(self) -> None:
        """Create or migrate the schema (store_schema) once per store: as it opens, or at its
        first use when the database did not answer then."""
        if self._tables_ready:
            return
        with self._tables_lock:
            if not self._tables_ready:
                store_schema.upgrade(self.engine)
                self._tables_ready = True

    def _recover(self) -> None:
        """Insert the rows a dead process answered but did not write (its journal segments);
        a database that fails now leaves the segment for the next store opened."""
        for path, fd in store_journal.orphans(self.journal_dir):
            try:
                rows, torn = store_journal.read(fd)
                self._ensure_tables()
                recovered, refused = self._insert_missing(rows)
            except Exception:
                logger.exception("prediction store: journal %s not replayed (kept)", path.name)
                os.close(fd)
                self._segments_kept += 1
                continue
            store_journal.discard(path, fd)
            self._recovered += recovered
            self._lost_at_restart += torn + refused
            if recovered or torn or refused:
                logger.warning(
                    "prediction store: %d answered row(s) recovered from %s after a crash "
                    "(%d lost: %d unreadable, %d refused by the database)",
                    recovered, path.name, torn + refused, torn, refused,
                )  # fmt: skip

    def _insert_missing(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert the rows whose request id is not stored yet: (inserted, refused)."""
        by_id: dict[str, dict[str, Any]] = {}
        for row in rows:
            clean = clean_prediction(row)
            by_id.setdefault(clean["request_id"], clean)  # the first answer of an id
        ids = list(by_id)
        missing = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            with self.engine.connect() as conn:
                stored = set(conn.execute(_ALL_STORED_IDS, {"ids": chunk}).scalars())
            missing.extend(by_id[i] for i in chunk if i not in stored)
        return self._insert_now(missing)

    def record_predictions(self, rows: list[dict[str, Any]]) -> int:
        """Insert prediction rows at once: how many were written. A request id already stored
        keeps its first row (the repeat is refused alone, logged); a database error raises."""
        return self._insert_now([clean_prediction(r) for r in rows])[0]

    def _insert_now(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert clean rows: (inserted, refused); a failing database raises."""
        written, refused, transient = self._insert_isolating(rows)
        if transient:
            raise transient[0][1]
        self._log_refused(refused)
        return written, len(refused)

    def _insert(self, rows: list[dict[str, Any]]) -> int:
        """Insert clean rows in one transaction; a repeated request id fails it (IntegrityError:
        the primary key keeps an id's first answer, which its feedback joins)."""
        self._ensure_tables()
        with self.engine.begin() as conn:
            conn.execute(insert(predictions), rows)
        return len(rows)

    def _insert_isolating(self, rows: list[dict[str, Any]]) -> tuple[int, Failures, Failures]:
        """Insert clean rows; if the batch fails for a reason of its rows, insert them one by one
        so that a bad row costs only itself. (written, refused rows, rows to retry)."""
        if not rows:
            return 0, [], []
        try:
            return self._insert(rows), [], []
        except TRANSIENT_ERRORS as exc:
            return 0, [], [(row, exc) for row in rows]
        except Exception as exc:
            if len(rows) == 1:
                return 0, [(rows[0], exc)], []
        written = 0
        refused: Failures = []
        transient: Failures = []
        for row in rows:
            try:
                written += self._insert([row])
            except TRANSIENT_ERRORS as exc:
                transient.append((row, exc))
            except Exception as exc:
                refused.append((row, exc))
        return written, refused, transient

    @staticmethod
    def _log_refused(refused: Failures) -> None:
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
        found = predictions.c["variant", "model_version", "label", "probability", "error"]
        with self.engine.connect() as conn:
            row = conn.execute(select(*found).where(_ID == request_id)).first()
        return None if row is None else dict(row._mapping)

    # ---------------------------------------------------------------------- request ids

    def hold(self, request_ids: list[str]) -> str | None:
        """The first id held by a request in flight or pending in this process; else None, and
        the ids are held until `submit` or `release` (memory only: see `stored`)."""
        return self._queue.hold([safe_text(str(i)) for i in request_ids])

    def release(self, request_ids: list[str]) -> None:
        """Free the ids a request held and did not submit (e.g. it answered 503 or 409)."""
        self._queue.release([safe_text(str(i)) for i in request_ids])

    def stored(self, request_ids: list[str]) -> str | None:
        """The first id the database holds a prediction for, else None: one indexed read. A
        database that cannot be read answers None (logged once per outage): predictions go on."""
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

    def record_feedback(
        self,
        request_id: str,
        rating: float | None,
        target_threshold: float = 4.0,
        label: int | None = None,
        wait: float = 10.0,
        source: str = "api",
    ) -> dict[str, Any] | None:
        """Store (or replace) the true rating or label of a prediction; None for an unknown id.

        A prediction still pending in this process is written first (an unknown id costs one
        read, never a flush); TimeoutError if it is not written within `wait` s, FeedbackRefused
        for a prediction the model failed on."""
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
            "source": source,
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
        """Predictions with created_at in [since, until), left-joined with their feedback:
        WINDOW_COLUMNS, plus `features` (dicts) when asked, for drift statistics."""
        self._ensure_tables()
        self.flush(timeout=10.0)  # this process's own unwritten rows belong in the window
        return _read_window(self.engine, since, until, variant, features)

    # --------------------------------------------------------------------- background writer

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Append prediction rows to the journal and queue them: never waits for the database."""
        self._queue.submit(rows)

    def stats(self) -> dict[str, int]:
        """Row counts since this store was opened: submitted, written, pending, dropped (backlog
        full), failed (database down), rejected (refused by the database), and recovered /
        lost_at_restart (a dead process's journal replayed when this store opened)."""
        return {
            **self._queue.counts(),
            "recovered": self._recovered,
            "lost_at_restart": self._lost_at_restart,
        }

    def recovery(self) -> dict[str, int]:
        """What opening this store did with dead writers' journals: rows recovered, rows lost
        (unreadable or refused), and segments kept for a later start (the database failed)."""
        return {
            "recovered": self._recovered,
            "lost": self._lost_at_restart,
            "segments_kept": self._segments_kept,
        }

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
                _written, refused, transient = self._insert_isolating(rows)
            except Exception as exc:  # e.g. the tables cannot be created: retry it all
                refused, transient = [], [(row, exc) for row in rows]
            rejected += len(refused)
            self._log_refused(refused)
            if not transient:
                return rejected, []
            rows = [row for row, _exc in transient]
            if attempt == attempts:
                logger.error(
                    "prediction store: %d row(s) not written after %d attempts (kept in the "
                    "journal for the next start, if there is one): %s",
                    len(rows), attempts, transient[0][1],
                )  # fmt: skip
                return rejected, rows
            logger.warning("prediction store: write failed (attempt %d), retrying", attempt)
            time.sleep(0.2 * attempt)
        return rejected, []

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, stop the writer and release the database."""
        self._queue.close(timeout)
        self.engine.dispose()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PredictionReader(AbstractContextManager["PredictionReader"]):
    """The store's windows, read-only, for analyses in other processes (canary steps, 06
    monitor): it creates no table or database (a missing store reads as empty; SQLite may leave
    empty -wal/-shm files), replays no journal and never writes."""

    def __init__(self, url: str) -> None:
        self._file = store_journal.sqlite_file(url)
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
        """As `PredictionStore.window`."""
        if not self._has_tables():
            return _window_frame([], features)
        return _read_window(self.engine, since, until, variant, features)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_only_engine(url: str, file: Path | None) -> Engine | None:
    """An engine that cannot write: a SQLite file opened mode=ro (a missing file is an error,
    not a new database); None for in-memory SQLite. Other databases: only SELECTs are sent."""
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
