"""Production monitoring on seeded synthetic windows (exact accuracies where the rule is judged)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.config_sections import MonitorConfig
from lib.pipeline import features
from lib.pipeline.features import FEATURE_COLUMNS
from lib.watch import monitoring
from lib.watch.drift import current_inputs, feature_drift, prediction_drift, psi
from lib.watch.monitoring import evaluate_health

CATEGORIES = ["FAMILY", "GAME", "TOOLS", "MEDICAL", "BUSINESS", "PRODUCTIVITY", "SPORTS"]
CATEGORY_P = [0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05]
DRIFTED_CATEGORIES = ["GAME", "AI_TOOLS", "CRYPTO"]  # two the reference never saw
RATINGS = ["Everyone", "Teen", "Mature 17+", "Everyone 10+"]


WORDS = ["Photo", "Editor", "Pro", "Game", "Puzzle", "Free", "Chat", "Music", "Daily", "Tracker"]
GENRES = ["Action", "Puzzle;Brain Games", "Tools", "Education;Pretend Play", "Casual"]
VERSIONS = ["4.0.3 and up", "4.1 and up", "Varies with device", "5.0 and up", "2.3 and up"]
CURRENT = ["1.0", "2.3.1", "Varies with device", "10.4", "v3"]


def inputs(rng: np.random.Generator, n: int, drift: bool = False) -> pd.DataFrame:
    """Model inputs shaped like the Play Store's; drift: reviews x100 and a new category mix.

    The derived columns come from features.derived_values, as the service computes them, so
    the drifted reviews also drift reviews_per_install.
    """
    if drift:
        category = rng.choice(DRIFTED_CATEGORIES, n, p=[0.4, 0.3, 0.3])
    else:
        category = rng.choice(CATEGORIES, n, p=CATEGORY_P)
    kind = rng.choice(["Free", "Paid"], n, p=[0.92, 0.08])
    size = rng.lognormal(2.5, 1.0, n)
    size[rng.random(n) < 0.1] = np.nan  # "Varies with device"
    reviews = np.round(rng.lognormal(8, 2, n)) * (100 if drift else 1)
    installs = 10.0 ** rng.integers(2, 8, n)
    names = [" ".join(rng.choice(WORDS, rng.integers(1, 4))) for _ in range(n)]
    genres, android, current = (rng.choice(v, n) for v in (GENRES, VERSIONS, CURRENT))
    derived = np.array(
        [
            features.derived_values(*texts, r, i)
            for *texts, r, i in zip(names, genres, current, android, reviews, installs, strict=True)
        ]
    )
    frame = pd.DataFrame(
        {
            "category": category,
            "content_rating": rng.choice(RATINGS, n, p=[0.7, 0.15, 0.1, 0.05]),
            "type": kind,
            "reviews": reviews,
            "installs": installs,
            "size_mb": size,
            "price": np.where(kind == "Paid", np.round(rng.lognormal(1, 0.5, n), 2), 0.0),
            "last_updated_days": rng.normal(17_500, 300, n),
            **{col: derived[:, j] for j, col in enumerate(features.DERIVED)},
            "name": pd.Series(names, dtype=object),
        }
    )
    return frame[FEATURE_COLUMNS]


def _probabilities(rng: np.random.Generator, label: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Informative scores: within a predicted class, the right answers lean to the confident end."""
    sure = rng.beta(3, 1.5, len(label))
    unsure = rng.beta(1.5, 3, len(label))
    u = np.where(label == true, sure, unsure)
    return np.where(label == 1, 0.5 + 0.5 * u, 0.5 - 0.5 * u)


def make_window(
    seed: int,
    n: int = 500,
    accuracy: float = 0.8,
    labeled: int | None = None,
    errors: int = 0,
    flip_feedback: bool = False,
    drift: bool = False,
    latency_ms: float = 20.0,
    informative: bool = True,
) -> pd.DataFrame:
    """A champion window; accuracy is exact on the labeled requests (a shuffled mask)."""
    rng = np.random.default_rng(seed)
    labeled = n if labeled is None else labeled
    true = rng.integers(0, 2, n)
    correct = np.zeros(n, dtype=bool)
    correct[: round(accuracy * n)] = True
    rng.shuffle(correct)
    label = np.where(correct, true, 1 - true).astype(float)
    if informative:
        proba = _probabilities(rng, label, true)
    else:
        proba = np.where(label == 1, rng.uniform(0.5, 1, n), rng.uniform(0, 0.5, n))
    true_label = (1 - true if flip_feedback else true).astype(float)
    true_label[rng.permutation(n)[: n - labeled]] = np.nan
    error = np.array([None] * n, dtype=object)
    failed = rng.permutation(n)[:errors]
    error[failed] = "ValueError: boom"
    label[failed] = np.nan
    proba[failed] = np.nan
    X = inputs(rng, n, drift)
    features = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in X.to_dict(orient="records")
    ]
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "created_at": 1_700_000_000 + np.sort(rng.uniform(0, 3600, n)),
            "variant": "champion",
            "model_version": "3",
            "label": pd.array(label, dtype="Float64").astype("Int64"),
            "probability": proba,
            "latency_ms": rng.lognormal(np.log(latency_ms), 0.25, n),
            "error": error,
            "true_label": pd.array(true_label, dtype="Float64").astype("Int64"),
            "rating": np.nan,
            "features": features,
        }
    )


