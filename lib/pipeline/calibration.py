"""What is learned from out-of-fold predictions: the calibration and the served label's cut.

Both are chosen on predictions of models that did not see the row (:func:`out_of_fold`), so
neither is tuned on rows the model was fitted on, and no second round of fits is needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import StratifiedKFold

from lib import progress
from lib.config import CALIBRATION_METHODS, LABEL_OBJECTIVES
from lib.pipeline.evaluation import expected_calibration_error

log = logging.getLogger(__name__)


def folds_for(folds: int, seed: int) -> StratifiedKFold:
    """Shuffled stratified folds: the raw file is ordered by category, unshuffled folds are not."""
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


@dataclass
class OutOfFold:
    """Out-of-fold predictions of one model family on the training part."""

    proba: np.ndarray  # probability of class 1
    score: np.ndarray  # what a calibrator is fitted on (decision_function when the model has one)
    fold: np.ndarray  # fold number of each row


def out_of_fold(model: Any, X: pd.DataFrame, y: pd.Series, folds: int, seed: int) -> OutOfFold:
    """Each training row predicted by a model fitted on the other folds (shuffled, stratified)."""
    proba = np.zeros(len(y))
    score = np.zeros(len(y))
    fold = np.zeros(len(y), dtype=int)
    started = time.perf_counter()
    for k, (train, test) in enumerate(folds_for(folds, seed).split(X, y)):
        fitted = clone(model).fit(X.iloc[train], y.iloc[train])
        proba[test] = fitted.predict_proba(X.iloc[test])[:, 1]
        if hasattr(fitted, "decision_function"):
            score[test] = np.ravel(fitted.decision_function(X.iloc[test]))
        else:
            score[test] = proba[test]
        fold[test] = k
        log.info("  fold %d/%d done", k + 1, folds)
        progress.report(
            "  fold %d/%d done (%.0f s so far)", k + 1, folds, time.perf_counter() - started
        )
    return OutOfFold(proba, score, fold)


class _ScoreColumn(ClassifierMixin, BaseEstimator):
    """A classifier whose decision function is its one input column: precomputed scores.

    Frozen inside :class:`~sklearn.calibration.CalibratedClassifierCV`, it lets scikit-learn's
    public API fit a calibrator on out-of-fold scores the models already made.
    """

    def __init__(self, classes: Any = (0, 1)) -> None:
        self.classes = classes

    def fit(self, X: Any = None, y: Any = None) -> _ScoreColumn:
        """Nothing to learn: the scores are the input."""
        self.classes_ = np.asarray(self.classes)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The scores, as given."""
        return np.asarray(X, dtype=np.float64)[:, 0]

    def predict(self, X: Any) -> np.ndarray:
        """The second class where the score is positive (scikit-learn requires a predict)."""
        return self.classes_[(self.decision_function(X) > 0).astype(int)]


