"""Data from where a team keeps it: an HTTP(S) CSV, a database table or query (SQLite, and a
throwaway PostgreSQL cluster this module starts itself), read with the same validation,
quarantine and new-app detection as a local CSV; credentials never shown."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from lib.config import data_paths, resolve_data
from lib.errors import DataError, MissingColumnsError
from lib.pipeline import data, detection, synth
from lib.pipeline.contracts import DetectInputs
from lib.pipeline.data_sources import check_file
from lib.pipeline.stages import detect
from tests.support.postgres import throwaway_postgres
from tests.support.tls import loopback_tls

pytestmark = pytest.mark.component

SECRET = "s3cr3t-pw"
TOKEN = "tok-98765"


def apps_frame(n: int = 120, seed: int = 7) -> pd.DataFrame:
    """Generated raw listings plus two rows the rules refuse (quarantined, never dropped)."""
    frame = synth.generate_apps(n=n, seed=seed)
    bad = frame.iloc[:2].copy()
    bad["Rating"] = ["7.5", "abc"]
    bad["App"] = ["Bad Rating App", "Bad Number App"]
    return pd.concat([frame, bad], ignore_index=True)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, lineterminator="\n")
    return path


def same_apps(a: data.LoadedApps, b: data.LoadedApps) -> None:
    columns = [c for c in data.TYPED_COLUMNS if c != "source_file"]
    pd.testing.assert_frame_equal(a.apps[columns], b.apps[columns])
    assert a.quarantine["reason"].tolist() == b.quarantine["reason"].tolist()
    assert a.digest == b.digest  # the records' content, not where they came from


# --- HTTP(S) --------------------------------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, tuple[int, str, bytes]]]]:
    """A loopback HTTP server answering each path from a dict (status, content type, body)."""
    pages: dict[str, tuple[int, str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, kind, body = pages.get(self.path.split("?")[0], (404, "text/plain", b"no"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_an_http_csv_reads_as_the_local_file(tmp_path: Path, http_server) -> None:
    base, pages = http_server
    path = write_csv(apps_frame(), tmp_path / "apps.csv")
    pages["/apps.csv"] = (200, "text/csv", path.read_bytes())
    local = data.read_apps(path)
    remote = data.read_apps([f"{base}/apps.csv"])
    same_apps(local, remote)
    assert remote.n_quarantined == 2
    assert remote.quarantine["source_file"].iat[0] == f"{base}/apps.csv"


def test_an_https_csv_is_read_only_from_a_trusted_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS is verified: a self-signed server is one line until its certificate is trusted
    (SSL_CERT_FILE, as for any OpenSSL client), then it reads as the local file."""
    path = write_csv(apps_frame(40), tmp_path / "apps.csv")
    body = path.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    context, cert_file = loopback_tls(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/apps.csv"
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(DataError, match="certificate") as refused:
            data.read_apps([url])
        assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        same_apps(data.read_apps(path), data.read_apps([url]))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_http_errors_are_one_clear_line(tmp_path: Path, http_server) -> None:
    base, pages = http_server
    pages["/page.csv"] = (200, "text/html", b"<!DOCTYPE html><html><body>Login</body></html>")
    pages["/sneaky.csv"] = (200, "text/plain", b"<html><body>Login</body></html>")
    pages["/big.csv"] = (200, "text/csv", b"App,Category\n" + b"x,y\n" * 5000)
    pages["/wrong.csv"] = (200, "text/csv", b"name,score\nx,1\n")
    with pytest.raises(DataError, match=r"/missing.csv: HTTP 404"):
        data.read_apps([f"{base}/missing.csv"])
    for name in ("page", "sneaky"):
        with pytest.raises(DataError, match=rf"/{name}.csv: an HTML page, not a CSV file"):
            data.read_apps([f"{base}/{name}.csv"])
    with pytest.raises(DataError, match=r"/big.csv: larger than the 1000 bytes allowed"):
        data.read_apps([f"{base}/big.csv"], max_bytes=1000)
    with pytest.raises(MissingColumnsError, match="wrong.csv"):
        data.read_apps([f"{base}/wrong.csv"])
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = rf"127.0.0.1:{port}/a.csv: cannot download \(connection refused\)"
    with pytest.raises(DataError, match=refused):
        data.read_apps([f"http://127.0.0.1:{port}/a.csv"])


def test_credentials_in_an_http_url_are_never_shown(
    tmp_path: Path, http_server, caplog: pytest.LogCaptureFixture
) -> None:
    base, pages = http_server
    pages["/apps.csv"] = (200, "text/csv", write_csv(apps_frame(), tmp_path / "a.csv").read_bytes())
    url = base.replace("http://", f"http://reader:{SECRET}@") + f"/apps.csv?token={TOKEN}&x=1"
    caplog.set_level(logging.DEBUG)
    loaded = data.read_apps([url])
    quarantine = data.write_quarantine(loaded.quarantine, tmp_path / "quarantine.csv")
    with pytest.raises(DataError) as failed:
        data.read_apps([url.replace("apps.csv", "gone.csv")])
    shown = [
        caplog.text,
        *loaded.sources,
        *loaded.counts,
        quarantine.read_text(),
        str(failed.value),
    ]
    for text in shown:
        assert SECRET not in text and TOKEN not in text
    assert loaded.sources == [f"http://***@{base[7:]}/apps.csv?token=***&x=1"]
    with pytest.raises(DataError, match=r"\?token=\*\*\*&x=1: a URL, not a local file"):
        check_file(url)  # e.g. simulate-new-apps, which appends to a local file only
    assert len(loaded.apps) == 120


# --- databases ------------------------------------------------------------------------------------


def test_a_sqlite_table_and_query_read_as_the_csv(tmp_path: Path) -> None:
    frame = apps_frame()
    local = data.read_apps(write_csv(frame, tmp_path / "apps.csv"))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'apps.db'}")
    frame.to_sql("apps", engine, index=False)
    snake = frame.rename(columns=lambda c: c.lower().replace(" ", "_"))
    snake.to_sql("apps_snake", engine, index=False)
    engine.dispose()
    url = f"sqlite:///{tmp_path / 'apps.db'}"
    same_apps(local, data.read_apps([f"{url}#table=apps"]))
    same_apps(local, data.read_apps([f"{url}#table=apps_snake"]))
    query = f"{url}#query=SELECT * FROM apps WHERE 1 = 1, 2"  # commas: one source
    assert data_paths(query) == [query]
    assert resolve_data(query, tmp_path) == [query]
    same_apps(local, data.read_apps([query.replace(", 2", "")]))
    with pytest.raises(DataError, match="no table 'nope' in the database"):
        data.read_apps([f"{url}#table=nope"])
    with pytest.raises(DataError, match=r"apps.db#query=SELECT nope FROM apps: cannot read"):
        data.read_apps([f"{url}#query=SELECT nope FROM apps"])
    with pytest.raises(DataError, match="names a table or a query after '#'"):
        data.read_apps([url])
    with pytest.raises(MissingColumnsError, match="Category"):
        data.read_apps([f'{url}#query=SELECT "App" FROM apps'])


