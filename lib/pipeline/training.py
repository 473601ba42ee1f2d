"""Candidate models, the holdout split, cross-validation and selection.

Each candidate is one scikit-learn Pipeline (preprocessing + estimator) so that what is
registered is exactly what was evaluated. The holdout is chosen by a hash of the app identity:
the same app stays on the same side across runs, so a champion trained last week is not scored
on rows it was trained on.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    StackingClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from lib.errors import DataError
from lib.pipeline import features, uncertainty
from lib.pipeline.data import latest_per_app

log = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss", "brier")
GREATER_IS_BETTER = {**uncertainty.GREATER_IS_BETTER, "ece": False}


@dataclass
class LabeledData:
    """Model inputs, labels and identities of the apps usable for training."""

    X: pd.DataFrame
    y: pd.Series
    keys: pd.Series
    unlabeled: int  # apps without a rating: kept in the data, not trainable
    duplicates: int  # repeated listings collapsed to one row per app


def labeled_data(apps: pd.DataFrame, target_threshold: float) -> LabeledData:
    """One row per app with a rating; counts what was set aside so nothing vanishes silently."""
    unique = latest_per_app(apps)
    duplicates = len(apps) - len(unique)
    rated = unique[unique["rating"].notna()].reset_index(drop=True)
    unlabeled = len(unique) - len(rated)
    if len(rated) < 50:
        raise DataError(f"only {len(rated)} apps have a rating; at least 50 are needed to train")
    y = features.labels(rated, target_threshold)
    if y.nunique() < 2:
        raise DataError(
            f"every rated app is on the same side of Rating > {target_threshold}; "
            "choose another target_threshold"
        )
    log.info(
        "labeled data: %d apps (%d duplicates collapsed, %d without rating)",
        len(rated),
        duplicates,
        unlabeled,
    )
    return LabeledData(features.model_inputs(rated), y, rated["app_key"], unlabeled, duplicates)


def _key_hash(key: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def holdout_split(
    keys: pd.Series, y: pd.Series, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, identity-stable split: per class, the apps with the lowest key hashes.

    Returns positional indices (train, test). The same data gives the same split; growing data
    moves only apps near the cut, never a random half.
    """
    hashes = np.array([_key_hash(k, seed) for k in keys], dtype=np.uint64)
    test: list[np.ndarray] = []
    y_arr = np.asarray(y)
    for cls in np.unique(y_arr):
        members = np.flatnonzero(y_arr == cls)
        n_test = max(1, round(len(members) * test_size))
        order = members[np.argsort(hashes[members], kind="stable")]
        test.append(order[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y_arr)), test_idx)
    return train_idx, test_idx


def split_digest(keys: pd.Series, test_idx: np.ndarray) -> str:
    """A fingerprint of the holdout's identities, so a later stage can check it scores the same."""
    chosen = sorted(keys.iloc[test_idx].tolist())
    return hashlib.sha256("\n".join(chosen).encode()).hexdigest()[:16]


DEFAULT_FEATURE_GROUPS: tuple[str, ...] = features.FEATURE_GROUPS
CALIBRATION_METHODS = ("isotonic", "sigmoid")
LABEL_OBJECTIVES = ("accuracy", "balanced_accuracy", "f1", "cost")


def folds_for(folds: int, seed: int) -> StratifiedKFold:
    """Shuffled stratified folds: the raw file is ordered by category, unshuffled folds are not."""
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


def _tabular(name: str, seed: int, rf_trees: int, groups: Sequence[str]) -> Pipeline:
    if name == "logistic_regression":
        model = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
        kind = "linear"
    elif name == "random_forest":
        model = RandomForestClassifier(
            n_estimators=rf_trees,
            min_samples_leaf=3,
            max_features="sqrt",
            n_jobs=-1,
            random_state=seed,
        )
        kind = "tree"
    elif name == "hist_gradient_boosting":
        model = HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            early_stopping=False,
            random_state=seed,
        )
        kind = "tree"
    else:
        raise ValueError(
            f"unknown candidate {name!r}; known: logistic_regression, random_forest, "
            "hist_gradient_boosting"
        )
    return Pipeline([("features", features.preprocessor(kind, groups)), ("model", model)])


