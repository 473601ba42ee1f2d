"""Canary analysis of one rollout step: pure functions on a window of logged predictions.

Each check compares the canary with the champion over the same window. Real labels arrive late
or never: without enough of them (`canary_analysis.labels`), accuracy is the one each model's
calibrated probabilities imply (CBPE), under the same rule; each check names its evidence. When
the service also scores each request with the variant that did not answer (shadow scores), the
checks are paired, on identical inputs: the estimated accuracy per request, the positive-rate
shift, and the share of requests the two label differently (which bounds any accuracy change).
The step is looked at every few seconds, so every test is sequential (always-valid p-values,
lib.window_stats): a fixed-alpha test re-run at each look fails an identical canary far more
often than alpha (tests/test_canary_sequential.py). Too few samples say "wait", never "pass" on
nothing. The decision rules (judge_*) are vectorised so the simulations in the tests run the
rollout's code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lib.config_sections import AnalysisConfig
from lib.json_safe import json_safe
from lib.window_stats import (
    estimated_correct,
    failed_requests,
    fmt_count,
    fmt_ms,
    fmt_p,
    fmt_percent,
    sequential_binomial_p,
    sequential_excess_test,
    sequential_two_sided_p,
)

CHAMPION, CANARY = "champion", "canary"
PASS, FAIL, WAIT = "pass", "fail", "wait"
# the evidence each check used
REQUESTS, LATENCIES, LABELS, PREDICTIONS = "requests", "latencies", "labels", "predictions"
ESTIMATED = "estimated accuracy (calibrated probabilities)"
# each request scored by both variants (the one that did not answer scores it in the shadow)
PAIRED = "paired predictions (shadow scores)"
PAIRED_ESTIMATED = "estimated accuracy on paired predictions (shadow scores)"
SHADOW = "the canary's shadow scores (it answers nobody)"  # the `shadow` step's requests
SHADOW_COLUMNS = (  # as lib.serving.prediction_store's (not imported: this module is pure)
    "shadow_variant", "shadow_version", "shadow_label", "shadow_probability",
    "shadow_latency_ms", "shadow_error",
)  # fmt: skip
PAIRED_TAU = 0.05  # the excess beyond a paired bound its test finds fastest
# when at least this share of the paired requests already has its label, the labels will
# judge accuracy within the step: a significant disagreement waits for them instead of failing
# (a better canary must disagree); the step's wait bounds it, and with fewer labels (real users
# rate days later, if ever) disagreement still fails at once
LABELS_DECIDE_SHARE = 0.5
REQUIRED_COLUMNS = (
    "request_id", "created_at", "variant", "model_version", "label", "probability",
    "latency_ms", "error", "true_label",
)  # fmt: skip


@dataclass
class Check:
    """One check's outcome and what it saw, in numbers and in one sentence."""

    name: str
    status: str  # pass / fail / wait
    observed: dict[str, float | int | None]
    threshold: dict[str, float | int]
    samples: dict[str, int]
    message: str
    evidence: str = ""  # what was judged: requests, latencies, labels, estimated accuracy...


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
    for column in SHADOW_COLUMNS:  # a window without shadow scores: none of its rows is paired
        if column not in frame.columns:
            frame[column] = None
    numeric = ("label", "true_label", "latency_ms", "probability", "shadow_label",
               "shadow_probability", "shadow_latency_ms")  # fmt: skip
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def paired_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """Both variants' predictions on the same requests: each answered row with the other
    variant's shadow score (rows without one, or whose shadow failed, are left out)."""
    other = np.where(frame["variant"] == CANARY, CHAMPION, CANARY)
    shadow = pd.DataFrame({"label": frame["shadow_label"], "error": frame["shadow_error"]})
    rows = frame[~frame["is_error"] & (frame["shadow_variant"] == other) & ~failed_requests(shadow)]
    by_canary = (rows["variant"] == CANARY).to_numpy()

    def side(canary_side: bool, column: str) -> np.ndarray:
        answered, shadowed = rows[column].to_numpy(float), rows[f"shadow_{column}"].to_numpy(float)
        return np.where(by_canary == canary_side, answered, shadowed)

    return pd.DataFrame(
        {
            "canary_label": side(True, "label"),
            "champion_label": side(False, "label"),
            "canary_probability": side(True, "probability"),
            "champion_probability": side(False, "probability"),
            "true_label": rows["true_label"].to_numpy(float),
        }
    )


def shadow_requests(frame: pd.DataFrame) -> pd.DataFrame:
    """The `shadow` step's requests: the champion's answers, and as canary rows the canary's
    shadow scores of them (errors and latencies included), for the error and latency checks."""
    champion = frame[frame["variant"] == CHAMPION]
    scored = champion[champion["shadow_variant"] == CANARY]
    as_canary = pd.DataFrame(
        {
            "variant": CANARY,
            "model_version": scored["shadow_version"],
            "label": scored["shadow_label"],
            "probability": scored["shadow_probability"],
            "latency_ms": scored["shadow_latency_ms"],
            "error": scored["shadow_error"],
        }
    )
    as_canary["is_error"] = failed_requests(as_canary)
    return pd.concat([champion, as_canary], ignore_index=True)


# ---------------------------------------------------------------------------- decision rules


