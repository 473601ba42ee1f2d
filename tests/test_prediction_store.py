"""The prediction store: bulk writes, the background writer, feedback, windows, two processes."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from lib.serving import prediction_store, store_journal
from lib.serving.prediction_store import WINDOW_COLUMNS, PredictionReader, PredictionStore

PROJECT = Path(__file__).resolve().parents[1]


def _row(rid: str, at: float, variant: str = "champion", **kw) -> dict:
    row = {
        "request_id": rid,
        "created_at": at,
        "variant": variant,
        "model_version": "1" if variant == "champion" else "2",
        "label": 1,
        "probability": 0.8,
        "latency_ms": 3.5,
        "error": None,
        "features": {"category": "GAME", "size_mb": float("nan"), "reviews": 10.0},
    }
    row.update(kw)
    return row


@pytest.fixture
def store(tmp_path: Path):
    s = PredictionStore(f"sqlite:///{tmp_path}/predictions.db")
    yield s
    s.close()


def test_window_left_joins_feedback_and_filters(store: PredictionStore) -> None:
    store.record_predictions(
        [
            _row("a", 100.0),
            _row("b", 101.0, "canary", label=0, probability=0.3),
            _row("c", 102.0, label=None, probability=None, error="model error: boom"),
            _row("old", 10.0),
        ]
    )
    stored = store.record_feedback("b", 4.5)
    assert stored["label"] == 1 and stored["rating"] == 4.5 and stored["replaced"] is False
    assert stored["prediction"]["variant"] == "canary"

    frame = store.window(since=50.0)
    assert list(frame.columns) == WINDOW_COLUMNS
    assert frame["request_id"].tolist() == ["a", "b", "c"]  # ordered by time, "old" left out
    by_id = frame.set_index("request_id")
    assert by_id.loc["b", "true_label"] == 1 and by_id.loc["b", "rating"] == 4.5
    assert pd.isna(by_id.loc["a", "true_label"]) and math.isnan(by_id.loc["a", "rating"])
    assert by_id.loc["c", "error"] == "model error: boom" and pd.isna(by_id.loc["c", "label"])
    assert str(frame["label"].dtype) == "Int64" and str(frame["true_label"].dtype) == "Int64"

    assert store.window(since=50.0, variant="canary")["request_id"].tolist() == ["b"]
    assert store.window(since=100.0, until=102.0)["request_id"].tolist() == ["a", "b"]
    assert store.window(since=1e12).empty
    assert list(store.window(since=1e12).columns) == WINDOW_COLUMNS


def test_a_store_from_before_label_sources_gets_the_column(tmp_path: Path) -> None:
    """An older predictions.db (feedback without `source`) is migrated when opened, rows kept."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE feedback (request_id VARCHAR(255) PRIMARY KEY, created_at FLOAT NOT "
            "NULL, rating FLOAT, label INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO feedback VALUES ('old', 1.0, 4.5, 1)")
    old = PredictionStore(f"sqlite:///{path}")
    try:
        old.record_predictions([_row("old", 1.0), _row("new", 2.0)])
        assert old.record_feedback("new", 2.0, source="store-sync")["source"] == "store-sync"
        frame = old.window(0).set_index("request_id")
        assert frame.loc["old", "true_label"] == 1 and pd.isna(frame.loc["old", "label_source"])
        assert frame.loc["new", "label_source"] == "store-sync"
        assert frame.loc["new", "labeled_at"] >= frame.loc["new", "created_at"]
    finally:
        old.close()


def test_shadow_scores_join_their_answer_and_are_never_answers(store: PredictionStore) -> None:
    """A shadow score (the other variant on the same input) comes beside the answer it shadows;
    it is never a row of the window itself, and an answer without one reads as missing."""
    store.record_predictions(
        [
            _row("a", 100.0),
            _row("b", 101.0, "canary", label=0, probability=0.3),
            _row("c", 102.0),
            _row("a#shadow", 100.5, "canary", label=0, probability=0.4, shadow_of="a",
                 features=None, latency_ms=9.0),
            _row("b#shadow", 101.5, "champion", label=None, probability=None, shadow_of="b",
                 error="boom", features=None),
        ]
    )  # fmt: skip
    store.record_feedback("a", 4.5)
    frame = store.window(0).set_index("request_id")
    assert list(frame.index) == ["a", "b", "c"]
    assert frame.loc["a", "shadow_variant"] == "canary" and frame.loc["a", "shadow_version"] == "2"
    assert frame.loc["a", "shadow_label"] == 0 and frame.loc["a", "shadow_probability"] == 0.4
    assert frame.loc["a", "shadow_latency_ms"] == 9.0 and frame.loc["a", "true_label"] == 1
    assert frame.loc["b", "shadow_error"] == "boom" and pd.isna(frame.loc["b", "shadow_label"])
    assert list(store.window(0, variant="canary")["request_id"]) == ["b"]
    unshadowed = store.window(101.9)
    assert list(unshadowed["request_id"]) == ["c"] and unshadowed["shadow_variant"].isna().all()