def build_candidate(
    name: str,
    seed: int,
    rf_trees: int = 200,
    groups: Sequence[str] = DEFAULT_FEATURE_GROUPS,
    stack_folds: int = 3,
) -> Any:
    """A fresh, unfitted candidate by model family and feature groups.

    With the group ``name_text`` the family's tabular model is stacked with a text model of the
    app name: a logistic regression combines the two, trained only on their out-of-fold
    probabilities (scikit-learn's StackingClassifier), so the name's score never sees its own rows.
    """
    groups = features.check_groups(groups)
    tabular = _tabular(name, seed, rf_trees, groups)
    if "name_text" not in groups:
        return tabular
    return StackingClassifier(
        estimators=[("name_text", features.name_text_model(seed)), ("tabular", tabular)],
        final_estimator=LogisticRegression(max_iter=1000, random_state=seed),
        cv=folds_for(stack_folds, seed),
        stack_method="predict_proba",
    )


def for_inference(model: Any) -> Any:
    """Single-threaded prediction: one row with n_jobs=-1 costs 4x more in thread start-up."""
    for est in _estimators(model):
        params = est.get_params(deep=False) if hasattr(est, "get_params") else {}
        if params.get("n_jobs") not in (None, 1):
            est.set_params(n_jobs=1)
    return model


def _estimators(model: Any) -> list[Any]:
    """Every estimator nested in a model (pipelines, stacks, calibration and threshold wrappers)."""
    out = [model]
    children: list[Any] = []
    for attr in ("steps", "estimators", "transformer_list"):  # lists of (name, estimator)
        items = getattr(model, attr, None)
        if isinstance(items, list):
            children.extend(step for _, step, *_ in items if not isinstance(step, str))
    for attr in ("estimators_", "calibrated_classifiers_"):
        children.extend(getattr(model, attr, []) or [])
    for attr in ("final_estimator_", "estimator_", "estimator"):
        child = getattr(model, attr, None)
        if child is not None and not isinstance(child, str):
            children.append(child)
    for child in children:
        if hasattr(child, "get_params") or hasattr(child, "estimator"):
            out.extend(_estimators(child))
    return out


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
    for k, (train, test) in enumerate(folds_for(folds, seed).split(X, y)):
        fitted = clone(model).fit(X.iloc[train], y.iloc[train])
        proba[test] = fitted.predict_proba(X.iloc[test])[:, 1]
        if hasattr(fitted, "decision_function"):
            score[test] = np.ravel(fitted.decision_function(X.iloc[test]))
        else:
            score[test] = proba[test]
        fold[test] = k
        log.info("  fold %d/%d done", k + 1, folds)
    return OutOfFold(proba, score, fold)