def judge_error_rate(errors: Any, requests: Any, cfg: AnalysisConfig) -> dict[str, np.ndarray]:
    """Status of the canary's error rate: fail when it is above the bound (always-valid test)."""
    k, n = np.asarray(errors, dtype=float), np.asarray(requests, dtype=float)
    p = sequential_binomial_p(k, n, cfg.max_error_rate)
    rate = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    above = rate > cfg.max_error_rate
    status = np.where(
        n < cfg.fast_fail_requests,
        WAIT,
        np.where(
            above & (p <= cfg.alpha), FAIL, np.where((n < cfg.min_requests) | above, WAIT, PASS)
        ),
    )
    return {"status": status, "rate": rate, "p_value": p}


def accuracy_drop_estimate(k_c: Any, n_c: Any, k_h: Any, n_h: Any) -> tuple[np.ndarray, np.ndarray]:
    """Observed drop (champion minus canary accuracy) and its unpooled variance (the null is a
    drop of max_accuracy_drop), with Agresti-Caffo's +1/+1 so that 0% or 100% is not certain."""
    k_c, n_c = np.asarray(k_c, dtype=float), np.asarray(n_c, dtype=float)
    k_h, n_h = np.asarray(k_h, dtype=float), np.asarray(n_h, dtype=float)
    drop = k_h / np.maximum(n_h, 1) - k_c / np.maximum(n_c, 1)
    a_c, a_h = (k_c + 1) / (n_c + 2), (k_h + 1) / (n_h + 2)
    return drop, a_c * (1 - a_c) / (n_c + 2) + a_h * (1 - a_h) / (n_h + 2)


