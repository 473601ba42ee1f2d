"""Drift of the model inputs and of its predictions between the training data and a window.

A column drifts when PSI > psi_threshold (the shift is large) AND its test (KS numeric,
chi-square categorical) has p < drift_alpha (it is not noise): PSI alone false-alarms on small
samples, a test alone flags negligible shifts on large ones. The data set drifts when at least
`dataset_drift_share` of the judged columns drift (Evidently's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lib.config_sections import MonitorConfig
from lib.pipeline.features import CATEGORICAL, FEATURE_COLUMNS, TEXT
from lib.watch.health_report import ALERT, NO_DATA, OK, SKIPPED
from lib.window_stats import (
    fmt_count,
    fmt_p,
    fmt_percent,
    is_nan,
)

PSI_EPS = 1e-4  # share given to an empty bin (Evidently's choice): log(0) would be infinite
MISSING = "<missing>"  # a missing value is a category (and a bin) of its own
UNSEEN = "<unseen>"  # categories absent from the reference, grouped into one bin


@dataclass
class FeatureDrift:
    """Drift of one model input between the reference (training) data and the window."""

    feature: str
    kind: str  # numeric / categorical
    test: str  # ks / chi2
    samples: int  # current rows
    reference_samples: int
    status: str  # ok / alert / not_enough_data / skipped
    message: str
    psi: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    drifted: bool = False


def current_inputs(window: pd.DataFrame) -> pd.DataFrame:
    """The model inputs logged with each request (the `features` dicts), as FEATURE_COLUMNS."""
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


def _as_float(values: Any) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


def _as_category(values: Any) -> pd.Series:
    series = pd.Series(values, dtype=object)
    return series.where(series.notna(), MISSING).astype(str)


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
    bins = [*sorted(set(ref)), UNSEEN]
    cur = cur.where(cur.isin(bins[:-1]), UNSEEN)
    ref_c, cur_c = (s.value_counts().reindex(bins, fill_value=0) for s in (ref, cur))
    return ref_c.to_numpy(float), cur_c.to_numpy(float)


def psi(ref: Any, cur: Any, categorical: bool, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins (numeric) or categories
    (unseen ones share a bin), missing values in a bin of their own; NaN when a side is empty."""
    if categorical:
        ref_c, cur_c = _categorical_counts(_as_category(ref), _as_category(cur))
    else:
        ref_c, cur_c = _numeric_counts(_as_float(ref), _as_float(cur), bins)
    if ref_c.sum() == 0 or cur_c.sum() == 0:
        return math.nan
    r = np.clip(ref_c / ref_c.sum(), PSI_EPS, None)
    c = np.clip(cur_c / cur_c.sum(), PSI_EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if not len(ref) or not len(cur):
        return math.nan, math.nan
    result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def _chi2(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    """Chi-square test of homogeneity on the category counts of both samples."""
    table = pd.concat([ref.value_counts(), cur.value_counts()], axis=1).fillna(0).to_numpy(float).T
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    statistic, p, _, _ = stats.chi2_contingency(table)
    return float(statistic), float(p)


def _drift_verdict(psi_value: float, p: float, psi_threshold: float, alpha: float) -> bool:
    return not is_nan(psi_value) and not is_nan(p) and psi_value > psi_threshold and p < alpha


def feature_drift(
    reference_X: pd.DataFrame, current_X: pd.DataFrame, cfg: MonitorConfig | None = None
) -> list[FeatureDrift]:
    """PSI and KS / chi-square of every FEATURE_COLUMN but free text (the app name is judged
    through its derived columns); drifted = PSI > threshold AND p < alpha."""
    cfg = cfg or MonitorConfig()
    results = []
    for col in FEATURE_COLUMNS:
        if col in TEXT:
            continue
        kind = "categorical" if col in CATEGORICAL else "numeric"
        test = "chi2" if kind == "categorical" else "ks"
        n_ref = len(reference_X) if col in reference_X.columns else 0
        current = current_X[col] if col in current_X.columns else pd.Series([], dtype=object)
        logged = current_X.attrs.get("logged", {}).get(col)
        if logged is not None and len(logged) == len(current):
            current = current[np.asarray(logged, dtype=bool)]  # rows logged with this column
        n_cur = len(current)
        base = {"feature": col, "kind": kind, "test": test, "samples": n_cur}
        base["reference_samples"] = n_ref
        if not n_ref or col not in current_X.columns:
            side = "reference" if not n_ref else "window"
            msg = f"{col}: not in the {side} data; drift not judged"
            results.append(FeatureDrift(**base, status=SKIPPED, message=msg))
            continue
        if n_cur < cfg.min_drift_samples:
            msg = f"{col}: not enough data (n={n_cur}, {cfg.min_drift_samples} needed) for drift"
            results.append(FeatureDrift(**base, status=NO_DATA, message=msg))
            continue
        if kind == "categorical":
            ref, cur = _as_category(reference_X[col]), _as_category(current)
            statistic, p = _chi2(ref, cur)
        else:
            ref, cur = _as_float(reference_X[col]), _as_float(current)
            statistic, p = _ks(ref, cur)
        value = psi(ref, cur, kind == "categorical")
        drifted = _drift_verdict(value, p, cfg.psi_threshold, cfg.drift_alpha)
        seen = (
            f"{col}: PSI {value:.3f} (threshold {cfg.psi_threshold:g}), "
            f"{'chi-square' if test == 'chi2' else 'KS'} p={fmt_p(p)} (alpha {cfg.drift_alpha:g}) "
            f"on {fmt_count(n_cur)} requests vs {fmt_count(n_ref)} reference rows"
        )
        if drifted:
            msg = f"{seen}: drifted"
        elif value > cfg.psi_threshold:
            msg = f"{seen}: PSI above threshold but not significant, no drift"
        else:
            msg = f"{seen}: no drift"
        status = ALERT if drifted else OK
        results.append(FeatureDrift(**base, status=status, message=msg, psi=value,
                                    statistic=statistic, p_value=p, drifted=drifted))  # fmt: skip
    return results


def _positive_rate(proba: np.ndarray, labels: Any) -> tuple[float, str]:
    """The share of positive labels served when known (a tuned model's cut is not 0.5), else of
    probability >= 0.5."""
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
    """PSI and KS of the predicted probabilities, and the change of the positive rate (of the
    labels served when given, else probability >= 0.5: `positive_rate_from` says which)."""
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
        msg = "no reference probabilities: prediction drift not judged"
        return {**out, "status": SKIPPED, "message": msg}
    if len(cur) < cfg.min_drift_samples:
        msg = f"not enough data (n={len(cur)}, {cfg.min_drift_samples} needed) for prediction drift"
        return {**out, "status": NO_DATA, "message": msg}
    value = psi(ref, cur, categorical=False)
    statistic, p = _ks(ref, cur)
    drifted = _drift_verdict(value, p, cfg.prediction_drift_psi, cfg.drift_alpha)
    seen = (
        f"predicted probabilities: PSI {value:.3f} (threshold {cfg.prediction_drift_psi:g}), "
        f"KS p={fmt_p(p)}; positive rate {fmt_percent(c_pos)} vs {fmt_percent(r_pos)} "
        f"in the reference ({fmt_count(len(cur))} vs {fmt_count(len(ref))} predictions)"
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
