"""02 train: cross-validate every candidate family, pick the best, register it as `candidate`.

Production state (version, alias, models/candidate, training state) is written only after every
candidate trained, and only with `register_candidate=True` (the runner's): a notebook run alone
trains and logs to MLflow but leaves production as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lib import progress, registry
from lib.config import data_paths, is_url, resolve_data
from lib.pipeline import data, detection, plots, training
from lib.pipeline.contracts import TrainInputs, TrainOutputs
from lib.pipeline.data_sources import source_name
from lib.settings import tracking_uri

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The apps, their labels and the identity-stable holdout split."""

    loaded: data.LoadedApps
    labeled: training.LabeledData
    train_idx: Any
    test_idx: Any
    digest: str

    @property
    def y_test(self) -> pd.Series:
        return self.labeled.y.iloc[self.test_idx]


def mlflow_source(data_path: str | list[str]) -> str:
    """The data as MLflow's dataset source: URLs without credentials; a list, or a database URL
    (a scheme MLflow cannot resolve), as the text of a list, as several files always were."""
    shown = [source_name(p) if is_url(p) else p for p in data_paths(data_path)]
    if isinstance(data_path, str) and len(shown) == 1:
        if not is_url(shown[0]) or shown[0].lower().startswith(("http://", "https://")):
            return shown[0]
    return str(shown)


def prepare(inputs: TrainInputs, root: Path) -> TrainingData:
    loaded = data.read_apps(resolve_data(inputs.data_path, root))
    data.write_quarantine(loaded.quarantine, root / inputs.quarantine_path)
    loaded.raise_if_unusable(root / inputs.quarantine_path)
    labeled = training.labeled_data(loaded.apps, inputs.target_threshold)
    train_idx, test_idx = training.holdout_split(
        labeled.keys, labeled.y, inputs.test_size, inputs.seed
    )
    return TrainingData(
        loaded, labeled, train_idx, test_idx, training.dataset_digest(labeled.X, labeled.y)
    )


def data_overview(inputs: TrainInputs, td: TrainingData) -> pd.DataFrame:
    labeled = td.labeled
    return pd.Series(
        {
            "apps with a rating": len(labeled.y),
            "repeated listings collapsed": labeled.duplicates,
            "apps without rating (not trainable)": labeled.unlabeled,
            "training rows": len(td.train_idx),
            "holdout rows": len(td.test_idx),
            f"share > {inputs.target_threshold}": round(float(labeled.y.mean()), 4),
            "features": ", ".join(labeled.X.columns),
        },
        name="training data",
    ).to_frame()


def fit_candidates(inputs: TrainInputs, td: TrainingData) -> list[training.CandidateResult]:
    settings = training.TrainingSettings(
        inputs.cv_folds, inputs.seed if inputs.model_seed is None else inputs.model_seed,
        inputs.rf_trees, inputs.features, inputs.calibration, inputs.label_objective,
        inputs.error_costs,
    )  # fmt: skip
    results = []
    for i, name in enumerate(inputs.candidates, 1):
        progress.report(
            "candidate %d/%d %s: %d-fold CV on %d apps, then the fit",
            i, len(inputs.candidates), name, inputs.cv_folds, len(td.train_idx),
        )  # fmt: skip
        result = training.train_candidate(name, td.labeled, td.train_idx, td.test_idx, settings)
        progress.report(
            "candidate %d/%d %s done in %.0f s: holdout %s %.4f",
            i, len(inputs.candidates), name, result.fit_seconds, inputs.selection_metric,
            result.holdout[inputs.selection_metric],
        )  # fmt: skip
        results.append(result)
    return results


def candidate_table(
    inputs: TrainInputs, td: TrainingData, results: list[training.CandidateResult]
) -> pd.DataFrame:
    share = float(td.y_test.mean())
    metric = inputs.selection_metric
    return pd.DataFrame(
        {
            r.name: {
                **{f"holdout {m}": round(v, 4) for m, v in r.holdout.items()},
                "holdout majority share": round(max(share, 1 - share), 4),
                f"CV {metric}": f"{r.cv[metric]['mean']:.4f} ± {r.cv_std(metric):.4f}",
                "calibration": r.calibration.method or "none",
                "label threshold": round(r.threshold.threshold, 3),
                "fit seconds": round(r.fit_seconds, 1),
            }
            for r in results
        }
    )


def calibration_table(results: list[training.CandidateResult]) -> pd.DataFrame:
    return pd.DataFrame(
        {(r.name, m): scores for r in results for m, scores in r.calibration.scores.items()}
    ).T.round(4)


def select(
    inputs: TrainInputs, results: list[training.CandidateResult]
) -> training.CandidateResult:
    return training.select_best(results, inputs.selection_metric)


def importance(inputs: TrainInputs, td: TrainingData, best: training.CandidateResult) -> pd.Series:
    return training.permutation_importance(
        best.model, td.labeled.X.iloc[td.test_idx], td.y_test, inputs.selection_metric, inputs.seed
    )


