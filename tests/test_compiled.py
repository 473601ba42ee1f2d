"""The compiled gradient boosting walks categorical splits exactly as scikit-learn's predictor.

Native categorical splits (bitsets of categories) are what lets boosting use the Play Store
category well; the service must serve them compiled, bit for bit, including categories unseen at
fit time, negative codes and missing values, which scikit-learn sends the missing-value way.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from lib.serving import compiled_trees

# Each test fits real models (boosting, forests, every candidate family).
pytestmark = pytest.mark.component


def _data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 40, n).astype(float)  # 40 categories, a signal in a subset
    other = rng.integers(0, 5, n).astype(float)
    numeric = rng.normal(size=n)
    numeric[rng.random(n) < 0.1] = np.nan
    category[rng.random(n) < 0.05] = np.nan
    signal = np.isin(category, [3, 7, 11, 19, 23, 31]) * 1.5 + (other == 2) + numeric
    y = (signal + rng.normal(scale=0.8, size=n) > 0.8).astype(int)
    return np.column_stack([category, numeric, other]), y


def _hostile_rows(X: np.ndarray) -> np.ndarray:
    """Rows scikit-learn treats specially: unseen, negative, NaN and huge category codes."""
    rows = X[:50].copy()
    rows[:10, 0] = [40, 41, 100, 254, 255, -1, -7, np.nan, 3.0, 0.0]
    rows[10:20, 2] = [5, 6, -1, np.nan, 2, 2, 0, 4, 1, 3]
    rows[20:25, 1] = [np.nan, np.inf, -np.inf, 1e300, -0.0]
    return rows


@pytest.mark.parametrize("categorical", [[0, 2], [True, False, True], [2]])
def test_categorical_boosting_compiles_bit_for_bit(categorical: list) -> None:
    X, y = _data(0)
    with threadpool_limits(limits=1):
        model = HistGradientBoostingClassifier(
            max_iter=60, max_leaf_nodes=15, categorical_features=categorical, random_state=0
        ).fit(X, y)
    nodes = np.concatenate([p.nodes for it in model._predictors for p in it])
    assert nodes["is_categorical"].any()  # the test really covers categorical splits
    fast = compiled_trees.Boosting(model)
    complete = X[~np.isnan(X).any(axis=1)]  # the fast walk (no NaN) and the general one
    for rows in (X, complete, complete[:1], _hostile_rows(X), X[:1]):
        np.testing.assert_array_equal(fast.proba(rows), model.predict_proba(rows))


def test_numeric_boosting_still_compiles_without_tables() -> None:
    X, y = _data(1)
    with threadpool_limits(limits=1):
        model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    fast = compiled_trees.Boosting(model)
    assert fast.category_row is None
    rows = _hostile_rows(X)
    np.testing.assert_array_equal(fast.proba(rows), model.predict_proba(rows))


def test_every_family_is_served_compiled_and_equal(tmp_path) -> None:
    """Each family as 02 train builds it (stack with the name text, the tuned threshold inside)
    is compiled by the service and answers like scikit-learn on every row, unseen ones included."""
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    from lib import registry
    from lib.pipeline import data, synth, training
    from lib.serving.predictor import Predictor

    synth.generate_apps(600, seed=5).to_csv(tmp_path / "apps.csv", index=False)
    labeled = training.labeled_data(data.read_apps(tmp_path / "apps.csv").apps, 4.0)
    fit_rows, probe_rows = labeled.X.iloc[:450], labeled.X.iloc[450:]
    for family in training.FAMILIES:
        with threadpool_limits(limits=1):
            model = training.build_candidate(family, 0, 10, stack_folds=3)
            model.fit(fit_rows, labeled.y.iloc[:450])
        served = FixedThresholdClassifier(FrozenEstimator(model), threshold=0.45).fit(
            fit_rows, labeled.y.iloc[:450]
        )
        predictor = Predictor(training.for_inference(served))
        assert predictor.kind == "compiled", (family, predictor.reason)
        assert registry.skops_trusted_types(served)  # it can be registered in the skops format
        rows = [tuple(r) for r in probe_rows.itertuples(index=False)]
        proba, labels = predictor.predict(rows)
        np.testing.assert_array_equal(proba, served.predict_proba(probe_rows)[:, 1])
        np.testing.assert_array_equal(labels, served.predict(probe_rows))
        stack = predictor._root
        while not hasattr(stack, "members"):  # threshold and frozen wrappers around the stack
            stack = stack.final
        assert type(stack.final).__name__ == "_LogOddsLogistic"  # the combiner, compiled
        if family == "forest_and_boosting":  # boosting and forest share one preprocessing
            shared = [key for _node, _method, key in stack.members]
            assert shared[1] is not None and shared[1] == shared[2]
            assert shared[0] != shared[1]  # the name text has its own


@pytest.mark.parametrize("leaf", [1, 3])
def test_forest_walks_all_trees_at_once_bit_for_bit(leaf: int) -> None:
    """Deep trees (leaf 1), NaN learned at fit time (missing_go_to_left), float32 edge values."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data(2)
    model = RandomForestClassifier(n_estimators=25, min_samples_leaf=leaf, random_state=0)
    model.fit(X, y)
    fast = compiled_trees.Forest(model)
    thresholds = model.estimators_[0].tree_.threshold
    edges = X[: len(thresholds)].copy()
    # exactly on the splits of the first tree (a split of NaN from the rest has threshold inf)
    edges[:, 1] = np.where(np.isfinite(thresholds), thresholds, 0.0)
    hostile = _hostile_rows(X)
    hostile[21:24, 1] = [3.4e38, -3.4e38, 1e-45]  # scikit-learn's forests refuse infinities
    complete = X[~np.isnan(X).any(axis=1)]
    for rows in (X, complete, complete[:1], hostile, X[:1], edges):
        np.testing.assert_array_equal(fast.proba(rows), model.predict_proba(rows))
