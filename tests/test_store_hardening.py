"""The prediction store under attack: bad rows, junk values, cheap unknown feedback, kill -9."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lib.delivery.service_process import ServiceProcess
from lib.serving import prediction_store, store_journal, store_rows
from lib.serving.app import create_app
from lib.serving.prediction_store import PredictionStore
from tests.support.serving import FEEDBACK, MODEL, RAW_APP, TOKEN, Store
from tests.support.serving import admin_headers as _admin
from tests.support.serving import id_for as _id_for
from tests.support.serving import model_service as _service
from tests.support.serving import serving_settings as _settings

PROJECT = Path(__file__).resolve().parents[1]


def _row(rid: str, at: float = 1.0, **kw) -> dict:
    row = {
        "request_id": rid,
        "created_at": at,
        "variant": "champion",
        "model_version": "1",
        "label": 1,
        "probability": 0.8,
        "latency_ms": 3.5,
        "error": None,
        "features": {"category": "GAME", "reviews": 10.0},
    }
    row.update(kw)
    return row


def _invalid_json_rows(store: PredictionStore) -> int:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM predictions "
            "WHERE features IS NOT NULL AND NOT json_valid(features)"
        ).scalar()


def _locked(db: Path) -> sqlite3.Connection:
    """Another process's write transaction: the store's writer waits (busy timeout) behind it."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    return conn


# --------------------------------------------------------------------------- 1: bad rows


def test_a_lone_surrogate_request_id_costs_no_other_row(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path}/p.db")
    try:
        store.submit([_row(f"ok-{i}") for i in range(4)] + [_row("bad-\ud800")])
        store.submit([_row("after")])
        assert store.flush(timeout=30)
        ids = set(store.window(0)["request_id"])
        assert {f"ok-{i}" for i in range(4)} | {"after"} <= ids
        # the odd id itself is stored (as safe text) and its feedback finds it again
        assert len(ids) == 6 and store.stats()["failed"] == 0
        assert store.record_feedback("bad-\ud800", 4.5) is not None
        assert store.record_predictions([_row("direct-\udfff", error="boom \ud800")]) == 1
    finally:
        store.close()


