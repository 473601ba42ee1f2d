"""Production monitoring of the served model: pure functions on a window of logged predictions
(`PredictionReader.window(..., features=True)`); a check without enough samples says so.

Only what hurts users and is measured directly rolls back: a significant error rate or
accuracy drop (exact binomial tests), or, once the labels came, a champion significantly worse
than the version it replaced on the same requests (lib.watch.late_judgement). p99 latency,
ROC-AUC and drift only warn: the previous model saw the same old data, so drift asks for
retraining and a person's look, never for a rollback.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lib.config_sections import MonitorConfig
from lib.pipeline import evaluation
from lib.watch.drift import current_inputs, feature_drift, prediction_drift
from lib.watch.health_report import (
    ALERT,
    CRITICAL,
    NO_DATA,
    OK,
    SKIPPED,
    WARNING,
    CheckResult,
    MonitorReport,
)
from lib.watch.late_judgement import Judged, estimate_against_labels, judge_against_predecessor
from lib.window_stats import (
    error_rate_p_value,
    failed_requests,
    fmt_count,
    fmt_ms,
    fmt_p,
    fmt_percent,
    is_nan,
)

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("variant", "model_version", "label", "probability", "latency_ms", "error")


def _prepare(window: pd.DataFrame) -> pd.DataFrame:
    """Typed copy with `is_error`: an error message, or no label at all, means a failed request."""
    missing = [c for c in REQUIRED_COLUMNS if c not in window.columns]
    if missing:
        raise ValueError(
            f"prediction window lacks column(s) {', '.join(missing)}; "
            f"expected at least {', '.join(REQUIRED_COLUMNS)}"
        )
    frame = window.copy()
    frame["is_error"] = failed_requests(frame)
    if "true_label" not in frame.columns:
        frame["true_label"] = np.nan
    for col in ("label", "probability", "latency_ms", "true_label"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["variant"] = frame["variant"].astype(str)
    frame["model_version"] = frame["model_version"].astype(str)
    return frame


def _latency(values: pd.Series) -> dict[str, float]:
    values = values.dropna().to_numpy(dtype=float)
    found = np.percentile(values, [50, 90, 99]) if len(values) else [math.nan] * 3
    return {key: float(v) for key, v in zip(("p50_ms", "p90_ms", "p99_ms"), found, strict=True)}


def _traffic(frame: pd.DataFrame) -> dict[str, Any]:
    n, k = len(frame), int(frame["is_error"].sum())
    return {
        "requests": n,
        "errors": k,
        "error_rate": k / n if n else math.nan,
        **_latency(frame["latency_ms"]),
    }


def traffic_summary(window: pd.DataFrame) -> dict[str, Any]:
    """Volume, error rate and latency percentiles, overall and per variant / model version."""
    frame = _prepare(window)
    summary = _traffic(frame)
    if "created_at" in frame.columns and len(frame):
        created = pd.to_numeric(frame["created_at"], errors="coerce")
        summary["first_request"] = float(created.min())
        summary["last_request"] = float(created.max())
    summary["by_variant"] = {
        str(v): _traffic(g) for v, g in frame.groupby("variant", sort=True, dropna=False)
    }
    summary["groups"] = [
        {"variant": str(v), "model_version": str(m), **_traffic(g)}
        for (v, m), g in frame.groupby(["variant", "model_version"], sort=True, dropna=False)
    ]
    return summary


# ---------------------------------------------------------------------------- performance


def _reference_value(reference: dict[str, float], metric: str) -> float:
    """`accuracy`, or the champion's MLflow run metric name `holdout_accuracy`."""
    for key in (metric, f"holdout_{metric}"):
        value = reference.get(key)
        if value is not None and not is_nan(float(value)):
            return float(value)
    return math.nan


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982): the sampling error of a ROC-AUC, from its value and class sizes."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 1e-12))


