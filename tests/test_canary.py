"""Canary analysis on synthetic prediction windows (seeded, exact where the numbers matter)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.config_sections import AnalysisConfig
from lib.delivery.canary import analyze, summarize_step


def _variant(
    rng: np.random.Generator,
    variant: str,
    n: int,
    accuracy: float = 0.8,
    labeled: int | None = None,
    errors: int = 0,
    latency_ms: float = 20.0,
    positive_rate: float | None = None,
    slow: tuple[int, float] | None = None,
) -> pd.DataFrame:
    """n requests of one variant; accuracy is exact on the labeled ones (a shuffled mask)."""
    labeled = n if labeled is None else labeled
    true = rng.integers(0, 2, n).astype(float)
    correct = np.zeros(n, dtype=bool)
    correct[: round(accuracy * n)] = True
    rng.shuffle(correct)
    label = np.where(correct, true, 1 - true)
    if positive_rate is not None:  # a model that ignores its input: no feedback makes sense
        label = (rng.random(n) < positive_rate).astype(float)
    true_label = true.copy()
    true_label[rng.permutation(n)[: n - labeled]] = np.nan
    error = np.array([None] * n, dtype=object)
    failed = rng.permutation(n)[:errors]
    error[failed] = "ValueError: boom"
    label[failed] = np.nan
    latency = rng.lognormal(np.log(latency_ms), 0.25, n)
    if slow is not None:
        count, ms = slow
        latency[rng.permutation(n)[:count]] = ms
    return pd.DataFrame(
        {
            "request_id": [f"{variant}-{i}" for i in range(n)],
            "created_at": 1_700_000_000 + rng.uniform(0, 300, n),
            "variant": variant,
            "model_version": "2" if variant == "canary" else "1",
            "label": label,
            "probability": np.where(np.isnan(label), np.nan, 0.3 + 0.4 * np.nan_to_num(label)),
            "latency_ms": latency,
            "error": error,
            "true_label": true_label,
        }
    )


def window(
    seed: int = 0, champion: dict | None = None, canary_: dict | None = None
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [
        _variant(rng, "champion", **{"n": 3000, **(champion or {})}),
        _variant(rng, "canary", **{"n": 400, **(canary_ or {})}),
    ]
    return pd.concat(parts, ignore_index=True).sample(frac=1, random_state=seed)


def _healthy_random(seed: int, n_champion: int = 3000, n_canary: int = 600) -> pd.DataFrame:
    """Both variants are the same model: every rate is random, nothing is exact."""
    rng = np.random.default_rng(seed)
    n = n_champion + n_canary
    true = rng.integers(0, 2, n).astype(float)
    label = np.where(rng.random(n) < 0.8, true, 1 - true)
    return pd.DataFrame(
        {
            "request_id": np.arange(n).astype(str),
            "created_at": 1_700_000_000 + rng.uniform(0, 300, n),
            "variant": np.where(np.arange(n) < n_champion, "champion", "canary"),
            "model_version": "1",
            "label": label,
            "probability": rng.uniform(0, 1, n),
            "latency_ms": rng.lognormal(np.log(20), 0.4, n),
            "error": None,
            "true_label": true,
        }
    )


@pytest.mark.parametrize("seed", range(25))
def test_healthy_canary_passes_whatever_the_seed(seed: int) -> None:
    result = analyze(_healthy_random(seed))
    assert result.verdict == "pass", result.reason
    assert [c.name for c in result.checks] == [
        "error_rate", "latency", "accuracy", "prediction_shift"]  # fmt: skip


@pytest.mark.component
def test_healthy_canary_rarely_fails_on_the_smallest_windows() -> None:
    """At the minimum feedback the accuracy test is noisiest: false rollbacks stay below alpha.

    A true drop of 0 is 2 points inside the tolerance, so the one-sided test at alpha=0.05
    fails a healthy canary far less often than 5% (about 1.5% in theory at 120 labels).
    """
    results = [analyze(_healthy_random(s, 2000, 120)) for s in range(200)]
    failed = [r for r in results if r.verdict == "fail"]
    assert len(failed) <= 6  # 3%
    assert all(c.name == "accuracy" for r in failed for c in r.checks if c.status == "fail")
    assert sum(r.verdict == "pass" for r in results) >= 190


def test_worse_accuracy_fails_with_numbers_in_the_message() -> None:
    result = analyze(window(1, {"accuracy": 0.8}, {"accuracy": 0.7}))
    assert result.verdict == "fail"
    check = result.by_name("accuracy")
    assert check.status == "fail"
    assert check.observed["canary_accuracy"] == pytest.approx(0.70)
    assert check.observed["champion_accuracy"] == pytest.approx(0.80)
    assert check.observed["p_value"] < 0.05
    assert "canary accuracy 0.700 vs champion 0.800 on 400/3,000 labeled" in check.message
    assert "drop 10.0 points > 2" in check.message
    assert "p=" in check.message
    assert check.message in result.reason


def test_slightly_worse_within_two_points_passes() -> None:
    result = analyze(window(2, {"accuracy": 0.8}, {"accuracy": 0.79}))
    check = result.by_name("accuracy")
    assert check.status == "pass", check.message
    assert "drop 1.0 points" in check.message
    assert result.verdict == "pass"


def test_the_two_point_tolerance_is_part_of_the_test() -> None:
    """1.5 points worse on 6,000 labels each is significant as a drop, but not beyond 2 points."""
    result = analyze(window(2, {"n": 6000, "accuracy": 0.8}, {"n": 6000, "accuracy": 0.785}))
    check = result.by_name("accuracy")
    assert check.status == "pass", check.message
    assert "drop 1.5 points" in check.message


def test_worse_by_more_than_two_points_on_little_evidence_is_inconclusive() -> None:
    """5 points worse on 120 labels is not significant: it passes by default, waits if strict."""
    win = window(3, {"accuracy": 0.8}, {"n": 120, "accuracy": 0.75})
    assert analyze(win).by_name("accuracy").status == "pass"
    strict = analyze(win, AnalysisConfig(wait_on_inconclusive=True)).by_name("accuracy")
    assert strict.status == "wait"
    assert "not significant" in strict.message


LABELS_REQUIRED = AnalysisConfig(labels="required")


def test_too_little_feedback_waits_never_passes_when_labels_are_required() -> None:
    result = analyze(window(4, {}, {"labeled": 60, "accuracy": 0.8}), LABELS_REQUIRED)
    check = result.by_name("accuracy")
    assert check.status == "wait"
    assert check.evidence == "labels"
    assert "only 60 labeled canary requests (100 needed)" in check.message
    assert result.verdict == "wait"
    # even a canary that is right every time does not pass on 60 labels
    perfect = analyze(window(4, {}, {"labeled": 60, "accuracy": 1.0}), LABELS_REQUIRED)
    assert perfect.by_name("accuracy").status == "wait"


def test_no_feedback_at_all_waits_when_labels_are_required() -> None:
    result = analyze(window(5, {"labeled": 0}, {"labeled": 0}), LABELS_REQUIRED)
    assert result.by_name("accuracy").status == "wait"
    assert result.verdict == "wait"


def test_errors_fail() -> None:
    result = analyze(window(6, {}, {"errors": 40}))  # 10% of 400
    check = result.by_name("error_rate")
    assert check.status == "fail"
    assert check.observed["canary_errors"] == 40
    assert "canary error rate 10.0% (40/400 requests) > 1.0%" in check.message
    assert result.verdict == "fail"


def test_a_canary_whose_every_request_errors_fails_fast() -> None:
    cfg = AnalysisConfig()
    n = cfg.fast_fail_requests  # 10: far fewer than min_requests
    result = analyze(window(7, {}, {"n": n, "errors": n, "labeled": 0}), cfg)
    assert result.by_name("error_rate").status == "fail"
    assert result.verdict == "fail"
    # but one request fewer is not enough to say anything
    fewer = analyze(window(7, {}, {"n": n - 1, "errors": n - 1, "labeled": 0}), cfg)
    assert fewer.by_name("error_rate").status == "wait"


def test_a_single_error_is_not_a_rollback() -> None:
    result = analyze(window(8, {}, {"errors": 1}))
    assert result.by_name("error_rate").status == "pass"  # 0.25% <= 1%


def test_slow_canary_fails_on_p99() -> None:
    """5% of 400 requests above 500 ms: the p99 bound allows 1%, and 20 of 400 prove it is
    exceeded although 400 requests are too few to estimate a p99 (1,000 needed)."""
    result = analyze(window(9, {}, {"slow": (20, 800.0)}))  # 5% of requests take 800 ms
    check = result.by_name("latency")
    assert check.status == "fail"
    assert check.observed["slow_requests"] == 20
    assert "canary_p99_ms" not in check.observed  # not enough samples for a p99
    assert check.observed["judged_quantile"] == 0.95
    assert "canary p99 latency above 500 ms: 20 of 400 canary requests (5.0%)" in check.message
    assert "always-valid p=" in check.message


def test_a_few_slow_requests_among_few_are_not_a_p99_failure() -> None:
    """2 of 60 requests above 500 ms is 3.3% observed, but no evidence that over 1% are."""
    result = analyze(window(9, {}, {"n": 60, "slow": (2, 800.0), "labeled": 0}))
    check = result.by_name("latency")
    assert check.status == "pass", check.message
    assert "2 of 60 canary requests (3.3%) slower than 500 ms" in check.message


def test_identical_heavy_tailed_latencies_on_73_requests_pass() -> None:
    """The issue's case: 73 canary requests, whose p99 is nearly their maximum (70 ms against
    the champion's 19 ms). Only the quantiles with enough samples are compared."""
    rng = np.random.default_rng(20)
    win = window(20, {}, {"n": 73, "labeled": 0})
    fast = rng.lognormal(np.log(8), 0.3, len(win))
    tail = rng.random(len(win)) < 0.02  # GC pauses, cold caches: the same in both variants
    win["latency_ms"] = np.where(tail, rng.uniform(40, 90, len(win)), fast)
    canary_rows = win["variant"] == "canary"
    win.loc[canary_rows, "latency_ms"] = np.r_[70.0, np.full(72, 9.0)]
    check = analyze(win).by_name("latency")
    assert check.status == "pass", check.message
    assert check.observed["judged_quantile"] == 0.5  # p90 needs 100 requests
    assert "p90 needs 100 requests each" in check.message


