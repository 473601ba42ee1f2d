"""Candidate models, the holdout split, cross-validation and selection.

Each candidate is one scikit-learn Pipeline (preprocessing + estimator): what is registered is
what was evaluated. The holdout is chosen by a hash of the app identity, so a champion trained
last week is not scored on rows it was trained on.
"""

from __future__ import annotations

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
from sklearn.pipeline import Pipeline

from lib.config import CALIBRATION_METHODS, FEATURE_GROUPS, check_groups
from lib.errors import DataError
from lib.pipeline import features
from lib.pipeline.app_identity import latest_per_app
from lib.pipeline.calibration import (
    CalibrationChoice,
    ThresholdChoice,
    calibrated,
    choose_calibration,
    folds_for,
    out_of_fold,
    tune_threshold,
)
from lib.pipeline.evaluation import GREATER_IS_BETTER, METRIC_NAMES, evaluate

log = logging.getLogger(__name__)


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


FAMILIES: tuple[str, ...] = (
    "logistic_regression",
    "random_forest",
    "hist_gradient_boosting",
    "forest_and_boosting",
)


def _forest(seed: int, trees: int, max_depth: int | None = None) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=trees,
        min_samples_leaf=3,
        max_features="sqrt",
        max_depth=max_depth,
        n_jobs=-1,
        random_state=seed,
    )


def _boosting(seed: int) -> HistGradientBoostingClassifier:
    """Native categorical splits on the category columns (a subset of categories per split:
    +0.004 CV ROC-AUC on the raw file against ordinal thresholds), larger leaves and an L2 penalty
    (steadier on 8,000 apps). The service walks the categorical bitsets compiled."""
    return HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        # the preprocessor puts the categorical columns first, in CATEGORICAL order
        categorical_features=list(range(len(features.CATEGORICAL))),
        early_stopping=False,
        random_state=seed,
    )


def _tabular(name: str, seed: int, rf_trees: int, groups: Sequence[str]) -> list[tuple[str, Any]]:
    """The tabular members of a family, each a (preprocessing, estimator) Pipeline."""
    if name == "logistic_regression":
        model = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
        models, kind = [("tabular", model)], "linear"
    elif name == "random_forest":
        models, kind = [("tabular", _forest(seed, rf_trees))], "tree"
    elif name == "hist_gradient_boosting":
        models, kind = [("tabular", _boosting(seed))], "tree"
    elif name == "forest_and_boosting":  # two tree learners that err differently, stacked
        # the forest beside boosting: 100 trees of depth <= 12 score as well in the stack as 200
        # unbounded ones (depth ~37) and cost the service a sixth of the tree walk
        forest = _forest(seed, min(rf_trees, 100), max_depth=12)
        models, kind = [("tabular", _boosting(seed)), ("forest", forest)], "tree"
    else:
        raise ValueError(f"unknown candidate {name!r}; known: {', '.join(FAMILIES)}")
    return [
        (label, Pipeline([("features", features.preprocessor(kind, groups)), ("model", model)]))
        for label, model in models
    ]


def build_candidate(
    name: str,
    seed: int,
    rf_trees: int = 200,
    groups: Sequence[str] = FEATURE_GROUPS,
    stack_folds: int = 3,
) -> Any:
    """A fresh, unfitted candidate by model family and feature groups.

    With ``name_text`` the tabular model is stacked with a text model of the app name, combined on
    out-of-fold probabilities (StackingClassifier) so the name's score never sees its own rows;
    ``forest_and_boosting`` stacks a forest and a boosting model the same way.
    """
    groups = check_groups(groups)
    members = _tabular(name, seed, rf_trees, groups)
    if "name_text" in groups:
        members = [("name_text", features.name_text_model(seed)), *members]
    if len(members) == 1:
        return members[0][1]
    return StackingClassifier(
        estimators=members,
        final_estimator=stack_combiner(seed),
        cv=folds_for(stack_folds, seed),
        stack_method="predict_proba",
    )


def stack_combiner(seed: int) -> Pipeline:
    """The stack's final estimator: a logistic regression on the log-odds of its members.

    On log-odds the combination stays calibrated (raw file, 5-fold CV: ECE 0.020 -> 0.009,
    log-loss 0.4924 -> 0.4892, ROC-AUC unchanged). Clipping keeps a forest's 0 or 1 finite.
    """
    from scipy.special import logit
    from sklearn.preprocessing import FunctionTransformer

    return Pipeline(
        [
            ("clip", FunctionTransformer(np.clip, kw_args={"a_min": 1e-4, "a_max": 1 - 1e-4})),
            ("log_odds", FunctionTransformer(logit)),
            ("combine", LogisticRegression(max_iter=1000, random_state=seed)),
        ]
    )


def nested_estimators(model: Any) -> list[Any]:
    """Every estimator nested in a model: pipelines, column transformers, stacks, wrappers."""
    out = [model]
    children: list[Any] = [step for _, step in getattr(model, "steps", None) or []]
    children += [t for _, t, _ in getattr(model, "transformers_", None) or []]
    children += [t for _, t, *_ in getattr(model, "transformer_list", None) or []]
    children += [e for _, e in getattr(model, "estimators", None) or [] if not isinstance(e, str)]
    for attr in ("estimators_", "calibrated_classifiers_"):
        children.extend(getattr(model, attr, None) or [])
    for attr in ("final_estimator_", "estimator_", "estimator"):
        child = getattr(model, attr, None)
        if child is not None and not isinstance(child, str):
            children.append(child)
    for child in children:
        if not isinstance(child, str) and child is not None:
            out.extend(nested_estimators(child))
    return out


