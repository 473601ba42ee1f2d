"""Candidate versus champion on the same holdout rows, with the uncertainty of every difference.

With no champion the reference is a majority-class baseline (ROC-AUC 0.5, accuracy = the majority
share). Each difference carries a paired bootstrap interval so the decision can tell a real gain
from holdout noise; labels are those each model serves, and stability is the candidate's CV spread
as logged by its training run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lib import registry
from lib.pipeline import evaluation, training, uncertainty

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass
class Comparison:
    """Everything the decision needs, and what the reviewer reads in 03 compare."""

    metric: str
    candidate_version: str
    champion_version: str | None
    reference_label: str  # "champion v3" or "majority-class baseline"
    candidate_metrics: dict[str, float]
    reference_metrics: dict[str, float]
    improvement: float  # point estimate on the selection metric (positive = candidate better)
    candidate_value: float
    cv_mean: float
    cv_std: float
    holdout_rows: int
    holdout_digest: str
    # the selection metric's difference and the candidate's own value, each with its interval
    improvement_interval: dict[str, Any] = field(default_factory=dict)
    candidate_interval: dict[str, Any] = field(default_factory=dict)
    # what the no-skill gate reads: ROC-AUC interval, served-label accuracy, majority share
    gate: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # every metric
    candidate_proba: list[float] = field(default_factory=list, repr=False)
    reference_proba: list[float] | None = field(default=None, repr=False)
    details: dict[str, uncertainty.MetricComparison] = field(default_factory=dict, repr=False)
    # is this the data the candidate was trained on: comparable, note, data_digest, trained
    data_check: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Metrics side by side, with each difference (positive = candidate better) and its 95%
        interval and test."""
        rows = {}
        for m, c in self.details.items():
            rows[m] = {
                f"candidate v{self.candidate_version}": c.candidate.estimate,
                self.reference_label: c.reference.estimate,
                "difference": c.difference.estimate,
                "95% low": c.difference.low,
                "95% high": c.difference.high,
                "p": c.p_value,
                "test": c.test or "",
            }
        return pd.DataFrame(rows).T

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("candidate_proba", "reference_proba", "details"):
            out.pop(key)
        return out


def candidate_cv(client: Any, model_name: str, version: str, metric: str) -> tuple[float, float]:
    """(mean, std) of the selection metric across CV folds, from the version's training run."""
    run_id = registry.version_run_id(client, model_name, version)
    metrics = client.get_run(run_id).data.metrics
    try:
        return float(metrics[f"cv_{metric}_mean"]), float(metrics[f"cv_{metric}_std"])
    except KeyError as exc:
        raise ValueError(
            f"version {version} of {model_name} has no CV figures for {metric} "
            f"(run {run_id}); was it trained by this pipeline?"
        ) from exc


def compare_predictions(
    y_test: Any,
    candidate: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    metric: str,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """The evidence of one comparison from (probabilities, served labels) of both models.

    Returns the per-metric comparisons and what the decision reads: the selection metric's
    difference and value with their intervals, and the gate's inputs.
    """
    y = np.asarray(y_test).astype(int)
    details = uncertainty.paired_comparison(
        y, candidate[0], candidate[1], reference[0], reference[1], resamples=resamples, seed=seed
    )
    if metric not in details:
        raise ValueError(f"selection metric {metric!r} is not one of {sorted(details)}")
    share = float(max(np.mean(y), 1.0 - np.mean(y)))  # what always answering one class scores
    return {
        "details": details,
        "improvement_interval": details[metric].difference.to_dict(),
        "candidate_interval": details[metric].candidate.to_dict(),
        "gate": {
            "roc_auc": details["roc_auc"].candidate.to_dict(),
            "accuracy": details["accuracy"].candidate.estimate,
            "majority_share": share,
            "n": len(y),
        },
    }


def compare(
    client: Any,
    model_name: str,
    candidate_version: str,
    data: training.LabeledData,
    test_size: float,
    seed: int,
    metric: str,
) -> Comparison:
    """Score candidate and champion (or the baseline) on the identity-stable holdout."""
    train_idx, test_idx = training.holdout_split(data.keys, data.y, test_size, seed)
    X_test, y_test = data.X.iloc[test_idx], data.y.iloc[test_idx]
    candidate = registry.load_version(model_name, candidate_version)
    cand = (candidate.predict_proba(X_test)[:, 1], np.asarray(candidate.predict(X_test)))
    champion_version = registry.alias_version(client, model_name, "champion")
    if champion_version == str(candidate_version):
        champion_version = None  # comparing a model with itself proves nothing
    if champion_version is not None:
        champion = registry.load_version(model_name, champion_version)
        ref = (champion.predict_proba(X_test)[:, 1], np.asarray(champion.predict(X_test)))
        label = f"champion v{champion_version}"
    else:
        ref = uncertainty.majority_baseline(data.y.iloc[train_idx], len(test_idx))
        label = "majority-class baseline"
    evidence = compare_predictions(y_test, cand, ref, metric)
    details: dict[str, uncertainty.MetricComparison] = evidence["details"]
    cand_metrics = evaluation.evaluate(y_test, *cand)
    ref_metrics = evaluation.evaluate(y_test, *ref)
    if champion_version is None:
        ref_metrics["roc_auc"] = 0.5  # a constant score ranks nothing
    cv_mean, cv_std = candidate_cv(client, model_name, candidate_version, metric)
    diff = details[metric].difference
    log.info(
        "candidate v%s vs %s: %s %+.4f [%+.4f, %+.4f] (n=%d)",
        candidate_version,
        label,
        metric,
        diff.estimate,
        diff.low,
        diff.high,
        diff.n,
    )
    return Comparison(
        metric=metric,
        candidate_version=str(candidate_version),
        champion_version=champion_version,
        reference_label=label,
        candidate_metrics=cand_metrics,
        reference_metrics=ref_metrics,
        improvement=float(diff.estimate),
        candidate_value=float(details[metric].candidate.estimate),
        cv_mean=cv_mean,
        cv_std=cv_std,
        holdout_rows=len(test_idx),
        holdout_digest=training.split_digest(data.keys, test_idx),
        intervals={m: c.to_dict() for m, c in details.items()},
        candidate_proba=cand[0].tolist(),
        reference_proba=None if champion_version is None else ref[0].tolist(),
        **evidence,  # details, improvement_interval, candidate_interval, gate
    )
