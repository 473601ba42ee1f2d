"""The declared contract of every stage: its notebook, its typed inputs and its typed outputs.

The runner checks a notebook's `parameters` cell against the stage's inputs, validates the glued
scraps against the outputs, and builds the next stage's inputs from typed results. Inputs default
to what a notebook needs to run alone. A field declared with `setting(key)` is the config key `key`
(lib.config.PipelineConfig): the config's default, filled by the runner from the resolved config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lib.config import PipelineConfig
from lib.errors import PipelineError

CONFIG_KEY = "config_key"  # where a field made by setting() keeps its config key


def config_default(key: str) -> Any:
    """The config's default for `key`, as plain data (a section model as its mapping)."""
    value = PipelineConfig.model_fields[key].get_default(call_default_factory=True)
    return value.model_dump() if hasattr(value, "model_dump") else value


def setting(key: str, default: Any = None, **constraints: Any) -> Any:
    """A contract field that is the config key `key`: the config's default (unless `default`
    is given, e.g. ``{}`` for "the section's own defaults"), filled by the runner from the
    config."""
    value = config_default(key) if default is None else default
    return Field(value, json_schema_extra={CONFIG_KEY: key}, **constraints)


DataPath = str | list[str]  # one source or several: CSV files (relative to the root), URLs
Interval = dict[str, Any]  # {estimate, low, high, n, method}: an estimate with its uncertainty


class Contract(BaseModel):
    """Unknown fields are refused: a renamed scrap or parameter fails loudly, not silently."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> Contract:
        """The model from a notebook's globals (its parameters cell), ignoring everything else."""
        return cls.model_validate({k: namespace[k] for k in cls.model_fields if k in namespace})

    @classmethod
    def config_keys(cls) -> dict[str, str]:
        """Field name -> the config key it takes (the fields declared with `setting`)."""
        keys = {}
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and CONFIG_KEY in extra:
                keys[name] = str(extra[CONFIG_KEY])
        return keys


class HoldoutInputs(Contract):
    """The MLflow model and what rebuilds training's holdout: the data, the label and the split."""

    model_name: str = setting("model_name")
    experiment: str = setting("experiment")
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db
    run_id: str = "interactive"
    data_path: DataPath = setting("data_path")
    target_threshold: float = setting("target_threshold")
    test_size: float = setting("test_size")
    seed: int = setting("seed")


# -- 01 detect ----------------------------------------------------------------------------------
class DetectInputs(Contract):
    data_path: DataPath = setting("data_path")
    threshold: int = setting("threshold", ge=0)
    force: bool = False
    state_path: str = "models/training_state.json"
    # without state_path (a fresh clone, another machine): the last training's state is read
    # from the registry (logged by 02 train beside its registered version)
    model_name: str = setting("model_name")
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db
    quarantine_path: str = "reports/interactive/quarantine.csv"
    synth_apps: int = setting("synth_apps", gt=0)
    synth_seed: int = setting("synth_seed")
    run_id: str = "interactive"


class DetectOutputs(Contract):
    new_apps: int
    updated_apps: int
    total_apps: int
    should_train: bool
    reason: str
    quarantined_rows: int
    # what was read: a hash of the records' content, and the sources (URLs without credentials)
    data_digest: str | None = None
    data_sources: list[str] = []


# -- 02 train -----------------------------------------------------------------------------------
class TrainInputs(HoldoutInputs):
    candidates: list[str] = setting("candidates")
    cv_folds: int = setting("cv_folds", ge=2)
    model_seed: int | None = setting("model_seed")
    rf_trees: int = setting("rf_trees", gt=0)
    features: list[str] = setting("features")
    calibration: list[str] = setting("calibration")
    label_objective: str = setting("label_objective")
    error_costs: dict[str, float] = setting("error_costs")
    selection_metric: str = setting("selection_metric")
    models_dir: str = setting("models_dir")
    state_path: str = "models/training_state.json"
    quarantine_path: str = "reports/interactive/quarantine.csv"
    trigger: str = "manual"
    # An interactive run trains and shows everything but moves no production state: no version,
    # no alias, no models/candidate, no training_state.json. The runner registers (True).
    log_to_mlflow: bool = True  # the parent run and one run per candidate (with its model)
    register_candidate: bool = False

    @model_validator(mode="after")
    def _register_needs_the_run(self) -> TrainInputs:
        if self.register_candidate and not self.log_to_mlflow:
            raise ValueError(
                "register_candidate=True needs log_to_mlflow=True (a version is a logged model)"
            )
        return self


class TrainOutputs(Contract):
    candidate_version: str | None  # None: not registered (an interactive run)
    candidate_name: str
    metrics: dict[str, float | None]
    cv_std: float
    mlflow_run_id: str | None  # None: not logged to MLflow
    parent_run_id: str | None
    holdout_digest: str
    candidates: dict[str, dict[str, float | None]]
    label_threshold: float
    calibration: str


