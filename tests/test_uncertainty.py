"""Bootstrap intervals and paired tests of pipeline.uncertainty: behaviour on simulated holdouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from lib.pipeline import uncertainty as U

ALL = U.METRICS


def simulate(n: int, signals: tuple[float, ...], seed: int, noise: float = 1.5):
    """Labels and one probability vector per signal strength (independent noise each)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    probas = [1.0 / (1.0 + np.exp(-(s * (2 * y - 1) + rng.normal(0, noise, n)))) for s in signals]
    return y, probas


def labels(proba: np.ndarray) -> np.ndarray:
    return (proba >= 0.5).astype(int)


def sklearn_value(metric: str, y, proba, lab) -> float:
    return {
        "roc_auc": lambda: skm.roc_auc_score(y, proba),
        "accuracy": lambda: skm.accuracy_score(y, lab),
        "balanced_accuracy": lambda: skm.balanced_accuracy_score(y, lab),
        "f1": lambda: skm.f1_score(y, lab, zero_division=0),
        "log_loss": lambda: skm.log_loss(y, np.clip(proba, 1e-6, 1 - 1e-6), labels=[0, 1]),
        "brier": lambda: skm.brier_score_loss(y, proba),
    }[metric]()


@pytest.fixture(scope="module")
def better():
    """A candidate with a clearly stronger signal than the reference on 2000 rows."""
    y, (cand, ref) = simulate(2000, (1.6, 0.9), seed=1)
    result = U.paired_comparison(y, cand, labels(cand), ref, labels(ref), resamples=1000)
    return y, cand, ref, result


@pytest.mark.parametrize("metric", ALL)
def test_estimates_equal_scikit_learn(metric: str) -> None:
    y, (p,) = simulate(700, (0.8,), seed=3)
    p = np.round(p, 2)  # ties in the scores exercise the 1/2 counting
    lab = labels(p)
    expected = sklearn_value(metric, y, p, lab)
    assert U.metric_value(metric, y, p, lab) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    _, (q,) = simulate(700, (0.3,), seed=4)
    comp = U.paired_comparison(y, p, lab, q, labels(q), metrics=(metric,), resamples=1000)[metric]
    assert comp.candidate.estimate == pytest.approx(expected)
    assert comp.reference.estimate == pytest.approx(sklearn_value(metric, y, q, labels(q)))


def test_resampled_metrics_equal_scikit_learn_on_the_resampled_rows() -> None:
    """The weighted formulas are the metrics of the rows each resample actually drew."""
    y, (p,) = simulate(300, (0.8,), seed=5)
    p, lab = np.round(p, 1), labels(p)
    w = U._Weights.bootstrap(y, 1000, seed=0)
    model = U._Model(y, p, lab)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for metric in ALL:
        draws = model.draws(metric, w)
        for k in (0, 17, 999):
            rows = np.r_[np.repeat(pos, w.pos_int[k]), np.repeat(neg, w.neg_int[k])]
            expected = sklearn_value(metric, y[rows], p[rows], lab[rows])
            assert draws[k] == pytest.approx(expected), (metric, k)


def test_stratified_resamples_keep_class_counts() -> None:
    y = np.r_[np.ones(30, int), np.zeros(70, int)]
    w = U._Weights.bootstrap(y, 1000, seed=0)
    assert (w.pos_int.sum(axis=1) == 30).all() and (w.neg_int.sum(axis=1) == 70).all()


def test_identical_candidate_and_reference() -> None:
    y, (p,) = simulate(500, (1.0,), seed=6)
    result = U.paired_comparison(y, p, labels(p), p.copy(), labels(p), resamples=1000)
    for metric, comp in result.items():
        assert np.all(comp.draws == 0.0), metric
        assert comp.difference.estimate == 0.0
        assert comp.difference.low <= 0.0 <= comp.difference.high
    assert result["accuracy"].p_value == 1.0
    assert result["roc_auc"].p_value == 1.0
    assert {m: c.p_value for m, c in result.items() if m not in ("roc_auc", "accuracy")} == {
        m: None for m in ALL if m not in ("roc_auc", "accuracy")
    }


