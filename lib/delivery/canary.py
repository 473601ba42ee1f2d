"""Canary analysis of one rollout step: pure functions on a window of logged predictions.

Four checks compare the canary with the champion over the same window (requests are split by a
hash of their id, so both variants see the same kind of traffic):

- error rate: Flagger's success rate >= 99%, as an absolute bound on the canary;
- p99 latency: Flagger's 500 ms bound, and a ratio to the champion's p99 above a noise floor;
- accuracy on feedback: fail only when a one-sided test says the canary is more than 2 points
  below the champion (the mission's rollback rule);
- prediction shift: the share of positive predictions moved far (big effect and significant).

Each check knows its sample size: with too few samples it says "wait", never "pass" on nothing.
Verdict: any fail -> "fail" (roll back); else any wait -> "wait"; else "pass".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from scipy import stats

from lib.json_safe import json_safe
from lib.window_stats import (
    error_rate_p_value,
    failed_requests,
    fmt_count,
    fmt_ms,
    fmt_p,
    fmt_percent,
)

CHAMPION, CANARY = "champion", "canary"
PASS, FAIL, WAIT = "pass", "fail", "wait"
REQUIRED_COLUMNS = (
    "request_id", "created_at", "variant", "model_version", "label", "probability",
    "latency_ms", "error", "true_label",
)  # fmt: skip


class AnalysisConfig(BaseModel):
    """Bounds of one analysis; defaults follow Flagger and the mission's 2-point rule.

    This is also the type of the `canary_analysis` section of `lib.config.PipelineConfig`, so the
    defaults and the ranges live here only; a typo, a wrong type or an out-of-range bound fails
    when the config is loaded, naming the key.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # absolute, on the canary (Flagger: success rate >= 99%)
    max_error_rate: float = Field(0.01, ge=0, lt=1)
    max_p99_ms: float = Field(500.0, gt=0)  # Flagger's request-duration default
    max_p99_ratio: float = Field(3.0, gt=0)  # canary p99 / champion p99 ...
    p99_floor_ms: float = Field(50.0, ge=0)  # ... only judged when the canary's p99 is above this
    max_accuracy_drop: float = Field(0.02, ge=0, lt=1)  # 2 points below the champion
    alpha: float = Field(0.05, gt=0, lt=1)  # for the error-rate and accuracy tests
    min_requests: int = Field(50, ge=1)  # per variant
    # labeled canary (and champion) requests to judge accuracy
    min_feedback: int = Field(100, ge=1)
    max_prediction_shift: float = Field(0.15, ge=0, le=1)  # |positive-rate difference| ...
    # ... and significant at this level: both are needed to fail
    shift_alpha: float = Field(0.001, gt=0, lt=1)
    # True: an observed accuracy drop or shift beyond its bound that is not yet significant waits
    # for more data instead of passing (stricter; a healthy canary then waits more often).
    wait_on_inconclusive: bool = False

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`true` is not a bound: pydantic would read it as 1."""
        if isinstance(value, bool) and info.field_name != "wait_on_inconclusive":
            raise ValueError(f"must be a number, got {value!r}")
        return value

    @property
    def fast_fail_requests(self) -> int:
        """Requests after which a clearly broken canary (e.g. every request errors) fails."""
        return max(1, self.min_requests // 5)


@dataclass
class Check:
    """One check's outcome and what it saw, in numbers and in one sentence."""

    name: str
    status: str  # pass / fail / wait
    observed: dict[str, float | int | None]
    threshold: dict[str, float | int]
    samples: dict[str, int]
    message: str


