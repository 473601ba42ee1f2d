"""Candidate models, the holdout split, cross-validation and selection.

Each candidate is one scikit-learn Pipeline (preprocessing + estimator) so that what is
registered is exactly what was evaluated. The holdout is chosen by a hash of the app identity:
the same app stays on the same side across runs, so a champion trained last week is not scored
on rows it was trained on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from lib import features
from lib.data import latest_per_app
from lib.errors import DataError

log = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss")
GREATER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1": True,
    "roc_auc": True,
    "log_loss": False,
}


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


def build_candidate(name: str, seed: int, rf_trees: int = 200) -> Pipeline:
    """A fresh, unfitted candidate pipeline by name."""
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
            max_iter=300,
            learning_rate=0.05,
            max_leaf_nodes=31,
            early_stopping=True,
            validation_fraction=0.1,
            random_state=seed,
        )
        kind = "tree"
    else:
        raise ValueError(f"unknown candidate {name!r}")
    return Pipeline([("features", features.preprocessor(kind)), ("model", model)])


def for_inference(pipe: Pipeline) -> Pipeline:
    """Single-threaded prediction: one row with n_jobs=-1 costs 4x more in thread start-up."""
    model = pipe.named_steps["model"]
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    return pipe


def evaluate(y_true: pd.Series | np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The five metrics of the issue on one set of predicted probabilities of class 1."""
    y_true = np.asarray(y_true)
    proba = np.clip(np.asarray(proba, dtype=float), 1e-6, 1 - 1e-6)
    pred = (proba >= 0.5).astype(int)
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, proba)) if len(set(y_true)) > 1 else float("nan"),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
    }


def cross_validate(
    pipe: Pipeline, X: pd.DataFrame, y: pd.Series, folds: int, seed: int
) -> dict[str, dict[str, float]]:
    """Stratified k-fold on the training part: mean and std (ddof=1) of every metric."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    per_fold: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
    for train, test in splitter.split(X, y):
        fitted = clone(pipe).fit(X.iloc[train], y.iloc[train])
        scores = evaluate(y.iloc[test], fitted.predict_proba(X.iloc[test])[:, 1])
        for m in METRIC_NAMES:
            per_fold[m].append(scores[m])
    return {
        m: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)),
            "folds": [float(x) for x in v],
        }
        for m, v in per_fold.items()
    }


@dataclass
class CandidateResult:
    """A fitted candidate with its holdout and CV figures."""

    name: str
    model: Pipeline
    holdout: dict[str, float]
    cv: dict[str, dict[str, float]]
    proba: np.ndarray  # holdout probabilities of class 1
    fit_seconds: float
    params: dict[str, object] = field(default_factory=dict)

    def cv_std(self, metric: str) -> float:
        return self.cv[metric]["std"]


def train_candidate(
    name: str,
    data: LabeledData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    folds: int,
    seed: int,
    rf_trees: int = 200,
) -> CandidateResult:
    """Cross-validate on the training part, fit on all of it, score the holdout."""
    started = time.perf_counter()
    pipe = build_candidate(name, seed, rf_trees)
    X_train, y_train = data.X.iloc[train_idx], data.y.iloc[train_idx]
    cv = cross_validate(pipe, X_train, y_train, folds, seed)
    pipe.fit(X_train, y_train)
    for_inference(pipe)
    proba = pipe.predict_proba(data.X.iloc[test_idx])[:, 1]
    holdout = evaluate(data.y.iloc[test_idx], proba)
    elapsed = time.perf_counter() - started
    params = {
        f"model__{k}": v
        for k, v in pipe.named_steps["model"].get_params().items()
        if isinstance(v, (int, float, str, bool, type(None)))
    }
    log.info("%s: holdout %s (%.1fs)", name, {k: round(v, 4) for k, v in holdout.items()}, elapsed)
    return CandidateResult(name, pipe, holdout, cv, proba, elapsed, params)


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
    prior = float(np.mean(y_train))
    majority = 1 if prior >= 0.5 else 0
    y_test = np.asarray(y_test)
    pred = np.full(len(y_test), majority)
    return {
        "accuracy": float(accuracy_score(y_test, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
        "f1": float(f1_score(y_test, pred, zero_division=0)),
        "roc_auc": 0.5,  # a constant score ranks nothing
        "log_loss": float(log_loss(y_test, np.full(len(y_test), prior), labels=[0, 1])),
    }


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
    result = sk_permutation_importance(
        model, X, y, scoring=scoring, n_repeats=repeats, random_state=seed, n_jobs=1
    )
    return pd.Series(result.importances_mean, index=X.columns, name="importance")
