"""The prediction store on PostgreSQL (one throwaway cluster for the module): the schema created
and migrated by Alembic (also from a SQLite store made before it), concurrent first starts, and
several real service processes writing at once, one killed with kill -9 mid-traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from lib.delivery.service_process import ServiceProcess
from lib.serving import prediction_store, store_journal, store_schema
from lib.serving.prediction_store import PredictionReader, PredictionStore
from lib.serving.routing_state import routing_metadata
from lib.serving.settings import ServingSettings
from tests.support.postgres import throwaway_postgres
from tests.support.serving import MODEL, RAW_APP, TOKEN, Store

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


def _database(server: str, name: str) -> str:
    """A new empty database on the module's cluster: its URL."""
    engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return server.rsplit("/", 1)[0] + f"/{name}"


def _revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = store_schema.revision(conn)
    engine.dispose()
    return found


def _row(rid: str, at: float) -> dict:
    return {
        "request_id": rid, "created_at": at, "variant": "champion", "model_version": "1",
        "label": 1, "probability": 0.7, "latency_ms": 1.0, "error": None, "features": None,
    }  # fmt: skip


@pytest.mark.component
def test_head_is_the_last_revision_and_the_migrated_schema_is_the_store_tables(
    tmp_path: Path,
) -> None:
    script = ScriptDirectory(str(store_schema.MIGRATIONS))
    assert script.get_current_head() == store_schema.HEAD
    url = f"sqlite:///{tmp_path}/p.db"
    with PredictionStore(url) as store:
        store.window(0)
    engine = sa.create_engine(url)
    found = sa.inspect(engine)
    for table in [*prediction_store.metadata.tables.values(), *routing_metadata.tables.values()]:
        assert {c["name"] for c in found.get_columns(table.name)} == set(table.columns.keys())
    assert "ix_predictions_shadow_of" in {i["name"] for i in found.get_indexes("predictions")}
    engine.dispose()
    assert _revision(url) == store_schema.HEAD


def test_a_server_store_journals_in_the_project_per_database_unless_told_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas on one machine share the folder (a dead one's rows are replayed by the next
    store opened there); two databases never share one; the password never names it."""
    monkeypatch.delenv("SERVING_JOURNAL_DIR", raising=False)
    one = store_journal.default_dir("postgresql://u:secret@db.example/one", root=tmp_path)
    other = store_journal.default_dir("postgresql://u:secret@db.example/two", root=tmp_path)
    assert one.parent == other.parent == tmp_path / ".prediction-journal" and one != other
    assert "secret" not in str(one)
    assert store_journal.default_dir(f"sqlite:///{tmp_path}/p.db") == tmp_path / "p.db.pending"
    monkeypatch.setenv("SERVING_JOURNAL_DIR", str(tmp_path / "volume"))
    assert store_journal.default_dir("postgresql://u@h/one") == tmp_path / "volume"
    assert ServingSettings().journal_dir == tmp_path / "volume"


OLD_SCHEMA = """
CREATE TABLE predictions (request_id VARCHAR(255) PRIMARY KEY, created_at FLOAT NOT NULL,
  variant VARCHAR(64) NOT NULL, model_version VARCHAR(64) NOT NULL, label INTEGER,
  probability FLOAT, latency_ms FLOAT NOT NULL, error TEXT, features TEXT);
CREATE INDEX ix_predictions_created_at ON predictions (created_at);
CREATE INDEX ix_predictions_variant_created_at ON predictions (variant, created_at);
CREATE TABLE feedback (request_id VARCHAR(255) PRIMARY KEY, created_at FLOAT NOT NULL,
  rating FLOAT, label INTEGER NOT NULL, source VARCHAR(64));
