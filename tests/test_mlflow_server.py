"""The pipeline against a real `mlflow server` process on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import run_pipeline

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """`mlflow server --backend-store-uri sqlite:///mlflow.db ...` as the mission runs it."""
    home = tmp_path / "server"
    home.mkdir()
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            "sqlite:///mlflow.db",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health within 120 s")
            time.sleep(0.5)
        yield url, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_everything_lands_on_the_server(project: Path, mlflow_server, monkeypatch) -> None:
    from mlflow import MlflowClient

    url, home = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    result, lines = run_pipeline(project, candidates=["logistic_regression"])
    assert result.outcome == "decided"
    assert any(url in line for line in lines)  # the runner says where MLflow is
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    version = client.get_model_version_by_alias("playstore-rating", "candidate")
    assert str(version.version) == result.scraps["candidate_version"]
    assert version.tags["decision"] == result.scraps["decision"]
    run = client.get_run(result.scraps["mlflow_run_id"])
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(result.scraps["metrics"]["roc_auc"])
    # Nothing went to a local store in the project; artifacts are on the server's side.
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()
    assert (home / "mlflow.db").exists()
    assert any((home / "artifacts").rglob("MLmodel"))
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        model = mlflow.sklearn.load_model("models:/playstore-rating@candidate")
        assert hasattr(model, "predict_proba")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