def for_inference(model: Any) -> Any:
    """n_jobs=1 everywhere: one row with n_jobs=-1 costs 4x more in thread start-up."""
    seen: set[int] = set()
    for est in nested_estimators(model):
        if id(est) in seen or not hasattr(est, "get_params"):
            continue
        seen.add(id(est))
        try:
            if est.get_params(deep=False).get("n_jobs") not in (None, 1):  # None: one thread
                est.set_params(n_jobs=1)
        except Exception:  # not a plain scikit-learn estimator (e.g. frozen): leave it
            log.debug("cannot set n_jobs on %r", type(est).__name__)
    return model


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

    def cv_std(self, metric: str) -> float:
        return self.cv[metric]["std"]


def one_openmp_thread() -> Any:
    """Gradient boosting's OpenMP threads on a shared 2-core machine: one thread.

    With the cores busy, OpenMP's barriers wait for descheduled threads: a 2,400-row boosting fit
    took 72 s with 2 threads against 2 s with one. Forests keep their process-level n_jobs.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


@dataclass(frozen=True)
class TrainingSettings:
    """How candidates are fitted: one object for 02 train and the backtest, so both fit alike."""

    cv_folds: int
    seed: int
    rf_trees: int = 200
    features: tuple[str, ...] = FEATURE_GROUPS
    calibration: tuple[str, ...] = CALIBRATION_METHODS
    objective: str = "accuracy"  # the label objective the threshold is tuned for
    costs: dict[str, float] | None = None  # false_positive / false_negative, for "cost"

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "calibration", tuple(self.calibration))
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be at least 2, got {self.cv_folds}")


def train_candidate(
    name: str, data: LabeledData, train_idx: np.ndarray, test_idx: np.ndarray, s: TrainingSettings
) -> CandidateResult:
    """Cross-validate on the training part, choose calibration and threshold, fit, score holdout.

    The registered model is ``FixedThresholdClassifier(FrozenEstimator(model), threshold)``: the
    tuned cut travels inside it, so ``predict`` gives the served label wherever it is loaded.
    """
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    with one_openmp_thread():
        started = time.perf_counter()
        folds, seed = s.cv_folds, s.seed
        base = build_candidate(name, seed, s.rf_trees, s.features)
        X_train, y_train = data.X.iloc[train_idx], data.y.iloc[train_idx]
        log.info("%s: %d-fold cross-validation on %d rows", name, folds, len(y_train))
        oof = out_of_fold(base, X_train, y_train, folds, seed)
        choice = choose_calibration(oof, y_train, s.calibration, folds, seed)
        if choice.method is None:
            fitted = clone(base).fit(X_train, y_train)
            oof_served = oof.proba
        else:
            fitted = calibrated(
                clone(base).fit(X_train, y_train), oof, y_train, choice.method, folds, seed
            )
            calibrator = fitted.calibrated_classifiers_[0].calibrators[0]
            oof_served = np.clip(calibrator.predict(oof.score), 0.0, 1.0)
        threshold = tune_threshold(y_train, oof_served, s.objective, s.costs)
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
            "feature_groups": ",".join(check_groups(s.features)),
            "calibration": choice.method or "none",
            "threshold": round(threshold.threshold, 6),
            "label_objective": s.objective,
        }
        members = dict(getattr(base, "named_estimators", None) or {"tabular": base})
        for label, prefix in (("tabular", "model"), ("forest", "forest")):
            if label in members:
                params.update(
                    {
                        f"{prefix}__{k}": v if not isinstance(v, (list, tuple)) else str(list(v))
                        for k, v in members[label].named_steps["model"].get_params().items()
                        if isinstance(v, (int, float, str, bool, type(None), list, tuple))
                    }
                )
        log.info(
            "%s: holdout %s (%.1fs)", name, {k: round(v, 4) for k, v in holdout.items()}, elapsed
        )
        return CandidateResult(
            name, model, holdout, cv, proba, elapsed, params, served, threshold, choice
        )


def _cv_summary(
    y: pd.Series, proba: np.ndarray, fold: np.ndarray, threshold: float
) -> dict[str, dict[str, Any]]:
    """Mean and std (ddof=1) of every metric over the folds of the out-of-fold predictions."""
    y_arr = np.asarray(y)
    folds = [
        evaluate(y_arr[fold == k], proba[fold == k], threshold=threshold) for k in np.unique(fold)
    ]
    per_fold = {m: [scores[m] for scores in folds] for m in METRIC_NAMES}
    return {
        m: {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "folds": [float(x) for x in v],
        }
        for m, v in per_fold.items()
    }


def select_best(results: list[CandidateResult], metric: str) -> CandidateResult:
    """The candidate with the best holdout value of the selection metric."""
    if not results:
        raise ValueError("no candidates were trained")
    sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
    return max(results, key=lambda r: sign * r.holdout[metric])


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