def performance(
    window: pd.DataFrame, reference: dict[str, float], cfg: MonitorConfig | None = None
) -> dict[str, Any]:
    """Accuracy and ROC-AUC on labeled feedback (requests that did not fail) vs the champion's
    validation; p-values test "live >= reference - degradation" (small: worse than the bound)."""
    cfg = cfg or MonitorConfig()
    frame = _prepare(window)
    labeled = frame[~frame["is_error"] & frame["true_label"].notna()]
    n = len(labeled)
    correct = int((labeled["label"] == labeled["true_label"]).sum())
    ref_acc = _reference_value(reference, "accuracy")
    ref_auc = _reference_value(reference, "roc_auc")
    out: dict[str, Any] = {
        "labeled": n,
        "correct": correct,
        "accuracy": correct / n if n else math.nan,
        "reference_accuracy": ref_acc,
        "accuracy_bound": ref_acc - cfg.degradation,
        "accuracy_p_value": math.nan,
        "roc_auc": math.nan,
        "reference_roc_auc": ref_auc,
        "roc_auc_bound": ref_auc - cfg.degradation,
        "roc_auc_p_value": math.nan,
        "positives": int((labeled["true_label"] == 1).sum()),
        **estimate_against_labels(frame, labeled),
    }
    if n and not is_nan(ref_acc):
        bound = min(max(ref_acc - cfg.degradation, 0.0), 1.0)
        # exact: P(at most `correct` right | true accuracy = bound)
        out["accuracy_p_value"] = float(stats.binom.cdf(correct, n, bound))
    scored = labeled[labeled["probability"].notna()]
    if len(scored):
        with warnings.catch_warnings():  # one class in the feedback: AUC is NaN, said below
            warnings.simplefilter("ignore", UserWarning)
            served = scored["label"]  # the tuned threshold's labels (_prepare checks the column)
            metrics = evaluation.evaluate(
                scored["true_label"].astype(int),
                scored["probability"],
                None if served.isna().any() else served.astype(int),
            )
        out.update({k: v for k, v in metrics.items() if k != "accuracy"})
        n_pos = int((scored["true_label"] == 1).sum())
        n_neg = len(scored) - n_pos
        auc = metrics["roc_auc"]
        if n_pos and n_neg and not is_nan(auc) and not is_nan(ref_auc):
            se = auc_standard_error(auc, n_pos, n_neg)
            out["roc_auc_p_value"] = float(stats.norm.cdf((auc - out["roc_auc_bound"]) / se))
    return out


# ---------------------------------------------------------------------------- checks


def check_error_rate(frame: pd.DataFrame, cfg: MonitorConfig) -> CheckResult:
    """Critical (rollback) when the error rate is significantly above its bound."""
    n, k = len(frame), int(frame["is_error"].sum())
    rate = k / n if n else math.nan
    bound = cfg.max_error_rate
    seen = f"error rate {fmt_percent(rate)} ({k}/{fmt_count(n)} requests)"
    if n < cfg.min_requests:
        msg = f"not enough data (n={n}, {cfg.min_requests} needed) to judge the error rate; {seen}"
        return CheckResult("error_rate", NO_DATA, msg, rate, bound, n)
    p = error_rate_p_value(k, n, bound)  # small: worse than the bound
    if rate > bound and p < cfg.alpha:
        msg = (
            f"{seen} > {fmt_percent(bound)} bound, one-sided exact binomial test "
            f"p={fmt_p(p)} < {cfg.alpha:g}"
        )
        return CheckResult("error_rate", ALERT, msg, rate, bound, n, CRITICAL, p)
    if rate > bound:
        msg = (
            f"{seen} above {fmt_percent(bound)} but not significantly "
            f"(p={fmt_p(p)} >= {cfg.alpha:g})"
        )
    else:
        msg = f"{seen} <= {fmt_percent(bound)}"
    return CheckResult("error_rate", OK, msg, rate, bound, n, None, p)


def check_latency(frame: pd.DataFrame, cfg: MonitorConfig) -> CheckResult:
    """Warning when the p99 latency is above the bound: slow, but answers are still right."""
    latencies = frame["latency_ms"].dropna()
    n, bound = len(latencies), cfg.max_p99_ms
    p99 = _latency(latencies)["p99_ms"]
    if n < cfg.min_requests:
        msg = f"not enough data (n={n}, {cfg.min_requests} needed) to judge the p99 latency"
        return CheckResult("latency_p99", NO_DATA, msg, p99, bound, n)
    seen = f"p99 latency {fmt_ms(p99)} over {fmt_count(n)} requests"
    if p99 > bound:
        msg = f"{seen} > {fmt_ms(bound)} bound"
        return CheckResult("latency_p99", ALERT, msg, p99, bound, n, WARNING)
    return CheckResult("latency_p99", OK, f"{seen} <= {fmt_ms(bound)}", p99, bound, n)


