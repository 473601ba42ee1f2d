"""The canary without labels: accuracy estimated from each model's calibrated probabilities.

Real users send no labels; a rollout that waits for them ends "rolled back on no evidence"
whatever the candidate. These tests hold the label-free rule to the same standard as the
labeled one: an equal canary passes (at least 99% of simulated steps), a clearly worse one fails,
too little traffic waits, and each check names the evidence it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV

from lib.config_sections import AnalysisConfig
from lib.delivery import canary
from lib.delivery.canary import analyze, judge_estimated_accuracy
from lib.pipeline import training
from lib.window_stats import estimated_correct
from tests.support.apps import raw_file_split


def _answers(rng: np.random.Generator, variant: str, proba: np.ndarray) -> pd.DataFrame:
    """Answered requests of one variant, no label ever arrived; label = proba >= 0.5."""
    n = len(proba)
    return pd.DataFrame(
        {
            "request_id": [f"{variant}-{i}" for i in range(n)],
            "created_at": 1_700_000_000 + rng.uniform(0, 300, n),
            "variant": variant,
            "model_version": "2" if variant == "canary" else "1",
            "label": (proba >= 0.5).astype(float),
            "probability": proba,
            "latency_ms": rng.lognormal(np.log(20), 0.25, n),
            "error": None,
            "true_label": np.nan,
        }
    )


def _skilled(rng: np.random.Generator, n: int) -> np.ndarray:
    """A confident, calibrated model's probabilities (estimated accuracy about 0.78)."""
    return rng.beta(0.9, 0.7, n)


def _window(seed: int, canary_proba, n_champion: int = 2000, n_canary: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    champion = _answers(rng, "champion", _skilled(rng, n_champion))
    return pd.concat([champion, _answers(rng, "canary", canary_proba(rng, n_canary))])


def test_the_estimate_is_the_probability_of_the_label_given() -> None:
    frame = pd.DataFrame({"label": [1.0, 0.0, 1.0], "probability": [0.9, 0.2, 0.6]})
    assert estimated_correct(frame).tolist() == pytest.approx([0.9, 0.8, 0.6])


def test_an_equal_canary_passes_with_no_labels_and_says_so() -> None:
    result = analyze(_window(1, _skilled))
    check = result.by_name("accuracy")
    assert check.status == "pass", check.message
    assert check.evidence == canary.ESTIMATED
    assert "estimated accuracy (calibrated probabilities, no labels: 0/0 labeled" in check.message
    assert result.verdict == "pass", result.reason
    assert [c.evidence for c in result.checks] == [
        "requests", "latencies", canary.ESTIMATED, "predictions"]  # fmt: skip


def test_a_canary_trained_on_permuted_ratings_fails_on_its_estimate() -> None:
    """No skill: its calibrated probabilities sit near the base rate, so it expects ~55%."""
    result = analyze(_window(2, lambda rng, n: rng.normal(0.55, 0.04, n).clip(0, 1), n_canary=60))
    check = result.by_name("accuracy")
    assert check.status == "fail", check.message
    assert check.observed["canary_accuracy"] < 0.6 < 0.7 < check.observed["champion_accuracy"]
    assert "estimated accuracy" in check.message and "p=" in check.message
    assert result.verdict == "fail"
    assert check.message in result.reason


def test_a_less_sure_canary_without_its_best_features_fails() -> None:
    weaker = lambda rng, n: rng.beta(2.5, 2.0, n)  # noqa: E731  (estimated accuracy ~0.66)
    check = analyze(_window(3, weaker)).by_name("accuracy")
    assert check.status == "fail", check.message
    assert check.observed["drop_lower_bound"] > 0.02


def test_too_few_predictions_wait_never_pass() -> None:
    check = analyze(_window(4, _skilled, n_canary=30)).by_name("accuracy")
    assert check.status == "wait"
    assert "only 30/2,000 canary/champion predictions (50 each needed) to estimate" in check.message


def test_labels_decide_when_enough_have_arrived() -> None:
    frame = _window(5, _skilled)
    rng = np.random.default_rng(5)
    frame["true_label"] = np.where(  # the canary is right half the time, the champion 80%
        rng.random(len(frame)) < np.where(frame["variant"] == "canary", 0.5, 0.8),
        frame["label"],
        1 - frame["label"],
    )
    labeled = analyze(frame).by_name("accuracy")
    assert labeled.evidence == "labels"
    assert labeled.status == "fail"
    assert "labeled requests" in labeled.message
    # the same window with labels ignored is judged on the estimates, which look equal
    ignored = analyze(frame, AnalysisConfig(labels="ignored")).by_name("accuracy")
    assert ignored.evidence == canary.ESTIMATED
    assert ignored.status == "pass", ignored.message
    assert "labels ignored by config" in ignored.message


def test_a_confidently_wrong_canary_fails_on_the_first_labels() -> None:
    """Estimates cannot see a model that is sure and wrong (trained on flipped ratings): the
    few labels that did arrive, fewer than min_feedback, already show it significantly."""
    frame = _window(8, _skilled)
    rng = np.random.default_rng(8)
    right = np.where(frame["variant"] == "canary", 0.2, 0.8)
    frame["true_label"] = np.where(
        rng.random(len(frame)) < right, frame["label"], 1 - frame["label"]
    )
    frame.loc[frame.groupby("variant").cumcount() >= 40, "true_label"] = np.nan  # 40 labels each
    check = analyze(frame).by_name("accuracy")
    assert check.status == "fail", check.message
    assert check.evidence == "labels"
    assert "on 40/40 labeled requests (fewer than 100 each, but significant)" in check.message
    # an equal canary with the same few labels is judged on its estimates, and passes
    frame["true_label"] = np.where(rng.random(len(frame)) < 0.8, frame["label"], 1 - frame["label"])
    frame.loc[frame.groupby("variant").cumcount() >= 40, "true_label"] = np.nan
    equal = analyze(frame).by_name("accuracy")
    assert equal.status == "pass" and equal.evidence == canary.ESTIMATED, equal.message


def test_required_labels_wait_for_them() -> None:
    check = analyze(_window(6, _skilled), AnalysisConfig(labels="required")).by_name("accuracy")
    assert check.status == "wait"
    assert check.evidence == "labels"


def test_the_labels_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="when_available"):
        AnalysisConfig(labels="sometimes")


