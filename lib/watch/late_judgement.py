"""Production judged again when the labels come: real labels arrive days after the prediction,
so 06 monitor judges the champion on predictions old enough for their labels to be in (the label
lag), against the version it replaced on the same requests. During a rollout every answered
request carries the other variant's shadow score (lib.serving.prediction_store's contract), so
each labeled request is a pair: was the champion right, was its predecessor right. The test is
paired and always-valid (the nightly monitor looks again at growing windows), with the canary's
2-point rule; and the accuracy the canary could only estimate is set beside the realized one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lib.config_sections import MonitorConfig
from lib.watch.health_report import ALERT, CRITICAL, NO_DATA, OK, SKIPPED, WARNING, CheckResult
from lib.window_stats import (
    estimated_correct,
    failed_requests,
    fmt_count,
    fmt_p,
    sequential_excess_test,
)

CHECK = "against_predecessor"
# the verdicts of the check (its metrics' `verdict`)
WORSE, NOT_WORSE, NOT_ENOUGH, NOT_JUDGED = "worse", "not worse", "not enough evidence", "not judged"


@dataclass
class Judged:
    """The predictions judged on labels: made before `until` (now - label lag), answered by
    `version` or scored by it in the shadow, with their labels joined."""

    window: pd.DataFrame
    version: str
    predecessor: str | None = None  # the registry's `previous`: the version `version` replaced
    until: float | None = None  # None: up to now (no label lag)

    def answered(self) -> pd.DataFrame:
        """The requests `version` answered (what the live accuracy checks judge)."""
        return self.window[self.window["model_version"].astype(str) == self.version]


def estimate_against_labels(frame: pd.DataFrame, labeled: pd.DataFrame) -> dict[str, Any]:
    """The accuracy each answer's calibrated probability implies (what a canary without labels
    judged on), on every answered request, and on the labeled ones beside what they realized:
    the gap's mean and standard error, paired request by request."""
    answered = frame[~frame["is_error"]]
    chance = estimated_correct(labeled).to_numpy(dtype=float)
    gap = chance - (labeled["label"] == labeled["true_label"]).to_numpy(dtype=float)
    gap = gap[~np.isnan(gap)]
    return {
        "estimated_accuracy": float(estimated_correct(answered).mean())
        if len(answered)
        else math.nan,
        "estimated_requests": len(answered),
        "estimate_gap": float(gap.mean()) if len(gap) else math.nan,
        "estimate_gap_se": float(gap.std(ddof=1) / math.sqrt(len(gap)))
        if len(gap) > 1
        else math.nan,
    }


def label_arrival(window: pd.DataFrame) -> dict[str, Any]:
    """How many predictions have a label, and how long after the prediction the labels came."""
    if "labeled_at" not in window.columns or window.empty:
        return {"requests": len(window), "labeled": 0, "share": math.nan, "lag_seconds": {}}
    lag = (
        pd.to_numeric(window["labeled_at"], errors="coerce")
        - pd.to_numeric(window["created_at"], errors="coerce")
    ).dropna()
    found = np.percentile(lag, [50, 90, 100]) if len(lag) else []
    return {
        "requests": len(window),
        "labeled": len(lag),
        "share": len(lag) / len(window),
        "lag_seconds": dict(zip(("p50", "p90", "max"), map(float, found), strict=False)),
    }


def paired_outcomes(
    window: pd.DataFrame, version: str, predecessor: str | None = None
) -> tuple[str | None, pd.DataFrame]:
    """(the predecessor, one row per request both it and `version` scored, one answering, one in
    the shadow): `version`'s label and probability, the predecessor's, the true label (NA until
    it comes). Without `predecessor`, the version registered before `version` most often on the
    other side of the pairs."""
    if "shadow_version" not in window.columns:
        return predecessor, pd.DataFrame()
    frame = window[~failed_requests(window)]
    shadow = pd.DataFrame({"label": frame["shadow_label"], "error": frame["shadow_error"]})
    frame = frame[~failed_requests(shadow) & frame["shadow_version"].notna()]
    answered = frame["model_version"].astype(str)
    scored = frame["shadow_version"].astype(str)
    other = answered.where(answered != version, scored)[(answered == version) | (scored == version)]
    if predecessor is None:  # registered before `version`: a later candidate never replaced it
        older = other[[_registered_before(v, version) for v in other]]
        predecessor = str(older.value_counts().idxmax()) if len(older) else None
    frame = frame.loc[other.index[other == predecessor]]
    ours = frame["model_version"].astype(str) == version

    def pick(mine: str, theirs: str) -> pd.Series:
        return pd.to_numeric(frame[mine].where(ours, frame[theirs]), errors="coerce")

    truth = frame["true_label"] if "true_label" in frame.columns else pd.Series(np.nan, frame.index)
    pairs = pd.DataFrame(
        {
            "label": pick("label", "shadow_label"),
            "probability": pick("probability", "shadow_probability"),
            "predecessor_label": pick("shadow_label", "label"),
            "predecessor_probability": pick("shadow_probability", "probability"),
            "true_label": pd.to_numeric(truth, errors="coerce"),
            "is_error": False,
        }
    )
    return predecessor, pairs


