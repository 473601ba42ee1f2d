"""One typed configuration: defaults, then the YAML file, then the environment, then the CLI.

Every stage parameter that a user may want to change lives here, so the notebooks and the runner
never carry their own copies of thresholds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "pipeline.yaml"
STAGES = ("detect", "train", "compare", "decide", "deploy", "monitor")
METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "log_loss")
CANDIDATES = ("logistic_regression", "random_forest", "hist_gradient_boosting")



def project_root(start: Path | None = None) -> Path:
    """The project directory (the one holding `runner.py`): notebooks resolve their relative
    paths against it whether Jupyter started them in `notebooks/` or Papermill at the root."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "runner.py").is_file():
            return candidate
    return Path(__file__).resolve().parents[1]


# Environment variables that override a config key (besides MLFLOW_TRACKING_URI).
ENV_PREFIX = "PIPELINE_"


@dataclass
class PipelineConfig:
    """Everything a pipeline run needs; paths are relative to the project root."""

    data_path: str = "data/googleplaystore_clean.csv"
    synth_apps: int = 10_000  # size of the generated default data set
    synth_seed: int = 42
    threshold: int = 100  # new apps needed to retrain
    target_threshold: float = 4.0  # label = Rating > target_threshold
    selection_metric: str = "roc_auc"
    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))
    cv_folds: int = 5
    test_size: float = 0.2
    seed: int = 42  # the holdout split (and, unless model_seed is set, models and folds)
    model_seed: int | None = None  # seeds models and CV folds only: a retrain with another seed
    rf_trees: int = 200
    # honest inputs beyond the base listing fields (lib.pipeline.features.FEATURE_GROUPS)
    features: list[str] = field(
        default_factory=lambda: ["engagement", "versions", "genres", "name_stats", "name_text"]
    )
    calibration: list[str] = field(default_factory=lambda: ["isotonic", "sigmoid"])  # tried
    label_objective: str = "accuracy"  # what the served label's threshold maximises
    error_costs: dict[str, Any] = field(
        default_factory=lambda: {"false_positive": 1.0, "false_negative": 1.0}
    )  # label_objective: cost
    model_name: str = "playstore-rating"
    experiment: str = "playstore-rating"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db
    reports_dir: str = "reports"
    models_dir: str = "models"
    stage_timeout: int = 1800  # seconds per notebook cell before the stage is failed
    lock_timeout: float = 0.0  # seconds a second runner waits for the first one
    decision: dict[str, Any] = field(default_factory=dict)  # the score table (lib.pipeline.scoring)
    # deployment (05 deploy) and the model service
    logs_dir: str = "logs"
    canary_steps: list[int] = field(default_factory=lambda: [5, 25, 50, 100])
    analysis_seconds: float = 300.0  # canary analysis window per step
    max_wait_seconds: float = 600.0  # extra wait per step for enough samples
    check_every_seconds: float = 5.0
    replay_rate: float = 20.0  # requests/s of replayed held-out traffic (no real users)
    replay: bool = True
    smoke_rows: int = 40
    smoke_max_p95_ms: float = 500.0
    lease_seconds: float = 60.0
    serving_url: str | None = None  # a running production service; None: started per stage
    serving_host: str = "127.0.0.1"
    serving_port: int = 8080
    store_url: str | None = None  # prediction store; None: sqlite:///<root>/predictions.db
    canary_analysis: dict[str, Any] = field(default_factory=dict)  # canary.AnalysisConfig
    # production monitoring (06 monitor)
    monitor_window_seconds: float = 3600.0
    auto_rollback: bool = True  # the monitor rolls back on a significant accuracy drop / errors
    monitoring: dict[str, Any] = field(default_factory=dict)  # lib.watch.monitoring.MonitorConfig

    def resolved_tracking_uri(self, root: Path) -> str:
        """The MLflow store: explicit config, else the environment, else SQLite in the project."""
        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{(root / 'mlflow.db').as_posix()}"

    def resolved_store_url(self, root: Path) -> str:
        """Where the service writes predictions and feedback (SQLAlchemy URL)."""
        return self.store_url or f"sqlite:///{(root / 'predictions.db').as_posix()}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(PipelineConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML/env/CLI value into the field's type, with a message that says how to fix it."""
    default = _fields()[name].default
    if default is dataclasses.MISSING:
        default = _fields()[name].default_factory()  # type: ignore[misc]
    if name in ("tracking_uri", "serving_url", "store_url"):
        return None if value in (None, "", "none", "None") else str(value)
    if name == "model_seed":
        if value in (None, "", "none", "None", "null"):
            return None
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model_seed {value!r}: expected an integer or null") from exc
    if name == "canary_steps":
        steps = value
        if isinstance(steps, str):
            steps = [v for v in steps.replace(";", ",").split(",") if v.strip()]
        try:
            steps = [int(v) for v in steps]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"canary_steps {value!r}: expected weights like 5,25,50,100") from exc
        if not steps or steps != sorted(steps) or steps[-1] != 100 or steps[0] <= 0:
            raise ConfigError(
                f"canary_steps {steps}: weights must increase and end at 100, e.g. 5,25,50,100"
            )
        return steps
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
            return list(value)
        if isinstance(default, dict):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"config key {name!r}: cannot use {value!r}; expected a value like {default!r}"
        ) from exc


