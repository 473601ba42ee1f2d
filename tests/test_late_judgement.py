"""Production judged again when the labels come: the champion against the version it replaced on
the same (shadow-paired) labeled requests, on seeded synthetic rollout windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.config_sections import MonitorConfig
from lib.watch import late_judgement
from lib.watch.late_judgement import Judged, judge_against_predecessor, paired_outcomes
from lib.watch.monitoring import evaluate_health

NEW, OLD = "2", "1"  # the champion judged, the version it replaced


def rollout_window(
    n: int, flip: float = 0.0, labeled: float = 1.0, canary_share: float = 0.3, seed: int = 0
) -> pd.DataFrame:
    """A rollout's window as the store returns it: OLD (champion) answers most requests with NEW
    (canary) in the shadow, NEW the rest with OLD in the shadow. OLD is calibrated; NEW gives
    OLD's answers except a `flip` share, which it turns over with 95% confidence."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.6, 0.95, n)
    truth = rng.random(n) < 0.6
    old_right = rng.random(n) < confidence
    old_label = np.where(old_right, truth, ~truth).astype(int)
    old_proba = np.where(old_label == 1, confidence, 1 - confidence)
    flipped = rng.random(n) < flip
    new_label = np.where(flipped, 1 - old_label, old_label)
    new_proba = np.where(flipped, np.where(new_label == 1, 0.95, 0.05), old_proba)
    canary = rng.random(n) < canary_share
    created = 1000.0 + np.arange(n)
    has_label = rng.random(n) < labeled

    def pick(a, b):
        return np.where(canary, a, b)

    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "created_at": created,
            "variant": pick("canary", "champion"),
            "model_version": pick(NEW, OLD),
            "label": pd.array(pick(new_label, old_label), dtype="Int64"),
            "probability": pick(new_proba, old_proba),
            "latency_ms": 5.0,
            "error": None,
            "true_label": pd.array(np.where(has_label, truth.astype(int), None), dtype="Int64"),
            "labeled_at": np.where(has_label, created + 86400.0, np.nan),
            "shadow_variant": pick("champion", "canary"),
            "shadow_version": pick(OLD, NEW),
            "shadow_label": pd.array(pick(old_label, new_label), dtype="Int64"),
            "shadow_probability": pick(old_proba, new_proba),
            "shadow_latency_ms": 6.0,
            "shadow_error": None,
        }
    )


def judge(window: pd.DataFrame, predecessor: str | None = None, **cfg):
    return judge_against_predecessor(Judged(window, NEW, predecessor), MonitorConfig(**cfg))


def test_pairs_put_each_version_on_its_side_whoever_answered() -> None:
    window = rollout_window(200, flip=0.5)
    predecessor, pairs = paired_outcomes(window, NEW)
    assert predecessor == OLD and len(pairs) == 200
    new = np.where(window["model_version"] == NEW, window["label"], window["shadow_label"])
    old = np.where(window["model_version"] == OLD, window["label"], window["shadow_label"])
    assert (pairs["label"].to_numpy() == new).all()
    assert (pairs["predecessor_label"].to_numpy() == old).all()


def test_failed_answers_and_failed_shadows_are_not_pairs() -> None:
    window = rollout_window(100)
    window.loc[:9, "error"] = "boom"
    window.loc[10:19, "shadow_error"] = "timeout"
    window.loc[20:29, ["shadow_version", "shadow_label"]] = None  # no shadow score (yet)
    _, pairs = paired_outcomes(window, NEW)
    assert len(pairs) == 70


def test_an_equal_version_is_not_worse() -> None:
    check, e = judge(rollout_window(2000))
    assert check.status == "ok" and e["verdict"] == "not worse"
    assert e["difference"] == 0 and e["labeled_pairs"] == 2000
    assert "not worse than its predecessor" in check.message


def test_a_version_that_flips_15_percent_confidently_is_worse_and_rolls_back() -> None:
    check, e = judge(rollout_window(2000, flip=0.15))
    assert e["verdict"] == "worse" and check.status == "alert" and check.severity == "critical"
    assert e["predecessor"] == OLD and e["accuracy"] < e["predecessor_accuracy"] - 0.05
    assert e["drop_lower"] > 0.02 and e["p_value"] < 0.05
    # the label-free estimate would not have seen it: it says the new version is better
    assert e["estimated_accuracy_labeled"] > e["predecessor_estimated_accuracy"]
    assert e["estimate_gap"] > 0.05  # the estimate overstated the realized accuracy
    for evidence in ("v2", "v1", "2,000 labeled requests", "lower bound", "label lag"):
        assert evidence in check.message


