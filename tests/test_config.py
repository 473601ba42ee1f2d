from pathlib import Path

import pytest

from lib.config import PipelineConfig, load_config, parse_set_options
from lib.errors import ConfigError


def test_defaults_file_env_cli_in_order(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("threshold: 50\ncv_folds: 4\nseed: 1\n")
    env = {"PIPELINE_CV_FOLDS": "3", "PIPELINE_SEED": "2", "UNRELATED": "x"}
    cfg = load_config(tmp_path, overrides={"seed": "7"}, environ=env)
    assert cfg.threshold == 50  # file over default
    assert cfg.cv_folds == 3  # environment over file
    assert cfg.seed == 7  # command line over environment
    assert cfg.rf_trees == PipelineConfig().rf_trees  # untouched default


def test_project_config_file_is_valid_and_holds_the_score_table() -> None:
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root, environ={})
    assert cfg.decision["verdicts"] == {"auto": 70, "manual": 50}
    from lib.pipeline.scoring import ScoreTable

    assert ScoreTable.from_dict(cfg.decision) == ScoreTable()


def test_unknown_key_names_the_key_and_the_origin(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("treshold: 5\n")
    with pytest.raises(ConfigError, match=r"pipeline.yaml.*treshold.*known keys"):
        load_config(tmp_path, environ={})


def test_bad_values_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cv_folds.*'many'"):
        load_config(tmp_path, overrides={"cv_folds": "many"}, environ={})
    with pytest.raises(ConfigError, match="selection_metric"):
        load_config(tmp_path, overrides={"selection_metric": "r2"}, environ={})
    with pytest.raises(ConfigError, match="candidates"):
        load_config(tmp_path, overrides={"candidates": "svm"}, environ={})


def test_list_override_from_cli(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path, overrides={"candidates": "random_forest, logistic_regression"}, environ={}
    )
    assert cfg.candidates == ["random_forest", "logistic_regression"]


def test_set_options_parse_and_reject_garbage() -> None:
    assert parse_set_options(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["threshold"])


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig()
    assert cfg.resolved_tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert cfg.resolved_tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    cfg.tracking_uri = "sqlite:///other.db"
    assert cfg.resolved_tracking_uri(tmp_path) == "sqlite:///other.db"
