"""The canary on paired evidence: every request is scored by both variants (the one that did
not answer scores it in the shadow), so the checks compare the two models on identical inputs:
how often they disagree, how their positive rate moves, and how their estimated accuracy
differs, with no label. An equal canary passes, a canary trained on permuted ratings fails
naming the paired evidence, too few pairs wait; the `shadow` step (weight 0) judges the canary's
shadow scores only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV

from lib.config_sections import AnalysisConfig
from lib.delivery import canary
from lib.delivery.canary import (
    analyze,
    judge_disagreement,
    judge_paired_estimated_accuracy,
    judge_paired_shift,
)
from lib.pipeline import training
from tests.support.apps import raw_file_split

GROUPS = ["engagement", "versions", "genres", "name_stats"]  # the default features but name_text
Proba = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def paired_window(
    champion_p: np.ndarray,
    canary_p: np.ndarray,
    canary_share: float,
    seed: int = 0,
    shadowed: float = 1.0,
) -> pd.DataFrame:
    """One row per request, answered by the canary for `canary_share` of them, each with the
    other variant's shadow score (for a `shadowed` share: the rest have none yet)."""
    rng = np.random.default_rng(seed)
    n = len(champion_p)
    by_canary = rng.random(n) < canary_share
    answer_p = np.where(by_canary, canary_p, champion_p)
    shadow_p = np.where(by_canary, champion_p, canary_p)
    has_shadow = rng.random(n) < shadowed
    frame = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "created_at": 1_700_000_000 + rng.uniform(0, 300, n),
            "variant": np.where(by_canary, "canary", "champion"),
            "model_version": np.where(by_canary, "2", "1"),
            "label": (answer_p >= 0.5).astype(float),
            "probability": answer_p,
            "latency_ms": rng.lognormal(np.log(20), 0.25, n),
            "error": None,
            "true_label": np.nan,
            "shadow_variant": np.where(by_canary, "champion", "canary"),
            "shadow_version": np.where(by_canary, "1", "2"),
            "shadow_label": pd.array((shadow_p >= 0.5).astype(int), dtype="Int64"),
            "shadow_probability": shadow_p,
            "shadow_latency_ms": rng.lognormal(np.log(20), 0.25, n),
            "shadow_error": None,
        }
    )
    shadow_columns = [c for c in frame.columns if c.startswith("shadow_")]
    frame.loc[~has_shadow, shadow_columns] = None
    return frame


def _champion(rng: np.random.Generator, n: int) -> np.ndarray:
    """A confident, calibrated model's probabilities (estimated accuracy about 0.78)."""
    return rng.beta(0.9, 0.7, n)


def _equal(rng: np.random.Generator, champion_p: np.ndarray) -> np.ndarray:
    """Retrained with another seed: the same skill, each probability a little different."""
    return (champion_p + rng.normal(0, 0.05, len(champion_p))).clip(0.001, 0.999)


def _permuted(rng: np.random.Generator, champion_p: np.ndarray) -> np.ndarray:
    """Trained on permuted ratings: near the base rate whatever the input (all positive)."""
    return rng.normal(0.7, 0.03, len(champion_p)).clip(0.5, 0.999)


def window_of(canary_p: Proba, n: int = 3000, share: float = 0.1, seed: int = 1, **kw: Any):
    rng = np.random.default_rng(seed)
    champion_p = _champion(rng, n)
    return paired_window(champion_p, canary_p(rng, champion_p), share, seed, **kw)


def test_an_equal_canary_passes_on_paired_evidence_and_says_so() -> None:
    result = analyze(window_of(_equal))
    assert result.verdict == "pass", result.reason
    assert [(c.name, c.evidence) for c in result.checks] == [
        ("error_rate", "requests"), ("latency", "latencies"),
        ("accuracy", canary.PAIRED_ESTIMATED), ("prediction_shift", canary.PAIRED),
        ("disagreement", canary.PAIRED),
    ]  # fmt: skip
    disagreement = result.by_name("disagreement")
    assert 0.01 < disagreement.observed["disagreement"] < 0.06
    assert disagreement.observed["upper_bound"] < 0.10
    assert "of 3,000 paired requests (0 without a shadow score left out)" in disagreement.message
    assert result.samples["paired"] == 3000
    accuracy = result.by_name("accuracy")
    assert "estimated accuracy on the same requests" in accuracy.message