@dataclass
class Analysis:
    verdict: str
    checks: list[Check]
    samples: dict[str, int]  # requests per variant in the window
    versions: dict[str, list[str]]  # model versions seen per variant
    window: dict[str, float | None] = field(default_factory=dict)  # start/end epoch seconds

    def by_name(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    @property
    def reason(self) -> str:
        """The messages that decided the verdict (failures, else waits)."""
        for status in (FAIL, WAIT):
            decisive = [c.message for c in self.checks if c.status == status]
            if decisive:
                return "; ".join(decisive)
        return "all checks passed: " + "; ".join(c.message for c in self.checks)


# ---------------------------------------------------------------------------- preparation


def _prepare(window: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in window.columns]
    if missing:
        raise ValueError(
            f"prediction window lacks column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}"
        )
    frame = window[window["variant"].isin([CHAMPION, CANARY])].copy()
    # a request that produced no label failed, whether or not an error message was kept
    frame["is_error"] = failed_requests(frame)
    frame["label"] = pd.to_numeric(frame["label"], errors="coerce")
    frame["true_label"] = pd.to_numeric(frame["true_label"], errors="coerce")
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"], errors="coerce")
    frame["probability"] = pd.to_numeric(frame["probability"], errors="coerce")
    return frame


# ---------------------------------------------------------------------------- checks


def check_error_rate(frame: pd.DataFrame, cfg: AnalysisConfig) -> Check:
    """Fail when the canary's error rate is significantly above the bound (fast when all fail)."""
    can = frame[frame["variant"] == CANARY]
    cha = frame[frame["variant"] == CHAMPION]
    n, k = len(can), int(can["is_error"].sum())
    n_h, k_h = len(cha), int(cha["is_error"].sum())
    rate = k / n if n else float("nan")
    rate_h = k_h / n_h if n_h else float("nan")
    bound = cfg.max_error_rate
    p = error_rate_p_value(k, n, bound)  # small: the canary is worse than the bound
    observed = {"canary_rate": rate, "champion_rate": rate_h, "canary_errors": k,
                "champion_errors": k_h, "p_value": p}  # fmt: skip
    threshold = {"max_error_rate": bound, "alpha": cfg.alpha, "min_requests": cfg.min_requests}
    samples = {CANARY: n, CHAMPION: n_h}
    seen = f"canary error rate {fmt_percent(rate)} ({k}/{fmt_count(n)} requests)"
    vs = f"champion {fmt_percent(rate_h)} of {fmt_count(n_h)}"
    if n < cfg.fast_fail_requests:
        status = WAIT
        msg = (
            f"only {fmt_count(n)} canary requests, {cfg.fast_fail_requests} needed to judge errors"
        )
    elif rate > bound and p < cfg.alpha:
        status = FAIL
        msg = f"{seen} > {fmt_percent(bound)} ({vs}), one-sided binomial p={fmt_p(p)}"
    elif n < cfg.min_requests:
        status = WAIT
        msg = f"{seen} so far; {cfg.min_requests} canary requests needed to pass ({vs})"
    elif rate > bound:
        status = WAIT
        msg = (
            f"{seen} above {fmt_percent(bound)} but not conclusively (p={fmt_p(p)}); "
            f"waiting ({vs})"
        )
    else:
        status = PASS
        msg = f"{seen} <= {fmt_percent(bound)} ({vs})"
    return Check("error_rate", status, observed, threshold, samples, msg)


def _p99(values: pd.Series) -> float:
    values = values.dropna()
    return float(np.percentile(values, 99)) if len(values) else float("nan")


def check_latency(frame: pd.DataFrame, cfg: AnalysisConfig) -> Check:
    """Fail on a canary p99 above the bound, or far above the champion's (beyond a floor)."""
    can = frame.loc[frame["variant"] == CANARY, "latency_ms"].dropna()
    cha = frame.loc[frame["variant"] == CHAMPION, "latency_ms"].dropna()
    p99, p99_h = _p99(can), _p99(cha)
    ratio = p99 / p99_h if len(cha) and p99_h > 0 else float("nan")
    observed = {"canary_p99_ms": p99, "champion_p99_ms": p99_h, "ratio": ratio,
                "canary_p50_ms": float(can.median()) if len(can) else float("nan"),
                "champion_p50_ms": float(cha.median()) if len(cha) else float("nan")}  # fmt: skip
    threshold = {"max_p99_ms": cfg.max_p99_ms, "max_p99_ratio": cfg.max_p99_ratio,
                 "p99_floor_ms": cfg.p99_floor_ms, "min_requests": cfg.min_requests}  # fmt: skip
    samples = {CANARY: len(can), CHAMPION: len(cha)}
    on = f"{fmt_count(len(can))}/{fmt_count(len(cha))} canary/champion requests"
    champion_ok = len(cha) >= cfg.min_requests
    if len(can) < cfg.min_requests:
        status = WAIT
        msg = f"only {fmt_count(len(can))} canary latencies ({cfg.min_requests} needed) for the p99"
    elif p99 > cfg.max_p99_ms:
        status = FAIL
        msg = (
            f"canary p99 latency {fmt_ms(p99)} > {fmt_ms(cfg.max_p99_ms)} "
            f"(champion p99 {fmt_ms(p99_h)}; {on})"
        )
    elif champion_ok and p99 > cfg.p99_floor_ms and ratio > cfg.max_p99_ratio:
        status = FAIL
        msg = (
            f"canary p99 latency {fmt_ms(p99)} is {ratio:.1f}x the champion's {fmt_ms(p99_h)} "
            f"(> {cfg.max_p99_ratio:g}x above the {fmt_ms(cfg.p99_floor_ms)} floor; {on})"
        )
    else:
        status = PASS
        rel = f", {ratio:.1f}x the champion's {fmt_ms(p99_h)}" if champion_ok else ""
        msg = f"canary p99 latency {fmt_ms(p99)} <= {fmt_ms(cfg.max_p99_ms)}{rel} ({on})"
    return Check("latency_p99", status, observed, threshold, samples, msg)


def accuracy_drop_test(
    correct_c: int, n_c: int, correct_h: int, n_h: int, drop: float
) -> tuple[float, float]:
    """One-sided test of H0: acc_canary >= acc_champion - drop; returns (z, p).

    Unpooled two-proportion z (H0 is not equality), with Agresti-Caffo's +1/+1 per group in the
    standard error so that 100% or 0% observed accuracy does not give a zero variance.
    """
    diff = correct_c / n_c - correct_h / n_h
    a_c, a_h = (correct_c + 1) / (n_c + 2), (correct_h + 1) / (n_h + 2)
    se = math.sqrt(a_c * (1 - a_c) / (n_c + 2) + a_h * (1 - a_h) / (n_h + 2))
    z = (diff + drop) / se
    return z, float(stats.norm.cdf(z))


def check_accuracy(frame: pd.DataFrame, cfg: AnalysisConfig) -> Check:
    """Fail only when the canary is significantly more than max_accuracy_drop below."""
    labeled = frame[~frame["is_error"] & frame["true_label"].notna()]
    correct = labeled["label"] == labeled["true_label"]
    can, cha = labeled["variant"] == CANARY, labeled["variant"] == CHAMPION
    n_c, n_h = int(can.sum()), int(cha.sum())
    k_c, k_h = int(correct[can].sum()), int(correct[cha].sum())
    acc_c = k_c / n_c if n_c else float("nan")
    acc_h = k_h / n_h if n_h else float("nan")
    observed: dict[str, float | int | None] = {
        "canary_accuracy": acc_c, "champion_accuracy": acc_h, "drop": acc_h - acc_c,
        "canary_labeled": n_c, "champion_labeled": n_h, "z": None, "p_value": None,
    }  # fmt: skip
    threshold = {"max_accuracy_drop": cfg.max_accuracy_drop, "alpha": cfg.alpha,
                 "min_feedback": cfg.min_feedback}  # fmt: skip
    samples = {CANARY: n_c, CHAMPION: n_h}
    seen = (
        f"canary accuracy {acc_c:.3f} vs champion {acc_h:.3f} on "
        f"{fmt_count(n_c)}/{fmt_count(n_h)} labeled requests"
    )
    bound_pts = f"{100 * cfg.max_accuracy_drop:g}"
    if n_c < cfg.min_feedback or n_h < cfg.min_feedback:
        who = "canary" if n_c < cfg.min_feedback else "champion"
        have = n_c if who == "canary" else n_h
        msg = (
            f"only {fmt_count(have)} labeled {who} requests ({cfg.min_feedback} needed) to judge "
            f"accuracy; so far canary {fmt_count(k_c)}/{fmt_count(n_c)} correct, "
            f"champion {fmt_count(k_h)}/{fmt_count(n_h)}"
        )
        return Check("accuracy", WAIT, observed, threshold, samples, msg)
    z, p = accuracy_drop_test(k_c, n_c, k_h, n_h, cfg.max_accuracy_drop)
    observed.update(z=z, p_value=p)
    drop_pts = 100 * (acc_h - acc_c)
    change = f"drop {drop_pts:.1f} points" if drop_pts >= 0 else f"gain {-drop_pts:.1f} points"
    if p < cfg.alpha:
        status = FAIL
        msg = f"{seen}: {change} > {bound_pts}, one-sided p={fmt_p(p)}"
    elif drop_pts > 100 * cfg.max_accuracy_drop and cfg.wait_on_inconclusive:
        status = WAIT
        msg = f"{seen}: {change} > {bound_pts} but not significant (p={fmt_p(p)}); waiting"
    else:
        status = PASS
        msg = f"{seen}: {change}, not significantly more than {bound_pts} (one-sided p={fmt_p(p)})"
    return Check("accuracy", status, observed, threshold, samples, msg)


def check_prediction_shift(frame: pd.DataFrame, cfg: AnalysisConfig) -> Check:
    """Fail when the canary's positive rate moved by more than the bound, significantly.

    A new model may legitimately predict a little differently: only a large and significant
    shift (two-sided pooled two-proportion z-test) fails.
    """
    ok = frame[~frame["is_error"]]
    can, cha = ok[ok["variant"] == CANARY], ok[ok["variant"] == CHAMPION]
    n_c, n_h = len(can), len(cha)
    pos_c, pos_h = int((can["label"] == 1).sum()), int((cha["label"] == 1).sum())
    r_c = pos_c / n_c if n_c else float("nan")
    r_h = pos_h / n_h if n_h else float("nan")
    observed: dict[str, float | int | None] = {
        "canary_positive_rate": r_c, "champion_positive_rate": r_h, "shift": r_c - r_h,
        "canary_mean_probability": float(can["probability"].mean()) if n_c else None,
        "champion_mean_probability": float(cha["probability"].mean()) if n_h else None,
        "p_value": None,
    }  # fmt: skip
    threshold = {"max_prediction_shift": cfg.max_prediction_shift,
                 "shift_alpha": cfg.shift_alpha, "min_requests": cfg.min_requests}  # fmt: skip
    samples = {CANARY: n_c, CHAMPION: n_h}
    if n_c < cfg.min_requests or n_h < cfg.min_requests:
        msg = (
            f"only {fmt_count(n_c)}/{fmt_count(n_h)} canary/champion predictions "
            f"({cfg.min_requests} each needed) to compare their distributions"
        )
        return Check("prediction_shift", WAIT, observed, threshold, samples, msg)
    pooled = (pos_c + pos_h) / (n_c + n_h)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_h))
    shift = r_c - r_h
    p = float(2 * stats.norm.sf(abs(shift) / se)) if se > 0 else (0.0 if shift else 1.0)
    observed["p_value"] = p
    big = abs(shift) > cfg.max_prediction_shift
    seen = (
        f"canary predicts positive for {fmt_percent(r_c)} vs champion {fmt_percent(r_h)} "
        f"({fmt_count(n_c)}/{fmt_count(n_h)} predictions): shift {100 * abs(shift):.1f} points"
    )
    bound_pts = f"{100 * cfg.max_prediction_shift:g}"
    if big and p < cfg.shift_alpha:
        status, msg = FAIL, f"{seen} > {bound_pts}, p={fmt_p(p)}"
    elif big and cfg.wait_on_inconclusive:
        status, msg = WAIT, f"{seen} > {bound_pts} but not significant (p={fmt_p(p)}); waiting"
    elif big:
        status = PASS
        msg = f"{seen} > {bound_pts} but not significant (p={fmt_p(p)} >= {cfg.shift_alpha:g})"
    else:
        status, msg = PASS, f"{seen} <= {bound_pts} (p={fmt_p(p)})"
    return Check("prediction_shift", status, observed, threshold, samples, msg)


