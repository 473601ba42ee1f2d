"""Production outside the working directory (issue 18 item 1): the pipeline, the operator
commands, the model service and `mlflow.sklearn.load_model` against an `mlflow server` on
PostgreSQL with proxied artifacts and basic auth, started here. The project copy never holds an
mlflow.db or mlruns/, and the password (from the environment, or inside the tracking URI) shows
up in no output, report, log, notification, /health answer or MLflow param/tag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lib import registry
from lib.config import load_config
from lib.delivery.service_process import ServiceProcess
from lib.errors import RegistryUnavailable
from lib.settings import CREDENTIAL_VARS, credentials_to_environment
from tests.support.mlflow_server import MlflowServer
from tests.support.notify import LOOPBACK
from tests.support.postgres import throwaway_postgres

USER, PASSWORD = "pipeline-admin", "Pg-s3cret-9d41f7c2e8"  # a value nothing else contains
NAME = "playstore-rating"
ADMIN_TOKEN = "pg-admin-token-0123456789"
SMALL = [
    "--set", "synth_apps=1500", "--set", "cv_folds=3", "--set", "rf_trees=30",
    "--set", "candidates=[logistic_regression]", "--set", "smoke_rows=20",
    "--set", "features=engagement,versions,genres",  # no name-text stack: quick
    # this test is about where things are kept, not the decision: the candidate always deploys
    "--set", "decision={gate: {enabled: false}, verdicts: {auto: -1000, manual: -2000}}",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One PostgreSQL cluster and one authenticated MLflow server on it for the module."""
    with throwaway_postgres() as pg_url:
        home = tmp_path_factory.mktemp("mlflow-pg")
        srv = MlflowServer(home, backend=pg_url, auth=(USER, PASSWORD)).start()
        try:
            yield srv
        finally:
            srv.stop()


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment without any MLflow URI or credential of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.pop("MLFLOW_REGISTRY_URI", None)
    return {**env, **extra}


