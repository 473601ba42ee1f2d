"""`python runner.py demo`: the whole story on generated data, in a folder of its own.

A newcomer sees, in a few minutes, what the pipeline is for: a first champion; new apps whose
rating depends on other features (lib.pipeline.synth's shifted batch), so the retrained candidate
is better by evidence and goes through the canary 5 -> 25 -> 50 -> 100; then a deliberately bad
candidate (trained on inverted labels, registered as what it is) that the canary rolls back.
Everything (data, MLflow store, models/, reports/, logs/) lives in the demo folder: the user's
production state and notification targets are never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.config import PipelineConfig, load_config
from lib.errors import PipelineError
from lib.pipeline import orchestrator
from lib.pipeline.contracts import CompareOutputs, DecideOutputs, DeployOutputs
from lib.settings import ROOT_ENV

log = logging.getLogger(__name__)

MARKER = ".pipeline-demo"  # a folder holding it is the demo's own: replaced on every demo
LINKED = ("lib", "notebooks", "runner.py")  # the project's code, shared by the demo folder
DATA = "data/apps.csv"
BASE_APPS, BASE_SEED = 4000, 7
NEW_APPS, NEW_SEED = 2000, 1000
BAD_TAGS = {
    "demo": "deliberately bad candidate",
    "trained_on": "inverted labels (an app is 'well rated' when it is not)",
}
STAGES = ["detect", "train", "compare", "decide", "deploy"]
# small and fast, but the same code paths as production: real notebooks, a real service, the
# canary's real analysis (every replayed request rated at once, a 3 s window per step)
SETTINGS: dict[str, Any] = {
    "data_path": DATA,
    "threshold": 100,
    "candidates": ["random_forest"],
    "rf_trees": 80,
    "cv_folds": 3,
    "features": ["engagement", "versions", "genres", "name_stats"],
    "calibration": ["sigmoid"],
    "canary_steps": [5, 25, 50, 100],
    "analysis_seconds": 3,
    "max_wait_seconds": 120,
    "check_every_seconds": 0.5,
    "replay_rate": 150,
    "replay_label_share": 1.0,
    "replay_label_delay_seconds": [0, 0],
    "smoke_rows": 30,
    "lease_seconds": 60,
    "canary_analysis": {
        "min_requests": 50,
        "min_feedback": 40,
        "alpha": 0.01,
        "p99_floor_ms": 150,
        "max_p99_ms": 1500,
    },
}
# what could reach the user's production or wake someone up: not inherited by the demo
FOREIGN_ENV = (
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "NOTIFY_CONFIG", "SLACK_WEBHOOK", "EMAIL_SMTP",
    "TEAMS_WEBHOOK", "PAGERDUTY_KEY", "NOTIFY_URLS",
)  # fmt: skip


@dataclass
class Story:
    """What the demo showed: each chapter's run and outcome (tests read these, not stdout)."""

    folder: Path
    champion_first: str | None = None
    good: str | None = None
    good_outcome: str | None = None
    bad: str | None = None
    bad_outcome: str | None = None
    champion_last: str | None = None


def prepare(folder: Path, project: Path) -> Path:
    """A fresh demo project in `folder` (links to this project's code); an existing folder is
    replaced only when it is an earlier demo's."""
    folder = folder.resolve()
    if folder.exists():
        if not (folder / MARKER).is_file():
            raise PipelineError(
                f"{folder} exists and is not a demo folder (no {MARKER}): choose another --dir"
            )
        shutil.rmtree(folder)
    (folder / "data").mkdir(parents=True)
    (folder / MARKER).write_text("made by `python runner.py demo`; deleted by the next one\n")
    for name in LINKED:
        (folder / name).symlink_to(project / name, target_is_directory=(project / name).is_dir())
    return folder


@contextmanager
def isolated(folder: Path) -> Iterator[None]:
    """The demo folder as project, working directory and MLflow store (kernels and services
    inherit it); no notification target; all restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*FOREIGN_ENV, ROOT_ENV)}
    cwd = Path.cwd()
    for key in FOREIGN_ENV:
        os.environ.pop(key, None)
    os.environ[ROOT_ENV] = str(folder)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def config(folder: Path) -> PipelineConfig:
    """The demo's settings over the defaults; no pipeline.yaml or PIPELINE_* of the user."""
    uri = f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
    return load_config(folder, overrides={**SETTINGS, "tracking_uri": uri}, environ={})