def test_alert_instead_of_rollback_per_config() -> None:
    check, e = judge(rollout_window(2000, flip=0.15), on_worse_than_predecessor="alert")
    assert e["verdict"] == "worse" and check.severity == "warning"


def test_too_few_labels_is_not_enough_evidence_never_healthy() -> None:
    window = rollout_window(2000, flip=0.15, labeled=0.03)
    check, e = judge(window)
    assert check.status == "not_enough_data" and e["verdict"] == "not enough evidence"
    assert e["pairs"] == 2000 and e["labeled_pairs"] < 100
    assert "not enough evidence" in check.message
    report = evaluate_health(
        window.iloc[:0], {}, judged=Judged(window, NEW), cfg=MonitorConfig(min_requests=0)
    )
    assert report.verdict()[0] == "not_judged"


@pytest.mark.parametrize("shadows", ["missing", "empty"])
def test_without_shadow_scores_it_is_not_judged_against_a_predecessor(shadows: str) -> None:
    window = rollout_window(500)
    shadow = [c for c in window.columns if c.startswith("shadow_")]
    if shadows == "missing":
        window = window.drop(columns=shadow)
    else:
        window[shadow] = None
    check, e = judge(window)
    assert check.status == "skipped" and e["verdict"] == "not judged"
    assert "not judged against its predecessor: no paired predictions" in check.message


def _with_other_pairs(other: str) -> pd.DataFrame:
    """600 pairs of NEW with OLD, then 1,500 of NEW with `other` (another rollout)."""
    later = rollout_window(1500, seed=1).assign(request_id=lambda f: "l" + f["request_id"])
    for column in ("model_version", "shadow_version"):
        later[column] = later[column].replace({OLD: other})
    return pd.concat([rollout_window(600, flip=0.15), later], ignore_index=True)


def test_a_later_candidate_is_never_taken_for_the_predecessor() -> None:
    """After its promotion the champion is shadowed by later candidates (v3, rolled back):
    without the registry's `previous`, its predecessor was registered before it."""
    both = _with_other_pairs("3")
    check, e = judge(both)
    assert e["predecessor"] == OLD and e["pairs"] == 600


def test_the_registrys_previous_names_the_predecessor() -> None:
    both = _with_other_pairs("0")
    assert paired_outcomes(both, NEW)[0] == "0"  # the most pairs, registered before v2
    check, e = judge(both, predecessor=OLD)  # but v2 replaced v1
    assert e["predecessor"] == OLD and e["pairs"] == 600
    check, e = judge(both, predecessor="9")  # `previous` never paired with the champion
    assert check.status == "skipped" and "no paired predictions with v9" in check.message


def test_label_arrival_counts_labels_and_their_lag() -> None:
    found = late_judgement.label_arrival(rollout_window(1000, labeled=0.4))
    assert found["requests"] == 1000 and 300 < found["labeled"] < 500
    assert found["lag_seconds"] == {"p50": 86400.0, "p90": 86400.0, "max": 86400.0}


def test_the_health_report_rolls_back_on_a_worse_champion_with_the_evidence() -> None:
    window = rollout_window(2000, flip=0.15)
    judged = Judged(window, NEW, OLD, until=5000.0)
    report = evaluate_health(window[window["model_version"] == NEW], {}, judged=judged)
    assert report.rollback and "worse than its predecessor" in report.rollback_reason
    assert report.verdict()[0] == "unhealthy"
    found = report.to_dict()["metrics"]["against_predecessor"]
    assert found["verdict"] == "worse" and found["judged_until"] == 5000.0
    # the live accuracy checks judge what the champion answered in the judged window
    assert report.metrics["performance"]["labeled"] == int((window["model_version"] == NEW).sum())


def test_the_action_on_a_worse_champion_is_rollback_or_alert_only() -> None:
    assert MonitorConfig().on_worse_than_predecessor == "rollback"
    assert MonitorConfig().label_lag_seconds == 0
    with pytest.raises(ValueError, match=r"monitoring\.on_worse_than_predecessor"):
        MonitorConfig.from_dict({"on_worse_than_predecessor": "ignore"})
    with pytest.raises(ValueError, match=r"monitoring\.label_lag_seconds"):
        MonitorConfig.from_dict({"label_lag_seconds": -1})