def test_clearly_better_candidate(better) -> None:
    _, _, _, result = better
    for metric, comp in result.items():
        assert comp.difference.low > 0.0, (metric, comp.difference)
    assert result["roc_auc"].p_value < 1e-3
    assert result["accuracy"].p_value < 0.05
    assert "DeLong" in result["roc_auc"].test and "McNemar" in result["accuracy"].test


def test_sign_convention_lower_is_better_metrics(better) -> None:
    """log_loss and brier: the better-calibrated candidate has the lower loss, so a positive
    difference, i.e. reference minus candidate."""
    _, _, _, result = better
    for metric in ("log_loss", "brier"):
        comp = result[metric]
        assert comp.candidate.estimate < comp.reference.estimate
        assert comp.difference.estimate == pytest.approx(
            comp.reference.estimate - comp.candidate.estimate
        )
        assert comp.difference.estimate > 0


def test_better_calibrated_candidate_same_ranking() -> None:
    """Same ranking (equal AUC), only calibration differs: loss differences favour the candidate."""
    rng = np.random.default_rng(7)
    n = 2000
    true_p = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < true_p).astype(int)
    overconfident = 1.0 / (1.0 + np.exp(-4.0 * np.log(true_p / (1 - true_p))))
    result = U.paired_comparison(
        y, true_p, labels(true_p), overconfident, labels(overconfident), resamples=1000
    )
    assert result["roc_auc"].difference.estimate == pytest.approx(0.0, abs=1e-12)
    assert result["log_loss"].difference.low > 0
    assert result["brier"].difference.low > 0


def test_noise_candidate_against_constant_baseline() -> None:
    rng = np.random.default_rng(8)
    n = 1000
    y = (rng.random(n) < 0.35).astype(int)
    noise = rng.random(n)
    prior, majority = U.majority_baseline(y[:300], n)  # the training prior, held constant
    assert np.unique(majority).tolist() == [0]
    result = U.paired_comparison(y, noise, labels(noise), prior, majority, resamples=1000)
    auc = result["roc_auc"]
    assert auc.candidate.low <= 0.5 <= auc.candidate.high
    assert auc.reference.estimate == auc.reference.low == auc.reference.high == 0.5
    assert auc.difference.low <= 0.0 <= auc.difference.high
    assert auc.p_value > 0.01 and "0.5" in auc.test
    # class counts are fixed, so the majority share is the same in every resample
    acc = result["accuracy"].reference
    assert acc.estimate == pytest.approx(1 - y.mean())
    assert acc.low == pytest.approx(acc.estimate) and acc.high == pytest.approx(acc.estimate)


def test_delong_against_constant_reference_uses_candidate_variance() -> None:
    y, (p,) = simulate(400, (0.5,), seed=9)
    constant = np.full(len(y), 0.4)
    aucs, cov = U._delong_structural(y, p[None, :])
    z = (aucs[0] - 0.5) / math.sqrt(cov[0, 0])
    expected = 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))
    assert U.delong_test(y, p, constant) == pytest.approx(expected, rel=1e-9)
    assert aucs[0] == pytest.approx(skm.roc_auc_score(y, p))


def test_mcnemar_is_exact_binomial_on_discordant_pairs() -> None:
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    cand = y.copy()
    ref = y.copy()
    ref[:4] = 0  # the reference misses 4 rows the candidate gets right, no row the other way
    assert U.mcnemar_test(y, cand, ref) == pytest.approx(2 * 0.5**4)
    assert U.mcnemar_test(y, cand, cand) == 1.0


def test_coverage_under_equal_true_auc() -> None:
    """Two models with the same signal: the 95% difference interval should usually hold 0."""
    hits = 0
    trials = 40
    for seed in range(trials):
        y, (a, b) = simulate(400, (1.0, 1.0), seed=100 + seed)
        comp = U.paired_comparison(
            y, a, labels(a), b, labels(b), metrics=("roc_auc",), resamples=1000, seed=seed
        )["roc_auc"]
        hits += comp.difference.low <= 0.0 <= comp.difference.high
    assert hits >= 0.85 * trials


def test_interval_narrows_as_n_grows() -> None:
    widths = []
    for n in (200, 3000):
        y, (p,) = simulate(n, (1.0,), seed=10)
        iv = U.paired_comparison(
            y, p, labels(p), *U.majority_baseline(y, n), metrics=("roc_auc",), resamples=1000
        )["roc_auc"].candidate
        widths.append(iv.high - iv.low)
    assert widths[1] < widths[0] / 2