def _registered_before(other: str, version: str) -> bool:
    """MLflow numbers a model's versions in registration order; other names are not ordered."""
    return not (other.isdigit() and version.isdigit()) or int(other) < int(version)


def _realized_and_estimated(pairs: pd.DataFrame) -> dict[str, Any]:
    """Both versions' realized accuracy on the labeled pairs, and what their calibrated
    probabilities estimated on the same requests (the canary's label-free evidence)."""
    labeled = pairs[pairs["true_label"].notna()]
    theirs = labeled.assign(
        label=labeled["predecessor_label"], probability=labeled["predecessor_probability"]
    )
    n = len(labeled)
    right = (labeled["label"] == labeled["true_label"]).to_numpy(dtype=float)
    right_before = (theirs["label"] == theirs["true_label"]).to_numpy(dtype=float)
    return {
        "labeled_pairs": n,
        "accuracy": float(right.mean()) if n else math.nan,
        "predecessor_accuracy": float(right_before.mean()) if n else math.nan,
        "difference": float((right - right_before).mean()) if n else math.nan,
        "estimated_accuracy_labeled": float(estimated_correct(labeled).mean()) if n else math.nan,
        "predecessor_estimated_accuracy": float(estimated_correct(theirs).mean())
        if n
        else math.nan,
        # `version` on every pair (labeled or not) and on the labeled ones against the labels
        **estimate_against_labels(pairs, labeled),
        "differences": right - right_before,  # per request; dropped from the report
    }


def _seen(e: dict[str, Any]) -> str:
    """What the check saw, in words: the evidence a notification carries."""
    lag = e["labels"]["lag_seconds"]
    arrived = f", labels came {lag['p50'] / 3600:.1f} h after the prediction (median)"
    return (
        f"v{e['version']} realized accuracy {e['accuracy']:.3f} vs {e['predecessor_accuracy']:.3f} "
        f"for v{e['predecessor']} (the version it replaced) on the same "
        f"{fmt_count(e['labeled_pairs'])} labeled requests ({fmt_count(e['pairs'])} paired), "
        f"{100 * e['difference']:+.1f} points; estimated (calibrated probabilities) "
        f"{e['estimated_accuracy_labeled']:.3f} vs {e['predecessor_estimated_accuracy']:.3f}; "
        f"label lag {e['label_lag_seconds']:g} s (monitoring.label_lag_seconds)"
        f"{arrived if lag else ''}"
    )


def judge_against_predecessor(
    judged: Judged, cfg: MonitorConfig
) -> tuple[CheckResult, dict[str, Any]]:
    """Worse when the always-valid (1 - alpha) lower bound of the paired accuracy drop is above
    `degradation`: rolls back (critical) or alerts, per `on_worse_than_predecessor`. Fewer than
    min_feedback labeled pairs is not enough evidence; no pairs at all is not judged."""
    predecessor, pairs = paired_outcomes(judged.window, judged.version, judged.predecessor)
    e: dict[str, Any] = {
        "verdict": NOT_JUDGED,
        "version": judged.version,
        "predecessor": predecessor,
        "pairs": len(pairs),
        "label_lag_seconds": cfg.label_lag_seconds,
        "judged_until": judged.until,
        "labels": label_arrival(judged.window),
    }
    if pairs.empty:
        with_whom = f" with v{predecessor}" if predecessor else ""
        msg = (
            f"v{judged.version} not judged against its predecessor: no paired predictions"
            f"{with_whom} (a rollout's shadow scores) in the judged window"
        )
        return CheckResult(CHECK, SKIPPED, msg), e
    e.update(_realized_and_estimated(pairs))
    d, n = e.pop("differences"), e["labeled_pairs"]
    if n < max(cfg.min_feedback, 2):
        e["verdict"] = NOT_ENOUGH
        msg = (
            f"not enough evidence (n={n} labeled pairs, {cfg.min_feedback} needed) to judge "
            f"v{judged.version} against its predecessor v{predecessor} on the same requests; "
            f"{fmt_count(n)} of {fmt_count(len(pairs))} pairs labeled so far"
        )
        return CheckResult(CHECK, NO_DATA, msg, e["difference"], None, n), e
    drop, bound = -float(d.mean()), cfg.degradation
    lower, p = sequential_excess_test(drop, d.var(ddof=1) / n, bound, cfg.alpha, cfg.accuracy_tau)
    e.update(drop_lower=float(lower), p_value=float(p))
    rule = (
        f"always-valid {100 * (1 - cfg.alpha):g}% lower bound of the drop "
        f"{100 * float(lower):.1f} points vs {100 * bound:g} allowed (p={fmt_p(float(p))})"
    )
    if lower > bound:
        e["verdict"] = WORSE
        severity = CRITICAL if cfg.on_worse_than_predecessor == "rollback" else WARNING
        msg = f"significantly worse than its predecessor: {_seen(e)}; {rule}"
        return CheckResult(CHECK, ALERT, msg, -drop, -bound, n, severity, float(p)), e
    e["verdict"] = NOT_WORSE
    msg = f"not worse than its predecessor: {_seen(e)}; {rule}"
    return CheckResult(CHECK, OK, msg, -drop, -bound, n, None, float(p)), e
