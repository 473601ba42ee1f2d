"""Production monitoring of the served model: pure functions on a window of logged predictions.

The window is `PredictionStore.window(since, until, variant, features=True)`:
one row per request, its feedback joined in. Pass the window of the model you judge (usually the
`champion` variant): accuracy mixes whatever versions the window holds.

Checks (each knows its sample size and says "not enough data (n=...)" rather than pass or fail):

- error rate: Flagger's success rate >= 99%, one-sided exact binomial test against the bound;
- p99 latency: Flagger's 500 ms bound (warning only);
- accuracy on feedback: the mission's rule, more than `degradation` below the champion's
  validation (holdout) accuracy, one-sided exact binomial test against that bound;
- ROC-AUC on feedback: same bound, Hanley-McNeil standard error (warning only);
- drift of every model input and of the predicted probabilities (warning only).

Rollback is reserved for what hurts users now and is measured directly: a significant accuracy
drop or a significant error rate. Drift says the world changed; the previous model saw the same
old data, so drift asks for retraining and a person's look, never for a rollback.

Drift rule: a column drifts when PSI > psi_threshold (the size of the shift) AND its test (KS for
numeric, chi-square for categorical) has p < drift_alpha (the shift is not sampling noise). PSI
alone false-alarms on small samples (30 categories seen in 100 requests give PSI ~0.3 with no
drift at all); a test alone flags negligible shifts once samples are large. The data set drifts
when at least `dataset_drift_share` of the judged columns drift (Evidently's rule).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lib.delivery.canary import _clean, _ms, _n, _p, _pct
from lib.pipeline import training
from lib.pipeline.features import CATEGORICAL, FEATURE_COLUMNS, TEXT

logger = logging.getLogger(__name__)

OK, ALERT, NO_DATA, SKIPPED = "ok", "alert", "not_enough_data", "skipped"
WARNING, CRITICAL = "warning", "critical"
PSI_EPS = 1e-4  # share given to an empty bin (Evidently's choice): log(0) would be infinite
MISSING = "<missing>"  # a missing value is a category (and a bin) of its own
UNSEEN = "<unseen>"  # categories absent from the reference, grouped into one bin
REQUIRED_COLUMNS = ("variant", "model_version", "label", "probability", "latency_ms", "error")


@dataclass
class MonitorConfig:
    """Bounds of one monitoring pass; defaults follow Flagger, Evidently and the mission."""

    window_seconds: int = 3600  # the window the caller reads from the store
    degradation: float = 0.02  # accuracy more than 2 points below the champion's validation
    min_feedback: int = 100  # labeled requests needed to judge accuracy / ROC-AUC
    alpha: float = 0.05  # for the accuracy, ROC-AUC and error-rate tests
    max_error_rate: float = 0.01  # Flagger: success rate >= 99%
    min_requests: int = 50  # to judge the error rate and the p99 latency
    max_p99_ms: float = 500.0  # Flagger's request-duration default
    psi_threshold: float = 0.1  # Evidently's PSI threshold
    drift_alpha: float = 0.05  # KS (numeric) / chi-square (categorical)
    min_drift_samples: int = 100  # current rows needed to judge drift
    dataset_drift_share: float = 0.5  # Evidently: the data set drifts when half its columns do
    prediction_drift_psi: float = 0.1  # PSI of the predicted probabilities

    def __post_init__(self) -> None:
        problems = []
        for name in ("alpha", "drift_alpha"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0, 1), got {getattr(self, name)!r}")
        if not 0 < self.dataset_drift_share <= 1:
            problems.append(
                f"dataset_drift_share must be in (0, 1], got {self.dataset_drift_share}"
            )
        if not 0 <= self.max_error_rate < 1:
            problems.append(f"max_error_rate must be in [0, 1), got {self.max_error_rate}")
        for f in dataclasses.fields(self):
            if f.name not in ("alpha", "drift_alpha", "dataset_drift_share", "max_error_rate"):
                if getattr(self, f.name) < 0:
                    problems.append(f"{f.name} must not be negative, got {getattr(self, f.name)}")
        if problems:
            raise ValueError("invalid monitoring config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MonitorConfig:
        """From the YAML config: a typo must not silently fall back to a default."""
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown monitoring setting(s): {', '.join(unknown)}; known: {', '.join(fields)}"
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = int if fields[name].type in ("int", int) else float
            try:
                if isinstance(value, bool) or value is None:
                    raise TypeError
                number = float(value)
                if kind is int and not number.is_integer():
                    raise TypeError
                values[name] = kind(number)
            except (TypeError, ValueError):
                wanted = "an integer" if kind is int else "a number"
                raise ValueError(
                    f"monitoring setting {name} must be {wanted}, got {value!r}"
                ) from None
        return cls(**values)


@dataclass
class Alert:
    """A check that crossed its threshold: what it saw, against what, on how many samples."""

    check: str
    severity: str  # warning / critical (critical ones roll back)
    message: str
    observed: float | None
    threshold: float | None
    samples: int


@dataclass
class CheckResult:
    """One check's outcome; kept for the report even when it passed or had too little data."""

    name: str
    status: str  # ok / alert / not_enough_data / skipped
    message: str
    observed: float | None = None
    threshold: float | None = None
    samples: int = 0
    severity: str | None = None  # set when status is alert
    p_value: float | None = None

    def alert(self) -> Alert | None:
        if self.status != ALERT:
            return None
        severity = self.severity or WARNING
        return Alert(self.name, severity, self.message, self.observed, self.threshold, self.samples)


