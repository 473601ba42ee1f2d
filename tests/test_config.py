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
    from lib.score_table import ScoreTable

    assert ScoreTable.from_dict(cfg.decision) == ScoreTable()


def test_project_config_file_restates_the_defaults() -> None:
    """pipeline.yaml restates every default for reading; a default changed in lib/config.py or
    lib/config_sections.py must change the file too (one value, not two that drift apart)."""
    from lib.config_sections import MonitorConfig
    from lib.score_table import ScoreTable

    root = Path(__file__).resolve().parents[1]
    cfg, default = load_config(root, environ={}), PipelineConfig()
    assert ScoreTable.from_dict(cfg.decision) == ScoreTable.from_dict(default.decision)
    assert MonitorConfig.from_dict(cfg.monitoring) == MonitorConfig.from_dict(default.monitoring)
    differ = {
        k: (getattr(cfg, k), getattr(default, k))
        for k in PipelineConfig.model_fields
        if k not in ("decision", "monitoring") and getattr(cfg, k) != getattr(default, k)
    }
    assert not differ


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
    for delay in ("5, 1", "-1, 0", "1, 2, 3"):  # the replayer's label delay: [low, high] seconds
        with pytest.raises(ConfigError, match="replay_label_delay_seconds.*low <= high"):
            load_config(tmp_path, overrides={"replay_label_delay_seconds": delay}, environ={})
    with pytest.raises(ConfigError, match="replay_label_share"):
        load_config(tmp_path, overrides={"replay_label_share": "1.5"}, environ={})
    cfg = load_config(tmp_path, overrides={"replay_label_delay_seconds": "2, 2"}, environ={})
    assert cfg.replay_label_delay_seconds == [2.0, 2.0]  # a fixed delay


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


# --- typed configuration: every problem fails at load with the key's dotted path ------------


def test_unknown_nested_key_fails_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("canary_analysis:\n  min_request: 5\n")
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: canary_analysis\.min_request: unknown"):
        load_config(tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"monitoring\.min_feedbak: unknown key"):
        load_config(tmp_path / "nowhere", overrides={"monitoring.min_feedbak": "1"}, environ={})
    with pytest.raises(ConfigError, match=r"decision: gatex: unknown key"):
        load_config(tmp_path / "nowhere", overrides={"decision": "{gatex: 1}"}, environ={})


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("canary_analysis: {max_p99_ms: fast}\n")
    with pytest.raises(
        ConfigError, match=r"canary_analysis\.max_p99_ms: must be a number, got 'fast'"
    ):
        load_config(tmp_path, environ={})
    elsewhere = tmp_path / "no-file"
    with pytest.raises(ConfigError, match=r"canary_analysis\.max_p99_ms: must be a number"):
        load_config(elsewhere, overrides={"canary_analysis.max_p99_ms": "true"}, environ={})
    with pytest.raises(ConfigError, match=r"canary_analysis: must be a mapping"):
        load_config(elsewhere, overrides={"canary_analysis": "[1, 2]"}, environ={})


def test_out_of_range_values_fail(tmp_path: Path) -> None:
    bad = {
        "canary_analysis.min_requests": ("0", r"canary_analysis\.min_requests: .*greater"),
        "canary_analysis.alpha": ("1.5", r"canary_analysis\.alpha: .*less than 1"),
        "error_costs.false_positive": ("-1", r"error_costs\.false_positive: .*greater"),
        "monitoring.alpha": ("1.5", r"monitoring\.alpha: must be less than 1"),
        "test_size": ("0.9", r"test_size: .*less than or equal to 0.5"),
        "serving_port": ("70000", r"serving_port: "),
        "canary_steps": ("5,50", r"canary_steps: weights must increase and end at 100"),
    }
    for key, (value, pattern) in bad.items():
        with pytest.raises(ConfigError, match=pattern):
            load_config(tmp_path, overrides={key: value}, environ={})


