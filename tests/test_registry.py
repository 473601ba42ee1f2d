"""MLflow on a throw-away SQLite store: logging, registration, aliases, loading, local copies;
a registry that cannot answer (refused, hung, 5xx) is RegistryUnavailable, never "no alias"."""

import http.server
import pickle
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import registry
from lib.errors import PipelineError, RegistryUnavailable
from lib.pipeline import features, training
from tests.support.apps import typed_apps as _typed


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # artifacts of the default location land in tmp_path
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry.connect(uri, "test-exp")
    yield client
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def fitted():
    data = training.labeled_data(_typed(300), 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.2, 0)
    return (
        data,
        tr,
        te,
        training.train_candidate(
            "random_forest", data, tr, te, training.TrainingSettings(3, 0, 15)
        ),
    )


@pytest.mark.component
def test_trusted_types_are_library_types_only(fitted) -> None:
    *_, result = fitted
    types = registry.skops_trusted_types(result.model)
    assert "sklearn.tree._tree.Tree" in types
    assert all(t.startswith(registry.SAFE_TYPE_PREFIXES) for t in types)


@pytest.mark.component
def test_log_register_alias_and_load_by_uri(store, fitted) -> None:
    import mlflow

    data, tr, te, result = fitted
    frame = data.X.assign(label=data.y.values)
    parent = registry.start_pipeline_run("pipeline-t", {"pipeline_run_id": "t"}, {"seed": 0})
    run_id, uri = registry.log_candidate_run(
        parent, result, frame.iloc[tr], frame.iloc[te], "apps.csv", {}, {"pipeline_run_id": "t"}
    )
    run = store.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(result.holdout["roc_auc"])
    assert run.data.metrics["cv_roc_auc_std"] == pytest.approx(result.cv_std("roc_auc"))
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        "playstore-training",
        "playstore-holdout",
    }
    assert registry.alias_version(store, "m", "candidate") is None
    version = registry.register(store, uri, "m", {"pipeline_run_id": "t"})
    registry.set_alias(store, "m", "candidate", version)
    assert registry.alias_version(store, "m", "candidate") == version
    assert registry.version_run_id(store, "m", version) == run_id
    loaded = mlflow.sklearn.load_model("models:/m@candidate")
    X = data.X.iloc[te]
    np.testing.assert_allclose(loaded.predict_proba(X), result.model.predict_proba(X))
    info = mlflow.models.get_model_info("models:/m@candidate")
    assert info.signature is not None
    assert info.flavors["sklearn"]["serialization_format"] == "skops"


@pytest.mark.component
def test_local_copy_is_swapped_whole(tmp_path: Path, fitted) -> None:
    *_, result = fitted
    target = tmp_path / "models" / "candidate"
    registry.save_local_copy(result.model, target, {"version": "1"})
    registry.save_local_copy(result.model, target, {"version": "2"})
    assert (target / "deployment.json").read_text().count('"2"') == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["candidate"]
    import mlflow

    X = features.model_inputs(_typed(5))
    assert mlflow.sklearn.load_model(str(target)).predict_proba(X).shape == (5, 2)


def test_pip_requirements_are_pinned() -> None:
    reqs = registry.pip_requirements()
    assert any(r.startswith("scikit-learn==") for r in reqs)
    assert all("==" in r for r in reqs)


def test_feature_frame_roundtrip_dtypes() -> None:
    X = features.model_inputs(_typed(3))
    assert pd.api.types.is_float_dtype(X["reviews"])
    assert pd.api.types.is_object_dtype(X["category"])


# ---------------------------------------------------------------- missing is None, outage raises