@dataclass
class FeatureDrift:
    """Drift of one model input between the reference (training) data and the window."""

    feature: str
    kind: str  # numeric / categorical
    test: str  # ks / chi2
    psi: float | None
    statistic: float | None
    p_value: float | None
    drifted: bool
    samples: int  # current rows
    reference_samples: int
    status: str  # ok / alert / not_enough_data / skipped
    message: str


@dataclass
class MonitorReport:
    """The verdict of one monitoring pass; `to_dict()` is what notebooks and reports store."""

    healthy: bool  # no alert of any severity
    alerts: list[Alert]
    rollback: bool  # only a significant accuracy drop or error rate sets it
    rollback_reason: str | None
    drift: dict[str, Any]
    metrics: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)

    def by_name(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinities become null, NumPy scalars plain numbers."""
        return _clean(
            {
                "healthy": self.healthy,
                "rollback": self.rollback,
                "rollback_reason": self.rollback_reason,
                "alerts": [asdict(a) for a in self.alerts],
                "checks": [asdict(c) for c in self.checks],
                "metrics": self.metrics,
                "drift": self.drift,
            }
        )


# ---------------------------------------------------------------------------- preparation


def _nan(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _prepare(window: pd.DataFrame) -> pd.DataFrame:
    """Typed copy with `is_error`: an error message, or no label at all, means a failed request."""
    missing = [c for c in REQUIRED_COLUMNS if c not in window.columns]
    if missing:
        raise ValueError(
            f"prediction window lacks column(s) {', '.join(missing)}; "
            f"expected at least {', '.join(REQUIRED_COLUMNS)}"
        )
    frame = window.copy()
    error_text = frame["error"].astype("object").where(frame["error"].notna(), "")
    label = pd.to_numeric(frame["label"], errors="coerce")
    frame["is_error"] = (error_text.astype(str).str.strip() != "") | label.isna()
    frame["label"] = label
    for col in ("probability", "latency_ms"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    if "true_label" in frame.columns:
        frame["true_label"] = pd.to_numeric(frame["true_label"], errors="coerce")
    else:
        frame["true_label"] = np.nan
    frame["variant"] = frame["variant"].astype(str)
    frame["model_version"] = frame["model_version"].astype(str)
    return frame


def current_inputs(window: pd.DataFrame) -> pd.DataFrame:
    """The model inputs logged with each request (the `features` dicts), as FEATURE_COLUMNS."""
    if "features" not in window.columns:
        return pd.DataFrame(columns=FEATURE_COLUMNS)
    rows = [f for f in window["features"] if isinstance(f, dict)]
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    # Predictions logged before a column existed (e.g. the derived inputs) lack its key: NaN
    # here, and attrs["logged"] says which rows really carry the column, so drift is judged on
    # those only (a NaN that is "not logged" is not a missing value of the app).
    logged = {c: [c in f for f in rows] for c in FEATURE_COLUMNS}
    frame = frame.reindex(columns=FEATURE_COLUMNS)
    frame.attrs["logged"] = logged
    for col in FEATURE_COLUMNS:
        if col in CATEGORICAL or col in TEXT:
            frame[col] = frame[col].astype(object)
        else:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame


def _latency(values: pd.Series) -> dict[str, float]:
    values = values.dropna().to_numpy(dtype=float)
    if not len(values):
        return {"p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


def _traffic(frame: pd.DataFrame) -> dict[str, Any]:
    n, k = len(frame), int(frame["is_error"].sum())
    return {
        "requests": n,
        "errors": k,
        "error_rate": k / n if n else math.nan,
        **_latency(frame["latency_ms"]),
    }


# ---------------------------------------------------------------------------- traffic


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
        if value is not None and not _nan(float(value)):
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
    """Accuracy and ROC-AUC on labeled feedback vs the champion's validation figures.

    Labeled = feedback present and the request did not fail. The p-values are one-sided tests of
    "live value >= reference - degradation": small means significantly worse than the bound.
    """
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
    }
    if n and not _nan(ref_acc):
        bound = min(max(ref_acc - cfg.degradation, 0.0), 1.0)
        # exact: P(at most `correct` right | true accuracy = bound)
        out["accuracy_p_value"] = float(stats.binom.cdf(correct, n, bound))
    scored = labeled[labeled["probability"].notna()]
    if len(scored):
        with warnings.catch_warnings():  # one class in the feedback: AUC is NaN, said below
            warnings.simplefilter("ignore", UserWarning)
            served = scored["label"] if "label" in scored else None  # the tuned threshold's labels
            metrics = training.evaluate(
                scored["true_label"].astype(int),
                scored["probability"],
                None if served is None or served.isna().any() else served.astype(int),
            )
        out.update({k: v for k, v in metrics.items() if k != "accuracy"})
        n_pos = int((scored["true_label"] == 1).sum())
        n_neg = len(scored) - n_pos
        auc = metrics["roc_auc"]
        if n_pos and n_neg and not _nan(auc) and not _nan(ref_auc):
            se = auc_standard_error(auc, n_pos, n_neg)
            out["roc_auc_p_value"] = float(stats.norm.cdf((auc - out["roc_auc_bound"]) / se))
    return out


# ---------------------------------------------------------------------------- checks


def check_error_rate(frame: pd.DataFrame, cfg: MonitorConfig) -> CheckResult:
    """Critical (rollback) when the error rate is significantly above its bound."""
    n, k = len(frame), int(frame["is_error"].sum())
    rate = k / n if n else math.nan
    bound = cfg.max_error_rate
    seen = f"error rate {_pct(rate)} ({k}/{_n(n)} requests)"
    if n < cfg.min_requests:
        msg = f"not enough data (n={n}, {cfg.min_requests} needed) to judge the error rate; {seen}"
        return CheckResult("error_rate", NO_DATA, msg, rate, bound, n)
    # P(at least k errors | true rate = bound): small means worse than the bound
    p = float(stats.binom.sf(k - 1, n, bound))
    if rate > bound and p < cfg.alpha:
        msg = (
            f"{seen} > {_pct(bound)} bound, one-sided exact binomial test p={_p(p)} < {cfg.alpha:g}"
        )
        return CheckResult("error_rate", ALERT, msg, rate, bound, n, CRITICAL, p)
    if rate > bound:
        msg = f"{seen} above {_pct(bound)} but not significantly (p={_p(p)} >= {cfg.alpha:g})"
    else:
        msg = f"{seen} <= {_pct(bound)}"
    return CheckResult("error_rate", OK, msg, rate, bound, n, None, p)


def check_latency(frame: pd.DataFrame, cfg: MonitorConfig) -> CheckResult:
    """Warning when the p99 latency is above the bound: slow, but answers are still right."""
    latencies = frame["latency_ms"].dropna()
    n = len(latencies)
    p99 = _latency(latencies)["p99_ms"]
    if n < cfg.min_requests:
        msg = f"not enough data (n={n}, {cfg.min_requests} needed) to judge the p99 latency"
        return CheckResult("latency_p99", NO_DATA, msg, p99, cfg.max_p99_ms, n)
    seen = f"p99 latency {_ms(p99)} over {_n(n)} requests"
    if p99 > cfg.max_p99_ms:
        msg = f"{seen} > {_ms(cfg.max_p99_ms)} bound"
        return CheckResult("latency_p99", ALERT, msg, p99, cfg.max_p99_ms, n, WARNING)
    return CheckResult(
        "latency_p99", OK, f"{seen} <= {_ms(cfg.max_p99_ms)}", p99, cfg.max_p99_ms, n
    )


def check_accuracy(perf: dict[str, Any], cfg: MonitorConfig) -> CheckResult:
    """Critical (rollback) when accuracy is significantly more than `degradation` below."""
    n, acc, ref = perf["labeled"], perf["accuracy"], perf["reference_accuracy"]
    bound, p = perf["accuracy_bound"], perf["accuracy_p_value"]
    if _nan(ref):
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
        f"accuracy on {_n(n)} labeled requests {acc:.3f} is {change} the champion's "
        f"validation accuracy {ref:.3f}"
    )
    rule = f"more than {100 * cfg.degradation:g} points below, i.e. < {bound:.3f}"
    if acc < bound and p < cfg.alpha:
        msg = f"{seen} ({rule}); one-sided exact binomial test vs {bound:.3f}: p={_p(p)}"
        return CheckResult("accuracy", ALERT, msg, acc, bound, n, CRITICAL, p)
    if acc < bound:
        msg = f"{seen} ({rule}) but not significantly (p={_p(p)} >= {cfg.alpha:g})"
    else:
        msg = f"{seen}; bound {bound:.3f}"
    return CheckResult("accuracy", OK, msg, acc, bound, n, None, p)


def check_roc_auc(perf: dict[str, Any], cfg: MonitorConfig) -> CheckResult:
    """Warning when ROC-AUC is significantly more than `degradation` below the reference."""
    n, auc, ref = perf["labeled"], perf["roc_auc"], perf["reference_roc_auc"]
    bound, p = perf["roc_auc_bound"], perf["roc_auc_p_value"]
    if _nan(ref):
        msg = "no reference ROC-AUC of the champion: ROC-AUC not judged"
        return CheckResult("roc_auc", SKIPPED, msg, auc, None, n)
    if n < cfg.min_feedback or _nan(auc):
        why = "" if n < cfg.min_feedback else " with both classes"
        msg = f"not enough data (n={n}, {cfg.min_feedback} needed{why}) to judge ROC-AUC"
        return CheckResult("roc_auc", NO_DATA, msg, auc, bound, n)
    seen = f"ROC-AUC on {_n(n)} labeled requests {auc:.3f} vs the champion's validation {ref:.3f}"
    if auc < bound and p < cfg.alpha:
        msg = f"{seen}: below {bound:.3f}, one-sided Hanley-McNeil test p={_p(p)}"
        return CheckResult("roc_auc", ALERT, msg, auc, bound, n, WARNING, p)
    return CheckResult(
        "roc_auc", OK, f"{seen}; bound {bound:.3f} (p={_p(p)})", auc, bound, n, None, p
    )


# ---------------------------------------------------------------------------- drift


def _is_categorical(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return True
    if pd.api.types.is_numeric_dtype(values):
        return False
    kind = pd.api.types.infer_dtype(values, skipna=True)
    return kind not in ("floating", "integer", "mixed-integer-float", "decimal", "empty")


def _as_float(values: Any) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


def _as_category(values: Any) -> pd.Series:
    series = pd.Series(values, dtype=object)
    return series.where(series.notna(), MISSING).astype(str)


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return math.nan
    r = np.clip(ref_counts / ref_counts.sum(), PSI_EPS, None)
    c = np.clip(cur_counts / cur_counts.sum(), PSI_EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _numeric_counts(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts in the reference's quantile bins, plus one bin for missing values."""
    ref_ok = ref[~np.isnan(ref)]
    if len(ref_ok):
        edges = np.unique(np.quantile(ref_ok, np.linspace(0, 1, bins + 1))[1:-1])
    else:
        edges = np.array([])

    def counts(x: np.ndarray) -> np.ndarray:
        ok = x[~np.isnan(x)]
        binned = np.bincount(np.searchsorted(edges, ok, side="right"), minlength=len(edges) + 1)
        return np.append(binned, np.isnan(x).sum()).astype(float)

    return counts(ref), counts(cur)


def _categorical_counts(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Counts per reference category, plus one bin for every category the reference lacks."""
    cats = sorted(set(ref))
    ref_counts = ref.value_counts()
    cur_mapped = cur.where(cur.isin(cats), UNSEEN).value_counts()
    ref_c = np.array([ref_counts.get(c, 0) for c in cats] + [0], dtype=float)
    cur_c = np.array([cur_mapped.get(c, 0) for c in cats] + [cur_mapped.get(UNSEEN, 0)], float)
    return ref_c, cur_c


def psi(
    reference_values: Any, current_values: Any, bins: int = 10, categorical: bool | None = None
) -> float:
    """Population stability index: sum over bins of (cur - ref) * ln(cur / ref) of the shares.

    Numeric: `bins` quantile bins of the reference (ties merge bins) and a missing-value bin.
    Categorical (inferred from the dtype unless given): one bin per reference category and one
    for all unseen ones. Empty bins get a share of PSI_EPS. NaN when either side is empty.
    """
    ref_s, cur_s = pd.Series(reference_values), pd.Series(current_values)
    if categorical is None:
        categorical = _is_categorical(ref_s.dropna()) or _is_categorical(cur_s.dropna())
    if categorical:
        ref_c, cur_c = _categorical_counts(_as_category(ref_s), _as_category(cur_s))
    else:
        ref_c, cur_c = _numeric_counts(_as_float(ref_s), _as_float(cur_s), bins)
    return _psi_from_counts(ref_c, cur_c)


def _ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if not len(ref) or not len(cur):
        return math.nan, math.nan
    result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def _chi2(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    """Chi-square test of homogeneity on the category counts of both samples."""
    cats = sorted(set(ref) | set(cur))
    table = np.array(
        [[(ref == c).sum() for c in cats], [(cur == c).sum() for c in cats]], dtype=float
    )
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    statistic, p, _, _ = stats.chi2_contingency(table)
    return float(statistic), float(p)


def _drift_verdict(psi_value: float, p: float, psi_threshold: float, alpha: float) -> bool:
    return not _nan(psi_value) and not _nan(p) and psi_value > psi_threshold and p < alpha


def feature_drift(
    reference_X: pd.DataFrame, current_X: pd.DataFrame, cfg: MonitorConfig | None = None
) -> list[FeatureDrift]:
    """PSI and KS / chi-square of every FEATURE_COLUMN; drifted = PSI > threshold AND p < alpha.

    Free text (the app name) is neither a number nor a category: it is not judged itself, its
    statistics (name_length, name_words, ...) are derived columns that are.
    """
    cfg = cfg or MonitorConfig()
    results = []
    for col in FEATURE_COLUMNS:
        if col in TEXT:
            continue
        kind = "categorical" if col in CATEGORICAL else "numeric"
        test = "chi2" if kind == "categorical" else "ks"
        n_ref = len(reference_X) if col in reference_X.columns else 0
        n_cur = len(current_X) if col in current_X.columns else 0
        base = {"feature": col, "kind": kind, "test": test, "samples": n_cur}
        base["reference_samples"] = n_ref
        current = current_X[col] if col in current_X.columns else None
        logged = current_X.attrs.get("logged", {}).get(col)
        if current is not None and logged is not None and len(logged) == len(current):
            current = current[np.asarray(logged, dtype=bool)]  # rows logged with this column
            n_cur = len(current)
            base["samples"] = n_cur
        if col not in reference_X.columns or col not in current_X.columns or not n_ref:
            side = "reference" if col not in reference_X.columns or not n_ref else "window"
            msg = f"{col}: not in the {side} data; drift not judged"
            results.append(FeatureDrift(**base, psi=None, statistic=None, p_value=None,
                                        drifted=False, status=SKIPPED, message=msg))  # fmt: skip
            continue
        if n_cur < cfg.min_drift_samples:
            msg = f"{col}: not enough data (n={n_cur}, {cfg.min_drift_samples} needed) for drift"
            results.append(FeatureDrift(**base, psi=None, statistic=None, p_value=None,
                                        drifted=False, status=NO_DATA, message=msg))  # fmt: skip
            continue
        if kind == "categorical":
            ref, cur = _as_category(reference_X[col]), _as_category(current)
            value = _psi_from_counts(*_categorical_counts(ref, cur))
            statistic, p = _chi2(ref, cur)
        else:
            ref, cur = _as_float(reference_X[col]), _as_float(current)
            value = _psi_from_counts(*_numeric_counts(ref, cur, 10))
            statistic, p = _ks(ref, cur)
        drifted = _drift_verdict(value, p, cfg.psi_threshold, cfg.drift_alpha)
        seen = (
            f"{col}: PSI {value:.3f} (threshold {cfg.psi_threshold:g}), "
            f"{'chi-square' if test == 'chi2' else 'KS'} p={_p(p)} (alpha {cfg.drift_alpha:g}) "
            f"on {_n(n_cur)} requests vs {_n(n_ref)} reference rows"
        )
        if drifted:
            msg = f"{seen}: drifted"
        elif value > cfg.psi_threshold:
            msg = f"{seen}: PSI above threshold but not significant, no drift"
        else:
            msg = f"{seen}: no drift"
        results.append(FeatureDrift(**base, psi=value, statistic=statistic, p_value=p,
                                    drifted=drifted, status=ALERT if drifted else OK,
                                    message=msg))  # fmt: skip
    return results


def _positive_rate(proba: np.ndarray, labels: Any) -> tuple[float, str]:
    """The share of positive labels: the labels served when known, else probability >= 0.5.

    A tuned model's cut is not 0.5, so its own labels are the only faithful positive rate.
    """
    if labels is not None:
        lab = _as_float(labels)
        lab = lab[~np.isnan(lab)]
        if len(lab):
            return float((lab == 1).mean()), "labels"
    return (float((proba >= 0.5).mean()) if len(proba) else math.nan), "probability >= 0.5"


def prediction_drift(
    reference_proba: Any,
    current_proba: Any,
    cfg: MonitorConfig | None = None,
    reference_labels: Any = None,
    current_labels: Any = None,
) -> dict[str, Any]:
    """PSI and KS of the predicted probabilities, and the change of the positive rate.

    The positive rate counts the labels served (stored with each prediction) when given; without
    labels it falls back to probability >= 0.5 (`positive_rate_from` says which was used).
    """
    cfg = cfg or MonitorConfig()
    ref, cur = _as_float(reference_proba), _as_float(current_proba)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    r_pos, r_from = _positive_rate(ref, reference_labels)
    c_pos, c_from = _positive_rate(cur, current_labels)
    out: dict[str, Any] = {
        "samples": len(cur),
        "reference_samples": len(ref),
        "psi": math.nan,
        "ks_statistic": math.nan,
        "p_value": math.nan,
        "reference_positive_rate": r_pos,
        "current_positive_rate": c_pos,
        "positive_rate_change": c_pos - r_pos,
        "positive_rate_from": {"reference": r_from, "current": c_from},
        "drifted": False,
        "threshold": cfg.prediction_drift_psi,
    }
    if not len(ref):
        out.update(
            status=SKIPPED, message="no reference probabilities: prediction drift not judged"
        )
        return out
    if len(cur) < cfg.min_drift_samples:
        msg = f"not enough data (n={len(cur)}, {cfg.min_drift_samples} needed) for prediction drift"
        out.update(status=NO_DATA, message=msg)
        return out
    value = _psi_from_counts(*_numeric_counts(ref, cur, 10))
    statistic, p = _ks(ref, cur)
    drifted = _drift_verdict(value, p, cfg.prediction_drift_psi, cfg.drift_alpha)
    seen = (
        f"predicted probabilities: PSI {value:.3f} (threshold {cfg.prediction_drift_psi:g}), "
        f"KS p={_p(p)}; positive rate {_pct(c_pos)} vs {_pct(r_pos)} in the reference "
        f"({_n(len(cur))} vs {_n(len(ref))} predictions)"
    )
    out.update(
        psi=value,
        ks_statistic=statistic,
        p_value=p,
        drifted=drifted,
        status=ALERT if drifted else OK,
        message=f"{seen}: {'drifted' if drifted else 'no drift'}",
    )
    return out


def _drift_section(
    frame: pd.DataFrame,
    window: pd.DataFrame,
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
    elif "features" not in window.columns:
        msg = "the window has no logged model inputs (features=True): drift not judged"
        checks.append(CheckResult("feature_drift", SKIPPED, msg))
    else:
        current_X = current_inputs(window)
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
            severity = WARNING if f.status == ALERT else None
            checks.append(
                CheckResult(
                    f"drift:{f.feature}",
                    f.status,
                    f.message,
                    f.psi,
                    cfg.psi_threshold,
                    f.samples,
                    severity,
                    f.p_value,
                )
            )
        if judged:
            msg = (
                f"{len(drifted)} of {len(judged)} input columns drifted "
                f"({', '.join(drifted) or 'none'}); the data set drifts at "
                f"{_pct(cfg.dataset_drift_share)} or more"
            )
            status = ALERT if drift["dataset_drift"] else OK
            severity = WARNING if status == ALERT else None
            checks.append(
                CheckResult(
                    "dataset_drift",
                    status,
                    msg,
                    share,
                    cfg.dataset_drift_share,
                    len(current_X),
                    severity,
                )
            )
    if reference_proba is None:
        msg = "no reference probabilities: prediction drift not judged"
        checks.append(CheckResult("prediction_drift", SKIPPED, msg))
    else:
        served = frame.loc[~frame["is_error"]]
        pred = prediction_drift(
            reference_proba, served["probability"], cfg, reference_labels, served["label"]
        )
        drift["prediction"] = pred
        checks.append(CheckResult("prediction_drift", pred["status"], pred["message"], pred["psi"],
                                  cfg.prediction_drift_psi, pred["samples"],
                                  WARNING if pred["status"] == ALERT else None,
                                  pred["p_value"]))  # fmt: skip
    return drift, checks


# ---------------------------------------------------------------------------- verdict


def evaluate_health(
    window: pd.DataFrame,
    reference_metrics: dict[str, float],
    reference_X: pd.DataFrame | None = None,
    reference_proba: Any = None,
    cfg: MonitorConfig | None = None,
    reference_labels: Any = None,
) -> MonitorReport:
    """Every check on one window; rollback only on a significant accuracy drop or error rate.

    reference_metrics: the champion's validation figures ({"accuracy", "roc_auc"}, or the MLflow
    run's holdout_* names); reference_X / reference_proba: its training inputs and predicted
    probabilities, for drift (None skips those checks); reference_labels: the labels the model
    served for them (its tuned threshold), for the positive rate (else probability >= 0.5).
    """
    cfg = cfg or MonitorConfig()
    frame = _prepare(window)
    perf = performance(frame, reference_metrics, cfg)
    checks = [
        check_error_rate(frame, cfg),
        check_latency(frame, cfg),
        check_accuracy(perf, cfg),
        check_roc_auc(perf, cfg),
    ]
    drift, drift_checks = _drift_section(
        frame, window, reference_X, reference_proba, cfg, reference_labels
    )
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
        metrics={"traffic": traffic_summary(frame), "performance": perf},
        checks=checks,
    )
    if rollback:
        logger.warning("monitor: rollback needed: %s", reason)
    elif alerts:
        logger.warning("monitor: %d alert(s): %s", len(alerts), "; ".join(a.check for a in alerts))
    else:
        logger.info("monitor: healthy (%d requests)", len(frame))
    return report