@pytest.fixture(scope="module")
def reference() -> dict:
    """The champion's validation figures, training inputs and probabilities (same generator)."""
    big = make_window(seed=1000, n=20_000)
    perf = monitoring.performance(big, {"accuracy": 0.8})
    rng = np.random.default_rng(2000)
    return {
        "metrics": {"accuracy": 0.8, "roc_auc": perf["roc_auc"]},
        "X": inputs(rng, 3000),
        "proba": make_window(seed=3000, n=3000)["probability"].to_numpy(),
    }


def health(window: pd.DataFrame, reference: dict, cfg: MonitorConfig | None = None):
    return evaluate_health(window, reference["metrics"], reference["X"], reference["proba"], cfg)


# ---------------------------------------------------------------------------- config


def test_config_from_dict_sets_known_keys_and_names_unknown_ones() -> None:
    cfg = MonitorConfig.from_dict({"min_feedback": 200, "psi_threshold": "0.2"})
    assert cfg.min_feedback == 200 and cfg.psi_threshold == 0.2
    assert MonitorConfig.from_dict(None) == MonitorConfig()
    with pytest.raises(ValueError, match="min_feedbak.*psi_treshold|psi_treshold.*min_feedbak"):
        MonitorConfig.from_dict({"min_feedbak": 1, "psi_treshold": 0.2, "alpha": 0.01})
    with pytest.raises(ValueError, match=r"monitoring\.min_requests: must be an integer"):
        MonitorConfig.from_dict({"min_requests": 2.5})
    with pytest.raises(ValueError, match="alpha"):
        MonitorConfig.from_dict({"alpha": 1.5})


# ---------------------------------------------------------------------------- health


def test_healthy_window_has_no_alert(reference: dict) -> None:
    report = health(make_window(seed=1), reference)
    assert report.healthy, [a.message for a in report.alerts]
    assert report.alerts == [] and not report.rollback and report.rollback_reason is None
    assert report.by_name("accuracy").status == "ok"
    assert report.metrics["performance"]["labeled"] == 500
    assert report.drift["drifted_features"] == [] and not report.drift["dataset_drift"]


def test_flipped_feedback_rolls_back_naming_both_accuracies(reference: dict) -> None:
    report = health(make_window(seed=2, n=300, flip_feedback=True), reference)
    assert report.rollback
    accuracy = report.by_name("accuracy")
    assert accuracy.status == "alert" and accuracy.severity == "critical"
    assert accuracy.observed == pytest.approx(0.2)
    assert "0.200" in report.rollback_reason and "0.800" in report.rollback_reason
    assert "binomial" in report.rollback_reason
    assert [a.check for a in report.alerts if a.severity == "critical"] == ["accuracy"]


def test_the_label_free_estimate_is_compared_with_realized_accuracy(reference: dict) -> None:
    """Calibrated scores: the estimate a canary without labels relied on holds up."""
    report = health(make_window(seed=1, n=2000), reference)
    perf = report.metrics["performance"]
    assert perf["estimated_accuracy"] == pytest.approx(perf["accuracy"], abs=0.03)
    assert abs(perf["estimate_gap"]) < 3 * perf["estimate_gap_se"] + 0.01
    check = report.by_name("accuracy_estimate")
    assert check.status == "ok" and check.samples == 2000
    assert "vs realized 0.800 on the same 2,000 labeled requests" in check.message