def check_accuracy(perf: dict[str, Any], cfg: MonitorConfig) -> CheckResult:
    """Critical (rollback) when accuracy is significantly more than `degradation` below."""
    n, acc, ref = perf["labeled"], perf["accuracy"], perf["reference_accuracy"]
    bound, p = perf["accuracy_bound"], perf["accuracy_p_value"]
    if is_nan(ref):
        msg = "no reference accuracy of the champion: accuracy not judged"
        return CheckResult("accuracy", SKIPPED, msg, acc, None, n)
    if n < cfg.min_feedback:
        msg = (
            f"not enough data (n={n}, {cfg.min_feedback} needed) to judge accuracy on feedback; "
            f"so far {perf['correct']}/{n} correct"
        )
        return CheckResult("accuracy", NO_DATA, msg, acc, bound, n)
    drop = 100 * (ref - acc)
    change = f"{drop:.1f} points below" if drop >= 0 else f"{-drop:.1f} points above"
    seen = (
        f"accuracy on {fmt_count(n)} labeled requests {acc:.3f} is {change} the champion's "
        f"validation accuracy {ref:.3f}"
    )
    rule = f"more than {100 * cfg.degradation:g} points below, i.e. < {bound:.3f}"
    if acc < bound and p < cfg.alpha:
        msg = f"{seen} ({rule}); one-sided exact binomial test vs {bound:.3f}: p={fmt_p(p)}"
        return CheckResult("accuracy", ALERT, msg, acc, bound, n, CRITICAL, p)
    if acc < bound:
        msg = f"{seen} ({rule}) but not significantly (p={fmt_p(p)} >= {cfg.alpha:g})"
    else:
        msg = f"{seen}; bound {bound:.3f}"
    return CheckResult("accuracy", OK, msg, acc, bound, n, None, p)


def check_estimate(perf: dict[str, Any], cfg: MonitorConfig) -> CheckResult:
    """Warning when the label-free estimate overstated the realized accuracy, on the same
    labeled requests, significantly by more than `degradation`: a canary judged without labels
    would have trusted it (one-sided z-test on the paired gaps)."""
    n, gap, se = perf["labeled"], perf["estimate_gap"], perf["estimate_gap_se"]
    bound = cfg.degradation
    if n < cfg.min_feedback or is_nan(gap) or is_nan(se):
        msg = (
            f"not enough data (n={n}, {cfg.min_feedback} needed) to compare the estimated "
            "accuracy with the realized one"
        )
        return CheckResult("accuracy_estimate", NO_DATA, msg, gap, bound, n)
    p = float(stats.norm.sf((gap - bound) / max(se, 1e-12)))
    realized = perf["correct"] / n
    seen = (
        f"estimated accuracy (calibrated probabilities) {realized + gap:.3f} vs realized "
        f"{realized:.3f} on the same {fmt_count(n)} labeled requests: the estimate is "
        f"{100 * abs(gap):.1f} points {'high' if gap >= 0 else 'low'} "
        f"(±{196 * se:.1f} at 95%)"
    )
    if gap > bound and p < cfg.alpha:
        msg = f"{seen}, significantly more than {100 * bound:g} points (p={fmt_p(p)})"
        return CheckResult("accuracy_estimate", ALERT, msg, gap, bound, n, WARNING, p)
    return CheckResult("accuracy_estimate", OK, seen, gap, bound, n, None, p)


def check_roc_auc(perf: dict[str, Any], cfg: MonitorConfig) -> CheckResult:
    """Warning when ROC-AUC is significantly more than `degradation` below the reference."""
    n, auc, ref = perf["labeled"], perf["roc_auc"], perf["reference_roc_auc"]
    bound, p = perf["roc_auc_bound"], perf["roc_auc_p_value"]
    if is_nan(ref):
        msg = "no reference ROC-AUC of the champion: ROC-AUC not judged"
        return CheckResult("roc_auc", SKIPPED, msg, auc, None, n)
    if n < cfg.min_feedback or is_nan(auc):
        why = "" if n < cfg.min_feedback else " with both classes"
        msg = f"not enough data (n={n}, {cfg.min_feedback} needed{why}) to judge ROC-AUC"
        return CheckResult("roc_auc", NO_DATA, msg, auc, bound, n)
    seen = (
        f"ROC-AUC on {fmt_count(n)} labeled requests {auc:.3f} "
        f"vs the champion's validation {ref:.3f}"
    )
    if auc < bound and p < cfg.alpha:
        msg = f"{seen}: below {bound:.3f}, one-sided Hanley-McNeil test p={fmt_p(p)}"
        return CheckResult("roc_auc", ALERT, msg, auc, bound, n, WARNING, p)
    msg = f"{seen}; bound {bound:.3f} (p={fmt_p(p)})"
    return CheckResult("roc_auc", OK, msg, auc, bound, n, None, p)


def _drift_check(
    name: str, status: str, message: str, observed: Any, threshold: float, n: int, p: Any = None
) -> CheckResult:
    """A drift check: its alert is a warning (drift asks for retraining, never a rollback)."""
    severity = WARNING if status == ALERT else None
    return CheckResult(name, status, message, observed, threshold, n, severity, p)