def _runner(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "runner.py", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return done


def _health(url: str) -> str:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return resp.read().decode()


def _leaks(root: Path) -> list[str]:
    """Every file under `root` whose bytes hold the password."""
    return [str(p) for p in root.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


def _mlflow_texts(client) -> list[str]:
    """What the pipeline wrote to MLflow as text: every run's params and tags, every version's
    tags and source."""
    texts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            texts += [*run.data.params.values(), *run.data.tags.values()]
    for version in client.search_model_versions(f"name='{NAME}'"):
        texts += [*version.tags.values(), str(version.source)]
    return texts


def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the variables set; whatever the code under test sets is undone after the test
    (monkeypatch restores only what it recorded: setenv records, delenv of a missing one not)."""
    for name in (*CREDENTIAL_VARS, "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_credentials_in_the_uri_move_to_the_environment(monkeypatch) -> None:
    _no_mlflow_environment(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:p%40ss@mlflow.example:5000/x")
    clean = credentials_to_environment(os.environ["MLFLOW_TRACKING_URI"])
    assert clean == "https://mlflow.example:5000/x" == os.environ["MLFLOW_TRACKING_URI"]
    assert [os.environ[n] for n in CREDENTIAL_VARS] == ["bob", "p@ss"]
    # credentials already in the environment win (as in MLflow's client); other URIs unchanged
    assert credentials_to_environment("http://eve:other@h") == "http://h"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    for uri in ("sqlite:////srv/mlflow.db", "postgresql://u:p@db/x", "http://h:5000"):
        assert credentials_to_environment(uri) == uri


def test_the_resolved_tracking_uri_carries_no_credentials(tmp_path: Path, monkeypatch) -> None:
    """What the runner hands to notebooks (Papermill parameters land in the executed .ipynb and
    its HTML) and to the services it starts (their command line) is the resolved URI."""
    _no_mlflow_environment(monkeypatch)
    (tmp_path / "runner.py").write_text("")
    cfg = load_config(tmp_path, None, {"tracking_uri": f"http://{USER}:{PASSWORD}@h:5000"})
    assert PASSWORD not in json.dumps(cfg.to_dict())
    assert cfg.resolved_tracking_uri(tmp_path) == "http://h:5000"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD  # kernels and services inherit it


@pytest.mark.e2e
def test_production_on_mlflow_postgres(server: MlflowServer, project: Path, http_sink, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    hook = f"json://{LOOPBACK}:{http_sink.port}/hooks"
    # the pipeline with the credentials inside the tracking URI (Papermill hands the URI to every
    # notebook as a parameter: the executed .ipynb and its HTML hold it)
    env = _env(
        MLFLOW_TRACKING_URI=server.url.replace("://", f"://{USER}:{PASSWORD}@"), NOTIFY_URLS=hook
    )
    # the server wants the credentials: without them the runner cannot even look
    refused = _runner(project, _env(MLFLOW_TRACKING_URI=server.url), "status")
    assert refused.returncode == RegistryUnavailable.exit_code, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr

    run = _runner(project, env, *SMALL)  # detect -> train -> compare -> decide -> deploy
    outputs = [run.stdout + run.stderr]
    assert run.returncode == 0, run.stdout + run.stderr
    assert server.url in run.stdout  # the runner says where MLflow is (without credentials)

    with pytest.MonkeyPatch.context() as mp:  # the test's own client and service: env creds
        mp.setenv("MLFLOW_TRACKING_USERNAME", USER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        client = registry.connect(server.url, "operator")
        assert registry.alias_version(client, NAME, "champion") == "1", run.stdout
        source = client.get_model_version(NAME, "1").source
        assert registry.register(client, source, NAME, {"copy_of": "1"}) == "2"

        # the production service, from a directory with nothing in it, loads the champion from
        # the server; the operator commands (credentials in MLFLOW_TRACKING_USERNAME/PASSWORD
        # this time) move it
        empty = tmp_path / "empty"
        empty.mkdir()
        service = ServiceProcess(
            empty, NAME, server.url, f"sqlite:///{tmp_path / 'predictions.db'}",
            admin_token=ADMIN_TOKEN, log_path=tmp_path / "service.log",
            models_dir=empty / "models",
        )  # fmt: skip
        ops_env = _env(
            MLFLOW_TRACKING_URI=server.url,
            MLFLOW_TRACKING_USERNAME=USER,
            MLFLOW_TRACKING_PASSWORD=PASSWORD,
            NOTIFY_URLS=hook,
            SERVING_ADMIN_TOKEN=ADMIN_TOKEN,
        )
        healths = []
        with service:
            healths.append(_health(service.url))
            to_service = ("--set", f"serving_url={service.url}")
            for command, champion in (
                (["promote", "2", "--reason", "operator test"], "2"),
                (["rollback", "--reason", "operator test"], "1"),
            ):
                done = _runner(project, ops_env, *command, *to_service)
                outputs.append(done.stdout + done.stderr)
                assert done.returncode == 0, outputs[-1]
                assert registry.alias_version(client, NAME, "champion") == champion
                healths.append(_health(service.url))
            status = _runner(project, ops_env, "status", *to_service)
            outputs.append(status.stdout + status.stderr)
            assert status.returncode == 0 and "champion v1" in status.stdout, outputs[-1]
        served = [json.loads(h)["champion"] for h in healths]
        assert [(c["version"], c["source"]) for c in served] == [
            ("1", "registry"),
            ("2", "registry"),
            ("1", "registry"),
        ], healths
        assert not any(empty.iterdir()), list(empty.iterdir())

        mlflow.set_tracking_uri(server.url)
        mlflow.set_registry_uri(server.url)
        try:
            model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
            assert hasattr(model, "predict_proba")
            texts = _mlflow_texts(MlflowClient(server.url, server.url))
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)

    # nothing of MLflow's is kept in the project; its artifacts are on the server's side
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()
    assert any(server.artifacts.rglob("MLmodel"))
    assert texts and not [t for t in texts if PASSWORD in t]
    # the password is nowhere: outputs, reports/logs/models, service log, notifications
    assert not [o for o in outputs if PASSWORD in o]
    assert _leaks(project) == [] and _leaks(tmp_path / "empty") == []
    assert (
        not [h for h in healths if PASSWORD in h]
        and PASSWORD not in (tmp_path / "service.log").read_text()
    )
    bodies = [r.body.decode() for r in http_sink.requests]
    assert any("rolled back" in b or "rollback" in b for b in bodies), bodies
    assert not [b for b in bodies if PASSWORD in b]
    reports = [p for p in (project / "reports").rglob("*") if p.suffix in (".ipynb", ".html")]
    assert reports  # the scan above read the executed notebooks and their HTML