def _calibrator(method: str) -> Any:
    from sklearn.calibration import CalibratedClassifierCV

    # Built exactly as CalibratedClassifierCV builds it, so the CV estimate describes the model.
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        return IsotonicRegression(out_of_bounds="clip")
    if method == "sigmoid":
        from sklearn.calibration import _SigmoidCalibration

        return _SigmoidCalibration()
    raise ValueError(
        f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}"
        f" (see {CalibratedClassifierCV.__name__})"
    )


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
            cal = _calibrator(method).fit(oof.score[train], y_arr[train])
            calibrated[test] = np.clip(cal.predict(oof.score[test]), 0.0, 1.0)
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

    CalibratedClassifierCV with ``ensemble=False`` fits its calibrator on out-of-fold decision
    scores from the same shuffled folds, then refits the model on all rows: exactly the
    out-of-fold scores and the full fit this module already has. Assembling it from them saves
    k fits per candidate; tests check it equals ``CalibratedClassifierCV(...).fit``.
    """
    from sklearn.calibration import CalibratedClassifierCV, _fit_calibrator
    from sklearn.utils._array_api import get_namespace

    model = CalibratedClassifierCV(
        clone(fitted), method=method, cv=folds_for(folds, seed), ensemble=False
    )
    scores = np.asarray(oof.score, dtype=np.float64).reshape(-1, 1)
    xp, _ = get_namespace(scores)
    model.classes_ = np.asarray(fitted.classes_)
    model.calibrated_classifiers_ = [
        _fit_calibrator(fitted, scores, np.asarray(y), model.classes_, method, xp=xp)
    ]
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

    The same idea as scikit-learn's TunedThresholdClassifierCV, on the out-of-fold predictions
    the candidate's cross-validation already made (no second round of fits). Objectives:
    accuracy, balanced_accuracy, f1, or cost (``costs`` = false_positive / false_negative, the
    total cost is minimised). A label is positive when proba >= threshold. Among equal scores the
    cut nearest 0.5 wins; the cut sits halfway between neighbouring predictions.
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
    predicted_pos = len(order) - np.searchsorted(order, cuts, side="left")
    tp = n_pos - np.searchsorted(pos_sorted, cuts, side="left")
    fp = predicted_pos - tp
    fn = n_pos - tp
    tn = n_neg - fp
    score = _objective(objective, tp, fp, fn, tn, costs)
    best = np.max(score)
    ties = np.flatnonzero(np.isclose(score, best, rtol=0, atol=1e-12))
    pick = ties[np.argmin(np.abs(cuts[ties] - 0.5))]
    half = _objective(
        objective,
        *_confusion_at(y, proba, 0.5),
        costs,
    )
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


def _confusion_at(y: np.ndarray, proba: np.ndarray, cut: float) -> tuple[np.ndarray, ...]:
    pred = proba >= cut
    tp = np.array([np.sum(pred & (y == 1))])
    fp = np.array([np.sum(pred & (y == 0))])
    fn = np.array([np.sum(~pred & (y == 1))])
    tn = np.array([np.sum(~pred & (y == 0))])
    return tp, fp, fn, tn


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


@dataclass
class CandidateResult:
    """A fitted candidate with its holdout and CV figures and how its labels are made."""

    name: str
    model: Any
    holdout: dict[str, float]
    cv: dict[str, dict[str, Any]]
    proba: np.ndarray  # holdout probabilities of class 1
    fit_seconds: float
    params: dict[str, object] = field(default_factory=dict)
    labels: np.ndarray | None = None  # holdout labels the model serves
    threshold: ThresholdChoice | None = None
    calibration: CalibrationChoice | None = None
    oof_proba: np.ndarray | None = field(default=None, repr=False)  # training part, as served

    def cv_std(self, metric: str) -> float:
        return self.cv[metric]["std"]


def one_openmp_thread() -> Any:
    """Gradient boosting's OpenMP threads on a shared 2-core machine: one thread.

    With the cores busy (kernels warming up, a service, other jobs), OpenMP's barriers wait for
    descheduled threads: a 2,400-row boosting fit measured 72 s with 2 threads against 2 s with
    one. Forests keep their process-level n_jobs.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _with_one_openmp_thread(func: Any) -> Any:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_openmp_thread():
            return func(*args, **kwargs)

    return wrapper


@_with_one_openmp_thread
def train_candidate(
    name: str,
    data: LabeledData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    folds: int,
    seed: int,
    rf_trees: int = 200,
    groups: Sequence[str] = DEFAULT_FEATURE_GROUPS,
    calibration: Sequence[str] = CALIBRATION_METHODS,
    objective: str = "accuracy",
    costs: dict[str, float] | None = None,
) -> CandidateResult:
    """Cross-validate on the training part, choose calibration and threshold, fit, score holdout.

    The registered model is ``FixedThresholdClassifier(FrozenEstimator(model), threshold)``: the
    tuned cut travels inside it, so ``predict`` gives the served label wherever it is loaded.
    """
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    started = time.perf_counter()
    base = build_candidate(name, seed, rf_trees, groups)
    X_train, y_train = data.X.iloc[train_idx], data.y.iloc[train_idx]
    log.info("%s: %d-fold cross-validation on %d rows", name, folds, len(y_train))
    oof = out_of_fold(base, X_train, y_train, folds, seed)
    choice = choose_calibration(oof, y_train, calibration, folds, seed)
    if choice.method is None:
        fitted = clone(base).fit(X_train, y_train)
        oof_served = oof.proba
    else:
        fitted = calibrated(
            clone(base).fit(X_train, y_train), oof, y_train, choice.method, folds, seed
        )
        calibrator = fitted.calibrated_classifiers_[0].calibrators[0]
        oof_served = np.clip(calibrator.predict(oof.score), 0.0, 1.0)
    threshold = tune_threshold(y_train, oof_served, objective, costs)
    model = FixedThresholdClassifier(
        FrozenEstimator(for_inference(fitted)),
        threshold=threshold.threshold,
        response_method="predict_proba",
    ).fit(X_train, y_train)  # the frozen model is not refitted
    cv = _cv_summary(y_train, oof_served, oof.fold, threshold.threshold)
    X_test = data.X.iloc[test_idx]
    proba = model.predict_proba(X_test)[:, 1]
    served = model.predict(X_test)
    holdout = evaluate(data.y.iloc[test_idx], proba, served)
    elapsed = time.perf_counter() - started
    params: dict[str, object] = {
        "feature_groups": ",".join(features.check_groups(groups)),
        "calibration": choice.method or "none",
        "threshold": round(threshold.threshold, 6),
        "label_objective": objective,
    }
    tabular = base.named_estimators["tabular"] if hasattr(base, "named_estimators") else base
    params.update(
        {
            f"model__{k}": v
            for k, v in tabular.named_steps["model"].get_params().items()
            if isinstance(v, (int, float, str, bool, type(None)))
        }
    )
    log.info("%s: holdout %s (%.1fs)", name, {k: round(v, 4) for k, v in holdout.items()}, elapsed)
    return CandidateResult(
        name, model, holdout, cv, proba, elapsed, params, served, threshold, choice, oof_served
    )