def test_environment_overrides_top_level_and_nested_keys(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text(
        "canary_analysis: {max_p99_ms: 400, min_requests: 20}\nmonitoring: {min_feedback: 50}\n"
    )
    env = {
        "PIPELINE_CANARY_ANALYSIS__MAX_P99_MS": "250",
        "PIPELINE_MONITORING__PSI_THRESHOLD": "0.2",
        "PIPELINE_CANARY_STEPS": "10,100",
        "PIPELINE_DECISION__GATE__ENABLED": "false",
        "MLFLOW_TRACKING_URI": "http://mlflow.local:5000",
    }
    cfg = load_config(tmp_path, environ=env)
    assert cfg.canary_analysis.max_p99_ms == 250.0  # environment over file
    assert cfg.canary_analysis.min_requests == 20  # the file's other bound is kept (merge)
    assert cfg.monitoring == {"min_feedback": 50, "psi_threshold": "0.2"}
    from lib.config_sections import MonitorConfig

    assert MonitorConfig.from_dict(cfg.monitoring).psi_threshold == 0.2
    assert cfg.canary_steps == [10, 100]
    assert cfg.decision == {"gate": {"enabled": False}}
    assert cfg.tracking_uri == "http://mlflow.local:5000"
    env["PIPELINE_TRACKING_URI"] = "sqlite:///x.db"  # the pipeline's own variable wins
    assert load_config(tmp_path, environ=env).tracking_uri == "sqlite:///x.db"
    with pytest.raises(ConfigError, match=r"environment.*canary_analysis\.max_p99_ms: must be a"):
        load_config(tmp_path, environ={"PIPELINE_CANARY_ANALYSIS__MAX_P99_MS": "fast"})


def test_set_beats_environment_and_accepts_dotted_keys_and_sections(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("canary_analysis: {max_p99_ms: 400, min_feedback: 7}\n")
    env = {"PIPELINE_CANARY_ANALYSIS__MAX_P99_MS": "250"}
    dotted = load_config(
        tmp_path, overrides=parse_set_options(["canary_analysis.max_p99_ms=100"]), environ=env
    )
    assert dotted.canary_analysis.max_p99_ms == 100.0
    section = load_config(tmp_path, overrides={"canary_analysis": "{min_requests: 5}"}, environ=env)
    # a section given on the command line merges into the file's and the environment's
    assert section.canary_analysis.min_requests == 5
    assert section.canary_analysis.max_p99_ms == 250.0
    assert section.canary_analysis.min_feedback == 7
    paths = load_config(tmp_path, overrides={"serving_url": "none", "data_path": "a: b.csv"})
    assert paths.serving_url is None and paths.data_path == "a: b.csv"  # paths are not YAML


def test_yaml_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("monitoring: {alpha: [\n")
    with pytest.raises(ConfigError, match=r"custom\.yaml: not valid YAML"):
        load_config(tmp_path, path, environ={})
    path.write_text("cv_folds: 1\n")
    with pytest.raises(ConfigError, match=r"custom\.yaml: cv_folds: .*greater than or equal to 2"):
        load_config(tmp_path, path, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path, tmp_path / "missing.yaml", environ={})


def test_valid_config_round_trips_and_hides_url_credentials(tmp_path: Path) -> None:
    import json

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        root, overrides={"store_url": "postgresql://app:s3cretpw@db/preds"}, environ={}
    )
    dumped = cfg.to_dict()
    text = json.dumps(dumped)
    assert "s3cretpw" not in text and "s3cretpw" not in repr(cfg)
    assert dumped["store_url"] == "postgresql://***@db/preds"
    assert cfg.model_dump()["store_url"] == "postgresql://app:s3cretpw@db/preds"
    (tmp_path / "pipeline.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    assert load_config(tmp_path, environ={}) == cfg  # JSON is YAML: the dump loads back
    assert PipelineConfig.model_validate(json.loads(text)).canary_analysis == cfg.canary_analysis


# --- where the data comes from: the default, or a path a user gave --------------------------


def test_data_path_origin_tells_the_default_from_a_users_choice(tmp_path: Path) -> None:
    default = PipelineConfig().data_path
    assert load_config(tmp_path, environ={}).data_origin is None  # nothing configured
    (tmp_path / "pipeline.yaml").write_text(f"data_path: {default}\n")
    assert load_config(tmp_path, environ={}).data_origin is None  # the file restates it
    (tmp_path / "pipeline.yaml").write_text("data_path: data/mine.csv\n")
    assert load_config(tmp_path, environ={}).data_origin == "pipeline.yaml"
    env = {"PIPELINE_DATA_PATH": "/srv/apps.csv"}
    assert "PIPELINE_DATA_PATH" in load_config(tmp_path, environ=env).data_origin
    given = load_config(tmp_path, overrides={"data_path": default}, environ=env)
    assert given.data_origin == "the command line"  # named by the user, even if it is the default


def test_command_line_and_environment_paths_are_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    root, here = tmp_path / "project", tmp_path / "here"
    root.mkdir()
    (root / "pipeline.yaml").write_text("data_path: data/a.csv,data/b.csv\n")
    in_file = load_config(root, environ={}, cwd=here)
    assert in_file.data_files(root) == [root / "data" / "a.csv", root / "data" / "b.csv"]
    cli = load_config(root, overrides={"data_path": "x.csv, sub/y.csv"}, environ={}, cwd=here)
    assert cli.data_files(root) == [here / "x.csv", here / "sub" / "y.csv"]
    env = load_config(root, environ={"PIPELINE_DATA_PATH": "../z.csv"}, cwd=here)
    assert env.data_files(root) == [tmp_path / "z.csv"]
    absolute = load_config(root, overrides={"data_path": "/srv/a.csv"}, environ={}, cwd=here)
    assert absolute.data_files(root) == [Path("/srv/a.csv")]
    # without a working directory (a library call), everything is relative to the project
    assert load_config(root, overrides={"data_path": "x.csv"}, environ={}).data_files(root) == [
        root / "x.csv"
    ]


def test_runtime_switches_are_not_taken_for_mistyped_keys(caplog) -> None:
    """PIPELINE_PROGRESS (set by runner.py) and PIPELINE_FAULT (a test hook) are read elsewhere:
    no 'not a config key' warning for them, while a real typo still warns."""
    import logging

    from lib import progress
    from lib.config import RUNTIME_ENV, PipelineEnv
    from lib.delivery import faults

    assert {progress.ENV, faults.FAULT_ENV} <= RUNTIME_ENV
    with caplog.at_level(logging.WARNING, logger="lib.config"):
        PipelineEnv({progress.ENV: "1", faults.FAULT_ENV: "", "PIPELINE_TRESHOLD": "5"})()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "PIPELINE_TRESHOLD" in warned
    assert progress.ENV not in warned and faults.FAULT_ENV not in warned


# URL credentials inside messages (issue 15): URLs with and without a userinfo, followed by an
# `@alias` and e-mail addresses; only a real `scheme://user:password@host` is redacted.
URL_TEXTS = [
    (
        "MLflow registry at http://127.0.0.1:5000 is unavailable while looking up "
        "playstore-rating@champion: connection refused",
        None,  # unchanged
    ),
    (
        "MLflow registry at http://ops:s3cret@10.0.0.1:5000 is unavailable while loading "
        "models:/playstore-rating@champion; mail ops@example.com",
        "MLflow registry at http://***@10.0.0.1:5000 is unavailable while loading "
        "models:/playstore-rating@champion; mail ops@example.com",
    ),
    (
        "store postgresql://app:pw%40x@db:5432/preds, owner dba@example.org",
        "store postgresql://***@db:5432/preds, owner dba@example.org",
    ),
    (  # a raw "@" in the password: hidden up to the authority's last "@"
        "mailto://me@x.org:p@ss@mail.x.org:25/team%40x.org sent; reply to a@b.org",
        "mailto://***@mail.x.org:25/team%40x.org sent; reply to a@b.org",
    ),
    (
        "uri 'https://tok3nValue@mlflow.example:443'@champion, `http://h:1`@x",
        "uri 'https://***@mlflow.example:443'@champion, `http://h:1`@x",
    ),
    ("sqlite:///m.db and file:///tmp/a@b and models:/m@champion", None),
]
URL_SECRETS = ("s3cret", "pw%40x", "p@ss", "me@x.org:", "tok3nValue")


def test_one_url_redactor_hides_credentials_and_leaves_aliases_and_emails() -> None:
    """lib.config.redact_url is the one URL-credential redactor: the registry's messages and the
    notifications' redaction give the same text."""
    from lib.config import redact_url
    from lib.watch import redaction

    for text, expected in URL_TEXTS:
        want = text if expected is None else expected
        for redact in (redact_url, lambda t: redaction.redact(t, [])):
            got = redact(text)
            assert got == want, (redact, text)
            assert not any(secret in got for secret in URL_SECRETS), got


def test_rollout_steps_may_start_with_shadow(tmp_path: Path) -> None:
    """`shadow` first: the canary at weight 0, answering nobody, judged on its shadow scores."""
    (tmp_path / "pipeline.yaml").write_text("canary_steps: [shadow, 5, 25, 50, 100]\n")
    assert load_config(tmp_path, environ={}).canary_steps == ["shadow", 5, 25, 50, 100]
    cfg = load_config(tmp_path, overrides={"canary_steps": "Shadow,50,100"}, environ={})
    assert cfg.canary_steps == ["shadow", 50, 100]
    env = {"PIPELINE_CANARY_STEPS": "shadow,100"}
    assert load_config(tmp_path, environ=env).canary_steps == ["shadow", 100]
    bad = {
        "shadw,5,100": r"canary_steps: 'shadw' is neither a weight nor shadow; e\.g\. 5,25,50,",
        "5,shadow,100": r"canary_steps: 'shadow' comes first only",
        "shadow": r"canary_steps: weights must increase and end at 100",
        "[shadow, 5.5, 100]": r"canary_steps: 5\.5 is neither a weight nor shadow",
    }
    for value, pattern in bad.items():
        with pytest.raises(ConfigError, match=pattern):
            load_config(tmp_path, overrides={"canary_steps": value}, environ={})
