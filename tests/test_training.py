import numpy as np
import pandas as pd
import pytest

from lib.config import CALIBRATION_METHODS
from lib.errors import DataError
from lib.pipeline import calibration, evaluation, features, training
from tests.support.apps import typed_apps as _typed


def test_features_never_contain_the_target_or_identity() -> None:
    X = features.model_inputs(_typed(20))
    assert list(X.columns) == features.FEATURE_COLUMNS
    assert not {"rating", "app", "app_key", "label"} & set(X.columns)


@pytest.mark.component
def test_model_ignores_rating_column_changes() -> None:
    apps = _typed(400)
    data = training.labeled_data(apps, 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.25, 1)
    result = training.train_candidate(
        "random_forest", data, tr, te, training.TrainingSettings(3, 1, 20)
    )
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


def test_evaluate() -> None:
    y = np.array([1, 1, 1, 0])
    perfect = evaluation.evaluate(y, np.array([0.9, 0.8, 0.7, 0.1]))
    assert perfect["roc_auc"] == 1.0 and perfect["accuracy"] == 1.0


@pytest.mark.component
def test_cv_std_is_computed_from_folds() -> None:
    data = training.labeled_data(_typed(300), 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.2, 0)
    result = training.train_candidate(
        "logistic_regression", data, tr, te, training.TrainingSettings(4, 0)
    )
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


def test_inference_models_are_for_inference() -> None:
    stack = training.build_candidate("random_forest", 0, 10)
    forest = stack.estimators[1][1].named_steps["model"]
    assert forest.n_jobs == -1
    training.for_inference(stack)
    assert forest.n_jobs == 1
    pipe = training.build_candidate("random_forest", 0, 10, groups=[])
    assert training.for_inference(pipe).named_steps["model"].n_jobs == 1


def test_tune_threshold_maximises_the_objective_and_prefers_the_cut_nearest_half() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    proba = np.array([0.1, 0.2, 0.65, 0.6, 0.7, 0.8, 0.9, 0.95])
    choice = calibration.tune_threshold(y, proba, "accuracy")
    labels = (proba >= choice.threshold).astype(int)
    assert (labels == y).mean() == choice.value == pytest.approx(7 / 8)
    assert choice.value >= choice.at_half
    # every cut between 0.2 and 0.6 gives 7/8; the chosen one is the nearest to 0.5 among them
    assert 0.2 < choice.threshold <= 0.6
    # a false negative costing 10x a false positive pushes the cut down: no positive is missed
    costs = {"false_positive": 1, "false_negative": 10}
    costly = calibration.tune_threshold(y, proba, "cost", costs)
    assert (proba[y == 1] >= costly.threshold).all() and costly.threshold <= 0.6
    assert costly.value == pytest.approx(1.0)  # the one false positive at 0.65 is the cost
    with pytest.raises(ValueError, match="unknown label objective"):
        calibration.tune_threshold(y, proba, "precision")


@pytest.mark.component
def test_tuned_threshold_travels_inside_the_registered_model() -> None:
    data = training.labeled_data(_typed(400), 4.0)
    tr, te = training.holdout_split(data.keys, data.y, 0.25, 1)
    result = training.train_candidate(
        "logistic_regression",
        data,
        tr,
        te,
        training.TrainingSettings(3, 1, features=["engagement"]),
    )
    X_test = data.X.iloc[te]
    proba = result.model.predict_proba(X_test)[:, 1]
    expected = (proba >= result.threshold.threshold).astype(int)
    assert np.array_equal(result.model.predict(X_test), expected)
    assert np.array_equal(result.labels, expected)
    assert result.model.threshold == result.threshold.threshold
    assert result.holdout["accuracy"] == pytest.approx((expected == data.y.iloc[te]).mean())


@pytest.mark.component
def test_assembled_calibration_equals_calibrated_classifier_cv() -> None:
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV

    data = training.labeled_data(_typed(300), 4.0)
    X, y = data.X, data.y
    base = training.build_candidate("hist_gradient_boosting", 0, groups=["engagement"])
    oof = calibration.out_of_fold(base, X, y, 3, 0)
    for method in CALIBRATION_METHODS:
        mine = calibration.calibrated(clone(base).fit(X, y), oof, y, method, 3, 0)
        ref = CalibratedClassifierCV(
            clone(base), method=method, cv=calibration.folds_for(3, 0), ensemble=False
        ).fit(X, y)
        np.testing.assert_allclose(mine.predict_proba(X), ref.predict_proba(X), rtol=0, atol=1e-12)