def test_deterministic_with_seed(better) -> None:
    y, cand, ref, result = better
    again = U.paired_comparison(y, cand, labels(cand), ref, labels(ref), resamples=1000)
    for metric in ALL:
        assert again[metric].to_dict() == result[metric].to_dict()
        np.testing.assert_array_equal(again[metric].draws, result[metric].draws)
    other = U.paired_comparison(
        y, cand, labels(cand), ref, labels(ref), metrics=("roc_auc",), resamples=1000, seed=1
    )
    assert not np.array_equal(other["roc_auc"].draws, result["roc_auc"].draws)


def test_to_dict_is_json_ready(better) -> None:
    _, _, _, result = better
    comp = result["roc_auc"]
    out = comp.to_dict()
    assert "draws" not in out
    assert set(out) == {"metric", "candidate", "reference", "difference", "p_value", "test"}
    assert out["difference"]["n"] == 2000 and isinstance(out["difference"]["n"], int)
    assert "stratified paired bootstrap, 1000 resamples, 95%" == out["difference"]["method"]
    text = json.dumps({m: c.to_dict() for m, c in result.items()}, allow_nan=False)
    assert json.loads(text)["brier"]["p_value"] is None
    assert type(json.loads(text)["roc_auc"]["candidate"]["low"]) is float


def test_confidence_level_widens_interval() -> None:
    y, (p,) = simulate(500, (1.0,), seed=11)
    ref = U.majority_baseline(y, len(y))
    narrow, wide = (
        U.paired_comparison(
            y, p, labels(p), *ref, metrics=("accuracy",), resamples=1000, confidence=level
        )["accuracy"].candidate
        for level in (0.8, 0.99)
    )
    assert wide.low <= narrow.low and wide.high >= narrow.high
    assert "99%" in wide.method


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "cand_proba": a["cand_proba"][:-1]}, "paired"),
        (lambda a: {**a, "ref_labels": a["ref_labels"][1:]}, "paired"),
        (lambda a: {**a, "y_true": np.ones_like(a["y_true"])}, "both classes"),
        (lambda a: {**a, "y_true": a["y_true"] * 2}, "binary"),
        (lambda a: {**a, "cand_proba": np.r_[np.nan, a["cand_proba"][1:]]}, "non-finite"),
        (lambda a: {**a, "ref_proba": np.r_[np.inf, a["ref_proba"][1:]]}, "non-finite"),
        (lambda a: {**a, "cand_proba": a["cand_proba"] + 1.0}, r"\[0, 1\]"),
        (lambda a: {**a, "metrics": ("roc_auc", "auc")}, "allowed: roc_auc, accuracy"),
        (lambda a: {**a, "resamples": 999}, ">= 1000"),
        (lambda a: {**a, "confidence": 1.0}, "confidence"),
        (lambda a: {**a, "ref_proba": None}, "majority_baseline"),
    ],
)
def test_bad_input_is_refused(change, message: str) -> None:
    y, (p, q) = simulate(100, (1.0, 0.5), seed=12)
    args = {
        "y_true": y,
        "cand_proba": p,
        "cand_labels": labels(p),
        "ref_proba": q,
        "ref_labels": labels(q),
        "resamples": 1000,
    }
    with pytest.raises(ValueError, match=message):
        U.paired_comparison(**change(args))


def test_bad_input_single_model() -> None:
    y, (p,) = simulate(100, (1.0,), seed=13)
    with pytest.raises(ValueError, match="allowed"):
        U.metric_value("precision", y, p, labels(p))
    with pytest.raises(ValueError, match=">= 1000"):
        U.paired_comparison(y, p, labels(p), p, labels(p), resamples=500)
    with pytest.raises(ValueError, match="paired"):
        U.metric_value("accuracy", y, p, labels(p)[:-1])


def test_plot_comparison_intervals(better) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from lib.pipeline import plots

    _, _, _, result = better
    fig = plots.comparison_intervals(result, "champion v3")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "roc_auc" in fig.axes[1].get_title()
    plt.close(fig)
