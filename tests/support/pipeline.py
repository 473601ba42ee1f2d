"""runner.run in a project copy with small settings, and a client on that project's store."""

from __future__ import annotations

from pathlib import Path

SMALL = {
    "synth_apps": 1500,
    "cv_folds": 3,
    "rf_trees": 30,
    "candidates": ["logistic_regression", "random_forest"],
}


UP_TO_DECISION = ["detect", "train", "compare", "decide"]
# How such a run ends: its verdict is acted upon without 05 deploy too (parked or rejected).
ACTED = {"auto": "decided", "manual": "awaiting_approval", "reject": "rejected"}


def run_pipeline(project: Path, stages=None, force=False, **overrides):
    """runner.run in the project copy; by default the core stages (deployment has its own tests)."""
    import runner
    from lib.config import load_config

    cfg = load_config(project, overrides={**SMALL, **overrides}, environ={})
    lines: list[str] = []
    stages = stages or UP_TO_DECISION
    result = runner.run(cfg, project, stages=stages, force=force, echo=lines.append)
    return result, lines


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
