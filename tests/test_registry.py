"""MLflow on a throw-away SQLite store: logging, registration, aliases, loading, local copies."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import registry
from lib.pipeline import features, training
from tests.test_training import _typed


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
    return data, tr, te, training.train_candidate("random_forest", data, tr, te, 3, 0, 15)


def test_trusted_types_are_library_types_only(fitted) -> None:
    *_, result = fitted
    types = registry.skops_trusted_types(result.model)
    assert "sklearn.tree._tree.Tree" in types
    assert all(t.startswith(registry.SAFE_TYPE_PREFIXES) for t in types)


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


def test_redact_uri() -> None:
    assert registry.redact_uri("postgresql://u:secret@db:5432/x") == "postgresql://***@db:5432/x"
    assert registry.redact_uri("sqlite:///m.db") == "sqlite:///m.db"


def test_pip_requirements_are_pinned() -> None:
    reqs = registry.pip_requirements()
    assert any(r.startswith("scikit-learn==") for r in reqs)
    assert all("==" in r for r in reqs)


def test_feature_frame_roundtrip_dtypes() -> None:
    X = features.model_inputs(_typed(3))
    assert pd.api.types.is_float_dtype(X["reviews"])
    assert pd.api.types.is_object_dtype(X["category"])
