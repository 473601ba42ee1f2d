"""Candidate versus champion on the same holdout rows.

With no champion yet the reference is a majority-class baseline, so "improvement" still means
something (ROC-AUC 0.5, accuracy = the majority share). Stability is the candidate's CV spread
as logged by its training run, never a constant.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lib import registry, training

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """Everything the decision needs, and what the reviewer reads in 03 compare."""

    metric: str
    candidate_version: str
    champion_version: str | None
    reference_label: str  # "champion v3" or "majority-class baseline"
    candidate_metrics: dict[str, float]
    reference_metrics: dict[str, float]
    improvement: float
    candidate_value: float
    cv_mean: float
    cv_std: float
    holdout_rows: int
    holdout_digest: str
    candidate_proba: list[float] = field(default_factory=list, repr=False)
    reference_proba: list[float] | None = field(default=None, repr=False)

    def table(self) -> pd.DataFrame:
        """Metrics side by side, with the per-metric improvement (positive = candidate better)."""
        rows = {}
        for m in training.METRIC_NAMES:
            cand, ref = self.candidate_metrics[m], self.reference_metrics[m]
            rows[m] = {
                f"candidate v{self.candidate_version}": cand,
                self.reference_label: ref,
                "improvement": training.improvement(m, cand, ref),
            }
        return pd.DataFrame(rows).T

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("candidate_proba")
        out.pop("reference_proba")
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
    cand_proba = candidate.predict_proba(X_test)[:, 1]
    cand_metrics = training.evaluate(y_test, cand_proba)
    champion_version = registry.alias_version(client, model_name, "champion")
    if champion_version == str(candidate_version):
        champion_version = None  # comparing a model with itself proves nothing
    if champion_version is not None:
        champion = registry.load_version(model_name, champion_version)
        ref_proba: np.ndarray | None = champion.predict_proba(X_test)[:, 1]
        ref_metrics = training.evaluate(y_test, ref_proba)
        label = f"champion v{champion_version}"
    else:
        ref_proba = None
        ref_metrics = training.baseline_metrics(data.y.iloc[train_idx], y_test)
        label = "majority-class baseline"
    cv_mean, cv_std = candidate_cv(client, model_name, candidate_version, metric)
    gain = training.improvement(metric, cand_metrics[metric], ref_metrics[metric])
    log.info("candidate v%s vs %s: %s %+.4f", candidate_version, label, metric, gain)
    return Comparison(
        metric=metric,
        candidate_version=str(candidate_version),
        champion_version=champion_version,
        reference_label=label,
        candidate_metrics=cand_metrics,
        reference_metrics=ref_metrics,
        improvement=gain,
        candidate_value=cand_metrics[metric],
        cv_mean=cv_mean,
        cv_std=cv_std,
        holdout_rows=len(test_idx),
        holdout_digest=training.split_digest(data.keys, test_idx),
        candidate_proba=cand_proba.tolist(),
        reference_proba=None if ref_proba is None else ref_proba.tolist(),
    )
