"""How sure we are that a candidate beats its reference on the same holdout rows.

Every metric comes with a stratified paired bootstrap interval (class counts fixed, the same
resampled rows for both models), and ROC-AUC and accuracy with a paired test (DeLong, exact
McNemar). The bootstrap is vectorized: a resample is a vector of per-row counts and every metric
a weighted sum over rows, so 2000 resamples of 2000 rows take a fraction of a second.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from lib.score_table import Evidence

log = logging.getLogger(__name__)

METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "log_loss", "brier")
GREATER_IS_BETTER = {m: m not in ("log_loss", "brier") for m in METRICS}
MIN_RESAMPLES = 1000
PROBA_CLIP = 1e-6  # log_loss only, as in lib.pipeline.evaluation.evaluate


@dataclass
class MetricComparison:
    """Candidate, reference and their sign-adjusted difference (positive = candidate better)."""

    metric: str
    candidate: Evidence  # each an estimate with its bootstrap interval
    reference: Evidence
    difference: Evidence
    p_value: float | None
    test: str | None
    draws: np.ndarray = field(repr=False)  # bootstrap draws of the sign-adjusted difference

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (every number is a Python float or int); the draws stay out (for plots)."""
        return {k: v for k, v in asdict(self).items() if k != "draws"}


# --- input checks ---------------------------------------------------------------------------


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    if not metrics:
        raise ValueError(f"no metrics asked for; allowed: {', '.join(METRICS)}")
    return tuple(dict.fromkeys(metrics))


def _check_settings(resamples: int, confidence: float) -> None:
    if int(resamples) != resamples or resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples must be an integer >= {MIN_RESAMPLES}, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _vector(name: str, values: ArrayLike, n: int | None, dtype: Any = None) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} rows but y_true has {n}: inputs must be paired")
    return arr


def _binary(name: str, values: ArrayLike, n: int | None) -> np.ndarray:
    arr = _vector(name, values, n)
    if not np.isin(arr, (0, 1)).all():  # booleans pass: True == 1
        raise ValueError(f"{name} must hold binary labels 0/1, got {np.unique(arr)[:10]}")
    return arr.astype(np.int8)


def _proba(name: str, values: ArrayLike, n: int) -> np.ndarray:
    arr = _vector(name, values, n, float)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite probabilities")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{name} must be probabilities in [0, 1], got [{arr.min()}, {arr.max()}]")
    return arr


def _targets(y_true: ArrayLike) -> np.ndarray:
    y = _binary("y_true", y_true, None)
    if len(y) == 0 or y.min() == y.max():
        raise ValueError(
            f"y_true needs both classes to compare models; got {len(y)} rows of class "
            f"{np.unique(y).tolist()}"
        )
    return y


# --- the weighted metrics -------------------------------------------------------------------