def run_demo(project: Path, folder: Path, say: Callable[[str], Any]) -> Story:
    """The three chapters, narrated through `say`."""
    from lib.pipeline import synth

    folder = prepare(folder, project)
    story = Story(folder)
    with isolated(folder):
        cfg = config(folder)
        synth.write_default_dataset(folder / DATA, n=BASE_APPS, seed=BASE_SEED)
        say(f"demo project: {folder} (generated data, its own MLflow store and service)")
        say(f"\n== 1. a first champion, trained on {BASE_APPS} generated apps ==")
        first = chapter(cfg, folder, say)
        story.champion_first = orchestrator.champion_version(cfg, cfg.resolved_tracking_uri(folder))
        say(f"   -> v{story.champion_first} is the champion ({first.outcome})")

        added = synth.append_new_apps(folder / DATA, n=NEW_APPS, seed=NEW_SEED, shifted=True)
        say(
            f"\n== 2. {len(added)} new apps arrive (Android 7.0 and up): for them light, paid and "
            "much-reviewed apps are the well-rated ones, whatever their category =="
        )
        second = chapter(cfg, folder, say)
        deployed: DeployOutputs | None = second.outputs.get("deploy")  # type: ignore[assignment]
        story.good = deployed.deployed_version if deployed else None
        story.good_outcome = second.outcome
        narrate(second, say)

        say("\n== 3. a deliberately bad candidate: the same data, inverted labels ==")
        story.bad = register_bad_candidate(cfg, folder)
        say(f"   registered v{story.bad}, tagged as what it is: {BAD_TAGS['trained_on']}")
        say("   04 decide would reject it; deployed anyway, to show what the canary does:")
        third = chapter(cfg, folder, say, stages=["deploy"], candidate_version=story.bad)
        story.bad_outcome = third.outcome
        narrate(third, say)
        story.champion_last = orchestrator.champion_version(cfg, cfg.resolved_tracking_uri(folder))
    say(f"\nproduction now serves v{story.champion_last}; reports: {folder / 'reports'}/index.html")
    return story


def chapter(
    cfg: PipelineConfig, folder: Path, say: Callable[[str], Any], **options: Any
) -> orchestrator.RunResult:
    """One runner run, its console lines indented."""
    stages = options.pop("stages", STAGES)
    return orchestrator.run(cfg, folder, stages, echo=lambda line: say(f"   {line}"), **options)


def narrate(result: orchestrator.RunResult, say: Callable[[str], Any]) -> None:
    """The numbers that decided, and the canary's steps."""
    compared: CompareOutputs | None = result.outputs.get("compare")  # type: ignore[assignment]
    decided: DecideOutputs | None = result.outputs.get("decide")  # type: ignore[assignment]
    deployed: DeployOutputs | None = result.outputs.get("deploy")  # type: ignore[assignment]
    if compared is not None:
        i = compared.improvement_interval
        say(
            f"   evidence: ROC-AUC {compared.candidate_value:.3f} vs {compared.reference_label}, "
            f"difference {i['estimate']:+.3f} (95% interval {i['low']:+.3f} .. {i['high']:+.3f})"
        )
    if decided is not None:
        say(f"   decision: score {decided.score}/100 -> {decided.decision}")
        for reason in decided.reasons:
            say(f"     - {reason}")
    if deployed is not None:
        for step in deployed.steps:
            if step.get("kind") == "canary":
                seen = ", ".join(f"{n} {k}" for k, n in (step.get("samples") or {}).items())
                say(f"   canary {step['weight']:>3}%: {step['verdict']} ({seen} requests)")
        if deployed.outcome == "promoted":
            say(f"   -> v{deployed.deployed_version} promoted: it serves 100% of the traffic")
        else:
            say(
                f"   -> v{deployed.deployed_version} rolled back, production stays on "
                f"v{deployed.champion_before}: {deployed.rollback_reason}"
            )
    say(f"   report: {result.report_dir}")


def register_bad_candidate(cfg: PipelineConfig, folder: Path) -> str:
    """A random forest fitted on inverted labels, logged and registered honestly (its tags and
    its run's name say so); its holdout figures are logged like 02 train's."""
    import mlflow

    from lib import registry
    from lib.pipeline import data, evaluation, training

    apps = data.read_apps(folder / DATA).apps
    labeled = training.labeled_data(apps, cfg.target_threshold)
    train_idx, test_idx = training.holdout_split(labeled.keys, labeled.y, cfg.test_size, cfg.seed)
    X, y = labeled.X.iloc[train_idx], labeled.y.iloc[train_idx]
    model = training.build_candidate("random_forest", cfg.seed, cfg.rf_trees, groups=cfg.features)
    model = training.for_inference(model.fit(X, 1 - y))
    client = registry.connect(cfg.resolved_tracking_uri(folder), cfg.experiment)
    X_test = labeled.X.iloc[test_idx]
    proba = model.predict_proba(X_test)[:, 1]
    scores = evaluation.evaluate(labeled.y.iloc[test_idx], proba, model.predict(X_test))
    with mlflow.start_run(run_name="demo-bad-candidate", tags=BAD_TAGS):
        mlflow.log_metrics({f"holdout_{k}": v for k, v in scores.items() if v is not None})
        info = registry.log_candidate_model(model, X.head(5))
    return registry.register(client, info.model_uri, cfg.model_name, BAD_TAGS)