def test_a_store_from_before_shadow_scores_gets_the_column_and_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE predictions (request_id VARCHAR(255) PRIMARY KEY, created_at FLOAT NOT "
            "NULL, variant VARCHAR(64) NOT NULL, model_version VARCHAR(64) NOT NULL, label "
            "INTEGER, probability FLOAT, latency_ms FLOAT NOT NULL, error TEXT, features TEXT)"
        )
        db.execute("INSERT INTO predictions VALUES ('old', 1.0, 'champion', '1', 1, 0.9, 2.0, "
                   "NULL, NULL)")  # fmt: skip
    old = PredictionStore(f"sqlite:///{path}")
    try:
        old.record_predictions([_row("old#shadow", 1.5, "canary", shadow_of="old")])
        frame = old.window(0)
        assert list(frame["request_id"]) == ["old"] and frame.loc[0, "shadow_version"] == "2"
        indexes = {i["name"] for i in sa.inspect(old.engine).get_indexes("predictions")}
        assert "ix_predictions_shadow_of" in indexes
    finally:
        old.close()


def test_feedback_unknown_id_is_none_and_second_one_replaces(store: PredictionStore) -> None:
    store.record_predictions([_row("r1", 1.0)])
    assert store.record_feedback("nope", 4.5) is None
    assert store.record_feedback("r1", 4.6)["label"] == 1
    second = store.record_feedback("r1", 3.0)
    assert second["replaced"] is True and second["label"] == 0
    frame = store.window(0)
    assert frame["true_label"].tolist() == [0] and frame["rating"].tolist() == [3.0]
    # a label without a rating, and the threshold decides the label from a rating
    assert store.record_feedback("r1", None, label=1)["rating"] is None
    assert store.record_feedback("r1", 4.2, target_threshold=4.5)["label"] == 0
    with pytest.raises(ValueError):
        store.record_feedback("r1", None)