INSERT INTO predictions VALUES ('old-1', 5.0, 'champion', '1', 1, 0.8, 2.0, NULL, NULL);
INSERT INTO feedback VALUES ('old-1', 6.0, 4.5, 1, 'api');
"""


@pytest.mark.component
def test_a_sqlite_store_made_before_shadow_of_is_stamped_and_upgraded(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "predictions.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
    url = f"sqlite:///{db}"
    assert _revision(url) is None
    with PredictionStore(url) as store:
        store.record_predictions([_row("new-1", 7.0)])
        window = store.window(0)
    assert list(window["request_id"]) == ["old-1", "new-1"]
    assert window.loc[0, "true_label"] == 1 and window.loc[0, "label_source"] == "api"
    assert _revision(url) == store_schema.HEAD
    engine = sa.create_engine(url)
    assert {"serving_routing", "serving_replicas"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


CONCURRENT_START = textwrap.dedent(
    """
    import sys, time
    from lib.serving.prediction_store import PredictionStore
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start at the same moment
    with PredictionStore(sys.argv[1], journal=False) as store:
        store.record_predictions([{"request_id": sys.argv[3], "created_at": 1.0,
            "variant": "champion", "model_version": "1", "latency_ms": 1.0}])
    """
)


@pytest.mark.e2e
def test_concurrent_first_starts_on_an_empty_postgres_database(postgres: str) -> None:
    url = _database(postgres, "first_starts")
    with PredictionReader(url) as reader:  # a reader never creates the schema
        assert reader.window(0).empty
    assert _revision(url) is None
    at = time.time() + 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_START, url, str(at), f"start-{i}"],
            cwd=PROJECT,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert _revision(url) == store_schema.HEAD
    with PredictionReader(url) as reader:
        assert sorted(reader.window(0)["request_id"]) == [f"start-{i}" for i in range(4)]


def _traffic(service: ServiceProcess, prefix: str, answered: list[str], stop: threading.Event):
    """Post /predict with fresh ids until `stop` or the service is gone; 200s go to answered."""
    with httpx.Client(base_url=service.url, timeout=30) as http:
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                resp = http.post(
                    "/predict", json=RAW_APP, headers={"X-Request-ID": f"{prefix}-{i}"}
                )
            except httpx.HTTPError:
                return
            if resp.status_code == 200:
                answered.append(resp.json()["request_id"])


def _start_together(services: list[ServiceProcess], done: threading.Event) -> None:
    """Start the services at once (as a deployment's replicas), each from a thread that lives
    until `done`: a service gets SIGTERM when the thread that started it ends (PDEATHSIG)."""
    errors: list[Exception] = []
    started = threading.Barrier(len(services) + 1)

    def start(service: ServiceProcess) -> None:
        try:
            service.start()
        except Exception as exc:
            errors.append(exc)
        started.wait()
        done.wait()

    for service in services:
        threading.Thread(target=start, args=(service,), daemon=True).start()
    started.wait()
    assert not errors, errors


@pytest.mark.e2e
def test_replicas_writing_at_once_lose_and_double_nothing_when_one_is_killed(
    mlstore: Store,
    postgres: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three services on one PostgreSQL store, sharing the machine's journal folder; the table
    is locked for writes while they answer (rows wait in their journals), one is killed with
    kill -9: after the others stop and a store is opened again (what a restart or
    `store-recover` does), every request answered 200 is stored exactly once."""
    url = _database(postgres, "replicas")
    journal = tmp_path / "journal"
    monkeypatch.setenv("SERVING_JOURNAL_DIR", str(journal))
    with PredictionStore(url) as warm:
        warm.window(0)  # the schema exists before the table is locked
    services = [
        ServiceProcess(
            PROJECT, MODEL, mlstore.uri, url, admin_token=TOKEN, log_path=tmp_path / f"svc-{i}.log"
        )  # fmt: skip
        for i in range(3)
    ]
    answered: list[list[str]] = [[], [], []]
    stop, done = threading.Event(), threading.Event()
    lock_engine = sa.create_engine(url)
    lock = lock_engine.connect()
    try:
        _start_together(services, done)
        lock.exec_driver_sql("LOCK TABLE predictions IN EXCLUSIVE MODE")  # reads still pass
        clients = [
            threading.Thread(target=_traffic, args=(s, f"r{i}-{k}", answered[i], stop))
            for i, s in enumerate(services)
            for k in range(2)
        ]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 120
        while len(answered[0]) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(services[0].proc.pid, signal.SIGKILL)  # its clients' requests in flight
        services[0].proc.wait(timeout=60)
        lock.rollback()  # the survivors write their rows
        time.sleep(1.0)
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    finally:
        stop.set()
        lock.close()
        lock_engine.dispose()
        for service in services:
            service.stop()
        done.set()
    assert services[0].exit_code == -signal.SIGKILL
    assert len(answered[0]) >= 30 and answered[1] and answered[2]
    with PredictionStore(url) as restarted:  # replays the dead replica's journal
        assert restarted.recovery()["recovered"] >= len(answered[0])
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT request_id FROM predictions").scalars().all()
    engine.dispose()
    every = [rid for rows in answered for rid in rows]
    assert len(set(every)) == len(every)
    assert set(every) <= set(stored)
    assert len(stored) == len(set(stored))  # (the primary key's promise, checked)
    assert not list(journal.glob("*.journal"))