def judge_accuracy(k_c: Any, n_c: Any, k_h: Any, n_h: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """Fail only when the always-valid lower bound of the drop is above max_accuracy_drop: over
    all looks of a step, a canary within the tolerance fails with probability at most alpha.
    Below min_feedback labels (either variant) it waits, whatever the numbers say."""
    drop, var = accuracy_drop_estimate(k_c, n_c, k_h, n_h)
    enough = (np.asarray(n_c) >= cfg.min_feedback) & (np.asarray(n_h) >= cfg.min_feedback)
    return _judge_drop(drop, var, enough, cfg)


def judge_estimated_accuracy(
    mean_c: Any, var_c: Any, n_c: Any, mean_h: Any, var_h: Any, n_h: Any, cfg: AnalysisConfig
) -> dict[str, Any]:
    """judge_accuracy's rule on estimated accuracy: the mean and variance of each request's
    chance of being right (its model's calibrated probability of the label it gave), over n
    requests per variant; below min_requests of either it waits."""
    n_c, n_h = np.asarray(n_c, dtype=float), np.asarray(n_h, dtype=float)
    drop = np.asarray(mean_h, dtype=float) - np.asarray(mean_c, dtype=float)
    var = np.asarray(var_c) / np.maximum(n_c, 1) + np.asarray(var_h) / np.maximum(n_h, 1)
    return _judge_drop(drop, var, (n_c >= cfg.min_requests) & (n_h >= cfg.min_requests), cfg)


def _judge_drop(drop: Any, var: Any, enough: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    enough = np.asarray(enough, dtype=bool)
    lower, p = sequential_excess_test(drop, var, cfg.max_accuracy_drop, cfg.alpha, cfg.accuracy_tau)
    fail = enough & (lower > cfg.max_accuracy_drop)
    inconclusive = enough & ~fail & (drop > cfg.max_accuracy_drop) & cfg.wait_on_inconclusive
    status = np.where(fail, FAIL, np.where(~enough | inconclusive, WAIT, PASS))
    return {"status": status, "drop": drop, "lower": lower, "p_value": p}


def judge_prediction_shift(
    pos_c: Any, n_c: Any, pos_h: Any, n_h: Any, cfg: AnalysisConfig
) -> dict[str, Any]:
    """Fail when the positive rate moved by more than the bound, significantly (always-valid,
    two-sided, pooled): a new model may legitimately predict a little differently."""
    pos_c, n_c = np.asarray(pos_c, dtype=float), np.asarray(n_c, dtype=float)
    pos_h, n_h = np.asarray(pos_h, dtype=float), np.asarray(n_h, dtype=float)
    shift = pos_c / np.maximum(n_c, 1) - pos_h / np.maximum(n_h, 1)
    pooled = (pos_c + pos_h + 1) / (n_c + n_h + 2)
    var = pooled * (1 - pooled) * (1 / np.maximum(n_c, 1) + 1 / np.maximum(n_h, 1))
    p = sequential_two_sided_p(shift, var, max(cfg.max_prediction_shift, 0.05))
    enough = (n_c >= cfg.min_requests) & (n_h >= cfg.min_requests)
    big = enough & (np.abs(shift) > cfg.max_prediction_shift)
    fail = big & (p < cfg.shift_alpha)
    status = np.where(fail, FAIL, np.where(~enough | (big & cfg.wait_on_inconclusive), WAIT, PASS))
    return {"status": status, "shift": shift, "p_value": p}


def judge_disagreement(disagree: Any, pairs: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """The share of paired requests the two variants label differently. It bounds any accuracy
    change without a label (|acc(canary) - acc(champion)| <= it, on the same requests): fail
    when its always-valid lower bound is above max_disagreement, pass once its upper bound is
    below, wait in between (a canary that differs that much must show it is not worse)."""
    k, n = np.asarray(disagree, dtype=float), np.asarray(pairs, dtype=float)
    rate = k / np.maximum(n, 1)
    smooth = (k + 1) / (n + 2)  # so that 0 of n is not certain
    var = smooth * (1 - smooth) / (n + 2)
    bound = cfg.max_disagreement
    lower, p = sequential_excess_test(rate, var, bound, cfg.alpha, PAIRED_TAU)
    below, _ = sequential_excess_test(-rate, var, -bound, cfg.alpha, PAIRED_TAU)
    upper = -below
    enough = n >= cfg.min_requests
    status = np.where(
        enough & (lower > bound), FAIL, np.where(enough & (upper <= bound), PASS, WAIT)
    )
    return {"status": status, "rate": rate, "lower": lower, "upper": upper, "p_value": p}


def judge_paired_shift(up: Any, down: Any, pairs: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """The positive rate's shift on the same requests: mean of canary label minus champion
    label, `up` pairs where only the canary says positive, `down` only the champion. Fail when
    it is significantly beyond +-max_prediction_shift (always-valid, two-sided, shift_alpha)."""
    up, down = np.asarray(up, dtype=float), np.asarray(down, dtype=float)
    n = np.asarray(pairs, dtype=float)
    shift = (up - down) / np.maximum(n, 1)
    spread = np.maximum((up + down + 1) / (n + 2) - shift**2, 1 / (n + 2))
    var = spread / np.maximum(n, 1)
    bound, half = cfg.max_prediction_shift, cfg.shift_alpha / 2
    above, p_above = sequential_excess_test(shift, var, bound, half, PAIRED_TAU)
    below, p_below = sequential_excess_test(-shift, var, bound, half, PAIRED_TAU)
    p = np.minimum(1.0, 2 * np.minimum(p_above, p_below))
    enough = n >= cfg.min_requests
    fail = enough & ((above > bound) | (below > bound))
    big = enough & (np.abs(shift) > bound)
    status = np.where(fail, FAIL, np.where(~enough | (big & cfg.wait_on_inconclusive), WAIT, PASS))
    return {"status": status, "shift": shift, "p_value": p}


def judge_paired_estimated_accuracy(
    mean_drop: Any, var_drop: Any, pairs: Any, cfg: AnalysisConfig
) -> dict[str, Any]:
    """judge_accuracy's rule on the estimated drop per paired request (the champion's chance of
    being right minus the canary's, on the same input): far less variance than two means."""
    n = np.asarray(pairs, dtype=float)
    var = np.asarray(var_drop, dtype=float) / np.maximum(n, 1)
    return _judge_drop(np.asarray(mean_drop, dtype=float), var, n >= cfg.min_requests, cfg)


def judge_latency(canary: Any, champion: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """Latency status; `canary` (rollouts, n) and `champion` (rollouts, m), or 1-D. Binomial
    always-valid tests: at most 1% slower than max_p99_ms, and per quantile q with enough
    samples at most 1 - q slower than max(max_p99_ratio x the champion's q, p99_floor_ms)."""
    can = np.atleast_2d(np.asarray(canary, dtype=float))
    cha = np.atleast_2d(np.asarray(champion, dtype=float))
    n, m = can.shape[1], cha.shape[1]
    level = cfg.alpha / cfg.latency_tests
    slow = (can > cfg.max_p99_ms).sum(axis=1)
    p_abs = sequential_binomial_p(slow, n, 0.01)
    judged = [q for q in cfg.latency_quantiles if min(n, m) >= cfg.samples_for(q)]
    canary_waits = n < cfg.samples_for(cfg.latency_quantiles[0])
    rows = can.shape[0]
    if judged:
        qs = np.array(judged)
        can_q = np.quantile(can, qs, axis=1).T  # (rollouts, quantiles)
        cha_q = np.quantile(cha, qs, axis=1).T
        limit = np.maximum(cfg.max_p99_ratio * cha_q, cfg.p99_floor_ms)
        beyond = (can[:, :, None] > limit[:, None, :]).sum(axis=1)
        p_rel = sequential_binomial_p(beyond, n, 1.0 - qs)
    else:
        can_q = cha_q = limit = p_rel = np.empty((rows, 0))
        beyond = np.empty((rows, 0), dtype=int)
    fail_abs = (n >= cfg.min_requests) & (slow / max(n, 1) > 0.01) & (p_abs <= level)
    fail_rel = (n >= cfg.min_requests) & (p_rel <= level).any(axis=1)
    wait = (n < cfg.min_requests) or canary_waits
    status = np.where(fail_abs | fail_rel, FAIL, WAIT if wait else PASS)
    return {
        "status": status, "slow": slow, "p_abs": p_abs, "quantiles": judged,
        "canary_q": can_q, "champion_q": cha_q, "limit": limit, "beyond": beyond,
        "p_rel": p_rel,
    }  # fmt: skip


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
    judged = judge_error_rate(k, n, cfg)
    status, p = str(judged["status"]), float(judged["p_value"])
    observed = {"canary_rate": rate, "champion_rate": rate_h, "canary_errors": k,
                "champion_errors": k_h, "p_value": p}  # fmt: skip
    threshold = {"max_error_rate": bound, "alpha": cfg.alpha, "min_requests": cfg.min_requests}
    seen = f"canary error rate {fmt_percent(rate)} ({k}/{fmt_count(n)} requests)"
    vs = f"champion {fmt_percent(rate_h)} of {fmt_count(n_h)}"
    if n < cfg.fast_fail_requests:
        msg = (
            f"only {fmt_count(n)} canary requests, {cfg.fast_fail_requests} needed to judge errors"
        )
    elif status == FAIL:
        msg = f"{seen} > {fmt_percent(bound)} ({vs}), always-valid p={fmt_p(p)}"
    elif n < cfg.min_requests:
        msg = f"{seen} so far; {cfg.min_requests} canary requests needed to pass ({vs})"
    elif status == WAIT:
        msg = (
            f"{seen} above {fmt_percent(bound)} but not conclusively (always-valid "
            f"p={fmt_p(p)}); waiting ({vs})"
        )
    else:
        msg = f"{seen} <= {fmt_percent(bound)} ({vs})"
    return Check(
        "error_rate", status, observed, threshold, {CANARY: n, CHAMPION: n_h}, msg, REQUESTS
    )


def _qname(q: float) -> str:
    return f"p{100 * q:g}"


def check_latency(frame: pd.DataFrame, cfg: AnalysisConfig) -> Check:
    """Fail on too many canary requests above the absolute bound, or on canary quantiles far
    above the champion's (each quantile judged only with enough samples); see judge_latency."""
    can = frame.loc[frame["variant"] == CANARY, "latency_ms"].dropna().to_numpy(float)
    cha = frame.loc[frame["variant"] == CHAMPION, "latency_ms"].dropna().to_numpy(float)
    n, m = len(can), len(cha)
    j = judge_latency(can, cha, cfg)
    status = str(j["status"][0])
    quantiles: list[float] = j["quantiles"]
    observed: dict[str, float | int | None] = {
        "canary_p50_ms": float(np.median(can)) if n else None,
        "champion_p50_ms": float(np.median(cha)) if m else None,
        "slow_requests": int(j["slow"][0]), "slow_share": int(j["slow"][0]) / n if n else None,
        "p_value_bound": float(j["p_abs"][0]),
        "judged_quantile": quantiles[-1] if quantiles else None, "ratio": None, "p_value": None,
    }  # fmt: skip
    for i, q in enumerate(quantiles):
        observed[f"canary_{_qname(q)}_ms"] = float(j["canary_q"][0, i])
        observed[f"champion_{_qname(q)}_ms"] = float(j["champion_q"][0, i])
    if quantiles:
        top_c, top_h = float(j["canary_q"][0, -1]), float(j["champion_q"][0, -1])
        observed["ratio"] = top_c / top_h if top_h > 0 else None
        observed["p_value"] = float(j["p_rel"][0].min())
    threshold = {"max_p99_ms": cfg.max_p99_ms, "max_p99_ratio": cfg.max_p99_ratio,
                 "p99_floor_ms": cfg.p99_floor_ms, "min_requests": cfg.min_requests,
                 "min_tail_samples": cfg.min_tail_samples, "alpha": cfg.alpha}  # fmt: skip
    on = f"{fmt_count(n)}/{fmt_count(m)} canary/champion requests"
    slow, p_abs = int(j["slow"][0]), float(j["p_abs"][0])
    over = (
        f"{slow} of {fmt_count(n)} canary requests ({fmt_percent(slow / n if n else None)}) "
        f"slower than {fmt_ms(cfg.max_p99_ms)}"
    )
    level = cfg.alpha / cfg.latency_tests
    pairs = ", ".join(
        f"{_qname(q)} {fmt_ms(j['canary_q'][0, i])}/{fmt_ms(j['champion_q'][0, i])}"
        for i, q in enumerate(quantiles)
    )
    missing = [q for q in cfg.latency_quantiles if q not in quantiles]
    pending = (
        f"; {_qname(missing[0])} needs {fmt_count(cfg.samples_for(missing[0]))} requests each"
        if missing
        else ""
    )
    compared = f"canary/champion {pairs}" if pairs else "no quantile compared yet"
    if n < cfg.min_requests:
        msg = f"only {fmt_count(n)} canary latencies ({cfg.min_requests} needed); {over}"
    elif status == FAIL and p_abs <= level and slow / n > 0.01:
        msg = (
            f"canary p99 latency above {fmt_ms(cfg.max_p99_ms)}: {over}, more than the 1% a "
            f"p99 bound allows (always-valid p={fmt_p(p_abs)}; {compared}; {on})"
        )
    elif status == FAIL:
        i = int(np.argmin(j["p_rel"][0]))
        q = quantiles[i]
        beyond, lim = int(j["beyond"][0, i]), float(j["limit"][0, i])
        msg = (
            f"canary {_qname(q)} latency {fmt_ms(j['canary_q'][0, i])} vs the champion's "
            f"{fmt_ms(j['champion_q'][0, i])}: {beyond} of {fmt_count(n)} canary requests "
            f"({fmt_percent(beyond / n)}) slower than {fmt_ms(lim)} (> {cfg.max_p99_ratio:g}x "
            f"the champion's {_qname(q)}, floor {fmt_ms(cfg.p99_floor_ms)}) where "
            f"{fmt_percent(1 - q)} are allowed (always-valid p={fmt_p(float(j['p_rel'][0, i]))};"
            f" {on})"
        )
    elif status == WAIT:
        first = cfg.latency_quantiles[0]
        msg = (
            f"only {fmt_count(n)} canary latencies: {_qname(first)} needs "
            f"{fmt_count(cfg.samples_for(first))} to be compared; {over}"
        )
    else:
        vs = compared
        if m < cfg.samples_for(cfg.latency_quantiles[0]):
            vs = f"only {fmt_count(m)} champion latencies, not compared"
        msg = f"canary latency within bounds: {over}; {vs}{pending} ({on})"
    return Check("latency", status, observed, threshold, {CANARY: n, CHAMPION: m}, msg, LATENCIES)


def check_accuracy(
    frame: pd.DataFrame, cfg: AnalysisConfig, pairs: pd.DataFrame, shadow: bool = False
) -> Check:
    """Fail only when the canary is, with always-valid evidence, more than max_accuracy_drop
    below the champion on the same window (judge_accuracy): on labels once min_feedback of
    each variant have arrived; before that (`labels: when_available`, or `ignored`) on
    estimates, paired when shadow scores exist, unless the labels so far already show a
    significant drop. The sequential test is valid at any count, and a confidently wrong model
    is what estimates cannot see. In the `shadow` step a label judges both predictions."""
    if shadow:
        labeled = pairs[pairs["true_label"].notna()]
        n_c = n_h = len(labeled)
        k_c = int((labeled["canary_label"] == labeled["true_label"]).sum())
        k_h = int((labeled["champion_label"] == labeled["true_label"]).sum())
    else:
        labeled = frame[~frame["is_error"] & frame["true_label"].notna()]
        correct = labeled["label"] == labeled["true_label"]
        can, cha = labeled["variant"] == CANARY, labeled["variant"] == CHAMPION
        n_c, n_h = int(can.sum()), int(cha.sum())
        k_c, k_h = int(correct[can].sum()), int(correct[cha].sum())
    enough = n_c >= cfg.min_feedback and n_h >= cfg.min_feedback
    if (enough and cfg.labels != "ignored") or cfg.labels == "required":
        return _labeled_check(k_c, n_c, k_h, n_h, cfg)
    if cfg.labels == "when_available" and min(n_c, n_h) >= cfg.fast_fail_requests:
        early = _labeled_check(k_c, n_c, k_h, n_h, cfg, early=True)
        if early.status == FAIL:
            return early
    if len(pairs) or shadow:
        return check_paired_estimated_accuracy(pairs, _unpaired(frame, pairs), cfg, (n_c, n_h))
    return check_estimated_accuracy(frame, cfg, (n_c, n_h))


def _labeled_check(
    k_c: int, n_c: int, k_h: int, n_h: int, cfg: AnalysisConfig, early: bool = False
) -> Check:
    """The accuracy check on k correct of n labeled requests per variant (`early`: before
    min_feedback of them, where only a significant failure counts)."""
    acc_c = k_c / n_c if n_c else float("nan")
    acc_h = k_h / n_h if n_h else float("nan")
    observed: dict[str, float | int | None] = {
        "canary_accuracy": acc_c, "champion_accuracy": acc_h, "drop": acc_h - acc_c,
        "canary_labeled": n_c, "champion_labeled": n_h, "drop_lower_bound": None,
        "p_value": None,
    }  # fmt: skip
    threshold = {"max_accuracy_drop": cfg.max_accuracy_drop, "alpha": cfg.alpha,
                 "min_feedback": cfg.min_feedback, "accuracy_tau": cfg.accuracy_tau}  # fmt: skip
    samples = {CANARY: n_c, CHAMPION: n_h}
    if not early and (n_c < cfg.min_feedback or n_h < cfg.min_feedback):
        who = "canary" if n_c < cfg.min_feedback else "champion"
        have = n_c if who == "canary" else n_h
        msg = (
            f"only {fmt_count(have)} labeled {who} requests ({cfg.min_feedback} needed) to judge "
            f"accuracy; so far canary {fmt_count(k_c)}/{fmt_count(n_c)} correct, "
            f"champion {fmt_count(k_h)}/{fmt_count(n_h)}"
        )
        return Check("accuracy", WAIT, observed, threshold, samples, msg, LABELS)
    drop, var = accuracy_drop_estimate(k_c, n_c, k_h, n_h)
    j = _judge_drop(drop, var, True, cfg)
    seen = (
        f"canary accuracy {acc_c:.3f} vs champion {acc_h:.3f} on "
        f"{fmt_count(n_c)}/{fmt_count(n_h)} labeled requests"
        + (f" (fewer than {cfg.min_feedback} each, but significant)" if early else "")
    )
    status, msg = _drop_verdict(j, seen, cfg, observed)
    return Check("accuracy", status, observed, threshold, samples, msg, LABELS)


def _estimate_frame(
    acc_c: float, acc_h: float, labeled: tuple[int, int], cfg: AnalysisConfig
) -> tuple[dict[str, float | int | None], dict[str, float | int], str]:
    """An estimated accuracy check's observed figures, thresholds, and why labels did not judge."""
    observed: dict[str, float | int | None] = {
        "canary_accuracy": acc_c, "champion_accuracy": acc_h, "drop": acc_h - acc_c,
        "canary_labeled": labeled[0], "champion_labeled": labeled[1], "drop_lower_bound": None,
        "p_value": None,
    }  # fmt: skip
    threshold = {"max_accuracy_drop": cfg.max_accuracy_drop, "alpha": cfg.alpha,
                 "min_requests": cfg.min_requests, "accuracy_tau": cfg.accuracy_tau}  # fmt: skip
    why = (
        "labels ignored by config"
        if cfg.labels == "ignored"
        else f"{fmt_count(labeled[0])}/{fmt_count(labeled[1])} labeled canary/champion requests "
        f"of {cfg.min_feedback} each needed"
    )
    return observed, threshold, why


def check_estimated_accuracy(
    frame: pd.DataFrame, cfg: AnalysisConfig, labeled: tuple[int, int]
) -> Check:
    """The accuracy check on no labels: each variant's estimated accuracy on the requests it
    answered. It rests on the models' calibration (ECE about 0.01 here), which no label checks
    during the step: 06 monitor compares it with the realized accuracy once labels arrive."""
    answered = frame[~frame["is_error"] & frame["probability"].notna() & frame["label"].notna()]
    chance = estimated_correct(answered)
    can, cha = chance[answered["variant"] == CANARY], chance[answered["variant"] == CHAMPION]
    n_c, n_h = len(can), len(cha)
    acc_c = float(can.mean()) if n_c else float("nan")
    acc_h = float(cha.mean()) if n_h else float("nan")
    observed, threshold, why = _estimate_frame(acc_c, acc_h, labeled, cfg)
    samples = {CANARY: n_c, CHAMPION: n_h}
    if n_c < cfg.min_requests or n_h < cfg.min_requests:
        msg = (
            f"only {fmt_count(n_c)}/{fmt_count(n_h)} canary/champion predictions "
            f"({cfg.min_requests} each needed) to estimate accuracy ({why})"
        )
        return Check("accuracy", WAIT, observed, threshold, samples, msg, ESTIMATED)
    j = judge_estimated_accuracy(
        acc_c, can.var(ddof=1) if n_c > 1 else 0.25, n_c,
        acc_h, cha.var(ddof=1) if n_h > 1 else 0.25, n_h, cfg,
    )  # fmt: skip
    seen = (
        f"estimated accuracy (calibrated probabilities, no labels: {why}) canary {acc_c:.3f} vs "
        f"champion {acc_h:.3f} on {fmt_count(n_c)}/{fmt_count(n_h)} requests"
    )
    status, msg = _drop_verdict(j, seen, cfg, observed)
    return Check("accuracy", status, observed, threshold, samples, msg, ESTIMATED)


def _unpaired(frame: pd.DataFrame, pairs: pd.DataFrame) -> int:
    """Answered requests left out of the paired checks (no shadow score yet, or it failed)."""
    return int((~frame["is_error"]).sum()) - len(pairs)


def _on_pairs(n: int, unpaired: int) -> str:
    return f"{fmt_count(n)} paired requests ({fmt_count(unpaired)} without a shadow score left out)"


def check_paired_estimated_accuracy(
    pairs: pd.DataFrame, unpaired: int, cfg: AnalysisConfig, labeled: tuple[int, int]
) -> Check:
    """The estimated accuracy check on paired requests: each model's chance of being right
    (its calibrated probability of the label it gave) on the same input, the drop per request
    judged by judge_paired_estimated_accuracy."""
    chance = {
        side: estimated_correct(
            pd.DataFrame(
                {"label": pairs[f"{side}_label"], "probability": pairs[f"{side}_probability"]}
            )
        )
        for side in (CANARY, CHAMPION)
    }
    drops = (chance[CHAMPION] - chance[CANARY]).dropna()
    n = len(drops)
    acc_c = float(chance[CANARY].mean()) if n else float("nan")
    acc_h = float(chance[CHAMPION].mean()) if n else float("nan")
    observed, threshold, why = _estimate_frame(acc_c, acc_h, labeled, cfg)
    samples = {"paired": n, "unpaired": unpaired}
    if n < cfg.min_requests:
        msg = (
            f"only {_on_pairs(n, unpaired)}, {cfg.min_requests} needed to estimate accuracy "
            f"on the same requests ({why})"
        )
        return Check("accuracy", WAIT, observed, threshold, samples, msg, PAIRED_ESTIMATED)
    j = judge_paired_estimated_accuracy(drops.mean(), drops.var(ddof=1) if n > 1 else 0.25, n, cfg)
    seen = (
        f"estimated accuracy on the same requests (calibrated probabilities, no labels: {why}) "
        f"canary {acc_c:.3f} vs champion {acc_h:.3f} on {_on_pairs(n, unpaired)}"
    )
    status, msg = _drop_verdict(j, seen, cfg, observed)
    return Check("accuracy", status, observed, threshold, samples, msg, PAIRED_ESTIMATED)


def check_disagreement(
    pairs: pd.DataFrame, unpaired: int, cfg: AnalysisConfig, accuracy: Check | None = None
) -> Check:
    """The share of paired requests labeled differently (judge_disagreement). It cannot tell
    a better canary from a worse one: when the labels passed `accuracy`, they decide, and while
    most pairs already have their label (LABELS_DECIDE_SHARE) a failure waits for them."""
    n = len(pairs)
    k = int((pairs["canary_label"] != pairs["champion_label"]).sum())
    j = judge_disagreement(k, n, cfg)
    status = str(j["status"])
    rate, lower, upper = float(j["rate"]), float(j["lower"]), float(j["upper"])
    observed = {"disagreement": rate if n else None, "disagreeing": k,
                "lower_bound": lower if n else None, "upper_bound": upper if n else None,
                "p_value": float(j["p_value"])}  # fmt: skip
    threshold = {"max_disagreement": cfg.max_disagreement, "alpha": cfg.alpha,
                 "min_requests": cfg.min_requests}  # fmt: skip
    bound = fmt_percent(cfg.max_disagreement)
    seen = f"the variants disagree on {fmt_percent(rate)}: {k} of {_on_pairs(n, unpaired)}"
    interval = (
        f"always-valid {100 * (1 - cfg.alpha):g}% bounds "
        f"{fmt_percent(max(lower, 0.0))}..{fmt_percent(min(upper, 1.0))}"
    )
    labels_passed = accuracy is not None and (accuracy.evidence, accuracy.status) == (LABELS, PASS)
    if n < cfg.min_requests:
        msg = f"only {_on_pairs(n, unpaired)}, {cfg.min_requests} needed to judge disagreement"
    elif status != PASS and labels_passed:
        status = PASS
        msg = f"{seen} ({interval}, above {bound}): the labels show the canary is not worse"
    elif status == FAIL and (labeled := _labeled_share(pairs, cfg)) >= LABELS_DECIDE_SHARE:
        status = WAIT
        msg = (
            f"{seen}: significantly more than {bound} ({interval}), but {fmt_percent(labeled)} "
            f"of them have their label already: the labels decide (accuracy), waiting for them"
        )
    elif status == FAIL:
        msg = f"{seen}: significantly more than {bound} ({interval}, p={fmt_p(j['p_value'])})"
    elif status == WAIT:
        msg = f"{seen}: not yet significantly below {bound} ({interval}); waiting"
    else:
        msg = f"{seen}: below {bound} ({interval})"
        if upper <= cfg.max_accuracy_drop:  # accuracies differ by at most the disagreement
            msg += (
                f"; the accuracies cannot differ by more than "
                f"{100 * cfg.max_accuracy_drop:g} points"
            )
    samples = {"paired": n, "unpaired": unpaired}
    return Check("disagreement", status, observed, threshold, samples, msg, PAIRED)


def _labeled_share(pairs: pd.DataFrame, cfg: AnalysisConfig) -> float:
    """The share of paired requests whose label has arrived (0 when labels are ignored)."""
    if cfg.labels == "ignored" or not len(pairs):
        return 0.0
    return float(pairs["true_label"].notna().mean())


def check_paired_shift(pairs: pd.DataFrame, unpaired: int, cfg: AnalysisConfig) -> Check:
    """The positive rate's shift on the same requests (judge_paired_shift)."""
    n = len(pairs)
    can, cha = pairs["canary_label"] == 1, pairs["champion_label"] == 1
    up, down = int((can & ~cha).sum()), int((~can & cha).sum())
    r_c = float(can.mean()) if n else float("nan")
    r_h = float(cha.mean()) if n else float("nan")
    observed: dict[str, float | int | None] = {
        "canary_positive_rate": r_c, "champion_positive_rate": r_h, "shift": r_c - r_h,
        "canary_mean_probability": float(pairs["canary_probability"].mean()) if n else None,
        "champion_mean_probability": float(pairs["champion_probability"].mean()) if n else None,
        "p_value": None,
    }  # fmt: skip
    threshold = {"max_prediction_shift": cfg.max_prediction_shift,
                 "shift_alpha": cfg.shift_alpha, "min_requests": cfg.min_requests}  # fmt: skip
    samples = {"paired": n, "unpaired": unpaired}
    if n < cfg.min_requests:
        msg = f"only {_on_pairs(n, unpaired)}, {cfg.min_requests} needed to compare predictions"
        return Check("prediction_shift", WAIT, observed, threshold, samples, msg, PAIRED)
    j = judge_paired_shift(up, down, n, cfg)
    status, p = str(j["status"]), float(j["p_value"])
    observed["p_value"] = p
    shift = r_c - r_h
    seen = (
        f"on the same requests the canary predicts positive for {fmt_percent(r_c)} vs champion "
        f"{fmt_percent(r_h)} on {_on_pairs(n, unpaired)}: shift {100 * abs(shift):.1f} points"
    )
    bound_pts = f"{100 * cfg.max_prediction_shift:g}"
    if status == FAIL:
        msg = f"{seen}, significantly more than {bound_pts} (always-valid p={fmt_p(p)})"
    elif abs(shift) > cfg.max_prediction_shift:
        wait = "; waiting" if status == WAIT else ""
        msg = f"{seen} > {bound_pts} but not significantly (p={fmt_p(p)}){wait}"
    else:
        msg = f"{seen} <= {bound_pts}"
    return Check("prediction_shift", status, observed, threshold, samples, msg, PAIRED)


def _drop_verdict(
    j: dict[str, Any], seen: str, cfg: AnalysisConfig, observed: dict[str, Any]
) -> tuple[str, str]:
    """Status and sentence of an accuracy drop judged by _judge_drop; fills in its numbers."""
    status, lower, p = str(j["status"]), float(j["lower"]), float(j["p_value"])
    observed.update(drop_lower_bound=lower, p_value=p)
    drop_pts = 100 * float(j["drop"])
    change = f"drop {drop_pts:.1f} points" if drop_pts >= 0 else f"gain {-drop_pts:.1f} points"
    bound_pts = f"{100 * cfg.max_accuracy_drop:g}"
    bound = (
        f"always-valid {100 * (1 - cfg.alpha):g}% lower bound {100 * lower:.1f} points, "
        f"p={fmt_p(p)}"
    )
    if status == FAIL:
        return status, f"{seen}: {change} > {bound_pts} ({bound})"
    if status == WAIT:
        return status, f"{seen}: {change} > {bound_pts} but not significant ({bound}); waiting"
    return status, f"{seen}: {change}, not significantly more than {bound_pts} ({bound})"


def check_prediction_shift(frame: pd.DataFrame, cfg: AnalysisConfig) -> Check:
    """Fail when the canary's positive rate moved by more than the bound, significantly."""
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
        return Check("prediction_shift", WAIT, observed, threshold, samples, msg, PREDICTIONS)
    j = judge_prediction_shift(pos_c, n_c, pos_h, n_h, cfg)
    status, p = str(j["status"]), float(j["p_value"])
    observed["p_value"] = p
    shift = r_c - r_h
    big = abs(shift) > cfg.max_prediction_shift
    seen = (
        f"canary predicts positive for {fmt_percent(r_c)} vs champion {fmt_percent(r_h)} "
        f"({fmt_count(n_c)}/{fmt_count(n_h)} predictions): shift {100 * abs(shift):.1f} points"
    )
    bound_pts = f"{100 * cfg.max_prediction_shift:g}"
    if status == FAIL:
        msg = f"{seen} > {bound_pts}, always-valid p={fmt_p(p)}"
    elif status == WAIT:
        msg = f"{seen} > {bound_pts} but not significant (p={fmt_p(p)}); waiting"
    elif big:
        msg = f"{seen} > {bound_pts} but not significant (p={fmt_p(p)} >= {cfg.shift_alpha:g})"
    else:
        msg = f"{seen} <= {bound_pts} (p={fmt_p(p)})"
    return Check("prediction_shift", status, observed, threshold, samples, msg, PREDICTIONS)


def analyze(
    window: pd.DataFrame, cfg: AnalysisConfig | None = None, shadow: bool = False
) -> Analysis:
    """Run every check on one window of predictions and combine them into a verdict. With
    shadow scores the accuracy estimate and the shift are paired and disagreement is judged;
    `shadow`: the `shadow` step, where the canary answers nobody and only scores in the shadow
    (its errors and latencies are those of its shadow scores)."""
    cfg = cfg or AnalysisConfig()
    frame = _prepare(window)
    pairs = paired_predictions(frame)
    served = shadow_requests(frame) if shadow else frame
    # a shadow score's latency is its batch's predict time, not an answer's: in the shadow step
    # only the absolute bound judges it; the comparison with the champion waits for real answers
    timed = served[served["variant"] == CANARY] if shadow else served
    checks = [check_error_rate(served, cfg), check_latency(timed, cfg)]
    if shadow:
        for check in checks:
            check.evidence, check.message = SHADOW, f"shadow scores: {check.message}"
        checks[1].message += (
            " (a shadow score's latency is its batch's predict time: only the absolute bound "
            "is judged until the canary answers)"
        )
    accuracy = check_accuracy(frame, cfg, pairs, shadow)
    checks.append(accuracy)
    if len(pairs) or shadow:
        unpaired = _unpaired(frame, pairs)
        checks += [
            check_paired_shift(pairs, unpaired, cfg),
            check_disagreement(pairs, unpaired, cfg, accuracy),
        ]
    else:
        checks.append(check_prediction_shift(frame, cfg))
    counts = frame["variant"].value_counts()
    samples = {v: int(counts.get(v, 0)) for v in (CHAMPION, CANARY)}
    if len(pairs) or shadow:
        samples["paired"] = len(pairs)
    versions = {
        v: sorted({str(x) for x in served.loc[served["variant"] == v, "model_version"].dropna()})
        for v in (CHAMPION, CANARY)
    }
    created = pd.to_numeric(frame["created_at"], errors="coerce").dropna()
    span = {"start": float(created.min()), "end": float(created.max())} if len(created) else {}
    statuses = {c.status for c in checks}
    verdict = next((s for s in (FAIL, WAIT) if s in statuses), PASS)
    return Analysis(verdict, checks, samples, versions, {"start": None, "end": None, **span})


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