# -- 03 compare ---------------------------------------------------------------------------------
class CompareInputs(HoldoutInputs):
    candidate_version: str | None = None  # None: the version behind the alias `candidate`
    selection_metric: str = setting("selection_metric")
    holdout_digest: str | None = None  # 02 train's holdout fingerprint, checked when given
    parent_run_id: str | None = None
    # the runner's True: the bounds go to the candidate's run and version; a notebook run alone
    # (False) writes nothing to MLflow, so it never changes a registered version's record
    log_to_mlflow: bool = False


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
    selection_metric: str = setting("selection_metric")
    decision_table: dict[str, Any] = setting("decision")  # empty: the mission's table
    parent_run_id: str | None = None
    log_to_mlflow: bool = False  # the runner's True: the verdict tags the version and its run


class DecideOutputs(Contract):
    candidate_version: str
    score: int
    decision: Literal["auto", "manual", "reject"]
    reasons: list[str]
    decision_detail: dict[str, Any]


# -- 05 deploy ----------------------------------------------------------------------------------
class DeployInputs(HoldoutInputs):
    candidate_version: str | None = None
    steps: list[int | str] = setting("canary_steps")  # weights; a first `shadow`: weight 0
    analysis_seconds: float = setting("analysis_seconds", gt=0)
    max_wait_seconds: float = setting("max_wait_seconds", ge=0)
    check_every_seconds: float = setting("check_every_seconds", gt=0)
    replay_rate: float = setting("replay_rate", gt=0)
    replay: bool = setting("replay")
    replay_label_share: float = setting("replay_label_share", ge=0, le=1)
    replay_label_delay_seconds: list[float] = setting("replay_label_delay_seconds")
    smoke_rows: int = setting("smoke_rows", gt=0)
    smoke_max_p95_ms: float = setting("smoke_max_p95_ms", gt=0)
    lease_seconds: float = setting("lease_seconds", gt=0)
    serving_url: str | None = None  # a running production service; None: the stage starts one
    store_url: str | None = None  # None: sqlite predictions.db in the project
    # canary bounds over AnalysisConfig's (lib.config_sections); empty: its defaults
    analysis: dict[str, Any] = setting("canary_analysis", default={})
    models_dir: str = setting("models_dir")
    logs_dir: str = setting("logs_dir")
    # the runner's True; run alone, 05 only plans (nothing in the registry or a service changes)
    act_on_production: bool = False


class DeployOutputs(Contract):
    outcome: Literal["promoted", "rolled_back", "planned"]  # planned: run alone, nothing done
    deployed_version: str
    champion_before: str | None
    rollback_reason: str | None
    note: str | None = None  # a fault beside the outcome (service not reloaded, promotion undone)
    timeline: list[dict[str, Any]]
    steps: list[dict[str, Any]]


# -- 06 monitor ---------------------------------------------------------------------------------
class MonitorInputs(HoldoutInputs):
    window_seconds: float = setting("monitor_window_seconds", gt=0)
    monitoring_config: dict[str, Any] = setting("monitoring")  # thresholds (`monitoring`)
    auto_rollback: bool = setting("auto_rollback")
    # the production service (the runner passes serving_url, else serving_host:serving_port)
    serving_url: str = f"http://{config_default('serving_host')}:{config_default('serving_port')}"
    store_url: str | None = None
    models_dir: str = setting("models_dir")
    logs_dir: str = setting("logs_dir")
    # the runner's True; run alone, 06 judges but never rolls production back
    act_on_production: bool = False


class MonitorOutputs(Contract):
    verdict: Literal["healthy", "unhealthy", "not_judged"]
    verdict_reason: str | None = None  # why not judged (or the alerts, when unhealthy)
    healthy: bool | None  # None: not judged
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
    decision_table: dict[str, Any] = setting("decision")
    n_batches: int = Field(5, ge=1)
    initial_share: float = Field(0.4, gt=0, lt=1)
    seed: int = setting("seed")
    family: str | list[str] = "hist_gradient_boosting"
    cv_folds: int = Field(3, ge=2)
    # the config's groups without name_text, which makes every fit about 15 times slower
    features: list[str] = [g for g in config_default("features") if g != "name_text"]
    noise: bool = True
    target_threshold: float = setting("target_threshold")
    test_size: float = setting("test_size")
    calibration: list[str] = setting("calibration")
    label_objective: str = setting("label_objective")
    error_costs: dict[str, float] = setting("error_costs")
    selection_metric: str = setting("selection_metric")
    fallback_data_path: str = config_default("data_path")  # generated when data_path is absent
    synth_apps: int = setting("synth_apps", gt=0)
    synth_seed: int = setting("synth_seed")
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
        return self._check("inputs", values)

    def check_outputs(self, values: Mapping[str, Any]) -> Contract:
        return self._check("outputs", values)

    def _check(self, side: str, values: Mapping[str, Any]) -> Contract:
        try:
            return getattr(self, side).model_validate(dict(values))
        except ValidationError as exc:
            raise ContractError(self.name, side, exc) from None


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