def test_a_permuted_ratings_canary_fails_naming_the_paired_evidence() -> None:
    result = analyze(window_of(_permuted))
    assert result.verdict == "fail"
    for name in ("disagreement", "prediction_shift", "accuracy"):
        check = result.by_name(name)
        assert check.status == "fail", check.message
        assert "paired" in check.evidence
        assert check.message in result.reason
    assert "significantly more than 10.0%" in result.by_name("disagreement").message


def test_pairing_halves_nothing_but_the_variance() -> None:
    """The same equal canary judged on the same requests: the paired estimate's bound is far
    tighter than the one from two independent means (fewer requests answered by the canary)."""
    window = window_of(_equal, share=0.05, seed=3)
    paired = analyze(window).by_name("accuracy")
    unpaired = analyze(window.drop(columns=list(canary.SHADOW_COLUMNS))).by_name("accuracy")
    assert unpaired.evidence == canary.ESTIMATED and paired.evidence == canary.PAIRED_ESTIMATED
    width = {
        c.evidence: c.observed["drop"] - c.observed["drop_lower_bound"] for c in (paired, unpaired)
    }
    assert width[canary.PAIRED_ESTIMATED] < width[canary.ESTIMATED] / 3, width


def test_too_few_pairs_wait_and_say_how_many_were_left_out() -> None:
    result = analyze(window_of(_equal, n=1000, shadowed=0.03, seed=4))
    for name in ("disagreement", "prediction_shift", "accuracy"):
        check = result.by_name(name)
        assert check.status == "wait", check.message
        assert "without a shadow score left out" in check.message
        assert check.samples["paired"] < 50 < check.samples["unpaired"]
    assert result.verdict == "wait"


def test_labels_still_decide_when_enough_arrived() -> None:
    frame = window_of(_equal, seed=5)
    rng = np.random.default_rng(55)
    right = np.where(frame["variant"] == "canary", 0.5, 0.8)
    frame["true_label"] = np.where(
        rng.random(len(frame)) < right, frame["label"], 1 - frame["label"]
    )
    check = analyze(frame).by_name("accuracy")
    assert check.evidence == "labels" and check.status == "fail", check.message


def test_the_shadow_step_judges_the_canarys_shadow_scores() -> None:
    """Weight 0: every row is the champion's answer with the canary's shadow score."""
    window = window_of(_equal, share=0.0, seed=6)
    window.loc[window.index[:3], ["shadow_label", "shadow_probability"]] = None
    window.loc[window.index[:3], "shadow_error"] = "boom"
    result = analyze(window, shadow=True)
    assert result.verdict == "pass", result.reason
    assert result.samples == {"champion": 3000, "canary": 0, "paired": 2997}
    assert result.versions == {"champion": ["1"], "canary": ["2"]}
    errors = result.by_name("error_rate")
    assert errors.evidence == canary.SHADOW and errors.observed["canary_errors"] == 3
    assert errors.message.startswith("shadow scores: canary error rate 0.1% (3/3,000")
    assert result.by_name("latency").evidence == canary.SHADOW
    failed = analyze(window_of(_permuted, share=0.0, seed=6), shadow=True)
    assert failed.verdict == "fail"
    assert failed.by_name("disagreement").status == "fail"


def test_the_shadow_steps_latency_is_judged_on_the_absolute_bound_only() -> None:
    """A shadow score's latency is its batch's predict time, not an answer's: ten times the
    champion's answers passes under the p99 bound; beyond the bound for many of them fails."""
    window = window_of(_equal, share=0.0, seed=9)
    window["shadow_latency_ms"] = 10 * window["latency_ms"]  # ~200 ms batches vs ~20 ms answers
    latency = analyze(window, shadow=True).by_name("latency")
    assert latency.status == "pass", latency.message
    assert latency.samples == {"canary": 3000, "champion": 0}
    assert "only the absolute bound is judged until the canary answers" in latency.message
    window["shadow_latency_ms"] = 40 * window["latency_ms"]  # ~800 ms: above the 500 ms bound
    slow = analyze(window, shadow=True).by_name("latency")
    assert slow.status == "fail" and "p99 latency above" in slow.message, slow.message
    answered = analyze(window_of(_equal, share=0.1, seed=9)).by_name("latency")
    assert answered.samples["champion"] > 0  # outside the shadow step both sides are timed