def test_an_estimate_far_above_reality_warns_without_rolling_back(reference: dict) -> None:
    """Confident and wrong (the labels say 20%): the estimate overstated accuracy by 60 points."""
    report = health(make_window(seed=2, n=300, flip_feedback=True), reference)
    check = report.by_name("accuracy_estimate")
    assert check.status == "alert" and check.severity == "warning"
    assert check.observed == pytest.approx(0.6, abs=0.05)
    assert "points high" in check.message and "significantly more than 2 points" in check.message
    assert "accuracy_estimate" not in (report.rollback_reason or "")
    few = health(make_window(seed=2, n=300, labeled=40, flip_feedback=True), reference)
    assert few.by_name("accuracy_estimate").status == "not_enough_data"


def test_accuracy_one_point_below_does_not_roll_back(reference: dict) -> None:
    report = health(make_window(seed=3, n=300, accuracy=0.79), reference)
    assert not report.rollback
    assert report.by_name("accuracy").status == "ok"
    assert report.metrics["performance"]["accuracy"] == pytest.approx(0.79)


def test_drop_beyond_bound_but_not_significant_does_not_roll_back(reference: dict) -> None:
    report = health(make_window(seed=4, n=150, accuracy=0.77), reference)
    accuracy = report.by_name("accuracy")
    assert not report.rollback and accuracy.status == "ok"
    assert "not significantly" in accuracy.message


@pytest.mark.component
def test_significant_moderate_drop_rolls_back_on_many_samples(reference: dict) -> None:
    report = health(make_window(seed=5, n=3000, accuracy=0.74), reference)
    assert report.rollback and report.by_name("accuracy").p_value < 0.05


def test_too_little_feedback_is_not_enough_data(reference: dict) -> None:
    report = health(make_window(seed=6, n=500, labeled=40, flip_feedback=True), reference)
    accuracy = report.by_name("accuracy")
    assert accuracy.status == "not_enough_data"
    assert "not enough data (n=40" in accuracy.message
    assert report.by_name("roc_auc").status == "not_enough_data"
    assert not report.rollback
    assert "accuracy" not in [a.check for a in report.alerts]


def test_high_error_rate_rolls_back(reference: dict) -> None:
    report = health(make_window(seed=7, n=500, errors=40), reference)
    assert report.rollback
    check = report.by_name("error_rate")
    assert check.severity == "critical" and check.observed == pytest.approx(0.08)
    assert "8.0%" in report.rollback_reason and "1.0%" in report.rollback_reason


def test_errors_on_too_few_requests_are_not_enough_data(reference: dict) -> None:
    report = health(make_window(seed=8, n=20, errors=10), reference)
    assert report.by_name("error_rate").status == "not_enough_data"
    assert "not enough data (n=20" in report.by_name("error_rate").message
    assert not report.rollback


def test_slow_service_warns_without_rollback(reference: dict) -> None:
    report = health(make_window(seed=9, latency_ms=900), reference)
    assert [a.check for a in report.alerts] == ["latency_p99"]
    assert report.alerts[0].severity == "warning" and not report.rollback


def test_uninformative_scores_warn_on_roc_auc_only(reference: dict) -> None:
    report = health(make_window(seed=10, n=1000, informative=False), reference)
    auc = report.by_name("roc_auc")
    assert auc.status == "alert" and auc.severity == "warning"
    assert auc.observed < reference["metrics"]["roc_auc"] - 0.02
    assert not report.rollback


def test_drifted_inputs_alert_on_those_features_without_rollback(reference: dict) -> None:
    report = health(make_window(seed=11, drift=True), reference)
    drifted = {"reviews", "reviews_per_install", "category"}
    assert set(report.drift["drifted_features"]) == drifted
    drift_alerts = [a for a in report.alerts if a.check.startswith("drift:")]
    assert {a.check for a in drift_alerts} == {f"drift:{c}" for c in drifted}
    assert all(a.severity == "warning" for a in drift_alerts)
    assert not report.rollback and not report.healthy
    assert not report.drift["dataset_drift"]  # 3 of 18 columns
    category = next(f for f in report.drift["features"] if f["feature"] == "category")
    assert category["test"] == "chi2" and category["psi"] > 1


@pytest.mark.parametrize("seed", [21, 22, 23, 24, 25])
def test_same_distribution_raises_no_drift_alert(reference: dict, seed: int) -> None:
    report = health(make_window(seed=seed), reference)
    assert [a.check for a in report.alerts] == []
    assert report.drift["prediction"]["drifted"] is False