@pytest.fixture(autouse=True)
def _restore_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() sets MLflow's HTTP retry variables process-wide: undo that after each test."""
    for name in registry.HTTP_RETRY_DEFAULTS:
        monkeypatch.setenv(name, "0")  # records the original value (or its absence) for undo
        monkeypatch.delenv(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.component
def test_missing_model_alias_or_version_is_none(store) -> None:
    assert registry.alias_version(store, "nothing", "champion") is None  # no model
    store.create_registered_model("m")
    assert registry.alias_version(store, "m", "champion") is None  # model without the alias
    assert registry.model_version(store, "m", "7") is None
    registry.delete_alias(store, "m", "canary")  # removing a missing alias is not an error


@pytest.mark.component
def test_connect_sets_bounded_retries_but_keeps_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    registry.connect(f"sqlite:///{tmp_path}/m.db", "e")
    import mlflow
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    mlflow.set_tracking_uri(None)
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 33
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 3


@pytest.mark.component
def test_unreachable_server_is_registry_unavailable_within_a_minute() -> None:
    """Nothing listens on the port: connection refused, reported after bounded retries."""
    import mlflow

    uri = f"http://ops:s3cret@127.0.0.1:{_free_port()}"
    started = time.monotonic()
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            registry.connect(uri, "e")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "s3cret" not in message and "http://***@127.0.0.1:" in message
    assert "opening experiment 'e'" in message and "connection refused" in message
    assert caught.value.exit_code not in (0, 1) and isinstance(caught.value, PipelineError)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="looking up m@champion"):
        registry.alias_version(_client(uri), "m", "champion")
    assert time.monotonic() - started < 60


class _Always503(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b"upstream down"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.mark.component
def test_server_errors_are_registry_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a user's choice is kept
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = _client(f"http://127.0.0.1:{server.server_address[1]}")
        for call in (
            lambda: registry.alias_version(client, "m", "champion"),
            lambda: registry.model_version(client, "m", "1"),
            lambda: registry.set_alias(client, "m", "champion", "1"),
            lambda: registry.delete_alias(client, "m", "canary"),
        ):
            with pytest.raises(RegistryUnavailable, match="HTTP 503"):
                call()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.component
def test_a_hung_server_times_out_as_registry_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port accepts connections but never answers (a stopped process)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: the kernel completes the handshake, nobody reads
        client = _client(f"http://127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="timed out"):
            registry.alias_version(client, "m", "champion")
        assert time.monotonic() - started < 60


class _FakeClient:
    """A client whose alias lookup raises a given error (MLflow's exception classes)."""

    _registry_uri = "https://user:pw@mlflow.example:5000"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def get_model_version_by_alias(self, name: str, alias: str):
        raise self.exc

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        raise self.exc


def _rest(code: str, message: str):
    from mlflow.exceptions import RestException

    return RestException({"error_code": code, "message": message})


@pytest.mark.parametrize(
    "exc",
    [
        _rest("RESOURCE_DOES_NOT_EXIST", "Registered Model with name=m not found"),
        _rest("INVALID_PARAMETER_VALUE", "Registered model alias champion not found."),
    ],
)
def test_not_found_answers_are_none(exc) -> None:
    assert registry.alias_version(_FakeClient(exc), "m", "champion") is None


def _outages() -> list[BaseException]:
    import requests
    from mlflow.exceptions import MlflowException

    return [
        MlflowException("API request to https://user:pw@mlflow.example:5000/x failed"),
        _rest("TEMPORARILY_UNAVAILABLE", "database is locked"),
        _rest("PERMISSION_DENIED", "no"),
        requests.exceptions.ConnectionError("boom"),
    ]


@pytest.mark.parametrize("exc", _outages())
def test_outages_raise_with_a_redacted_uri(exc) -> None:
    with pytest.raises(RegistryUnavailable) as caught:
        registry.alias_version(_FakeClient(exc), "m", "champion")
    assert "pw" not in str(caught.value) and "https://***@mlflow.example:5000" in str(caught.value)


def test_a_write_for_a_missing_version_is_not_an_outage() -> None:
    from mlflow.exceptions import MlflowException

    missing = _rest("RESOURCE_DOES_NOT_EXIST", "Model Version (name=m, version=5) not found")
    with pytest.raises(MlflowException) as caught:
        registry.set_alias(_FakeClient(missing), "m", "champion", "5")
    assert not isinstance(caught.value, RegistryUnavailable)


def test_registry_unavailable_survives_pickling() -> None:
    error = RegistryUnavailable("http://***@h:1", "looking up m@champion", "connection refused")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.exit_code == error.exit_code


@pytest.mark.component
def test_connect_does_not_leave_the_store_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI; a runner that connected to one
    project's store would then send its next run (and that run's kernels) to the same store."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    registry.connect(f"sqlite:///{tmp_path / 'a.db'}", "exp")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///chosen-by-the-user.db")
    registry.connect(f"sqlite:///{tmp_path / 'b.db'}", "exp")
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///chosen-by-the-user.db"