def test_the_shadow_step_without_shadow_scores_waits() -> None:
    window = window_of(_equal, share=0.0, shadowed=0.0, seed=7)
    result = analyze(window, shadow=True)
    assert result.verdict == "wait"
    assert "only 0 paired requests (3,000 without a shadow score left out)" in result.reason
    assert result.by_name("error_rate").status == "wait"


def test_a_shadow_step_with_labels_judges_both_predictions_on_them() -> None:
    frame = window_of(_permuted, share=0.0, seed=8)
    truth = np.random.default_rng(8).random(len(frame)) < frame["probability"]
    frame["true_label"] = truth.astype(float)
    check = analyze(frame, AnalysisConfig(labels="required"), shadow=True).by_name("accuracy")
    assert check.evidence == "labels" and check.status == "fail", check.message
    assert check.samples == {"canary": 3000, "champion": 3000}


def test_paired_rules_vectorised() -> None:
    cfg = AnalysisConfig()
    n = np.array([40, 2000, 2000, 2000])
    d = judge_disagreement(np.array([0, 60, 400, 190]), n, cfg)["status"]
    assert d.tolist() == ["wait", "pass", "fail", "wait"]
    s = judge_paired_shift(np.array([0, 30, 500, 10]), np.array([0, 30, 10, 500]), n, cfg)
    assert s["status"].tolist() == ["wait", "pass", "fail", "fail"]
    a = judge_paired_estimated_accuracy(np.array([0.0, 0.0, 0.06]), 0.04**2, n[:3], cfg)
    assert a["status"].tolist() == ["wait", "pass", "fail"]


def test_max_disagreement_is_validated() -> None:
    with pytest.raises(ValueError, match="max_disagreement"):
        AnalysisConfig(max_disagreement=0)


@pytest.mark.component
def test_on_the_raw_play_store_file_paired_evidence_passes_equal_fails_permuted(
    shared_data: Path,
) -> None:
    """Calibrated models (isotonic, as 02 train registers them; logistic regressions on the
    default features but the name text, which keeps this test a few seconds long), on held-out
    apps of the raw file, no label. Measured: a retrain with another seed on 90% of the rows
    disagrees with the champion on 5.3% of the requests and passes; a model trained on permuted
    ratings says positive for every app (accuracy 70.5% against the champion's 72.8% on the
    labels no step sees), disagrees on 12.7% (always-valid bounds 11.0..14.5%) and fails on
    disagreement: on this file the champion is little above the majority rate, so its estimated
    drop is not significantly beyond the 2-point tolerance. (Gradient-boosting stacks, measured
    once: 5.8% and 12.7%.)"""
    X, y, held_out = raw_file_split(shared_data / "googleplaystore.csv")
    rng = np.random.default_rng(11)

    def calibrated(seed: int, rows: np.ndarray, labels: np.ndarray) -> Any:
        model = training.build_candidate("logistic_regression", seed, groups=GROUPS)
        return CalibratedClassifierCV(model, method="isotonic", cv=3).fit(
            X.iloc[rows], labels[rows]
        )

    everything = np.arange(len(X))
    champion = calibrated(1, everything, y).predict_proba(held_out)[:, 1]
    equal = calibrated(2, rng.choice(len(X), int(0.9 * len(X)), replace=False), y)
    permuted = calibrated(3, everything, rng.permutation(y))
    # the held-out apps twice over, as the replayer cycles through them, 5% to the canary
    twice = np.r_[champion, champion]
    for model, verdict in ((equal, "pass"), (permuted, "fail")):
        canary_p = model.predict_proba(held_out)[:, 1]
        result = analyze(paired_window(twice, np.r_[canary_p, canary_p], 0.05, seed=12))
        assert result.verdict == verdict, result.reason
    assert result.by_name("disagreement").status == "fail"
    assert result.by_name("disagreement").observed["disagreement"] > 0.1
    assert canary.PAIRED in result.reason or "disagree" in result.reason


def test_labels_that_show_the_canary_is_not_worse_overrule_disagreement() -> None:
    """A much better canary must disagree with the champion: with enough labels showing it is
    not worse, disagreement does not roll it back; without them it does."""
    frame = window_of(_permuted, seed=9)
    rng = np.random.default_rng(99)
    canary_right = np.where(frame["variant"] == "canary", 0.95, 0.75)
    frame["true_label"] = np.where(
        rng.random(len(frame)) < canary_right, frame["label"], 1 - frame["label"]
    )
    result = analyze(frame)
    assert result.by_name("accuracy").evidence == "labels"
    disagreement = result.by_name("disagreement")
    assert disagreement.status == "pass", disagreement.message
    assert "the labels show the canary is not worse" in disagreement.message
    assert analyze(frame, AnalysisConfig(labels="ignored")).by_name("disagreement").status == "fail"