# --- PostgreSQL: a throwaway cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


def test_a_postgresql_table_grown_by_150_apps_triggers_the_retrain(
    tmp_path: Path, postgres: str
) -> None:
    csv_path = write_csv(apps_frame(n=300), tmp_path / "apps.csv")
    engine = sa.create_engine(postgres)
    pd.read_csv(csv_path, dtype=str, keep_default_na=False).to_sql("apps", engine, index=False)
    url = f"{postgres.replace('postgres@', f'postgres:{SECRET}@')}#table=apps"
    inputs = DetectInputs(
        data_path=url,
        threshold=100,
        state_path="models/training_state.json",
        quarantine_path="reports/quarantine.csv",
    )

    first = detect.run(inputs, tmp_path)
    assert first.should_train and first.quarantined_rows == 2
    assert first.data_sources == [url.replace(f"postgres:{SECRET}@", "***@")]
    same_apps(data.read_apps(csv_path), data.read_apps([url]))
    trained = data.read_apps([url])  # what 02 train would record after training on it
    detection.write_state(
        tmp_path / inputs.state_path, trained.apps, "1", "run-1", first.data_digest
    )
    unchanged = detect.run(inputs, tmp_path)
    assert not unchanged.should_train and unchanged.new_apps == 0
    assert unchanged.data_digest == first.data_digest

    batch = synth.append_new_apps(csv_path, n=150)
    batch.astype(str).to_sql("apps", engine, index=False, if_exists="append")
    engine.dispose()
    grown = detect.run(inputs, tmp_path)
    assert grown.new_apps == 150 and grown.should_train
    assert "150 new apps since the last training" in grown.reason
    assert grown.data_digest != first.data_digest
    with pytest.raises(DataError, match="no table 'missing' in the database"):
        data.read_apps([url.replace("table=apps", "table=missing")])
    with pytest.raises(DataError, match="read-only transaction"):  # reading never writes
        data.read_apps([url.replace("table=apps", 'query=DELETE FROM apps RETURNING "App"')])
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    port = sa.engine.make_url(postgres).port
    with pytest.raises(DataError, match=r"cannot read the table \(.*(refused|connect)") as failed:
        data.read_apps([url.replace(f":{port}/", f":{closed}/")])
    assert SECRET not in str(failed.value)


def test_mlflow_is_given_the_sources_without_credentials() -> None:
    from lib.pipeline.stages.train import mlflow_source

    assert mlflow_source("data/apps.csv") == "data/apps.csv"  # files as they always were
    assert mlflow_source(["a.csv", "b.csv"]) == "['a.csv', 'b.csv']"
    assert mlflow_source(f"https://u:{SECRET}@h/a.csv?token={TOKEN}") == (
        "https://***@h/a.csv?token=***"
    )
    assert mlflow_source(f"postgresql://u:{SECRET}@h/db#table=apps") == (
        "['postgresql://***@h/db#table=apps']"
    )


def test_the_config_report_shows_a_data_url_without_credentials(tmp_path: Path) -> None:
    from lib.config import load_config

    url = f"https://u:{SECRET}@h/a.csv?api_key={TOKEN}"
    cfg = load_config(tmp_path, overrides={"data_path": url}, environ={})
    assert cfg.to_dict()["data_path"] == "https://***@h/a.csv?api_key=***"
    assert SECRET not in repr(cfg) and TOKEN not in repr(cfg)
    assert cfg.data_files(tmp_path) == [url]