def test_latency_waits_until_a_quantile_has_enough_samples() -> None:
    cfg = AnalysisConfig(latency_quantiles=[0.9, 0.99], min_requests=20)
    check = analyze(window(21, {}, {"n": 60, "labeled": 0}), cfg).by_name("latency")
    assert check.status == "wait"
    assert "p90 needs 100 to be compared" in check.message
    assert analyze(window(21, {}, {"n": 100}), cfg).by_name("latency").status == "pass"


def test_latency_config_is_validated() -> None:
    assert AnalysisConfig(latency_quantiles=[0.99, 0.5, 0.5]).latency_quantiles == [0.5, 0.99]
    assert AnalysisConfig().samples_for(0.99) == 1000
    assert AnalysisConfig().samples_for(0.5) == 20
    for bad in ([], [1.0], [0.0, 0.5], [True]):
        with pytest.raises(ValueError):
            AnalysisConfig(latency_quantiles=bad)
    with pytest.raises(ValueError):
        AnalysisConfig(accuracy_tau=0)


def test_canary_far_slower_than_champion_fails_on_ratio() -> None:
    result = analyze(window(10, {"latency_ms": 20.0}, {"latency_ms": 150.0}))
    check = result.by_name("latency")
    assert check.status == "fail"
    assert check.observed["ratio"] > 3
    assert "x the champion's" in check.message