def test_a_disagreement_waits_for_labels_that_are_arriving_and_fails_without_them() -> None:
    """Labels for most paired requests but fewer than min_feedback per variant yet: the labels
    will decide within the step, so a significant disagreement waits (a better canary must
    disagree; the step's wait bounds it). With labels for a fifth of them (users rate late, if
    ever), it fails at once as before; labels showing the canary worse fail on accuracy."""
    frame = window_of(_permuted, seed=9)
    rng = np.random.default_rng(99)
    canary_right = np.where(frame["variant"] == "canary", 0.95, 0.75)
    truth = np.where(rng.random(len(frame)) < canary_right, frame["label"], 1 - frame["label"])
    arrived = rng.random(len(frame)) < 0.8
    frame["true_label"] = np.where(arrived, truth, np.nan)
    cfg = AnalysisConfig(min_feedback=5000)  # not enough labels to judge accuracy on them yet
    disagreement = analyze(frame, cfg).by_name("disagreement")
    assert disagreement.status == "wait", disagreement.message
    assert disagreement.observed["lower_bound"] > cfg.max_disagreement  # it was significant
    assert "have their label already: the labels decide" in disagreement.message

    few = frame.copy()
    few.loc[rng.random(len(few)) < 0.75, "true_label"] = np.nan  # about 20% labeled
    assert analyze(few, cfg).by_name("disagreement").status == "fail"
    assert analyze(frame, cfg.model_copy(update={"labels": "ignored"})).verdict == "fail"

    worse = frame.copy()  # the labels say the canary is wrong where it disagrees
    worse["true_label"] = np.where(arrived, 1 - frame["label"], np.nan)
    worse.loc[worse["variant"] == "champion", "true_label"] = frame["label"]
    assert analyze(worse, cfg).by_name("accuracy").status == "fail"
    assert analyze(worse, cfg).verdict == "fail"


@pytest.mark.parametrize("min_feedback", [100, 5000])  # enough labels, or only the early look
def test_a_no_skill_canary_whose_disagreement_waits_for_labels_fails_on_them(
    min_feedback: int,
) -> None:
    """A canary with no skill (its probabilities ignore the app) disagrees with the champion;
    with labels arriving for most pairs the disagreement waits, and the labels fail it."""
    rng = np.random.default_rng(5)
    frame = window_of(lambda rng, champion_p: rng.random(len(champion_p)), seed=5)
    champion_answer = np.where(
        frame["variant"] == "champion", frame["label"], frame["shadow_label"]
    )
    truth = np.where(rng.random(len(frame)) < 0.8, champion_answer, 1 - champion_answer)
    frame["true_label"] = np.where(rng.random(len(frame)) < 0.8, truth, np.nan)
    result = analyze(frame, AnalysisConfig(min_feedback=min_feedback))
    assert result.verdict == "fail", result.reason
    assert result.by_name("accuracy").status == "fail"
    assert result.by_name("accuracy").evidence == "labels"
    assert result.by_name("disagreement").status in {"wait", "fail"}


@pytest.mark.parametrize("n, verdict", [(3000, "pass"), (40, "wait")])  # enough pairs, too few
def test_an_equal_canary_with_labels_arriving_passes_or_waits_for_pairs(
    n: int, verdict: str
) -> None:
    """The arriving-labels rule only turns a disagreement failure into a wait: an equal canary
    with most pairs labeled still passes, and too few pairs still wait for more."""
    rng = np.random.default_rng(3)
    frame = window_of(_equal, n=n, seed=3)
    champion_answer = np.where(
        frame["variant"] == "champion", frame["label"], frame["shadow_label"]
    )
    truth = np.where(rng.random(n) < 0.78, champion_answer, 1 - champion_answer)
    frame["true_label"] = np.where(rng.random(n) < 0.8, truth, np.nan)
    result = analyze(frame)
    assert result.verdict == verdict, result.reason
    disagreement = result.by_name("disagreement")
    assert disagreement.status == verdict
    if verdict == "wait":
        assert disagreement.message.startswith("only ")