class _Weights:
    """Per-row counts of each resample (one row per resample), positives and negatives apart.

    Integer copies feed the ROC-AUC (exact cumulative sums, half the memory traffic), float
    copies the matrix-vector products of the other metrics.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray) -> None:
        self.pos_int, self.neg_int = pos.astype(np.int32), neg.astype(np.int32)
        self.pos, self.neg = pos.astype(float), neg.astype(float)
        self.resamples = pos.shape[0]

    @classmethod
    def ones(cls, n1: int, n0: int) -> _Weights:
        """The full rows, each once: the point estimate through the same code as the draws."""
        return cls(np.ones((1, n1), dtype=np.int32), np.ones((1, n0), dtype=np.int32))

    @classmethod
    def bootstrap(cls, y: np.ndarray, resamples: int, seed: int) -> _Weights:
        """Stratified: positives and negatives resampled apart, class counts fixed."""
        rng = np.random.default_rng(seed)
        n1 = int(y.sum())
        return cls(_counts(rng, n1, resamples), _counts(rng, len(y) - n1, resamples))


def _counts(rng: np.random.Generator, k: int, resamples: int) -> np.ndarray:
    """Per-row counts of a with-replacement draw of k rows out of k, for each resample."""
    idx = rng.integers(0, k, size=(resamples, k))
    idx += np.arange(resamples)[:, None] * k
    return np.bincount(idx.ravel(), minlength=resamples * k).reshape(resamples, k)


class _Model:
    """One model's predictions split into the positive and negative rows."""

    def __init__(self, y: np.ndarray, proba: np.ndarray, labels: np.ndarray) -> None:
        pos = y == 1
        self.proba_pos, self.proba_neg = proba[pos], proba[~pos]
        self.label_pos = labels[pos].astype(float)
        self.label_neg = labels[~pos].astype(float)
        self.constant_score = bool(proba.min() == proba.max())
        self._confusion: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def draws(self, metric: str, w: _Weights) -> np.ndarray:
        """The metric under each resample's count weights."""
        n1, n0 = len(self.proba_pos), len(self.proba_neg)
        if metric == "roc_auc":
            return self._auc(w)
        if metric in ("accuracy", "balanced_accuracy", "f1"):
            tp, fp = self._tp_fp(w)
            tn = n0 - fp  # weights sum to the class count in every resample
            if metric == "accuracy":
                return (tp + tn) / (n1 + n0)
            if metric == "balanced_accuracy":
                return 0.5 * (tp / n1 + tn / n0)
            return 2.0 * tp / (2.0 * tp + fp + (n1 - tp))  # n1 > 0: never 0/0
        if metric == "log_loss":
            p_pos = np.clip(self.proba_pos, PROBA_CLIP, 1 - PROBA_CLIP)
            p_neg = np.clip(self.proba_neg, PROBA_CLIP, 1 - PROBA_CLIP)
            return (w.pos @ -np.log(p_pos) + w.neg @ -np.log1p(-p_neg)) / (n1 + n0)
        if metric == "brier":
            return (w.pos @ (1.0 - self.proba_pos) ** 2 + w.neg @ self.proba_neg**2) / (n1 + n0)
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")

    def _tp_fp(self, w: _Weights) -> tuple[np.ndarray, np.ndarray]:
        """Weighted true and false positives, shared by accuracy, balanced accuracy and f1."""
        if id(w) not in self._confusion:
            self._confusion[id(w)] = (w.pos @ self.label_pos, w.neg @ self.label_neg)
        return self._confusion[id(w)]

    def _auc(self, w: _Weights) -> np.ndarray:
        """Weighted Mann-Whitney: each positive counts the negative weight below it, ties 1/2."""
        n1, n0 = len(self.proba_pos), len(self.proba_neg)
        if self.constant_score:  # a constant score ranks nothing: exactly 0.5, by definition
            return np.full(w.resamples, 0.5)
        order = np.argsort(self.proba_neg, kind="stable")
        neg_sorted = self.proba_neg[order]
        cum = np.zeros((w.resamples, n0 + 1), dtype=np.int32)  # counts <= n0, sums <= 2 * n0
        np.cumsum(w.neg_int[:, order], axis=1, dtype=np.int32, out=cum[:, 1:])
        below = np.searchsorted(neg_sorted, self.proba_pos, side="left")
        up_to = np.searchsorted(neg_sorted, self.proba_pos, side="right")
        # twice (negatives strictly below + half of the tied ones), exact in integers
        twice = np.take(cum, below, axis=1)
        twice += np.take(cum, up_to, axis=1)
        return np.einsum("bi,bi->b", w.pos, twice.astype(float)) / (2.0 * n1 * n0)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(low), float(high)


# --- tests ------------------------------------------------------------------------------------


def _delong_structural(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014) with midranks: AUCs and their covariance, scores (k, n)."""
    pos = y == 1
    x, z = scores[:, pos], scores[:, ~pos]
    m, n = x.shape[1], z.shape[1]
    tx = stats.rankdata(x, axis=1)  # "average" = midranks
    tz = stats.rankdata(z, axis=1)
    t_all = stats.rankdata(np.concatenate([x, z], axis=1), axis=1)
    aucs = t_all[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (t_all[:, :m] - tx) / n  # per positive: share of negatives ranked below
    v10 = 1.0 - (t_all[:, m:] - tz) / m  # per negative: share of positives ranked above
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, cov


def delong_test(y_true: ArrayLike, cand_proba: ArrayLike, ref_proba: ArrayLike) -> float:
    """Two-sided p of the paired DeLong test that both ROC-AUCs are equal.

    With a constant reference its AUC is 0.5 with no variance (and no covariance), so this is
    the candidate's AUC against 0.5 with the candidate's own DeLong variance.
    """
    y = _targets(y_true)
    cand = _proba("cand_proba", cand_proba, len(y))
    ref = _proba("ref_proba", ref_proba, len(y))
    if np.array_equal(cand, ref):
        return 1.0
    aucs, cov = _delong_structural(y, np.vstack([cand, ref]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if not var > 1e-18:  # both perfectly separating, or identical rankings
        return 1.0 if abs(diff) < 1e-12 else 0.0
    return float(2.0 * stats.norm.sf(abs(diff) / math.sqrt(var)))


def mcnemar_test(y_true: ArrayLike, cand_labels: ArrayLike, ref_labels: ArrayLike) -> float:
    """Exact McNemar: two-sided binomial test on the rows exactly one of the models gets right."""
    y = _binary("y_true", y_true, None)
    cand_right = _binary("cand_labels", cand_labels, len(y)) == y
    ref_right = _binary("ref_labels", ref_labels, len(y)) == y
    only_cand = int((cand_right & ~ref_right).sum())
    only_ref = int((~cand_right & ref_right).sum())
    if only_cand + only_ref == 0:
        return 1.0
    return float(stats.binomtest(only_cand, only_cand + only_ref, 0.5).pvalue)


# --- public entry points ----------------------------------------------------------------------


def majority_baseline(y_train: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference when there is no champion: the training prior as a constant score and the
    majority label (ties go to 1), for n holdout rows."""
    y = _binary("y_train", y_train, None)
    if len(y) == 0:
        raise ValueError("y_train is empty")
    prior = float(y.mean())
    return np.full(n, prior), np.full(n, 1 if prior >= 0.5 else 0, dtype=int)