def _fit_on_scores(score: np.ndarray, y: np.ndarray, method: str) -> Any:
    """A CalibratedClassifierCV whose calibrator is fitted on ``score`` (float64) against ``y``.

    scikit-learn has no public "calibrate these predictions"; a frozen score column and one
    split with every row in its test part make ``CalibratedClassifierCV.fit`` do exactly that.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}"
        )
    y = np.asarray(y)
    every = np.arange(len(y))
    scores = np.asarray(score, dtype=np.float64).reshape(-1, 1)
    column = FrozenEstimator(_ScoreColumn(np.unique(y)).fit())
    return CalibratedClassifierCV(column, method=method, cv=[(every, every)]).fit(scores, y)


@dataclass
class CalibrationChoice:
    """Which calibration a candidate keeps, with the cross-validated figures that chose it."""

    method: str | None  # None: the model's own probabilities were better
    scores: dict[str, dict[str, float]]  # "none"/"isotonic"/"sigmoid" -> log_loss, brier, ece


def choose_calibration(
    oof: OutOfFold, y: pd.Series, methods: Sequence[str], folds: int, seed: int
) -> CalibrationChoice:
    """Try each calibration on out-of-fold scores, itself cross-validated; keep a real gain.

    A method is kept only when it lowers the cross-validated log-loss and does not raise the
    Brier score; otherwise the model's own probabilities stay.
    """
    y_arr = np.asarray(y)
    scores = {"none": _calibration_scores(y_arr, oof.proba)}
    for method in methods:
        calibrated = np.zeros(len(y_arr))
        for train, test in folds_for(folds, seed + 1).split(oof.score.reshape(-1, 1), y_arr):
            cal = _fit_on_scores(oof.score[train], y_arr[train], method)
            proba = cal.predict_proba(oof.score[test].reshape(-1, 1))[:, 1]
            calibrated[test] = np.clip(proba, 0.0, 1.0)
        scores[method] = _calibration_scores(y_arr, calibrated)
    best = min(scores, key=lambda m: scores[m]["log_loss"])
    keep = (
        best != "none"
        and scores[best]["log_loss"] < scores["none"]["log_loss"]
        and scores[best]["brier"] <= scores["none"]["brier"]
    )
    return CalibrationChoice(best if keep else None, scores)


def _calibration_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    return {
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y, proba, pos_label=1)),
        "ece": expected_calibration_error(y, proba),
    }


def calibrated(
    fitted: Any, oof: OutOfFold, y: pd.Series, method: str, folds: int, seed: int
) -> Any:
    """The fitted model as ``CalibratedClassifierCV(ensemble=False)`` would make it.

    That class fits its calibrator on out-of-fold scores of the same shuffled folds, then refits
    the model on all rows: what this module already has, so assembling it saves k fits per
    candidate (tests check it equals ``CalibratedClassifierCV(...).fit``). The one step outside
    the public API is putting ``fitted`` in the score column's place in ``calibrated_classifiers_``.
    """
    model = _fit_on_scores(oof.score, np.asarray(y), method)
    if not np.array_equal(model.classes_, fitted.classes_):
        raise ValueError(f"classes {model.classes_} of y differ from the model's {fitted.classes_}")
    model.calibrated_classifiers_[0].estimator = fitted
    model.set_params(estimator=clone(fitted), cv=folds_for(folds, seed), ensemble=False)
    for attr in ("n_features_in_", "feature_names_in_"):
        if hasattr(fitted, attr):
            setattr(model, attr, getattr(fitted, attr))
    return model


@dataclass
class ThresholdChoice:
    """The decision threshold of the served label and how it was chosen."""

    threshold: float
    objective: str
    value: float  # the objective at that threshold, out of fold
    at_half: float  # the objective at the default 0.5 cut, for comparison
    curve: list[tuple[float, float]] = field(default_factory=list, repr=False)


def tune_threshold(
    y: Any,
    proba: Any,
    objective: str = "accuracy",
    costs: dict[str, float] | None = None,
) -> ThresholdChoice:
    """The cut on out-of-fold probabilities that serves the best labels for ``objective``.

    TunedThresholdClassifierCV's idea on the predictions cross-validation already made (no second
    round of fits). ``cost`` minimises false_positive / false_negative ``costs``. Among equal
    scores the cut nearest 0.5 wins; a cut sits halfway between neighbouring predictions.
    """
    if objective not in LABEL_OBJECTIVES:
        raise ValueError(
            f"unknown label objective {objective!r}; known: {', '.join(LABEL_OBJECTIVES)}"
        )
    y = np.asarray(y).astype(int)
    proba = np.asarray(proba, dtype=float)
    values = np.unique(proba)  # ascending; cut at values[j]: positive iff proba >= values[j]
    cuts = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2.0, [np.nextafter(1.0, 2.0)]])
    order = np.sort(proba)
    pos_sorted = np.sort(proba[y == 1])
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())

    def confusion(at: np.ndarray) -> tuple[np.ndarray, ...]:
        """(tp, fp, fn, tn) when a label is positive iff proba >= each cut in ``at``."""
        predicted_pos = len(order) - np.searchsorted(order, at, side="left")
        tp = n_pos - np.searchsorted(pos_sorted, at, side="left")
        return tp, predicted_pos - tp, n_pos - tp, n_neg - predicted_pos + tp

    score = _objective(objective, *confusion(cuts), costs)
    best = np.max(score)
    ties = np.flatnonzero(np.isclose(score, best, rtol=0, atol=1e-12))
    pick = ties[np.argmin(np.abs(cuts[ties] - 0.5))]
    half = _objective(objective, *confusion(np.array([0.5])), costs)
    step = max(1, len(cuts) // 200)
    curve = [(float(cuts[i]), float(score[i])) for i in range(0, len(cuts), step)]
    sign = -1.0 if objective == "cost" else 1.0
    return ThresholdChoice(
        float(min(max(cuts[pick], 0.0), 1.0)),
        objective,
        float(sign * score[pick]),
        float(sign * half[0]),
        curve,
    )


def _objective(
    objective: str,
    tp: np.ndarray,
    fp: np.ndarray,
    fn: np.ndarray,
    tn: np.ndarray,
    costs: dict[str, float] | None,
) -> np.ndarray:
    """Higher is better (cost is returned negated)."""
    tp, fp, fn, tn = (np.asarray(a, dtype=float) for a in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        if objective == "accuracy":
            return (tp + tn) / (tp + fp + fn + tn)
        if objective == "balanced_accuracy":
            return 0.5 * (tp / np.maximum(tp + fn, 1) + tn / np.maximum(tn + fp, 1))
        if objective == "f1":
            return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    costs = costs or {}
    return -(costs.get("false_positive", 1.0) * fp + costs.get("false_negative", 1.0) * fn)