def test_tiny_latencies_are_not_judged_by_ratio() -> None:
    """4 ms vs 1 ms is 4x, but below the 50 ms floor it is noise."""
    result = analyze(window(11, {"latency_ms": 1.0}, {"latency_ms": 4.0}))
    assert result.by_name("latency").status == "pass"


def test_prediction_shift_fails() -> None:
    win = window(12, {"labeled": 0}, {"labeled": 0, "positive_rate": 0.9})
    result = analyze(win)
    check = result.by_name("prediction_shift")
    assert check.status == "fail"
    assert check.observed["canary_positive_rate"] > 0.85
    assert "canary predicts positive for" in check.message
    assert "> 15" in check.message
    assert result.verdict == "fail"


def test_small_shift_passes() -> None:
    result = analyze(window(13, {}, {"labeled": 0, "positive_rate": 0.55}))
    assert result.by_name("prediction_shift").status == "pass"


def test_fail_beats_wait() -> None:
    result = analyze(window(14, {}, {"labeled": 0, "errors": 100}), LABELS_REQUIRED)
    assert result.by_name("accuracy").status == "wait"
    assert result.verdict == "fail"


def test_empty_window_waits() -> None:
    empty = window(15).iloc[0:0]
    result = analyze(empty)
    assert result.verdict == "wait"
    assert {c.status for c in result.checks} == {"wait"}


def test_other_variants_are_ignored() -> None:
    win = window(16)
    staging = win.head(200).assign(variant="staging", error="down")
    result = analyze(pd.concat([win, staging]))
    assert result.by_name("error_rate").status == "pass"
    assert result.samples == {"champion": 3000, "canary": 400}


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="true_label"):
        analyze(window(17).drop(columns=["true_label"]))


def test_summary_is_plain_json() -> None:
    result = analyze(window(18, {}, {"labeled": 0}), LABELS_REQUIRED)
    summary = summarize_step(result)
    text = json.dumps(summary, allow_nan=False)  # NaN/NumPy values would fail here
    assert json.loads(text)["verdict"] == "wait"
    assert summary["versions"] == {"champion": ["1"], "canary": ["2"]}
    assert summary["checks"][2]["observed"]["canary_accuracy"] is None
    assert summary["window"]["end"] >= summary["window"]["start"]


def test_nullable_integer_columns_from_the_prediction_store() -> None:
    """The store returns label/true_label as pandas Int64 with <NA>: same verdicts."""
    win = window(19, {"accuracy": 0.8}, {"accuracy": 0.6, "errors": 2, "labeled": 300})
    typed = win.astype({"label": "Int64", "true_label": "Int64", "model_version": object})
    plain, nullable = analyze(win), analyze(typed)
    assert nullable.verdict == plain.verdict == "fail"
    assert [c.status for c in nullable.checks] == [c.status for c in plain.checks]
    assert summarize_step(nullable) == summarize_step(plain)
