"""Canary verdicts that survive repeated looks (issue 9 item 4), by simulation.

A rollout step is analysed every `check_every_seconds` (5 s) as its window grows, then every
second after the 300 s window until the verdict is pass or the step runs out of time; the first
failure rolls the canary back. These tests replay that look schedule on simulated traffic (20
requests/s, every request gets feedback, steps 5/25/50/100%, the default AnalysisConfig) through
the same vectorised judgements the live checks use (lib.delivery.canary.judge_*), with fixed
seeds: fast, no services.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from lib.config_sections import AnalysisConfig
from lib.delivery.canary import (
    FAIL,
    PASS,
    accuracy_drop_estimate,
    judge_accuracy,
    judge_disagreement,
    judge_error_rate,
    judge_latency,
    judge_paired_estimated_accuracy,
    judge_paired_shift,
    judge_prediction_shift,
)
from lib.window_stats import sequential_binomial_p, sequential_excess_test

# Monte Carlo over thousands of simulated rollouts: seconds per test.
pytestmark = pytest.mark.component

STEPS = (5, 25, 50, 100)
RATE = 20  # replayed requests per second
WINDOW = 300  # analysis_seconds
CHECK_EVERY = 5  # check_every_seconds
EXTRA = 60  # seconds simulated past the window (a healthy step passes at its end)


def look_times(window: int = WINDOW, every: int = CHECK_EVERY, extra: int = EXTRA) -> np.ndarray:
    """When progressive._hold_step looks: every `every` s, then every second after the window."""
    return np.r_[np.arange(every, window, every), np.arange(window, window + extra + 1)]


def step_outcome(fail: np.ndarray, passed: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Per rollout: "fail" if a look fails before the first passing look at/after the window
    end, "pass" if that look comes first, "timeout" if neither happens."""
    big = len(times) + 1
    first_fail = np.where(fail.any(1), fail.argmax(1), big)
    at_end = passed & (times >= WINDOW)[None, :]
    first_pass = np.where(at_end.any(1), at_end.argmax(1), big)
    return np.where(first_fail < first_pass, "fail", np.where(first_pass < big, "pass", "timeout"))


def simulate_counts(
    rollouts: int,
    seed: int,
    cfg: AnalysisConfig,
    champion_accuracy: float = 0.8,
    canary_accuracy: float = 0.8,
    error_rate: float = 0.002,
    positive_rate: float = 0.5,
    canary_positive_rate: float | None = None,
) -> dict[str, np.ndarray]:
    """Whole rollouts on request counts (errors, correct answers, positive predictions).

    Returns per rollout the outcome ("promoted", or the step and check that ended it).
    """
    rng = np.random.default_rng(seed)
    times = look_times()
    horizon = int(times[-1])
    outcome = np.full(rollouts, "promoted", dtype=object)
    alive = np.ones(rollouts, dtype=bool)
    earlier_champion: dict[str, np.ndarray] = {}
    for weight in STEPS:
        n_c = rng.binomial(RATE, weight / 100, (rollouts, horizon))
        counts = {"canary": n_c, "champion": RATE - n_c}
        per_look: dict[str, dict[str, np.ndarray]] = {}
        for variant, n in counts.items():
            accuracy = canary_accuracy if variant == "canary" else champion_accuracy
            positives = positive_rate
            if variant == "canary" and canary_positive_rate is not None:
                positives = canary_positive_rate
            errors = rng.binomial(n, error_rate)
            ok = n - errors
            correct = rng.binomial(ok, accuracy)
            positive = rng.binomial(ok, positives)
            series = {"n": n, "errors": errors, "ok": ok, "correct": correct, "pos": positive}
            per_look[variant] = {k: v.cumsum(1)[:, times - 1] for k, v in series.items()}
        cha = per_look["champion"]
        if weight >= 100:  # the champion gets no traffic: its rows of the earlier steps
            cha = {k: np.repeat(v[:, None], len(times), 1) for k, v in earlier_champion.items()}
        else:
            for k, v in per_look["champion"].items():
                earlier_champion[k] = earlier_champion.get(k, 0) + v[:, -1]
        can = per_look["canary"]
        checks = {
            "error_rate": judge_error_rate(can["errors"], can["n"], cfg)["status"],
            "accuracy": judge_accuracy(can["correct"], can["ok"], cha["correct"], cha["ok"], cfg)[
                "status"
            ],
            "prediction_shift": judge_prediction_shift(
                can["pos"], can["ok"], cha["pos"], cha["ok"], cfg
            )["status"],
        }
        statuses = np.stack(list(checks.values()))
        fail = (statuses == FAIL).any(0)
        passed = (statuses == PASS).all(0)
        step = step_outcome(fail, passed, times)
        for name, status in checks.items():
            failed_here = alive & (step == "fail") & (status == FAIL).any(1)
            outcome[failed_here & (outcome == "promoted")] = f"{weight}%: {name}"
        outcome[alive & (step == "timeout")] = f"{weight}%: timeout"
        alive &= step == "pass"
    return {"outcome": outcome}