def _cv_summary(
    y: pd.Series, proba: np.ndarray, fold: np.ndarray, threshold: float
) -> dict[str, dict[str, Any]]:
    """Mean and std (ddof=1) of every metric over the folds of the out-of-fold predictions."""
    y_arr = np.asarray(y)
    per_fold: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
    for k in np.unique(fold):
        mask = fold == k
        scores = evaluate(y_arr[mask], proba[mask], threshold=threshold)
        for m in METRIC_NAMES:
            per_fold[m].append(scores[m])
    return {
        m: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "folds": [float(x) for x in v],
        }
        for m, v in per_fold.items()
    }


def cross_validate(
    model: Any, X: pd.DataFrame, y: pd.Series, folds: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Stratified k-fold (shuffled): mean and std (ddof=1) of every metric at the 0.5 cut."""
    oof = out_of_fold(model, X, y, folds, seed)
    return _cv_summary(y, oof.proba, oof.fold, 0.5)


def select_best(results: list[CandidateResult], metric: str) -> CandidateResult:
    """The candidate with the best holdout value of the selection metric."""
    if not results:
        raise ValueError("no candidates were trained")
    sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
    return max(results, key=lambda r: sign * r.holdout[metric])


def improvement(metric: str, candidate: float, reference: float) -> float:
    """Positive when the candidate is better, whichever direction the metric runs."""
    diff = candidate - reference
    return float(diff if GREATER_IS_BETTER[metric] else -diff)


def baseline_metrics(y_train: pd.Series, y_test: pd.Series) -> dict[str, float]:
    """A majority-class model: what "improvement" means when there is no champion yet."""
    proba, pred = uncertainty.majority_baseline(y_train, len(y_test))
    scores = evaluate(np.asarray(y_test), proba, pred)
    scores["roc_auc"] = 0.5  # a constant score ranks nothing
    return scores


def dataset_digest(X: pd.DataFrame, y: pd.Series) -> str:
    """A content fingerprint of the training data (order-sensitive), for the state and MLflow."""
    rows = pd.util.hash_pandas_object(X.assign(label=np.asarray(y)), index=False).values
    return hashlib.sha256(rows.tobytes()).hexdigest()[:16]


def permutation_importance(
    model: Pipeline, X: pd.DataFrame, y: pd.Series, metric: str, seed: int, repeats: int = 5
) -> pd.Series:
    """Mean drop of the metric on the holdout when one input column is shuffled."""
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    scoring = {"roc_auc": "roc_auc", "log_loss": "neg_log_loss"}.get(metric, metric)
    with one_openmp_thread():  # 100 predict calls: OpenMP contention made this 25x slower
        result = sk_permutation_importance(
            model, X, y, scoring=scoring, n_repeats=repeats, random_state=seed, n_jobs=1
        )
    return pd.Series(result.importances_mean, index=X.columns, name="importance")