def test_a_repeated_request_id_keeps_the_first_prediction(
    store: PredictionStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The service refuses a repeated id before answering; what still reaches the database
    twice (another replica, a database the check could not read) keeps the first row, and
    the repeat is refused alone, counted and logged: feedback joins the first answer."""
    store.record_predictions([_row("dup", 1.0, probability=0.1)])
    assert store.record_predictions([_row("dup", 2.0, probability=0.9), _row("other", 2.0)]) == 1
    store.submit([_row("dup", 3.0, probability=0.5), _row("queued", 3.0)])
    store.submit([_row("twice", 4.0, probability=0.2), _row("twice", 4.0, probability=0.7)])
    assert store.flush(timeout=30)
    frame = store.window(0).set_index("request_id")
    assert sorted(frame.index) == ["dup", "other", "queued", "twice"]
    assert frame.loc["dup", "probability"] == 0.1 and frame.loc["twice", "probability"] == 0.2
    assert store.stats()["rejected"] == 2 and store.stats()["written"] == 2  # (the queue's)
    messages = [r.getMessage() for r in caplog.records]
    refused = [m.split("'")[1] for m in messages if "refused by the database" in m]
    assert refused == ["dup", "dup", "twice"]
    assert store.record_feedback("dup", 4.5)["prediction"]["probability"] == 0.1


def _claim(store: PredictionStore, ids: list[str]) -> str | None:
    """What /predict does with a caller's ids: `hold`, then `stored`, released if one is used."""
    used = store.hold(ids)
    if used is None and (used := store.stored(ids)) is not None:
        store.release(ids)
    return used


def test_claim_holds_request_ids_until_submitted_or_released(store: PredictionStore) -> None:
    """What the service asks before it predicts: is any of these ids used (stored, pending, or
    held by a request in flight)? If not, they are held for this request."""
    store.record_predictions([_row("stored", 1.0)])
    assert _claim(store, ["new-1", "stored"]) == "stored"
    assert _claim(store, ["new-1"]) is None  # ("stored" refused the whole claim: new-1 was free)
    assert _claim(store, ["a", "b"]) is None
    assert _claim(store, ["b"]) == "b"  # held by the request in flight
    store.submit([_row("a", 2.0)])  # it answered "a" only
    store.release(["a", "b"])  # done: what it did not submit is free again
    assert _claim(store, ["a"]) == "a"  # pending or written: used for good
    assert _claim(store, ["b"]) is None
    store.release(["b", "new-1"])
    assert store.flush(timeout=30)
    assert _claim(store, ["a"]) == "a" and _claim(store, ["new-1"]) is None


def test_claim_answers_when_the_database_cannot_be_read(
    store: PredictionStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store outage must not stop predictions: the id is then checked in memory only."""
    store.record_predictions([_row("stored", 1.0)])

    def down(ids: list[str]) -> str | None:
        raise sa.exc.OperationalError("select", {}, Exception("database is down"))

    monkeypatch.setattr(store, "_first_stored", down)
    with caplog.at_level("WARNING", logger="lib.serving.prediction_store"):
        assert _claim(store, ["stored"]) is None
        assert _claim(store, ["other"]) is None
    assert sum("not checked" in r.getMessage() for r in caplog.records) == 1  # once, not per call
    assert _claim(store, ["other"]) == "other"  # still held in memory


def test_background_writer_and_flush(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path}/p.db", batch_size=7)
    try:
        for i in range(50):
            store.submit([_row(f"id-{i}", float(i))])
        assert store.flush(timeout=30)
        assert store.stats()["pending"] == 0
        assert store.stats()["written"] == 50
        frame = store.window(0, features=True)
        assert len(frame) == 50
        # NaN is stored as JSON null; features come back as dicts
        assert frame["features"][0] == {"category": "GAME", "size_mb": None, "reviews": 10.0}
    finally:
        store.close()


def test_feedback_before_its_prediction_was_written(tmp_path: Path) -> None:
    # The writer gathers for 30 s: the row is surely still queued when the feedback comes.
    store = PredictionStore(f"sqlite:///{tmp_path}/p.db", min_interval=30.0)
    try:
        store.submit([_row("warmup", 1.0)])
        store.flush(timeout=30)
        store.submit([_row("fresh", 2.0)])
        assert store.stats()["pending"] == 1
        stored = store.record_feedback("fresh", 4.9)
        assert stored is not None and stored["label"] == 1
    finally:
        store.close()


def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    store = PredictionStore(url, min_interval=30.0)
    store.submit([_row("x1", 1.0)])
    store.submit([_row("x2", 2.0)])
    store.submit([_row("warm", 0.5)])
    store.close()
    store.submit([_row("late", 3.0)])  # after close: logged, not raised
    with PredictionStore(url) as again:
        assert sorted(again.window(0)["request_id"]) == ["warm", "x1", "x2"]


def test_in_memory_sqlite_is_shared_with_the_writer_thread() -> None:
    with PredictionStore("sqlite://") as store:
        store.submit([_row("m", 1.0)])
        assert store.flush(timeout=30)
        assert store.window(0)["request_id"].tolist() == ["m"]


def _dead_writer(url: str, rows: list[dict]) -> Path:
    """A journal segment of a writer killed before it inserted `rows`: on disk beside the
    database, its lock free (no process holds it)."""
    journal = store_journal.default_dir(url)
    journal.mkdir(exist_ok=True)
    segment = journal / "999999-1-1.journal"
    segment.write_bytes(store_journal.encode(rows))
    return segment


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _stored_ids(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return sorted(r[0] for r in conn.execute("SELECT request_id FROM predictions"))


def test_a_reader_of_a_dead_writers_store_inserts_nothing(tmp_path: Path) -> None:
    """Reading a window (canary, 06 monitor) changes nothing: the rows a dead service left in
    its journal are neither inserted nor its segments touched; the writer recovers them."""
    db = tmp_path / "p.db"
    url = f"sqlite:///{db}"
    with PredictionStore(url) as service:
        service.record_predictions([_row("stored", 100.0)])
        service.record_feedback("stored", 4.5)
    segment = _dead_writer(url, [_row("orphan-1", 101.0), _row("orphan-2", 102.0, "canary")])
    journal = _files(segment.parent)
    with PredictionReader(url) as reader:
        frame = reader.window(0, features=True)
        assert frame["request_id"].tolist() == ["stored"]
        assert frame["true_label"].tolist() == [1]
        assert reader.window(0, variant="canary").empty
    assert _stored_ids(db) == ["stored"]
    assert _files(segment.parent) == journal  # same segments, same bytes
    with PredictionStore(url) as restarted:  # the writer's business, not the reader's
        assert restarted.recovery() == {"recovered": 2, "lost": 0, "segments_kept": 0}
    assert _stored_ids(db) == ["orphan-1", "orphan-2", "stored"]


def test_a_reader_returns_what_the_writer_returns(store: PredictionStore) -> None:
    store.record_predictions([_row("a", 100.0), _row("b", 101.0, "canary", label=0)])
    store.record_feedback("b", 2.0)
    with PredictionReader(store.url) as reader:
        for args in [(0,), (0, None, "canary"), (100.5, 200.0), (1e12,)]:
            for features in (False, True):
                pd.testing.assert_frame_equal(
                    reader.window(*args, features=features), store.window(*args, features=features)
                )


def test_a_reader_of_a_store_not_created_yet_reads_empty_and_creates_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/not-yet/p.db"
    empty = PredictionStore("sqlite://").window(0, features=True)
    with PredictionReader(url) as reader:
        pd.testing.assert_frame_equal(reader.window(0, features=True), empty)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "not-yet").mkdir()
    sqlite3.connect(tmp_path / "not-yet/p.db").close()  # a file without the tables yet
    with PredictionReader(url) as reader:
        assert list(reader.window(0).columns) == WINDOW_COLUMNS and reader.window(0).empty
        with PredictionStore(url) as service:  # the service starts: the reader sees its rows
            service.record_predictions([_row("first", 1.0)])
        assert reader.window(0)["request_id"].tolist() == ["first"]


def test_a_reader_cannot_write(store: PredictionStore) -> None:
    """SQLite itself refuses: the reader's connections are read-only."""
    store.record_predictions([_row("a", 1.0)])
    with (
        PredictionReader(store.url) as reader,
        pytest.raises(sa.exc.OperationalError, match="readonly"),
    ):
        with reader.engine.begin() as conn:
            conn.execute(sa.insert(prediction_store.predictions), [_row("b", 2.0, features=None)])


def test_sqlite_uses_wal(store: PredictionStore) -> None:
    store.record_predictions([_row("w", 1.0)])
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_schema_and_queries_compile_for_postgresql() -> None:
    """No SQLite-only SQL: the DDL and every statement shape compile for PostgreSQL."""
    dialect = postgresql.dialect()
    ddl = {
        table.name: str(CreateTable(table).compile(dialect=dialect))
        for table in (prediction_store.predictions, prediction_store.feedback)
    }
    assert "DOUBLE PRECISION" in ddl[prediction_store.predictions.name]  # probability, latency
    for table in (prediction_store.predictions, prediction_store.feedback):
        assert table.indexes or table is prediction_store.feedback
        for index in table.indexes:
            assert str(CreateIndex(index).compile(dialect=dialect)).startswith("CREATE")
    p, f = prediction_store.predictions, prediction_store.feedback
    stmt = (
        sa.select(p.c.request_id, f.c.label.label("true_label"))
        .select_from(p.outerjoin(f, p.c.request_id == f.c.request_id))
        .where(p.c.created_at >= 0.0)
    )
    assert "LEFT OUTER JOIN" in str(stmt.compile(dialect=dialect))
    str(sa.delete(p).where(p.c.request_id.in_(["a"])).compile(dialect=dialect))


WRITER = textwrap.dedent(
    """
    import sys, time
    from lib.serving.prediction_store import PredictionStore
    store = PredictionStore(sys.argv[1])
    for batch in range(20):
        rows = [
            {"request_id": f"p-{batch}-{i}", "created_at": time.time(), "variant": "champion",
             "model_version": "1", "label": i % 2, "probability": 0.5, "latency_ms": 1.0,
             "error": None, "features": {"reviews": float(i)}}
            for i in range(50)
        ]
        store.submit(rows)
        time.sleep(0.02)
    assert store.flush(timeout=60)
    store.close()
    print("written", flush=True)
    """
)


@pytest.mark.component
def test_writer_and_reader_in_two_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    reader = PredictionStore(url)
    reader.window(0)  # creates the tables; the writer process then finds them
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        fed_back = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            seen.append(len(reader.window(0)))  # reads while the other process writes
            # feedback from this process while the other one writes, too
            if seen[-1]:
                rid = reader.window(0)["request_id"].iloc[0]
                assert reader.record_feedback(rid, 4.5) is not None
                fed_back += 1
            time.sleep(0.01)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "written" in out
    assert seen == sorted(seen)  # the reader never saw rows disappear
    frame = reader.window(0)
    assert len(frame) == 1000 and frame["request_id"].is_unique
    # the reader saw rows while the writer wrote, and its feedback went in meanwhile
    assert fed_back >= 1 and 0 < seen[-1] <= 1000
    assert frame["true_label"].notna().sum() >= 1
    features = reader.window(0, features=True)["features"]
    assert all(isinstance(f, dict) for f in features)
    assert json.dumps(features.iloc[0])
    reader.close()
