"""The metrics of one set of predictions, and what "better" means for each.

Shared by training (holdout and cross-validation figures), comparison, backtest and monitoring,
so a candidate, a champion and the live model are measured by one definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)

from lib.pipeline import uncertainty

METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss", "brier")
GREATER_IS_BETTER = {**uncertainty.GREATER_IS_BETTER, "ece": False}


def expected_calibration_error(y_true: Any, proba: Any, bins: int = 10) -> float:
    """ECE: the sample-weighted gap between mean predicted and observed rate over equal bins."""
    y_true = np.asarray(y_true, dtype=float)
    proba = np.asarray(proba, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(proba[mask].mean() - y_true[mask].mean())
    return float(total / max(len(y_true), 1))


def evaluate(
    y_true: pd.Series | np.ndarray,
    proba: np.ndarray,
    labels: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, float]:
    """The metrics of one set of predictions: probabilities of class 1 and the labels served.

    ``labels`` default to ``proba >= threshold`` (the rule of scikit-learn's threshold
    classifiers), so a caller with a tuned model passes what the model really answers.
    """
    y_true = np.asarray(y_true)
    proba = np.clip(np.asarray(proba, dtype=float), 1e-6, 1 - 1e-6)
    pred = (proba >= threshold).astype(int) if labels is None else np.asarray(labels).astype(int)
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, proba)) if len(set(y_true)) > 1 else float("nan"),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba, pos_label=1)),
        "ece": expected_calibration_error(y_true, proba),
    }