def test_identical_models_are_promoted_in_99_percent_of_rollouts() -> None:
    """2,000 rollouts of a canary identical to the champion (80% accurate, 0.2% errors, 50%
    positive): measured 99.75% promoted (the issue saw 3 of 5 on real runs): 1 error-rate and 1
    prediction-shift failure, 3 steps still waiting when the simulation stops 60 s after the
    window (an observed error rate above 1% by chance: the real step waits up to 600 s more;
    counted as not promoted here). The naive fixed-alpha accuracy test fails 13% (below)."""
    cfg = AnalysisConfig()
    outcome = simulate_counts(2000, seed=1, cfg=cfg)["outcome"]
    promoted = (outcome == "promoted").mean()
    assert promoted >= 0.99, Counter(outcome)
    assert not any("accuracy" in o for o in outcome)


def test_a_five_point_accuracy_drop_is_caught_in_most_rollouts() -> None:
    """Canary 75% accurate against 80%, 1,000 rollouts: measured power 99.2% (rolled back by
    the accuracy check: 2.6% at the 5% step, 43% at 25%, 35% at 50%, 19% at 100%), 0.6%
    promoted, 0.2% still waiting at 5% when the simulation stops (an error rate above 1% by
    chance, not yet conclusive). 70% against 75%: 98.4%; a 4-point drop: 83%."""
    cfg = AnalysisConfig()
    outcome = simulate_counts(1000, seed=2, cfg=cfg, canary_accuracy=0.75)["outcome"]
    caught = np.array(["accuracy" in o for o in outcome])
    assert caught.mean() >= 0.95, Counter(outcome)


def test_a_clearly_shifted_or_erroring_canary_is_still_rolled_back() -> None:
    """The other count checks keep their teeth under the sequential tests: a canary predicting
    positive for 85% instead of 50%, or failing 10% of its requests, fails at the 5% step."""
    cfg = AnalysisConfig()
    shifted = simulate_counts(200, seed=3, cfg=cfg, canary_positive_rate=0.85)["outcome"]
    assert all(o.startswith("5%: prediction_shift") for o in shifted)
    errors = simulate_counts(200, seed=4, cfg=cfg, error_rate=0.1)["outcome"]
    assert all(o.startswith("5%: error_rate") for o in errors)


# ---------------------------------------------------------------------------- latency


