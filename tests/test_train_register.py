"""02 train run alone (its defaults, as in Jupyter) trains, evaluates and may log to MLflow, but
never moves production state: no registered version, no alias, no models/candidate, no
training_state.json. The runner asks for registration (register_candidate=True)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from lib.config import PipelineConfig
from lib.pipeline import synth
from lib.pipeline.contracts import CompareInputs, TrainInputs
from lib.pipeline.executors import InProcessExecutor
from lib.pipeline.orchestrator import RunContext, inputs_for
from lib.pipeline.run_record import RunOutputs
from lib.pipeline.stages import compare, train

# Fits and an MLflow SQLite store per test.
pytestmark = pytest.mark.component

SMALL = {
    "candidates": ["logistic_regression"],
    "cv_folds": 2,
    "features": ["engagement"],
    "calibration": [],
}
NAME = TrainInputs().model_name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    synth.write_default_dataset(tmp_path / TrainInputs().data_path, n=800, seed=11)
    return tmp_path


def client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_train(root: Path, **values: object):
    stage = InProcessExecutor(root)
    from lib.pipeline.contracts import STAGES

    return stage.execute(STAGES["train"], TrainInputs(**{**SMALL, **values}), root / "run")


def test_an_interactive_run_registers_nothing_and_writes_no_state(root: Path) -> None:
    assert TrainInputs().register_candidate is False  # the notebook's default
    result = run_train(root)
    assert result.ok, result.error
    out = result.outputs
    assert out.candidate_version is None and out.metrics["roc_auc"] > 0.5
    assert out.parent_run_id and out.mlflow_run_id  # tracked in MLflow: that is fine
    mlflow = client(root)
    assert mlflow.search_model_versions(f"name='{NAME}'") == []
    parent = mlflow.get_run(out.parent_run_id)
    assert parent.data.tags["registered"] == "false"
    assert not (root / "models" / "training_state.json").exists()
    assert not (root / "models" / "candidate").exists()
    # 03 compare alone then says there is no registered candidate, and why
    with pytest.raises(LookupError, match=r"no version .* 'candidate'.*register_candidate=True"):
        compare.run(CompareInputs(), root)


def test_an_interactive_run_can_skip_mlflow_entirely(root: Path) -> None:
    result = run_train(root, log_to_mlflow=False)
    assert result.ok, result.error
    assert result.outputs.parent_run_id is None and result.outputs.candidate_version is None
    assert not (root / "mlflow.db").exists() and not (root / "models").exists()


def test_register_needs_the_mlflow_run() -> None:
    with pytest.raises(ValueError, match="register_candidate=True needs log_to_mlflow"):
        TrainInputs(register_candidate=True, log_to_mlflow=False)


def test_with_register_it_registers_moves_candidate_and_writes_the_state(root: Path) -> None:
    result = run_train(root, register_candidate=True)
    assert result.ok, result.error
    assert result.outputs.candidate_version == "1"
    mlflow = client(root)
    assert str(mlflow.get_model_version_by_alias(NAME, "candidate").version) == "1"
    assert (root / "models" / "training_state.json").is_file()
    assert (root / "models" / "candidate" / "MLmodel").is_file()
    assert train.outcome(result.outputs).loc["registered", "training"] == "v1 as @candidate"


def test_the_runner_asks_for_registration(tmp_path: Path) -> None:
    ctx = RunContext("r", tmp_path, tmp_path / "r", "sqlite:///x.db")
    values = inputs_for("train", PipelineConfig(), ctx, RunOutputs())
    assert values.register_candidate is True and values.log_to_mlflow is True