@pytest.mark.component
def test_dataset_drift_when_half_of_the_columns_drift(reference: dict) -> None:
    window = make_window(seed=12)
    rng = np.random.default_rng(12)
    for row in window["features"]:
        row["installs"] *= 1000
        row["last_updated_days"] -= 2000
        row["content_rating"] = rng.choice(["Teen", "Adults only 18+"])
        row["reviews"] *= 100
        row["reviews_per_install"] -= 3
        for col in ("name_length", "name_words", "genre_count", "android_min", "current_major"):
            row[col] = (row[col] or 0) + 20
    report = health(window, reference)
    assert report.drift["share"] >= 0.5 and report.drift["dataset_drift"]
    assert "dataset_drift" in [a.check for a in report.alerts]
    assert not report.rollback


def test_window_without_features_skips_drift(reference: dict) -> None:
    report = health(make_window(seed=13).drop(columns="features"), reference)
    assert report.by_name("feature_drift").status == "skipped"
    assert report.healthy


def test_report_is_plain_json(reference: dict) -> None:
    window = make_window(seed=14, n=300, labeled=150)
    window.loc[window["true_label"].notna(), "true_label"] = 1  # one class: ROC-AUC is NaN
    report = health(window, reference).to_dict()
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["metrics"]["performance"]["roc_auc"] is None
    assert set(report) >= {"healthy", "alerts", "rollback", "rollback_reason", "drift", "metrics"}


def test_reference_accepts_mlflow_holdout_names() -> None:
    window = make_window(seed=15, n=300, flip_feedback=True)
    report = evaluate_health(window, {"holdout_accuracy": 0.8, "holdout_roc_auc": 0.85})
    assert report.rollback and report.by_name("feature_drift").status == "skipped"


# ---------------------------------------------------------------------------- traffic


def test_traffic_summary_per_variant_and_version() -> None:
    window = pd.DataFrame(
        {
            "variant": ["champion"] * 100 + ["canary"] * 10,
            "model_version": ["3"] * 100 + ["4"] * 10,
            "label": [1] * 98 + [None, None] + [0] * 10,
            "probability": [0.9] * 98 + [None, None] + [0.1] * 10,
            "latency_ms": list(np.arange(1.0, 101.0)) + [500.0] * 10,
            "error": [None] * 98 + ["boom", "boom"] + [None] * 10,
            "true_label": [None] * 110,
        }
    )
    summary = monitoring.traffic_summary(window)
    assert summary["requests"] == 110 and summary["errors"] == 2
    champion = summary["by_variant"]["champion"]
    assert champion["error_rate"] == pytest.approx(0.02)
    assert champion["p50_ms"] == pytest.approx(50.5)
    assert champion["p99_ms"] == pytest.approx(np.percentile(np.arange(1.0, 101.0), 99))
    groups = {(g["variant"], g["model_version"]): g for g in summary["groups"]}
    assert groups[("canary", "4")]["requests"] == 10 and groups[("canary", "4")]["errors"] == 0


# ---------------------------------------------------------------------------- PSI and tests


def test_psi_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000)
    assert psi(a, a, False) == pytest.approx(0.0, abs=1e-12)
    assert psi(a, rng.normal(size=5000), False) < 0.02
    assert psi(a, rng.normal(1.0, 1.0, 5000), False) > 0.25
    # categorical shares 50/50 -> 90/10: 0.4 ln 1.8 + 0.4 ln 5
    assert psi(["a"] * 50 + ["b"] * 50, ["a"] * 90 + ["b"] * 10, True) == pytest.approx(
        0.4 * math.log(1.8) + 0.4 * math.log(5)
    )


def test_psi_groups_unseen_categories_and_counts_missing() -> None:
    ref = ["a"] * 50 + ["b"] * 50
    one_new = ["a"] * 40 + ["b"] * 40 + ["c"] * 20
    two_new = ["a"] * 40 + ["b"] * 40 + ["c"] * 10 + ["d"] * 10
    assert psi(ref, one_new, True) == pytest.approx(psi(ref, two_new, True))
    assert psi(ref, one_new, True) > 1
    values = np.arange(100.0)
    with_nan = values.copy()
    with_nan[:30] = np.nan
    assert psi(values, with_nan, False) > 0.25  # a field that stopped arriving is drift too


def test_chi_square_path_matches_scipy_on_counts() -> None:
    rng = np.random.default_rng(3)
    ref = inputs(rng, 1000)
    cur = inputs(rng, 400)
    cur["type"] = rng.choice(["Free", "Paid"], 400, p=[0.6, 0.4])
    result = {f.feature: f for f in feature_drift(ref, cur, MonitorConfig())}
    typ = result["type"]
    table = [
        [(ref["type"] == "Free").sum(), (ref["type"] == "Paid").sum()],
        [(cur["type"] == "Free").sum(), (cur["type"] == "Paid").sum()],
    ]
    expected_stat, expected_p, _, _ = stats.chi2_contingency(table)
    assert typ.test == "chi2" and typ.kind == "categorical"
    assert typ.statistic == pytest.approx(expected_stat) and typ.p_value == pytest.approx(
        expected_p
    )
    assert typ.drifted and typ.psi > 0.1
    assert not result["content_rating"].drifted
    assert result["reviews"].test == "ks" and not result["reviews"].drifted


