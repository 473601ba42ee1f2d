import numpy as np
import pandas as pd
import pytest

from lib import features, training
from lib.errors import DataError


def _typed(n: int, seed: int = 0) -> pd.DataFrame:
    """Typed apps (lib.data's columns) whose rating depends on reviews, with noise."""
    rng = np.random.default_rng(seed)
    reviews = rng.lognormal(7, 2, n)
    rating = np.clip(3.6 + 0.12 * np.log1p(reviews) + rng.normal(0, 0.3, n), 1, 5).round(1)
    return pd.DataFrame(
        {
            "app": [f"App {i}" for i in range(n)],
            "app_key": [f"app {i}" for i in range(n)],
            "category": rng.choice(["GAME", "TOOLS", "FAMILY"], n),
            "rating": rating,
            "reviews": reviews.round(),
            "size_mb": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(1, 100, n)),
            "installs": reviews * 50,
            "type": rng.choice(["Free", "Paid"], n, p=[0.9, 0.1]),
            "price": 0.0,
            "content_rating": "Everyone",
            "genres": "x",
            "last_updated": pd.to_datetime("2018-01-01")
            + pd.to_timedelta(rng.integers(0, 900, n), "D"),
        }
    )


def test_features_never_contain_the_target_or_identity() -> None:
    X = features.model_inputs(_typed(20))
    assert list(X.columns) == features.FEATURE_COLUMNS
    assert not {"rating", "app", "app_key", "label"} & set(X.columns)


def test_model_ignores_rating_column_changes() -> None:
    apps = _typed(400)
    data = training.labeled_data(apps, 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.25, 1)
    result = training.train_candidate("random_forest", data, tr, te, 3, 1, rf_trees=20)
    shuffled = apps.assign(rating=apps["rating"].sample(frac=1, random_state=3).values)
    X2 = features.model_inputs(shuffled)
    np.testing.assert_allclose(
        result.model.predict_proba(X2)[:, 1],
        result.model.predict_proba(features.model_inputs(apps))[:, 1],
    )


def test_labeled_data_collapses_duplicates_and_counts_unlabeled() -> None:
    apps = _typed(100)
    dup = apps.iloc[:5].copy()
    apps.loc[10:14, "rating"] = np.nan
    data = training.labeled_data(pd.concat([apps, dup], ignore_index=True), 4.0)
    assert data.duplicates == 5 and data.unlabeled == 5 and len(data.y) == 95
    assert data.keys.is_unique


def test_labeled_data_refuses_useless_data() -> None:
    with pytest.raises(DataError, match="at least 50"):
        training.labeled_data(_typed(20), 4.0)
    with pytest.raises(DataError, match="same side"):
        training.labeled_data(_typed(100).assign(rating=4.5), 4.0)


def test_holdout_is_stratified_deterministic_and_stable_per_app() -> None:
    data = training.labeled_data(_typed(1000), 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.2, 42)
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == len(data.y)
    for cls in (0, 1):
        share = (data.y.iloc[te] == cls).sum() / (data.y == cls).sum()
        assert share == pytest.approx(0.2, abs=0.01)
    tr2, te2 = training.holdout_split(data.keys, data.y, 0.2, 42)
    assert np.array_equal(te, te2)
    # Growing the data keeps (almost) every earlier holdout app in the holdout.
    grown = training.labeled_data(_typed(1200, seed=0), 4.0)
    _, te3 = training.holdout_split(grown.keys, grown.y, 0.2, 42)
    before = set(data.keys.iloc[te])
    after = set(grown.keys.iloc[te3])
    assert len(before & after) / len(before) > 0.9
    other_seed = training.holdout_split(data.keys, data.y, 0.2, 7)[1]
    assert not np.array_equal(te, other_seed)


def test_evaluate_and_baseline() -> None:
    y = np.array([1, 1, 1, 0])
    perfect = training.evaluate(y, np.array([0.9, 0.8, 0.7, 0.1]))
    assert perfect["roc_auc"] == 1.0 and perfect["accuracy"] == 1.0
    base = training.baseline_metrics(pd.Series([1, 1, 0]), pd.Series(y))
    assert base["roc_auc"] == 0.5 and base["accuracy"] == 0.75 and base["balanced_accuracy"] == 0.5


def test_improvement_respects_metric_direction() -> None:
    assert training.improvement("roc_auc", 0.8, 0.7) == pytest.approx(0.1)
    assert training.improvement("log_loss", 0.4, 0.5) == pytest.approx(0.1)


def test_cv_std_is_computed_from_folds() -> None:
    data = training.labeled_data(_typed(300), 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.2, 0)
    result = training.train_candidate("logistic_regression", data, tr, te, 4, 0)
    folds = result.cv["roc_auc"]["folds"]
    assert len(folds) == 4
    assert result.cv_std("roc_auc") == pytest.approx(np.std(folds, ddof=1))
    assert result.cv_std("roc_auc") > 0


def test_select_best_by_metric_direction() -> None:
    def fake(name: str, auc: float, loss: float) -> training.CandidateResult:
        return training.CandidateResult(
            name, None, {"roc_auc": auc, "log_loss": loss}, {}, np.array([]), 0.0
        )

    rs = [fake("a", 0.7, 0.3), fake("b", 0.8, 0.5)]
    assert training.select_best(rs, "roc_auc").name == "b"
    assert training.select_best(rs, "log_loss").name == "a"


def test_inference_models_are_single_threaded() -> None:
    pipe = training.build_candidate("random_forest", 0, 10)
    assert pipe.named_steps["model"].n_jobs == -1
    assert training.for_inference(pipe).named_steps["model"].n_jobs == 1