def _validate(cfg: PipelineConfig) -> None:
    if cfg.selection_metric not in METRICS:
        raise ConfigError(
            f"selection_metric {cfg.selection_metric!r} is unknown; use one of {', '.join(METRICS)}"
        )
    unknown = [c for c in cfg.candidates if c not in CANDIDATES]
    if unknown or not cfg.candidates:
        raise ConfigError(
            f"candidates {unknown or '[]'} not available; choose from {', '.join(CANDIDATES)}"
        )
    if not 0.05 <= cfg.test_size <= 0.5:
        raise ConfigError(f"test_size {cfg.test_size} must be between 0.05 and 0.5")
    if cfg.cv_folds < 2:
        raise ConfigError(f"cv_folds {cfg.cv_folds} must be at least 2")
    if cfg.threshold < 1:
        raise ConfigError(f"threshold {cfg.threshold} must be at least 1")
    from lib.pipeline import features, training

    try:
        features.check_groups(cfg.features)
    except ValueError as exc:
        raise ConfigError(f"features: {exc}") from None
    bad = [m for m in cfg.calibration if m not in training.CALIBRATION_METHODS]
    if bad:
        raise ConfigError(
            f"calibration: unknown method(s) {bad}; use a subset of "
            f"{', '.join(training.CALIBRATION_METHODS)} ([] for none)"
        )
    if cfg.label_objective not in training.LABEL_OBJECTIVES:
        raise ConfigError(
            f"label_objective {cfg.label_objective!r} is unknown; use one of "
            f"{', '.join(training.LABEL_OBJECTIVES)}"
        )
    unknown_costs = sorted(set(cfg.error_costs) - {"false_positive", "false_negative"})
    if unknown_costs:
        raise ConfigError(
            f"error_costs: unknown key(s) {unknown_costs}; use false_positive, false_negative"
        )
    for key, value in cfg.error_costs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"error_costs.{key} must be a number >= 0, got {value!r}")
    from lib.pipeline.scoring import ScoreTable

    ScoreTable.from_dict(cfg.decision or None)  # a bad score table fails here, before any stage


def apply_overrides(cfg: PipelineConfig, values: dict[str, Any], origin: str) -> PipelineConfig:
    """Return a copy of cfg with values applied; unknown keys are an error naming the origin."""
    known = _fields()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown config key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    updated = dataclasses.replace(cfg, **{k: _coerce(k, v) for k, v in values.items()})
    _validate(updated)
    return updated


def parse_set_options(items: list[str]) -> dict[str, str]:
    """`--set key=value` pairs from the command line."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set threshold=50")
        out[key.strip()] = value.strip()
    return out


def load_config(
    root: Path,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PipelineConfig:
    """Defaults < file < PIPELINE_* environment variables < explicit overrides."""
    cfg = PipelineConfig()
    path = Path(config_file) if config_file else root / CONFIG_FILE
    if not path.is_absolute():
        path = root / path
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        cfg = apply_overrides(cfg, data, str(path))
    elif config_file:
        raise ConfigError(f"config file {path} does not exist")
    env = os.environ if environ is None else environ
    env_values = {
        k[len(ENV_PREFIX) :].lower(): v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() in _fields()
    }
    if env_values:
        cfg = apply_overrides(cfg, env_values, "environment")
    if overrides:
        cfg = apply_overrides(cfg, overrides, "command line")
    _validate(cfg)
    return cfg