def test_feature_drift_needs_enough_current_rows() -> None:
    rng = np.random.default_rng(4)
    result = feature_drift(inputs(rng, 1000), inputs(rng, 50, drift=True), MonitorConfig())
    assert all(f.status == "not_enough_data" and not f.drifted for f in result)
    assert "not enough data (n=50" in result[0].message


def test_prediction_drift() -> None:
    rng = np.random.default_rng(5)
    ref = rng.beta(3, 2, 3000)
    cfg = MonitorConfig()
    same = prediction_drift(ref, rng.beta(3, 2, 800), cfg)
    assert not same["drifted"] and same["status"] == "ok"
    shifted = prediction_drift(ref, np.clip(rng.beta(3, 2, 800) + 0.25, 0, 1), cfg)
    assert shifted["drifted"] and shifted["psi"] > 0.1 and shifted["p_value"] < 0.05
    assert shifted["positive_rate_change"] > 0.1
    assert shifted["current_positive_rate"] > shifted["reference_positive_rate"]
    few = prediction_drift(ref, rng.beta(3, 2, 30), cfg)
    assert few["status"] == "not_enough_data" and not few["drifted"]


def test_prediction_drift_counts_the_served_labels() -> None:
    """A tuned threshold: the positive rate is the labels' share, not probability >= 0.5."""
    rng = np.random.default_rng(6)
    ref, cur = rng.beta(3, 2, 3000), rng.beta(3, 2, 800)
    ref_labels, cur_labels = (ref >= 0.3).astype(int), (cur >= 0.3).astype(float)
    cur_labels[:5] = np.nan  # failed requests carry no label
    out = prediction_drift(ref, cur, MonitorConfig(), ref_labels, cur_labels)
    assert out["reference_positive_rate"] == pytest.approx(ref_labels.mean())
    assert out["current_positive_rate"] == pytest.approx(np.nanmean(cur_labels))
    assert out["positive_rate_from"] == {"reference": "labels", "current": "labels"}
    assert out["current_positive_rate"] != pytest.approx(float((cur >= 0.5).mean()))
    plain = prediction_drift(ref, cur, MonitorConfig())
    assert plain["positive_rate_from"]["current"] == "probability >= 0.5"


@pytest.mark.component
def test_window_labels_feed_the_positive_rate(reference: dict) -> None:
    window = make_window(seed=31)
    labels = reference["proba"] >= 0.5
    report = evaluate_health(
        window, reference["metrics"], reference["X"], reference["proba"],
        reference_labels=labels,
    )  # fmt: skip
    pred = report.drift["prediction"]
    served = pd.to_numeric(window["label"], errors="coerce").dropna()
    assert pred["current_positive_rate"] == pytest.approx(float((served == 1).mean()))
    assert pred["positive_rate_from"] == {"reference": "labels", "current": "labels"}


@pytest.mark.component
def test_name_text_is_not_judged_and_old_logs_lack_new_columns(reference: dict) -> None:
    """Rows logged before the derived columns existed: judged on the rows that carry them."""
    window = make_window(seed=32, n=600)
    old = ("reviews_per_install", "name_length", "genre_count", "name")
    for row in window["features"].iloc[:300]:
        for key in old:
            row.pop(key)
    current = current_inputs(window)
    assert list(current.columns) == FEATURE_COLUMNS
    assert current["name_length"].iloc[:300].isna().all()
    assert current["name"].dtype == object
    report = health(window, reference)
    by_feature = {f["feature"]: f for f in report.drift["features"]}
    assert "name" not in by_feature  # free text: its statistics are the derived columns
    assert by_feature["name_length"]["samples"] == 300
    assert by_feature["reviews"]["samples"] == 600
    assert report.drift["drifted_features"] == []
    only_old = make_window(seed=33, n=600)
    for row in only_old["features"]:
        for key in old:
            row.pop(key)
    report = health(only_old, reference)
    by_feature = {f["feature"]: f for f in report.drift["features"]}
    assert by_feature["genre_count"]["status"] == "not_enough_data"
    assert report.drift["drifted_features"] == []