# ---------------------------------------------------------------------------- analysis


def verdict_of(checks: list[Check]) -> str:
    statuses = {c.status for c in checks}
    if FAIL in statuses:
        return FAIL
    if WAIT in statuses:
        return WAIT
    return PASS


def analyze(window: pd.DataFrame, cfg: AnalysisConfig | None = None) -> Analysis:
    """Run every check on one window of predictions and combine them into a verdict."""
    cfg = cfg or AnalysisConfig()
    frame = _prepare(window)
    checks = [
        check_error_rate(frame, cfg),
        check_latency(frame, cfg),
        check_accuracy(frame, cfg),
        check_prediction_shift(frame, cfg),
    ]
    counts = frame["variant"].value_counts()
    samples = {v: int(counts.get(v, 0)) for v in (CHAMPION, CANARY)}
    versions = {
        v: sorted({str(x) for x in frame.loc[frame["variant"] == v, "model_version"].dropna()})
        for v in (CHAMPION, CANARY)
    }
    created = pd.to_numeric(frame["created_at"], errors="coerce")
    span = {
        "start": float(created.min()) if len(created.dropna()) else None,
        "end": float(created.max()) if len(created.dropna()) else None,
    }
    return Analysis(verdict_of(checks), checks, samples, versions, span)


def summarize_step(analysis: Analysis) -> dict[str, Any]:
    """A JSON-ready summary for the rollout state file and reports (NaN becomes null)."""
    return json_safe(
        {
            "verdict": analysis.verdict,
            "reason": analysis.reason,
            "samples": analysis.samples,
            "versions": analysis.versions,
            "window": analysis.window,
            "checks": [asdict(c) for c in analysis.checks],
        }
    )