def metric_value(metric: str, y_true: ArrayLike, proba: ArrayLike, labels: ArrayLike) -> float:
    """One metric on all rows, computed like scikit-learn (log_loss on clipped probabilities)."""
    (metric,) = _check_metrics((metric,))
    y = _targets(y_true)
    model = _Model(y, _proba("proba", proba, len(y)), _binary("labels", labels, len(y)))
    n1 = int(y.sum())
    return float(model.draws(metric, _Weights.ones(n1, len(y) - n1))[0])


def paired_comparison(
    y_true: ArrayLike,
    cand_proba: ArrayLike,
    cand_labels: ArrayLike,
    ref_proba: ArrayLike | None = None,
    ref_labels: ArrayLike | None = None,
    *,
    metrics: Sequence[str] = METRICS,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, MetricComparison]:
    """Candidate against reference on the same rows, metric by metric, with intervals and tests.

    Labels are those each model serves. A constant reference (``majority_baseline``) has ROC-AUC
    exactly 0.5 in every resample. Differences are sign-adjusted: positive = candidate better.
    """
    metrics = _check_metrics(metrics)
    _check_settings(resamples, confidence)
    if ref_proba is None or ref_labels is None:
        raise ValueError(
            "pass the reference's ref_proba and ref_labels; with no champion use a constant "
            "baseline: ref_proba, ref_labels = majority_baseline(y_train, len(y_true))"
        )
    y = _targets(y_true)
    n = len(y)
    cand_p, ref_p = _proba("cand_proba", cand_proba, n), _proba("ref_proba", ref_proba, n)
    cand_l, ref_l = _binary("cand_labels", cand_labels, n), _binary("ref_labels", ref_labels, n)
    cand, ref = _Model(y, cand_p, cand_l), _Model(y, ref_p, ref_l)
    n1 = int(y.sum())  # the full rows once (the estimate), and the shared stratified resamples
    full, resampled = _Weights.ones(n1, n - n1), _Weights.bootstrap(y, int(resamples), seed)
    paired = f"stratified paired bootstrap, {resamples} resamples, {confidence * 100:g}%"

    out: dict[str, MetricComparison] = {}
    for metric in metrics:
        sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
        cand_draws, ref_draws = cand.draws(metric, resampled), ref.draws(metric, resampled)
        cand_est, ref_est = float(cand.draws(metric, full)[0]), float(ref.draws(metric, full)[0])
        diff_draws = sign * (cand_draws - ref_draws)
        p_value: float | None = None
        test: str | None = None
        if metric == "roc_auc":
            p_value = delong_test(y, cand_p, ref_p)
            test = (
                "DeLong, candidate ROC-AUC vs 0.5 (constant reference), two-sided"
                if ref.constant_score
                else "DeLong paired ROC-AUC difference, two-sided"
            )
        elif metric == "accuracy":
            p_value = mcnemar_test(y, cand_l, ref_l)
            test = "exact McNemar (binomial on discordant pairs), two-sided"
        out[metric] = MetricComparison(
            metric=metric,
            candidate=Evidence(cand_est, *_percentiles(cand_draws, confidence), len(y), paired),
            reference=Evidence(ref_est, *_percentiles(ref_draws, confidence), len(y), paired),
            difference=Evidence(
                sign * (cand_est - ref_est), *_percentiles(diff_draws, confidence), len(y), paired
            ),
            p_value=p_value,
            test=test,
            draws=diff_draws,
        )
    log.debug(
        "paired comparison on %d rows, %d resamples: %s",
        len(y),
        resamples,
        {m: round(c.difference.estimate, 4) for m, c in out.items()},
    )
    return out
