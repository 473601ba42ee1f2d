"""The declared contract of every stage: its notebook, its typed inputs and its typed outputs.

The runner checks a notebook's `parameters` cell against the stage's inputs before running it,
validates the glued scraps against the outputs after, and builds the next stage's inputs from
typed results: nothing travels between stages as a loose string key. Inputs default to the
values a notebook needs to run alone in Jupyter; the runner always passes every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lib.errors import PipelineError

DataPath = str | list[str]  # one CSV or several, relative to the project root
Interval = dict[str, Any]  # {estimate, low, high, n, method}: an estimate with its uncertainty


class Contract(BaseModel):
    """Unknown fields are refused: a renamed scrap or parameter fails loudly, not silently."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> Contract:
        """The model from a notebook's globals (its parameters cell), ignoring everything else."""
        return cls.model_validate({k: namespace[k] for k in cls.model_fields if k in namespace})


class MLflowInputs(Contract):
    model_name: str = "playstore-rating"
    experiment: str = "playstore-rating"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db
    run_id: str = "interactive"


class HoldoutInputs(MLflowInputs):
    """What rebuilds training's holdout: the data, the label and the split."""

    data_path: DataPath = "data/googleplaystore_clean.csv"
    target_threshold: float = 4.0
    test_size: float = 0.2
    seed: int = 42


# -- 01 detect ----------------------------------------------------------------------------------
class DetectInputs(Contract):
    data_path: DataPath = "data/googleplaystore_clean.csv"
    threshold: int = Field(100, ge=0)
    force: bool = False
    state_path: str = "models/training_state.json"
    quarantine_path: str = "reports/interactive/quarantine.csv"
    synth_apps: int = Field(10_000, gt=0)
    synth_seed: int = 42
    run_id: str = "interactive"


class DetectOutputs(Contract):
    new_apps: int
    updated_apps: int
    total_apps: int
    should_train: bool
    reason: str
    quarantined_rows: int


# -- 02 train -----------------------------------------------------------------------------------
class TrainInputs(HoldoutInputs):
    candidates: list[str] = ["logistic_regression", "random_forest", "hist_gradient_boosting"]
    cv_folds: int = Field(5, ge=2)
    model_seed: int | None = None
    rf_trees: int = Field(200, gt=0)
    features: list[str] = ["engagement", "versions", "genres", "name_stats", "name_text"]
    calibration: list[str] = ["isotonic", "sigmoid"]
    label_objective: str = "accuracy"
    error_costs: dict[str, float] = {"false_positive": 1.0, "false_negative": 1.0}
    selection_metric: str = "roc_auc"
    models_dir: str = "models"
    state_path: str = "models/training_state.json"
    quarantine_path: str = "reports/interactive/quarantine.csv"
    trigger: str = "manual"


class TrainOutputs(Contract):
    candidate_version: str
    candidate_name: str
    metrics: dict[str, float | None]
    cv_std: float
    mlflow_run_id: str
    parent_run_id: str
    holdout_digest: str
    candidates: dict[str, dict[str, float | None]]
    label_threshold: float
    calibration: str


# -- 03 compare ---------------------------------------------------------------------------------
class CompareInputs(HoldoutInputs):
    candidate_version: str | None = None  # None: the version behind the alias `candidate`
    selection_metric: str = "roc_auc"
    holdout_digest: str | None = None  # 02 train's holdout fingerprint, checked when given
    parent_run_id: str | None = None


class CompareOutputs(Contract):
    candidate_version: str
    champion_version: str | None
    reference_label: str
    candidate_metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    improvement: float
    candidate_value: float
    stability: dict[str, float | None]
    improvement_interval: Interval
    candidate_interval: Interval
    gate_inputs: dict[str, Any]
    comparison: dict[str, Any]


# -- 04 decide ----------------------------------------------------------------------------------
class DecideInputs(HoldoutInputs):
    candidate_version: str | None = None
    improvement_interval: Interval | None = None  # None: 04 compares again (run alone)
    candidate_interval: Interval | None = None
    gate_inputs: dict[str, Any] | None = None
    cv_std: float | None = None
    reference_label: str | None = None
    selection_metric: str = "roc_auc"
    decision_table: dict[str, Any] = {}  # empty: the mission's table (pipeline.yaml `decision`)
    parent_run_id: str | None = None


class DecideOutputs(Contract):
    candidate_version: str
    score: int
    decision: Literal["auto", "manual", "reject"]
    reasons: list[str]
    decision_detail: dict[str, Any]


