"""Tree ensembles compiled: all trees of a forest or a boosting model advance one level per numpy
step (scikit-learn walks one tree at a time, which costs far more than the arithmetic for one
row), with scikit-learn's comparisons, leaf values and order of additions: the same last bit."""

from __future__ import annotations

from typing import Any

import numpy as np

from lib.serving.encoders import Unsupported


class _Descent:
    """The fast walk for rows without NaN: every tree one level per numpy step, depth steps
    (leaves point to themselves); "value > threshold" indexes `child` (left 2i, right 2i + 1).
    A categorical node of boosting reads a virtual column against 0.5: 1.0 when the row's
    category goes right there."""

    def __init__(self, trees: _Trees) -> None:
        left, right, is_leaf, feature = trees.left, trees.right, trees.is_leaf, trees.feature
        index = np.arange(len(left), dtype=np.intp)
        self.child = np.empty(2 * len(left), dtype=np.intp)
        self.child[0::2] = np.where(is_leaf, index, left)
        self.child[1::2] = np.where(is_leaf, index, right)
        self.feature = np.where(is_leaf, 0, feature).astype(np.intp)
        self.threshold = np.where(is_leaf, np.inf, trees.threshold).astype(np.float64)
        self.roots = roots = trees.roots
        self.virtual: tuple[int, np.ndarray, np.ndarray] | None = None
        if trees.category_row is not None:
            row, goes_left, width = trees.category_row, trees.goes_left, trees.width
            nodes = np.flatnonzero((row >= 0) & ~is_leaf)
            columns = self.feature[nodes].copy()  # the category each node reads
            self.feature[nodes] = width + np.arange(len(nodes))
            self.threshold[nodes] = 0.5
            self.virtual = (width, columns, ~goes_left[row[nodes]])  # (K, 256) goes right
        depth, frontier = 0, roots
        while not is_leaf[frontier].all():
            inner = frontier[~is_leaf[frontier]]
            frontier = np.concatenate([left[inner], right[inner]])
            depth += 1
        self.depth = depth

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf of every tree for every row of X (float64, no NaN): shape (rows, trees)."""
        if self.virtual is not None:
            width, columns, goes_right = self.virtual
            if X.shape[1] != width:
                raise ValueError(f"X has {X.shape[1]} columns, the trees read {width}")
            code = np.clip(X[:, columns], 0, 255).astype(np.intp)  # the Cython cast
            X = np.hstack([X, goes_right[np.arange(len(columns)), code].astype(np.float64)])
        child, feature, threshold = self.child, self.feature, self.threshold
        node = np.broadcast_to(self.roots, (X.shape[0], len(self.roots))).copy()
        rows = np.arange(X.shape[0])[:, None]
        for _ in range(self.depth):
            node = child[2 * node + (X[rows, feature[node]] > threshold[node])]
        return node


class _Trees:
    """Trees concatenated into node arrays (`roots`: each tree's first node), walked at once."""

    category_row: np.ndarray | None = None  # boosting's categorical nodes (`_categorical_tables`)

    def _concatenate(self, sizes: list[int]) -> np.ndarray:
        """Set `roots` for trees of these node counts; each node's shift to the whole array."""
        offsets = np.cumsum([0] + sizes[:-1])
        self.roots = offsets.astype(np.intp)
        return np.repeat(offsets, sizes)

    def _leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf of every tree for every row: the fast descent, or (NaN: missing values,
        unseen categories) the general walk, node by node."""
        if not np.isnan(X).any():
            return self.descent.leaves(X)
        n = X.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        leaf = self.is_leaf[node]
        while not leaf.all():
            x = X[rows, self.feature[node]]
            missing = np.isnan(x)
            left = x <= self.threshold[node]
            if self.category_row is not None:
                table_row = self.category_row[node]
                categorical = table_row >= 0
                if categorical.any():
                    value = x[categorical]
                    known = value >= 0  # NaN compares False: the missing branch below
                    code = np.where(known, value, 0).astype(np.intp)  # the Cython cast
                    left[categorical] = np.where(
                        known & (code < 256),
                        self.goes_left[table_row[categorical], np.minimum(code, 255)],
                        self.missing_left[node[categorical]],
                    )
            left = np.where(missing, self.missing_left[node], left)
            node = np.where(leaf, node, np.where(left, self.left[node], self.right[node]))
            leaf = self.is_leaf[node]
        return node


class Forest(_Trees):
    """RandomForestClassifier.predict_proba as its Cython `apply` (float32 input compared in
    double, NaN follows missing_go_to_left): leaf values added tree after tree, then divided."""

    def __init__(self, final: Any) -> None:
        from sklearn.ensemble._forest import ForestClassifier
        from sklearn.tree import DecisionTreeClassifier

        if type(final).predict_proba is not ForestClassifier.predict_proba or final.n_outputs_ != 1:
            raise Unsupported("forest with several outputs or its own predict_proba")
        trees = []
        for est in final.estimators_:
            if not isinstance(est, DecisionTreeClassifier) or est.n_outputs_ != 1:
                raise Unsupported("forest of unknown trees")
            trees.append(est.tree_)
        shift = self._concatenate([t.node_count for t in trees])
        left = np.concatenate([t.children_left for t in trees]).astype(np.intp)
        right = np.concatenate([t.children_right for t in trees]).astype(np.intp)
        self.is_leaf = left == -1
        self.left = np.where(self.is_leaf, 0, left + shift).astype(np.intp)
        self.right = np.where(self.is_leaf, 0, right + shift).astype(np.intp)
        self.feature = np.maximum(np.concatenate([t.feature for t in trees]), 0).astype(np.intp)
        self.threshold = np.concatenate([t.threshold for t in trees]).astype(np.float64)
        self.missing_left = np.concatenate(
            [np.asarray(t.missing_go_to_left, dtype=bool) for t in trees]
        )
        self.value = np.concatenate(
            [np.ascontiguousarray(t.value[:, 0, : final.n_classes_]) for t in trees]
        ).astype(np.float64)
        self.n_classes = int(final.n_classes_)
        self.width = int(final.n_features_in_)
        self.descent = _Descent(self)

    def proba(self, Z: np.ndarray) -> np.ndarray:
        X = np.asarray(Z, dtype=np.float32).astype(np.float64)  # float32, compared in double
        if X.ndim != 2 or X.shape[1] != self.width:
            raise ValueError(f"X has shape {X.shape}, the model wants {self.width} features")
        node = self._leaves(X)
        terms = np.zeros((X.shape[0], len(self.roots) + 1, self.n_classes), dtype=np.float64)
        terms[:, 1:, :] = self.value[node]
        out = np.add.accumulate(terms, axis=1)[:, -1, :]  # 0 + tree 1 + tree 2 ..., in order
        out /= len(self.roots)
        return out


class Boosting(_Trees):
    """HistGradientBoostingClassifier (binary, numeric and categorical splits): leaves found as
    its Cython predictor finds them, added to the baseline in scikit-learn's order."""

    def __init__(self, model: Any) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        if type(model) is not HistGradientBoostingClassifier or model.n_trees_per_iteration_ != 1:
            raise Unsupported("not a binary HistGradientBoostingClassifier")
        predictors = [p for it in model._predictors for p in it]
        nodes = [p.nodes for p in predictors]
        shift = self._concatenate([len(n) for n in nodes])
        allnodes = np.concatenate(nodes)
        self.left = (allnodes["left"].astype(np.intp) + shift).astype(np.intp)
        self.right = (allnodes["right"].astype(np.intp) + shift).astype(np.intp)
        self.feature = allnodes["feature_idx"].astype(np.intp)
        self.threshold = np.asarray(allnodes["num_threshold"], dtype=np.float64)
        self.missing_left = allnodes["missing_go_to_left"].astype(bool)
        self.is_leaf = allnodes["is_leaf"].astype(bool)
        self.value = np.asarray(allnodes["value"], dtype=np.float64)
        self.baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
        self.width = model.n_features_in_
        self.loss = model._loss
        self.inputs = _CategoricalInputs(model)
        self.category_row, self.goes_left = _categorical_tables(model, predictors, self.roots)
        self.descent = _Descent(self)

    def decision(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.width:
            raise ValueError(f"X has shape {X.shape}, the model wants {self.width} features")
        X = self.inputs(X)
        node = self._leaves(X)
        terms = np.empty((X.shape[0], len(self.roots) + 1), dtype=np.float64)
        terms[:, 0] = self.baseline[0]
        terms[:, 1:] = self.value[node]
        return np.add.accumulate(terms, axis=1)[:, -1]  # one addition after another

    def proba(self, X: Any) -> np.ndarray:
        return self.loss.predict_proba(self.decision(X).reshape(-1, 1))


class _CategoricalInputs:
    """The model's own input step for categorical features: re-encoded to 0..k-1 (unknown and
    missing: NaN) and put first, by a sorted lookup."""

    def __init__(self, model: Any) -> None:
        self.categories: list[tuple[int, np.ndarray]] = []
        self.order: np.ndarray | None = None
        prep = getattr(model, "_preprocessor", None)
        if prep is None:
            return
        mask = np.asarray(model.is_categorical_, dtype=bool)
        encoder = prep.named_transformers_["encoder"]
        if prep.output_indices_["encoder"] != slice(0, int(mask.sum())):
            raise Unsupported("categorical features not placed first")
        for column, cats in zip(np.flatnonzero(mask), encoder.categories_, strict=True):
            cats = np.asarray(cats, dtype=np.float64)
            known = cats[~np.isnan(cats)]
            if known.size and np.any(np.diff(known) <= 0):
                raise Unsupported("categories not sorted")
            self.categories.append((int(column), known))
        self.order = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.order is None:
            return X
        out = X[:, self.order]  # a copy: categorical columns first, as the model's step does
        for j, (column, known) in enumerate(self.categories):
            x = X[:, column]
            index = np.searchsorted(known, x)
            hit = index < known.size
            hit[hit] = known[index[hit]] == x[hit]
            out[:, j] = np.where(hit, index, np.nan)
        return out


def _categorical_tables(
    model: Any, predictors: list[Any], offsets: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Per categorical node: does category c (0..255) go left (in its left bitset; another known
    category: right; unseen: the missing way)? None when no node is categorical."""
    total = int(offsets[-1]) + len(predictors[-1].nodes) if predictors else 0
    if not any(p.nodes["is_categorical"].any() for p in predictors):
        return None, np.zeros((0, 256), dtype=bool)
    known_bitsets, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    row = np.full(total, -1, dtype=np.intp)
    tables: list[np.ndarray] = []
    for offset, predictor in zip(offsets, predictors, strict=True):
        for local in np.flatnonzero(predictor.nodes["is_categorical"]):
            node = predictor.nodes[local]
            left = _bits(predictor.raw_left_cat_bitsets[node["bitset_idx"]])
            known = _bits(known_bitsets[f_idx_map[node["feature_idx"]]])
            missing_left = bool(node["missing_go_to_left"])
            tables.append(np.where(left, True, np.where(known, False, missing_left)))
            row[int(offset) + int(local)] = len(tables) - 1
    return row, np.vstack(tables)


def _bits(bitset: np.ndarray) -> np.ndarray:
    """A scikit-learn bitset (8 x uint32) as 256 booleans: bit c is (w[c // 32] >> c % 32) & 1."""
    as_bytes = np.ascontiguousarray(bitset, dtype="<u4").view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little").astype(bool)
