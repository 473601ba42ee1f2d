"""The pipeline against a real `mlflow server` process on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import registry
from lib.errors import RegistryUnavailable
from tests.support.mlflow_server import MlflowServer
from tests.support.pipeline import ACTED, run_pipeline

pytestmark = pytest.mark.e2e


@pytest.fixture
def mlflow_process(tmp_path: Path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server(mlflow_process: MlflowServer):
    yield mlflow_process.url, mlflow_process.home


def test_everything_lands_on_the_server(project: Path, mlflow_server, monkeypatch) -> None:
    from mlflow import MlflowClient

    url, home = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    result, lines = run_pipeline(project, candidates=["logistic_regression"])
    assert result.outcome == ACTED[result.scraps["decision"]]
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


def _runner(project: Path, *args: str) -> subprocess.CompletedProcess:
    """runner.py in a fresh process, without the retry settings this test process holds: the
    runner must bound MLflow's retries by itself."""
    env = {k: v for k, v in os.environ.items() if k not in registry.HTTP_RETRY_DEFAULTS}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "runner.py", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_stopped_server_is_an_outage_not_a_missing_alias(
    project: Path, mlflow_process: MlflowServer
) -> None:
    import mlflow

    url = mlflow_process.url
    try:
        client = registry.connect(url, "outage")
        client.create_registered_model("m")
        # what the real server answers for a missing alias / model: None, not an error
        assert registry.alias_version(client, "m", "champion") is None
        assert registry.alias_version(client, "no-such-model", "champion") is None
        up = _runner(project, "status", "--set", f"tracking_uri={url}")
        assert up.returncode == 0, up.stderr
        assert "champion" in up.stdout, up.stdout

        mlflow_process.stop(signal.SIGKILL)  # the server crashes
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="looking up m@champion"):
            registry.alias_version(client, "m", "champion")
        assert time.monotonic() - started < 60
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)

    started = time.monotonic()
    down = _runner(project, "status", "--set", f"tracking_uri={url}")
    assert time.monotonic() - started < 120  # interpreter start + bounded retries, not minutes
    assert down.returncode == RegistryUnavailable.exit_code != 0, down.stdout + down.stderr
    assert "Traceback" not in down.stderr
    lines = [line for line in down.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, down.stderr
    assert "unavailable" in lines[0] and f"127.0.0.1:{mlflow_process.port}" in lines[0]
    assert "champion" not in down.stdout  # nothing printed as if the aliases were missing