# -- 05 deploy ----------------------------------------------------------------------------------
class DeployInputs(HoldoutInputs):
    candidate_version: str | None = None
    steps: list[int] = [5, 25, 50, 100]
    analysis_seconds: float = Field(300.0, gt=0)
    max_wait_seconds: float = Field(600.0, ge=0)
    check_every_seconds: float = Field(5.0, gt=0)
    replay_rate: float = Field(20.0, gt=0)
    replay: bool = True
    smoke_rows: int = Field(40, gt=0)
    smoke_max_p95_ms: float = Field(500.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)
    serving_url: str | None = None  # a running production service; None: the stage starts one
    store_url: str | None = None  # None: sqlite predictions.db in the project
    analysis: dict[str, Any] = {}  # canary analysis bounds (pipeline.yaml `canary_analysis`)
    models_dir: str = "models"
    logs_dir: str = "logs"


class DeployOutputs(Contract):
    outcome: Literal["promoted", "rolled_back"]
    deployed_version: str
    champion_before: str | None
    rollback_reason: str | None
    timeline: list[dict[str, Any]]
    steps: list[dict[str, Any]]


# -- 06 monitor ---------------------------------------------------------------------------------
class MonitorInputs(HoldoutInputs):
    window_seconds: float = Field(3600.0, gt=0)
    monitoring_config: dict[str, Any] = {}  # thresholds (pipeline.yaml `monitoring`)
    auto_rollback: bool = True
    serving_url: str = "http://127.0.0.1:8080"  # the production service
    store_url: str | None = None
    models_dir: str = "models"
    logs_dir: str = "logs"


class MonitorOutputs(Contract):
    verdict: Literal["healthy", "alerts", "not_enough_evidence"]
    healthy: bool | None  # None: not enough evidence either way
    alerts: list[dict[str, Any]]
    drift: dict[str, Any]
    rolled_back: bool
    monitor_rollback_reason: str | None
    rollback_note: str | None
    monitored_version: str
    live_metrics: dict[str, Any]


# -- 07 backtest (an operator command, not a pipeline stage) ------------------------------------
class BacktestInputs(Contract):
    data_path: str = "../shared/data/playstore/googleplaystore.csv"
    decision_table: dict[str, Any] = {}
    n_batches: int = Field(5, ge=1)
    initial_share: float = Field(0.4, gt=0, lt=1)
    seed: int = 42
    family: str | list[str] = "hist_gradient_boosting"
    cv_folds: int = Field(3, ge=2)
    features: list[str] = ["engagement", "versions", "genres", "name_stats"]
    noise: bool = True
    target_threshold: float = 4.0
    test_size: float = 0.2
    calibration: list[str] = ["isotonic", "sigmoid"]
    label_objective: str = "accuracy"
    error_costs: dict[str, float] = {"false_positive": 1.0, "false_negative": 1.0}
    selection_metric: str = "roc_auc"
    fallback_data_path: str = "data/googleplaystore_clean.csv"  # generated when data_path is absent
    synth_apps: int = Field(10_000, gt=0)
    synth_seed: int = 42
    run_id: str = "interactive"


class BacktestOutputs(Contract):
    backtest_data: str
    backtest_summary: dict[str, Any]
    backtest_table: list[dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One stage: which notebook narrates it and which models it takes and gives."""

    name: str
    notebook: str
    inputs: type[Contract]
    outputs: type[Contract]

    def check_inputs(self, values: Mapping[str, Any]) -> Contract:
        try:
            return self.inputs.model_validate(dict(values))
        except ValidationError as exc:
            raise ContractError(self.name, "inputs", exc) from None

    def check_outputs(self, values: Mapping[str, Any]) -> Contract:
        try:
            return self.outputs.model_validate(dict(values))
        except ValidationError as exc:
            raise ContractError(self.name, "outputs", exc) from None


class ContractError(PipelineError):
    """A stage was given, or gave, values its contract does not declare."""

    exit_code = 1

    def __init__(self, stage: str, side: str, exc: ValidationError) -> None:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(all)'}: {e['msg']}" for e in exc.errors()
        )
        super().__init__(f"stage {stage}: {side} break the contract: {problems}")
        self.stage, self.side = stage, side


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("detect", "01_detect", DetectInputs, DetectOutputs),
        Stage("train", "02_train", TrainInputs, TrainOutputs),
        Stage("compare", "03_compare", CompareInputs, CompareOutputs),
        Stage("decide", "04_decide", DecideInputs, DecideOutputs),
        Stage("deploy", "05_deploy", DeployInputs, DeployOutputs),
        Stage("monitor", "06_monitor", MonitorInputs, MonitorOutputs),
        Stage("backtest", "07_backtest", BacktestInputs, BacktestOutputs),
    )
}
PIPELINE = ("detect", "train", "compare", "decide", "deploy", "monitor")