def test_a_row_the_database_refuses_is_skipped_alone_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path}/p.db")
    try:
        with caplog.at_level(logging.ERROR, logger="lib.serving.prediction_store"):
            # created_at is NOT NULL: the database refuses that row, and only that row
            store.submit([_row("g1"), _row("refused", at=None), _row("g2"), _row("g3")])
            assert store.flush(timeout=30)
        assert sorted(store.window(0)["request_id"]) == ["g1", "g2", "g3"]
        stats = store.stats()
        assert stats["rejected"] == 1 and stats["failed"] == 0 and stats["written"] == 3
        assert any("'refused'" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


# ------------------------------------------------------------------- 2: unknown feedback


def test_feedback_for_an_unknown_id_does_not_force_a_write(tmp_path: Path) -> None:
    # The writer gathers for 30 s: only a flush can write "fresh" during this test.
    store = PredictionStore(f"sqlite:///{tmp_path}/p.db", min_interval=30.0)
    try:
        store.submit([_row("warmup")])
        assert store.flush(timeout=30)
        store.submit([_row("fresh")])
        for i in range(20):
            assert store.record_feedback(f"unknown-{i}", 4.5) is None
        assert store.stats()["pending"] == 1  # no unknown id made the writer write
        assert store.record_feedback("warmup", 4.5) is not None  # stored: no flush needed
        assert store.stats()["pending"] == 1
        assert store.record_feedback("fresh", 4.5) is not None  # pending: written, then found
        assert store.stats()["pending"] == 0
    finally:
        store.close()


def test_feedback_for_a_prediction_the_database_cannot_take_yet_is_not_unknown(
    tmp_path: Path,
) -> None:
    db = tmp_path / "p.db"
    with PredictionStore(f"sqlite:///{db}") as store:
        store.window(0)
        lock = _locked(db)
        try:
            store.submit([_row("stuck")])
            with pytest.raises(TimeoutError, match="not written yet"):
                store.record_feedback("stuck", 4.5, wait=0.2)
        finally:
            lock.rollback()
            lock.close()
        assert store.record_feedback("stuck", 4.5) is not None


# --------------------------------------------------------------------------- 3: junk


def test_stored_features_are_always_valid_json(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path}/p.db")
    junk = {
        "inf": float("inf"),
        "minus_inf": float("-inf"),
        "nan": float("nan"),
        "np_inf": np.float64("inf"),
        "np_int": np.int64(3),
        "text": "caf\u00e9 \ud800",
        "when": np.datetime64("2018-01-07"),
    }
    try:
        store.record_predictions([_row("direct", features=junk)])
        store.record_predictions([_row("as-text", features='{"a": Infinity, "b": NaN, "c": 1}')])
        store.record_predictions([_row("not-json", features="{oops")])
        store.submit([_row(f"queued-{i}", features=junk) for i in range(3)])
        assert store.flush(timeout=30)
        assert _invalid_json_rows(store) == 0
        frame = store.window(0, features=True).set_index("request_id")
        direct = frame.loc["direct", "features"]
        assert direct["inf"] is None and direct["minus_inf"] is None and direct["nan"] is None
        assert direct["np_inf"] is None and direct["np_int"] == 3
        assert frame.loc["as-text", "features"] == {"a": None, "b": None, "c": 1}
        assert frame.loc["not-json", "features"] is None
        # a non-finite probability is no probability
        store.record_predictions([_row("p-inf", probability=float("inf"))])
        assert np.isnan(store.window(0).set_index("request_id").loc["p-inf", "probability"])
    finally:
        store.close()


def test_feedback_for_a_failed_prediction_is_refused(tmp_path: Path) -> None:
    with PredictionStore(f"sqlite:///{tmp_path}/p.db") as store:
        store.record_predictions(
            [_row("failed", label=None, probability=None, error="RuntimeError: boom")]
        )
        with pytest.raises(prediction_store.FeedbackRefused, match="failed"):
            store.record_feedback("failed", 4.5)
        assert store.window(0)["true_label"].isna().all()


@pytest.mark.component
def test_feedback_for_a_failed_prediction_answers_409(client: TestClient) -> None:  # noqa: F811
    service = _service(client)
    client.put("/admin/routing", json={"canary_version": "2", "weight": 50.0}, headers=_admin())

    def broken(rows):
        raise RuntimeError("canary exploded")

    service.canary.predictor.predict = broken
    bad_id = _id_for(service, "canary", prefix="fail")
    failed = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": bad_id})
    assert failed.status_code == 500
    resp = client.post("/feedback", headers=FEEDBACK, json={"request_id": bad_id, "rating": 4.5})
    assert resp.status_code == 409, resp.text
    assert "failed" in resp.json()["detail"]


@pytest.mark.component
def test_request_ids_answered_before_a_restart_stay_used(mlstore: Store, tmp_path: Path) -> None:  # noqa: F811
    """The restarted service finds the ids in the database: a repeat is still 409, and the
    feedback still joins the answer given before the restart."""
    settings = _settings(mlstore, tmp_path)
    with TestClient(create_app(settings)) as before:
        first = before.post("/predict", json=RAW_APP, headers={"X-Request-ID": "r-1"}).json()
        batch = before.post("/predict", json=[RAW_APP] * 2, headers={"X-Request-ID": "rb"})
        assert batch.status_code == 200
    with TestClient(create_app(settings)) as after:
        other = {**RAW_APP, "Reviews": "3", "Category": "TOOLS"}
        for rid, body in (("r-1", other), ("rb", [other] * 2), ("rb-1", other)):
            again = after.post("/predict", json=body, headers={"X-Request-ID": rid})
            assert again.status_code == 409, again.text
        feedback = after.post(
            "/feedback", headers=FEEDBACK, json={"request_id": "r-1", "rating": 2.0}
        ).json()
        assert feedback["prediction"]["probability"] == first["probability"]
        new = after.post("/predict", json=other, headers={"X-Request-ID": "r-2"})
        assert new.status_code == 200


# ------------------------------------------------------------------------- 4: kill -9

CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    from lib.serving.prediction_store import PredictionStore
    store = PredictionStore(sys.argv[1])
    store.submit([
        {"request_id": f"k-{i}", "created_at": time.time(), "variant": "champion",
         "model_version": "1", "label": 1, "probability": 0.5, "latency_ms": 1.0,
         "error": None, "features": {"reviews": float(i) if i else float("nan")}}
        for i in range(int(sys.argv[2]))
    ])
    print("submitted", flush=True)
    time.sleep(600)  # the writer waits behind the other transaction; killed before it writes
    """
)


@pytest.mark.e2e
def test_rows_of_a_killed_writer_are_recovered_by_the_next_store(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    url = f"sqlite:///{db}"
    with PredictionStore(url) as warm:
        warm.window(0)  # the tables exist
    lock = _locked(db)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, url, "25"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "submitted"
        # a live writer's journal is its own: another store leaves it alone
        with PredictionStore(url) as reader:
            assert reader.stats()["recovered"] == 0
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        lock.rollback()
        lock.close()
    assert proc.returncode == -signal.SIGKILL
    with PredictionStore(url) as after:
        stats = after.stats()
        assert stats["recovered"] == 25 and stats["lost_at_restart"] == 0
        assert sorted(after.window(0)["request_id"]) == sorted(f"k-{i}" for i in range(25))
        assert _invalid_json_rows(after) == 0
    with PredictionStore(url) as again:  # recovered once, not twice
        assert again.stats()["recovered"] == 0 and len(again.window(0)) == 25


def test_rows_the_database_keeps_failing_on_are_kept_for_the_next_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prediction_store, "SQLITE_BUSY_TIMEOUT_MS", 50)  # fail fast when locked
    db = tmp_path / "p.db"
    url = f"sqlite:///{db}"
    with PredictionStore(url) as warm:
        warm.window(0)
    lock = _locked(db)
    store = PredictionStore(url)
    try:
        store.submit([_row("x1"), _row("x2")])
        assert store.flush(timeout=60)
        assert store.stats()["failed"] == 2 and store.stats()["written"] == 0
    finally:
        lock.rollback()
        lock.close()
    store.close()
    with PredictionStore(url) as after:
        assert after.stats()["recovered"] == 2
        assert sorted(after.window(0)["request_id"]) == ["x1", "x2"]


def test_a_torn_journal_record_is_counted_as_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    journal = store_journal.default_dir(url)
    journal.mkdir()
    good = store_journal.encode([_row("whole", features={"x": float("inf")})])
    torn = store_journal.encode([_row("torn")])
    (journal / "12345-1-1.journal").write_bytes(good + torn[: len(torn) // 2])
    with PredictionStore(url) as store:
        assert store.stats()["recovered"] == 1 and store.stats()["lost_at_restart"] == 1
        assert store.window(0, features=True)["features"].tolist() == [{"x": None}]
    assert list(journal.iterdir()) == []


def test_journal_records_hold_plain_values_and_run_no_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    journal = store_journal.default_dir(url)
    journal.mkdir()
    marker = tmp_path / "code-ran"

    class Hostile:
        def __reduce__(self):
            return open, (str(marker), "w")

    hostile = pickle.dumps({"request_id": "hostile", "features": Hostile()}, protocol=5)
    odd = {
        "f32": np.float32(1.5),
        "i64": np.int64(2),
        "nat": np.datetime64("NaT"),
        "day": np.datetime64("2018-01-07"),
        "text": "x\ud800",
    }
    good = store_journal.encode([_row("odd", features=odd, label=np.int64(1))])
    (journal / "1-1-1.journal").write_bytes(good + struct.pack("<I", len(hostile)) + hostile)
    with PredictionStore(url) as store:
        assert store.stats()["recovered"] == 1 and store.stats()["lost_at_restart"] == 1
        frame = store.window(0, features=True)
        assert frame["features"].tolist() == [
            {"f32": 1.5, "i64": 2, "nat": None, "day": "2018-01-07", "text": "x\\ud800"}
        ]
        assert frame["label"].tolist() == [1]
    assert not marker.exists()


def test_store_rows_have_the_table_columns() -> None:
    assert list(store_rows.clean_prediction({})) == prediction_store.PREDICTION_FIELDS


def test_journal_does_not_grow_once_rows_are_written(tmp_path: Path) -> None:
    with PredictionStore(f"sqlite:///{tmp_path}/p.db", batch_size=10) as store:
        for i in range(50):
            store.submit([_row(f"j-{i}")])
        assert store.flush(timeout=30)
        journal = store.journal_dir
        assert journal is not None
        assert sum(p.stat().st_size for p in journal.iterdir()) == 0
    assert list(journal.iterdir()) == []  # a clean close leaves nothing to recover


def test_journal_segments_rotate_and_go_once_written(tmp_path: Path) -> None:
    # Under steady load the open segment never empties: it is closed past a size instead, and
    # deleted once all its rows are written.
    with PredictionStore(f"sqlite:///{tmp_path}/p.db", min_interval=30.0) as store:
        store._queue.journal.segment_bytes = 1  # every submit closes its segment
        store.submit([_row("warm")])
        assert store.flush(timeout=30)
        for i in range(40):
            store.submit([_row(f"s-{i}")])
        assert len(list(store.journal_dir.iterdir())) == 40  # one closed segment per row
        assert store.flush(timeout=30)
        assert list(store.journal_dir.iterdir()) == []  # all written: all gone
        assert len(store.window(0)) == 41


def _metric(text: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


@pytest.mark.e2e
def test_predictions_answered_before_kill_9_are_stored_after_restart(
    mlstore: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    db = tmp_path / "predictions.db"
    url = f"sqlite:///{db}"
    with PredictionStore(url) as warm:
        warm.window(0)

    def service() -> ServiceProcess:
        return ServiceProcess(
            PROJECT, MODEL, mlstore.uri, url, admin_token=TOKEN, log_path=tmp_path / "svc.log"
        )

    first = service()
    lock = _locked(db)  # the database is busy: the service answers, its writer waits
    try:
        first.start()
        answered = []
        for i in range(20):
            headers = {"X-Request-ID": f"k9-{i}"}
            resp = httpx.post(f"{first.url}/predict", json=RAW_APP, headers=headers, timeout=30)
            assert resp.status_code == 200, resp.text
            answered.append(resp.json()["request_id"])
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=60)
    finally:
        first.stop()
        lock.rollback()
        lock.close()
    assert first.exit_code == -signal.SIGKILL

    with service() as second:
        text = httpx.get(f"{second.url}/metrics", timeout=10).text
        assert _metric(text, "model_store_rows_recovered_total") == 20
        assert _metric(text, "model_store_rows_lost_at_restart_total") == 0
        # answered before the kill, written from the journal at start: still used
        again = httpx.post(f"{second.url}/predict", json=RAW_APP, timeout=30,
                           headers={"X-Request-ID": "k9-0"})  # fmt: skip
        assert again.status_code == 409, again.text
    with PredictionStore(url) as store:
        assert sorted(store.window(0)["request_id"]) == sorted(answered)
        assert _invalid_json_rows(store) == 0


@pytest.mark.e2e
def test_every_request_answered_before_kill_9_under_load_is_stored(
    mlstore: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The service killed (kill -9) under the load of 8 clients, requests in flight: after the
    restart, every request answered 200 is in the store."""
    url = f"sqlite:///{tmp_path}/predictions.db"

    def service() -> ServiceProcess:
        return ServiceProcess(
            PROJECT, MODEL, mlstore.uri, url, admin_token=TOKEN, log_path=tmp_path / "svc.log"
        )

    first = service()
    answered: list[str] = []
    killed = threading.Event()

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=first.url, timeout=30) as http:
            for i in range(10_000):
                headers = {"X-Request-ID": f"k9-{k}-{i}"}
                try:
                    resp = http.post("/predict", json=RAW_APP, headers=headers)
                except httpx.HTTPError:
                    return  # the service is gone
                if resp.status_code == 200:
                    answered.append(resp.json()["request_id"])
                if len(answered) >= 60 and not killed.is_set():
                    killed.set()  # with the other clients' requests in flight
                    os.killpg(first.proc.pid, signal.SIGKILL)

    try:
        first.start()
        clients = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=300)
        first.proc.wait(timeout=60)
    finally:
        first.stop()
    assert killed.is_set() and first.exit_code == -signal.SIGKILL
    with service() as second:  # replays the dead service's journal
        again = httpx.post(f"{second.url}/predict", json=RAW_APP, timeout=30,
                           headers={"X-Request-ID": answered[0]})  # fmt: skip
        assert again.status_code == 409, again.text
    with prediction_store.PredictionReader(url) as reader:
        assert set(answered) <= set(reader.window(0)["request_id"])