def _latencies(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Heavy-tailed service times: lognormal around 10 ms, 3% stalls of 30-120 ms."""
    base = rng.lognormal(np.log(10.0), 0.35, shape)
    stall = rng.random(shape) < 0.03
    return scale * np.where(stall, rng.uniform(30, 120, shape), base)


def simulate_latency(
    rollouts: int, seed: int, cfg: AnalysisConfig, canary_scale: float = 1.0
) -> np.ndarray:
    """Whole rollouts judged on latency alone (looks every 5 s over the window; the canary's
    share of each second's requests is exact, so every rollout has the same counts)."""
    rng = np.random.default_rng(seed)
    times = np.arange(CHECK_EVERY, WINDOW + 1, CHECK_EVERY)
    outcome = np.full(rollouts, "promoted", dtype=object)
    alive = np.ones(rollouts, dtype=bool)
    earlier: list[np.ndarray] = []
    for weight in STEPS:
        n_can = np.floor(RATE * times * weight / 100).astype(int)
        can = _latencies(rng, (rollouts, n_can[-1]), canary_scale)
        if weight >= 100:
            cha_all = np.concatenate(earlier, axis=1)
            m_cha = np.full(len(times), cha_all.shape[1])
        else:
            m_cha = RATE * times - n_can
            cha_all = _latencies(rng, (rollouts, m_cha[-1]), 1.0)
            earlier.append(cha_all)
        statuses = np.stack(
            [
                judge_latency(can[:, :n], cha_all[:, :m], cfg)["status"]
                for n, m in zip(n_can, m_cha, strict=True)
            ],
            axis=1,
        )
        step = step_outcome(statuses == FAIL, statuses == PASS, times)
        outcome[alive & (step == "fail")] = f"{weight}%: latency"
        outcome[alive & (step == "timeout")] = f"{weight}%: timeout"
        alive &= step == "pass"
    return outcome


def test_identical_latencies_pass_in_99_percent_of_rollouts() -> None:
    """100 rollouts (each look re-sorts thousands of latencies: the slowest test here), both
    variants with the same heavy-tailed latencies (p50 10 ms, p99 about 100 ms): measured 100%
    promoted (200 of 200 with another seed, and also with a 1.5x slower canary, inside the 3x
    ratio); quantiles are compared only with 10 samples expected beyond them."""
    outcome = simulate_latency(100, seed=5, cfg=AnalysisConfig())
    assert (outcome == "promoted").mean() >= 0.99, Counter(outcome)


def test_a_clearly_slower_canary_fails_on_latency() -> None:
    """Every canary request 4x slower (p50 40 ms against 10 ms): rolled back at the 5% step in
    every rollout, by the median comparison after ~20 canary requests."""
    outcome = simulate_latency(30, seed=6, cfg=AnalysisConfig(), canary_scale=4.0)
    assert all(o == "5%: latency" for o in outcome)


# ---------------------------------------------------------------------------- the statistics


def _one_step_at_the_tolerance(rollouts: int, seed: int, weight: int, every: int) -> tuple:
    """One step whose canary is exactly max_accuracy_drop (2 points) worse: the edge of H0."""
    rng = np.random.default_rng(seed)
    horizon = WINDOW
    times = np.arange(every, horizon + 1, every)
    n_c = rng.binomial(RATE, weight / 100, (rollouts, horizon))
    n_h = RATE - n_c
    k_c = rng.binomial(n_c, 0.78).cumsum(1)[:, times - 1]
    k_h = rng.binomial(n_h, 0.80).cumsum(1)[:, times - 1]
    return k_c, n_c.cumsum(1)[:, times - 1], k_h, n_h.cumsum(1)[:, times - 1]


@pytest.mark.parametrize("weight", [5, 50])
def test_sequential_accuracy_test_keeps_alpha_over_every_look(weight: int) -> None:
    """At the edge of H0 (true drop = the 2-point tolerance), looked at every second of a step:
    the mixture SPRT fails at most alpha of the steps (measured 0.1% at the 5% step, 1.7% at
    50%: it is conservative); the fixed-alpha z-test re-run at the same looks fails 16% and 30%
    (5% promised), while at one look (the last) it does hold its 5%."""
    cfg = AnalysisConfig()
    k_c, n_c, k_h, n_h = _one_step_at_the_tolerance(3000, seed=7 + weight, weight=weight, every=1)
    enough = (n_c >= cfg.min_feedback) & (n_h >= cfg.min_feedback)
    sequential = (judge_accuracy(k_c, n_c, k_h, n_h, cfg)["status"] == FAIL).any(1).mean()
    drop, var = accuracy_drop_estimate(k_c, n_c, k_h, n_h)
    naive_p = stats.norm.sf((drop - cfg.max_accuracy_drop) / np.sqrt(var))
    naive = (enough & (naive_p < cfg.alpha)).any(1).mean()
    final_only = (naive_p[:, -1] < cfg.alpha).mean()  # one look: the z-test is fine
    assert sequential <= cfg.alpha
    assert naive > 3 * cfg.alpha
    assert final_only == pytest.approx(cfg.alpha, abs=0.015)


def test_naive_repeated_test_fails_identical_canaries_that_the_sequential_one_passes() -> None:
    """The issue's failure, reproduced: identical models (true drop 0, 2 points inside the
    tolerance), looks every 5 s over the 5/25/50% steps. Fixed alpha at each look: measured 13%
    of rollouts failed; the sequential test 0.1%."""
    cfg = AnalysisConfig()
    rng = np.random.default_rng(8)
    times = np.arange(CHECK_EVERY, WINDOW + 1, CHECK_EVERY)
    naive_failed = np.zeros(2000, dtype=bool)
    sequential_failed = np.zeros(2000, dtype=bool)
    for weight in STEPS[:3]:
        n_c = rng.binomial(RATE, weight / 100, (2000, WINDOW))
        n_h = RATE - n_c
        k_c = rng.binomial(n_c, 0.8).cumsum(1)[:, times - 1]
        k_h = rng.binomial(n_h, 0.8).cumsum(1)[:, times - 1]
        n_c, n_h = n_c.cumsum(1)[:, times - 1], n_h.cumsum(1)[:, times - 1]
        enough = (n_c >= cfg.min_feedback) & (n_h >= cfg.min_feedback)
        drop, var = accuracy_drop_estimate(k_c, n_c, k_h, n_h)
        naive_p = stats.norm.sf((drop - cfg.max_accuracy_drop) / np.sqrt(var))
        naive_failed |= (enough & (naive_p < cfg.alpha)).any(1)
        judged = judge_accuracy(k_c, n_c, k_h, n_h, cfg)["status"]
        sequential_failed |= (judged == FAIL).any(1)
    assert naive_failed.mean() > 0.08
    assert sequential_failed.mean() < 0.01


def test_sequential_binomial_test_keeps_alpha_over_every_look() -> None:
    """Error rate exactly at the 1% bound, a look after every request up to 2,000: the
    always-valid test fails at most alpha of the runs; the exact fixed-sample binomial test
    re-run at each look (the previous error-rate check) fails far more often: measured 3.0%
    against 27%."""
    rng = np.random.default_rng(9)
    errors = (rng.random((1000, 2000)) < 0.01).cumsum(1)
    n = np.arange(1, 2001)
    p_seq = sequential_binomial_p(errors, n, 0.01)
    p_fixed = stats.binom.sf(errors - 1, n, 0.01)
    sequential = (p_seq <= 0.05).any(1).mean()
    naive = (p_fixed < 0.05).any(1).mean()
    assert sequential <= 0.05
    assert naive > 0.2


def test_sequential_bound_is_wider_than_a_fixed_interval_and_shrinks() -> None:
    """The price of looking at every sample size: the always-valid lower bound sits below the
    fixed-sample one, and both tighten as the window grows."""
    var = np.array([0.16 / 100 * 2, 0.16 / 1000 * 2, 0.16 / 10000 * 2])
    lower, p = sequential_excess_test(np.full(3, 0.05), var, 0.02, 0.05, 0.03)
    fixed = 0.05 - stats.norm.ppf(0.95) * np.sqrt(var)
    assert np.all(lower < fixed)
    assert np.all(np.diff(lower) > 0)
    assert p[0] > p[1] > p[2]
    # failing (lower > bound) is the same decision as p <= alpha
    assert np.array_equal(lower > 0.02, p <= 0.05)


# ---------------------------------------------------------------------------- paired, no labels


def simulate_paired(
    rollouts: int,
    seed: int,
    cfg: AnalysisConfig,
    disagreement: float = 0.058,
    shift: float = 0.0,
    drop: float = 0.0,
    drop_sd: float = 0.048,
    steps: tuple[int, ...] = (0, *STEPS),
) -> np.ndarray:
    """Whole rollouts with no label, judged on the paired checks (every request also scored in
    the shadow by the variant that did not answer) and the canary's error rate (weight 0: the
    `shadow` step, on its shadow scores). Per request pair: the labels differ with probability
    `disagreement`, shifted by `shift` towards the canary's positives; the estimated drop
    (champion's chance of being right minus the canary's) has mean `drop`, s.d. `drop_sd`
    (per-second sums drawn from their normal law). Defaults: the raw file's equal retrain."""
    rng = np.random.default_rng(seed)
    times = look_times()
    horizon = int(times[-1])
    outcome = np.full(rollouts, "promoted", dtype=object)
    alive = np.ones(rollouts, dtype=bool)
    shape = (rollouts, horizon)
    for weight in steps:
        n_c = np.full(shape, RATE) if weight == 0 else rng.binomial(RATE, weight / 100, shape)
        errors = rng.binomial(n_c, 0.002)
        pairs = RATE - rng.binomial(RATE - n_c, 0.002) - errors
        up = rng.binomial(pairs, (disagreement + shift) / 2)
        down = rng.binomial(
            pairs - up, (disagreement - shift) / 2 / (1 - (disagreement + shift) / 2)
        )
        drops = rng.normal(pairs * drop, np.sqrt(pairs) * drop_sd)
        look = {k: v.cumsum(1)[:, times - 1] for k, v in
                {"n_c": n_c, "errors": errors, "pairs": pairs, "up": up, "down": down,
                 "drops": drops}.items()}  # fmt: skip
        n = look["pairs"]
        checks = {
            "error_rate": judge_error_rate(look["errors"], look["n_c"], cfg)["status"],
            "accuracy": judge_paired_estimated_accuracy(look["drops"] / n, drop_sd**2, n, cfg)[
                "status"
            ],
            "prediction_shift": judge_paired_shift(look["up"], look["down"], n, cfg)["status"],
            "disagreement": judge_disagreement(look["up"] + look["down"], n, cfg)["status"],
        }
        statuses = np.stack(list(checks.values()))
        step = step_outcome((statuses == FAIL).any(0), (statuses == PASS).all(0), times)
        name = "shadow" if weight == 0 else f"{weight}%"
        for check, status in checks.items():
            failed_here = alive & (step == "fail") & (status == FAIL).any(1)
            outcome[failed_here & (outcome == "promoted")] = f"{name}: {check}"
        outcome[alive & (step == "timeout")] = f"{name}: timeout"
        alive &= step == "pass"
    return outcome


@pytest.mark.parametrize("disagreement, drop_sd", [(0.0, 0.0), (0.058, 0.048)])
def test_equal_models_pass_the_paired_checks_in_99_percent_of_rollouts(
    disagreement: float, drop_sd: float
) -> None:
    """2,000 label-free rollouts [shadow, 5, 25, 50, 100]: identical models (no pair differs),
    and equal ones as a retrain with another seed on the raw file (5.8% of pairs disagree, the
    estimated drop per pair has s.d. 0.048): at least 99% promoted. Measured 99.45% and 99.55%;
    the rest still waiting at 5% when the simulation stops (a canary error rate above 1% by
    chance, as in the labeled simulation); none failed. At 8% disagreement: 99.2%."""
    outcome = simulate_paired(2000, 5, AnalysisConfig(), disagreement, drop_sd=drop_sd)
    assert (outcome == "promoted").mean() >= 0.99, Counter(outcome)


def test_a_no_skill_model_fails_the_paired_checks_in_the_shadow_step() -> None:
    """A model trained on permuted ratings as on the raw file (all positive: 12.7% of pairs
    disagree, all towards positive; estimated drop 2.1 points, s.d. 0.146) never reaches the
    5% step: it fails on disagreement while answering nobody. On the generated data with
    gradient boosting (12.8%, drop 3.7 points, s.d. 0.149) the paired estimated accuracy sees it
    first (500 of 500)."""
    cfg = AnalysisConfig()
    raw = simulate_paired(500, 6, cfg, 0.127, shift=0.127, drop=0.021, drop_sd=0.146)
    assert set(raw) <= {"shadow: disagreement", "shadow: accuracy"}, Counter(raw)
    assert (raw == "shadow: disagreement").mean() >= 0.9, Counter(raw)  # measured 478 of 500
    generated = simulate_paired(500, 7, cfg, 0.128, shift=0.128, drop=0.037, drop_sd=0.149)
    assert set(generated) <= {"shadow: disagreement", "shadow: accuracy"}, Counter(generated)