def record(
    inputs: TrainInputs,
    root: Path,
    td: TrainingData,
    results: list[training.CandidateResult],
    best: training.CandidateResult,
) -> TrainOutputs:
    """One MLflow run per candidate under a parent run (`log_to_mlflow`); with
    `register_candidate` (the runner's) the best becomes the `candidate`: a notebook run alone
    must not change what 03 compares or what the next 01 detect counts."""
    parent_run_id = best_run_id = version = None
    if inputs.log_to_mlflow:
        client = registry.connect(tracking_uri(inputs.tracking_uri, root), inputs.experiment)
        parent_run_id = registry.start_pipeline_run(
            f"pipeline-{inputs.run_id}",
            tags={
                "pipeline_run_id": inputs.run_id,
                "trigger": inputs.trigger,
                "stage": "train",
                "registered": str(inputs.register_candidate).lower(),
            },
            params={
                "data_path": inputs.data_path,
                "target_threshold": inputs.target_threshold,
                "cv_folds": inputs.cv_folds,
                "test_size": inputs.test_size,
                "seed": inputs.seed,
                "model_seed": inputs.model_seed,
                "selection_metric": inputs.selection_metric,
                "candidates": ",".join(inputs.candidates),
                "data_digest": td.digest,
                "features": ",".join(inputs.features),
                "calibration": ",".join(inputs.calibration),
                "label_objective": inputs.label_objective,
            },
        )
        best_run_id, best_model_uri = _log_candidates(inputs, td, results, best, parent_run_id)
        if inputs.register_candidate:
            version = _register(inputs, root, td, best, client, best_run_id, best_model_uri)
    if version is None:
        log.info("not registered (register_candidate=False): @candidate, models/, state unchanged")
    return TrainOutputs(
        candidate_version=version,
        candidate_name=best.name,
        metrics=best.holdout,
        cv_std=best.cv_std(inputs.selection_metric),
        mlflow_run_id=best_run_id,
        parent_run_id=parent_run_id,
        holdout_digest=training.split_digest(td.labeled.keys, td.test_idx),
        candidates={r.name: r.holdout for r in results},
        label_threshold=best.threshold.threshold,
        calibration=best.calibration.method or "none",
    )


def _log_candidates(
    inputs: TrainInputs,
    td: TrainingData,
    results: list[training.CandidateResult],
    best: training.CandidateResult,
    parent_run_id: str,
) -> tuple[str, str]:
    """A child run per candidate (metrics, plots, model); the best's run id and model URI."""
    frame = td.labeled.X.assign(label=td.labeled.y.values)
    runs = {}
    for r in results:
        figures = {
            "roc": plots.roc_curves(td.y_test, {r.name: r.proba}),
            "confusion_matrix": plots.confusion(td.y_test, r.proba, r.name, r.labels),
            "reliability": plots.reliability(td.y_test, {r.name: r.proba}),
        }
        runs[r.name] = registry.log_candidate_run(
            parent_run_id,
            r,
            frame.iloc[td.train_idx],
            frame.iloc[td.test_idx],
            mlflow_source(inputs.data_path),
            figures,
            tags={"pipeline_run_id": inputs.run_id, "selected": str(r is best).lower()},
        )
        plots.plt.close("all")
    return runs[best.name]


def _register(
    inputs: TrainInputs,
    root: Path,
    td: TrainingData,
    best: training.CandidateResult,
    client: Any,
    run_id: str,
    model_uri: str,
) -> str:
    """Production state: a version with the alias `candidate`, its local copy, and the "last
    trained" state that 01 detect counts new apps from."""
    version = registry.register(
        client,
        model_uri,
        inputs.model_name,
        tags={"pipeline_run_id": inputs.run_id, "candidate": best.name, "data_digest": td.digest},
    )
    registry.set_alias(client, inputs.model_name, "candidate", version)
    registry.save_local_copy(
        best.model,
        root / inputs.models_dir / "candidate",
        {"model_name": inputs.model_name, "version": version, "run_id": run_id,
         "candidate": best.name},
    )  # fmt: skip
    state = detection.write_state(
        root / inputs.state_path, td.loaded.apps, version, inputs.run_id, td.digest
    )
    with registry.registry_call(client, "logging the training state"):  # for other machines
        client.log_text(run_id, state.read_text(), detection.STATE_ARTIFACT)
    return str(version)


def outcome(trained: TrainOutputs) -> pd.DataFrame:
    """What this run changed, said plainly: registered or not, and what 03 compare will judge
    (each value short enough for pandas' display not to cut it)."""
    version = trained.candidate_version
    registered = version is not None
    return pd.Series(
        {
            "best candidate": trained.candidate_name,
            "registered": f"v{version} as @candidate" if registered
            else "no (register_candidate=False)",
            "production state": "@candidate, models/candidate, training_state.json"
            if registered else "unchanged: no alias, models/ or state written",
            "03 compare run alone judges": f"v{version}" if registered
            else "@candidate as it was, not this model",
            "MLflow parent run": trained.parent_run_id or "not logged (log_to_mlflow=False)",
            "MLflow run of the best": trained.mlflow_run_id or "not logged",
        },
        name="training",
    ).to_frame()  # fmt: skip


def run(inputs: TrainInputs, root: Path) -> TrainOutputs:
    td = prepare(inputs, root)
    results = fit_candidates(inputs, td)
    return record(inputs, root, td, results, select(inputs, results))