def test_calibrated_model_keeps_no_trace_of_the_score_column() -> None:
    """The calibrator is fitted on a frozen score column; the served model must not hold it.

    Anything left of it (a lib type in the params or the calibrated classifier) would be refused
    by the registry's skops check and would not be compiled.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    from lib import registry

    data = training.labeled_data(_typed(300), 4.0)
    X, y = data.X, data.y
    base = training.build_candidate("logistic_regression", 0, groups=["engagement"])
    oof = calibration.out_of_fold(base, X, y, 3, 0)
    fitted = clone(base).fit(X, y)
    for method in CALIBRATION_METHODS:
        model = calibration.calibrated(fitted, oof, y, method, 3, 0)
        assert model.calibrated_classifiers_[0].estimator is fitted
        params = model.get_params(deep=False)
        assert type(params["estimator"]) is type(fitted) and params["method"] == method
        assert isinstance(params["cv"], StratifiedKFold) and params["ensemble"] is False
        assert not any(
            type(e).__module__.startswith("lib.") for e in training.nested_estimators(model)
        )
        assert model.n_features_in_ == fitted.n_features_in_
        assert list(model.feature_names_in_) == list(fitted.feature_names_in_)
        assert all(not t.startswith("lib.") for t in registry.skops_trusted_types(model))
    with pytest.raises(ValueError, match="unknown calibration method 'temperature'"):
        calibration.calibrated(fitted, oof, y, "temperature", 3, 0)


def test_calibration_is_kept_only_when_it_helps() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.05, 0.95, 4000)
    y = pd.Series((rng.random(4000) < truth).astype(int))
    honest = calibration.OutOfFold(truth, truth, np.zeros(4000, dtype=int))
    squashed = 1 / (1 + np.exp(-4 * (truth - 0.5) * 4))  # overconfident: far from the truth
    bent = calibration.OutOfFold(squashed, squashed, np.zeros(4000, dtype=int))
    assert calibration.choose_calibration(honest, y, ["isotonic", "sigmoid"], 5, 0).method is None
    choice = calibration.choose_calibration(bent, y, ["isotonic", "sigmoid"], 5, 0)
    assert choice.method in ("isotonic", "sigmoid")
    assert choice.scores[choice.method]["log_loss"] < choice.scores["none"]["log_loss"]
    assert calibration.choose_calibration(bent, y, [], 5, 0).method is None


@pytest.mark.component
def test_permuted_target_stays_at_chance() -> None:
    apps = _typed(800, seed=4)
    data = training.labeled_data(apps, 4.0)
    shuffled = data.y.sample(frac=1.0, random_state=0).reset_index(drop=True)
    noise = training.LabeledData(data.X, shuffled, data.keys, 0, 0)
    tr, te = training.holdout_split(noise.keys, noise.y, 0.25, 0)
    result = training.train_candidate(
        "hist_gradient_boosting", noise, tr, te, training.TrainingSettings(3, 0)
    )
    assert abs(result.cv["roc_auc"]["mean"] - 0.5) < 0.07
    assert abs(result.holdout["roc_auc"] - 0.5) < 0.1


def test_derived_inputs_are_parsed_from_the_listing() -> None:
    assert features.version_number("4.0.3 and up") == pytest.approx(4.0)
    assert features.version_number("v2.15") == pytest.approx(2.15)
    assert np.isnan(features.version_number("Varies with device"))
    assert np.isnan(features.version_number(None))
    values = dict(
        zip(
            features.DERIVED,
            features.derived_values(
                "Photo Editor Pro 2", "Art;Design", "Varies with device", "5.0 and up", 99.0, 9999.0
            ),  # fmt: skip
            strict=True,
        )
    )
    assert values["reviews_per_install"] == pytest.approx(-2.0)
    assert values["genre_count"] == 2 and values["current_varies"] == 1.0
    assert values["android_min"] == pytest.approx(5.0) and values["name_words"] == 4
    assert values["name_digits"] == 1


def test_config_knows_every_model_family() -> None:
    """The config validates candidate names against its own list: it must be training's."""
    from lib import config

    assert set(config.CANDIDATES) == set(training.FAMILIES)
    assert set(config.DEFAULT_CANDIDATES) <= set(training.FAMILIES)


def test_config_feature_groups_are_the_derived_groups_and_the_name_text() -> None:
    """The config defines the group names (lib.config imports no package); features defines
    their columns: the two must name the same groups, in the same order."""
    from lib import config

    assert config.FEATURE_GROUPS == (*features.GROUP_COLUMNS, "name_text")