def test_equal_canaries_pass_at_least_99_percent_of_simulated_steps() -> None:
    """20,000 simulated steps at the smallest window (50 canary requests), the same model on
    both sides: the drop's true value is 0, two points inside the tolerance."""
    cfg = AnalysisConfig()
    rng = np.random.default_rng(7)
    steps, n_c, n_h = 20_000, 50, 500
    chance_c = estimated_correct_sample(rng, steps, n_c)
    chance_h = estimated_correct_sample(rng, steps, n_h)
    j = judge_estimated_accuracy(
        chance_c.mean(1), chance_c.var(1, ddof=1), n_c,
        chance_h.mean(1), chance_h.var(1, ddof=1), n_h, cfg,
    )  # fmt: skip
    assert (j["status"] == "pass").mean() >= 0.99
    assert (j["status"] == "fail").mean() <= 0.01


def estimated_correct_sample(rng: np.random.Generator, steps: int, n: int) -> np.ndarray:
    proba = rng.beta(0.9, 0.7, (steps, n))
    return np.where(proba >= 0.5, proba, 1 - proba)


@pytest.mark.component
def test_on_the_raw_play_store_file_an_equal_model_passes_without_labels(
    shared_data: Path,
) -> None:
    """Honest figures come from the raw file: calibrated models (as 02 train registers them)
    answer disjoint held-out apps, as a 20% canary would, and no label ever arrives. (A model
    with no skill is not this check's to catch on this file: calibrated, the champion is only
    about 2 points above the majority rate, inside the tolerance; 04 decide keeps it out.)"""
    X, y, held_out = raw_file_split(shared_data / "googleplaystore.csv")
    rng = np.random.default_rng(11)

    def calibrated(seed: int, rows: np.ndarray) -> Any:
        model = training.build_candidate("logistic_regression", seed, groups=["engagement"])
        return CalibratedClassifierCV(model, method="isotonic", cv=3).fit(X.iloc[rows], y[rows])

    champion = calibrated(1, np.arange(len(X)))
    retrained = calibrated(2, rng.choice(len(X), int(0.9 * len(X)), replace=False))
    to_canary = rng.random(len(held_out)) < 0.2
    parts = [
        _answers(rng, variant, model.predict_proba(held_out[rows])[:, 1])
        for variant, model, rows in (
            ("champion", champion, ~to_canary), ("canary", retrained, to_canary))
    ]  # fmt: skip
    result = analyze(pd.concat(parts, ignore_index=True))
    check = result.by_name("accuracy")
    assert check.status == "pass" and check.evidence == canary.ESTIMATED, check.message
    assert check.samples["canary"] > 250 and check.observed["canary_labeled"] == 0
    assert result.verdict == "pass", result.reason