def _drift_section(
    frame: pd.DataFrame,
    reference_X: pd.DataFrame | None,
    reference_proba: Any,
    cfg: MonitorConfig,
    reference_labels: Any = None,
) -> tuple[dict[str, Any], list[CheckResult]]:
    checks: list[CheckResult] = []
    drift: dict[str, Any] = {"features": [], "drifted_features": [], "share": math.nan,
                             "dataset_drift": False, "prediction": None}  # fmt: skip
    if reference_X is None:
        checks.append(CheckResult("feature_drift", SKIPPED, "no reference data: drift not judged"))
    elif "features" not in frame.columns:
        msg = "the window has no logged model inputs (features=True): drift not judged"
        checks.append(CheckResult("feature_drift", SKIPPED, msg))
    else:
        current_X = current_inputs(frame)
        features = feature_drift(reference_X, current_X, cfg)
        judged = [f for f in features if f.status in (OK, ALERT)]
        drifted = [f.feature for f in judged if f.drifted]
        share = len(drifted) / len(judged) if judged else math.nan
        drift.update(
            features=[asdict(f) for f in features],
            drifted_features=drifted,
            share=share,
            dataset_drift=bool(judged) and share >= cfg.dataset_drift_share,
        )
        for f in features:
            check = (f.status, f.message, f.psi, cfg.psi_threshold, f.samples, f.p_value)
            checks.append(_drift_check(f"drift:{f.feature}", *check))
        if judged:
            msg = (
                f"{len(drifted)} of {len(judged)} input columns drifted "
                f"({', '.join(drifted) or 'none'}); the data set drifts at "
                f"{fmt_percent(cfg.dataset_drift_share)} or more"
            )
            status = ALERT if drift["dataset_drift"] else OK
            check = (status, msg, share, cfg.dataset_drift_share, len(current_X))
            checks.append(_drift_check("dataset_drift", *check))
    if reference_proba is None:
        msg = "no reference probabilities: prediction drift not judged"
        checks.append(CheckResult("prediction_drift", SKIPPED, msg))
    else:
        served = frame.loc[~frame["is_error"]]
        pred = prediction_drift(
            reference_proba, served["probability"], cfg, reference_labels, served["label"]
        )
        drift["prediction"] = pred
        check = (pred["status"], pred["message"], pred["psi"], cfg.prediction_drift_psi)
        checks.append(_drift_check("prediction_drift", *check, pred["samples"], pred["p_value"]))
    return drift, checks


def evaluate_health(
    window: pd.DataFrame,
    reference_metrics: dict[str, float],
    reference_X: pd.DataFrame | None = None,
    reference_proba: Any = None,
    cfg: MonitorConfig | None = None,
    reference_labels: Any = None,
    judged: Judged | None = None,
) -> MonitorReport:
    """Every check on one window; rollback only on a significant accuracy drop or error rate,
    or (`judged`: the predictions old enough for their labels) a champion significantly worse
    than its predecessor on the same requests. reference_X / reference_proba (None skips drift)
    and reference_labels (the labels served at the tuned threshold, for the positive rate)
    describe the champion's training data."""
    cfg = cfg or MonitorConfig()
    frame = _prepare(window)
    perf = performance(frame if judged is None else judged.answered(), reference_metrics, cfg)
    checks = [
        check_error_rate(frame, cfg),
        check_latency(frame, cfg),
        check_accuracy(perf, cfg),
        check_estimate(perf, cfg),
        check_roc_auc(perf, cfg),
    ]
    metrics: dict[str, Any] = {"traffic": traffic_summary(frame), "performance": perf}
    if judged is not None:
        late_check, metrics["against_predecessor"] = judge_against_predecessor(judged, cfg)
        checks.append(late_check)
    drift, drift_checks = _drift_section(frame, reference_X, reference_proba, cfg, reference_labels)
    checks.extend(drift_checks)
    alerts = [a for a in (c.alert() for c in checks) if a is not None]
    critical = [a for a in alerts if a.severity == CRITICAL]
    rollback = bool(critical)
    reason = "; ".join(a.message for a in critical) if critical else None
    report = MonitorReport(
        healthy=not alerts,
        alerts=alerts,
        rollback=rollback,
        rollback_reason=reason,
        drift=drift,
        metrics=metrics,
        checks=checks,
    )
    if rollback:
        logger.warning("monitor: rollback needed: %s", reason)
    elif alerts:
        logger.warning("monitor: %d alert(s): %s", len(alerts), "; ".join(a.check for a in alerts))
    else:
        logger.info("monitor: healthy (%d requests)", len(frame))
    return report
