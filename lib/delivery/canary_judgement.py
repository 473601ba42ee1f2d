"""The decision rules of canary analysis, vectorised: one row per look of a live step, or per
simulated rollout. The live checks (lib.delivery.canary) and the simulations in the tests run
this same code, so what the tests measure is what the rollout does."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from lib.config_sections import AnalysisConfig
from lib.window_stats import sequential_binomial_p, sequential_excess_test, sequential_two_sided_p

PASS, FAIL, WAIT = "pass", "fail", "wait"


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
    """Observed drop (champion minus canary accuracy) and its variance.

    Unpooled (the null is a drop of max_accuracy_drop, not equality), with Agresti-Caffo's
    +1/+1 per group in the variance so that 100% or 0% observed accuracy is not certain.
    """
    k_c, n_c = np.asarray(k_c, dtype=float), np.asarray(n_c, dtype=float)
    k_h, n_h = np.asarray(k_h, dtype=float), np.asarray(n_h, dtype=float)
    drop = k_h / np.maximum(n_h, 1) - k_c / np.maximum(n_c, 1)
    a_c, a_h = (k_c + 1) / (n_c + 2), (k_h + 1) / (n_h + 2)
    return drop, a_c * (1 - a_c) / (n_c + 2) + a_h * (1 - a_h) / (n_h + 2)


def judge_accuracy(k_c: Any, n_c: Any, k_h: Any, n_h: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """Fail only when the always-valid lower bound of the drop is above max_accuracy_drop.

    One-sided mixture SPRT (lib.window_stats.sequential_excess_test) of H0 "drop <=
    max_accuracy_drop": over all looks of a step, a canary whose true drop is within the
    tolerance fails with probability at most alpha. Below min_feedback labels (either variant)
    it waits, whatever the numbers say.
    """
    drop, var = accuracy_drop_estimate(k_c, n_c, k_h, n_h)
    lower, p = sequential_excess_test(drop, var, cfg.max_accuracy_drop, cfg.alpha, cfg.accuracy_tau)
    enough = (np.asarray(n_c) >= cfg.min_feedback) & (np.asarray(n_h) >= cfg.min_feedback)
    fail = enough & (lower > cfg.max_accuracy_drop)
    inconclusive = enough & ~fail & (drop > cfg.max_accuracy_drop) & cfg.wait_on_inconclusive
    status = np.where(fail, FAIL, np.where(~enough | inconclusive, WAIT, PASS))
    return {"status": status, "drop": drop, "lower": lower, "p_value": p}


def judge_prediction_shift(
    pos_c: Any, n_c: Any, pos_h: Any, n_h: Any, cfg: AnalysisConfig
) -> dict[str, Any]:
    """Fail when the positive rate moved by more than the bound and the move is significant.

    A new model may legitimately predict a little differently: only a large shift that an
    always-valid two-sided test (pooled variance, against no shift) finds at shift_alpha fails.
    """
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


def judge_latency(canary: Any, champion: Any, cfg: AnalysisConfig) -> dict[str, Any]:
    """Latency status from the canary's and the champion's latencies in the same window.

    `canary` is (rollouts, n) and `champion` (rollouts, m), or 1-D for one window. Two kinds of
    tests, each an always-valid binomial test at alpha / cfg.latency_tests:

    - the absolute bound: "p99 <= max_p99_ms" is "at most 1% of requests slower than
      max_p99_ms", which an exact test judges at any sample size (a few slow requests out of 73
      prove nothing; 20 out of 400 do);
    - against the champion, per quantile q with enough samples on both sides: a canary whose q
      quantile is within max_p99_ratio x the champion's has at most a share 1 - q of requests
      slower than max(max_p99_ratio x champion's q quantile, p99_floor_ms). Quantiles are
      compared, not one ratio of two maxima.

    Below min_requests canary latencies, or before any quantile has enough canary samples, the
    status is wait; without enough champion samples only the absolute bound is judged. The
    champion's quantile is itself an estimate, so the comparisons are valid up to its error,
    which the ratio's margin (3x) and the 10 samples required beyond it make small.
    """
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


def accuracy_drop_test(
    correct_c: int, n_c: int, correct_h: int, n_h: int, drop: float
) -> tuple[float, float]:
    """Fixed-sample one-sided test of H0: acc_canary >= acc_champion - drop; returns (z, p).

    Valid for ONE look only (the analysis uses judge_accuracy); kept to show, in the tests, how
    often re-running it at every look fails an identical canary.
    """
    diff, var = accuracy_drop_estimate(correct_c, n_c, correct_h, n_h)
    z = float((-diff + drop) / math.sqrt(var))
    return z, float(stats.norm.cdf(z))
