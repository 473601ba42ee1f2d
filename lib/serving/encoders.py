"""Compiled ColumnTransformer blocks: encoders, imputers, scalers and TF-IDF without sklearn's
per-call validation (the same arithmetic, checked bit for bit by `predictor.Predictor`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.pipeline.features import CATEGORICAL, FEATURE_COLUMNS, TEXT
from lib.pipeline.training import nested_estimators


class Unsupported(Exception):
    """A model part the compiled path does not know: serve with scikit-learn."""


class Fallback(Exception):
    """An input the compiled path does not handle: this call goes through scikit-learn."""


def _op_ordinal(enc: Any) -> Any:
    from sklearn.preprocessing import OrdinalEncoder

    if type(enc) is not OrdinalEncoder:
        raise Unsupported(type(enc).__name__)
    if getattr(enc, "_infrequent_enabled", False) or np.dtype(enc.dtype) != np.float64:
        raise Unsupported("OrdinalEncoder with infrequent categories or a non-float dtype")
    if enc.handle_unknown not in ("use_encoded_value", "error"):
        raise Unsupported(f"OrdinalEncoder handle_unknown={enc.handle_unknown!r}")
    maps = []
    for cats in enc.categories_:
        if not all(isinstance(c, str) for c in cats):
            raise Unsupported("OrdinalEncoder with non-string or missing categories")
        maps.append({c: float(i) for i, c in enumerate(cats)})
    unknown = float(enc.unknown_value) if enc.handle_unknown == "use_encoded_value" else None

    def encode(columns: list[Sequence[Any]]) -> np.ndarray:
        out = np.empty((len(columns[0]), len(columns)), dtype=np.float64)
        for j, (col, mapping) in enumerate(zip(columns, maps, strict=True)):
            for i, value in enumerate(col):
                code = mapping.get(value)
                if code is None:
                    if not isinstance(value, str):
                        raise Fallback("non-string category")
                    if unknown is None:
                        raise ValueError(f"Found unknown category {value!r} during transform")
                    code = unknown
                out[i, j] = code
        return out

    return encode


def _op_one_hot(enc: Any, dense_output: bool) -> Any:
    """OneHotEncoder (dense output, ignore or infrequent unknowns) as per-column lookup tables,
    taken from the encoder itself (its infrequent grouping and `drop` included)."""
    from sklearn.preprocessing import OneHotEncoder

    if type(enc) is not OneHotEncoder:
        raise Unsupported(type(enc).__name__)
    if enc.sparse_output and not dense_output:  # a dense ColumnTransformer densifies it anyway
        raise Unsupported("sparse OneHotEncoder in a sparse ColumnTransformer")
    if enc.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise Unsupported(f"OneHotEncoder handle_unknown={enc.handle_unknown!r}")
    if np.dtype(enc.dtype) != np.float64:
        raise Unsupported("OneHotEncoder with a non-float dtype")
    cats = enc.categories_
    if not all(isinstance(c, str) for col in cats for c in col):
        raise Unsupported("OneHotEncoder with non-string or missing categories")

    def dense(frame: list[list[str]]) -> np.ndarray:
        out = enc.transform(np.array(frame, dtype=object))
        return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)

    unseen = "\x00__unseen__"
    filler = [str(col[0]) for col in cats]
    width = len(enc.get_feature_names_out())
    owner = np.full(width, -1)  # the input column each output column belongs to
    tables: list[dict[str, np.ndarray]] = []
    for j, col in enumerate(cats):  # a probe frame per column: its categories, one unseen value
        values = [*map(str, col), unseen]
        full = dense([[*filler[:j], v, *filler[j + 1 :]] for v in values])
        varying = np.flatnonzero((full != full[:1]).any(axis=0))
        if (owner[varying] != -1).any():
            raise Unsupported("OneHotEncoder columns overlap")
        owner[varying] = j
        tables.append(dict(zip(values, full, strict=True)))
    base_row = dense([filler])[0]
    constant = owner == -1
    column_of = [np.flatnonzero(owner == j) for j in range(len(cats))]

    def encode(columns: list[Sequence[Any]]) -> np.ndarray:
        n = len(columns[0])
        out = np.empty((n, width), dtype=np.float64)
        out[:, constant] = base_row[constant]
        for j, (col, table) in enumerate(zip(columns, tables, strict=True)):
            idx = column_of[j]
            unknown = table[unseen]
            for i, value in enumerate(col):
                hit = table.get(value)
                if hit is None:
                    if not isinstance(value, str):
                        raise Fallback("non-string category")
                    hit = unknown
                out[i, idx] = hit[idx]
        return out

    return encode


def _reject_infinite(Z: np.ndarray) -> None:
    if np.isinf(Z).any():  # scikit-learn's check_array(ensure_all_finite="allow-nan") refuses it
        raise ValueError("Input X contains infinity or a value too large for dtype('float64').")


def _numeric_op(step: Any) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if type(step) is FunctionTransformer:
        if step.func is None:
            return lambda Z: Z
        if step.func is not np.log1p or step.kw_args:
            raise Unsupported(f"FunctionTransformer({step.func!r})")
        return np.log1p
    if type(step) is SimpleImputer:
        mv = step.missing_values
        if not (isinstance(mv, float) and math.isnan(mv)) or step.statistics_.dtype.kind != "f":
            raise Unsupported("SimpleImputer with missing_values other than NaN")
        stats = np.asarray(step.statistics_, dtype=np.float64)
        keep = np.ones(len(stats), dtype=bool) if step.keep_empty_features else ~np.isnan(stats)
        kept_stats = stats[keep]
        indicator = None
        if step.add_indicator:
            ind = step.indicator_
            if getattr(ind, "sparse_", False) is True:
                raise Unsupported("sparse missing indicator")
            indicator = np.asarray(ind.features_, dtype=np.intp)
        all_kept = bool(keep.all())

        def impute(Z: np.ndarray) -> np.ndarray:
            _reject_infinite(Z)
            mask = np.isnan(Z)
            X = Z if all_kept else Z[:, keep]
            X = np.where(mask if all_kept else mask[:, keep], kept_stats, X)
            if indicator is not None:
                X = np.hstack((X, mask[:, indicator].astype(np.float64)))
            return X

        return impute
    if type(step) is StandardScaler:
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standardize(Z: np.ndarray) -> np.ndarray:
            _reject_infinite(Z)
            X = np.array(Z, dtype=np.float64)
            if mean is not None:
                X -= mean
            if scale is not None:
                X /= scale
            return X

        return standardize
    raise Unsupported(type(step).__name__)


def _flatten(step: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if type(step) is Pipeline:
        out: list[Any] = []
        for _, inner in step.steps:
            if inner is None or inner == "passthrough":
                continue
            out.extend(_flatten(inner))
        return out
    return [step]


_TEXT_TRANSFORMERS = frozenset(
    ["TfidfVectorizer", "CountVectorizer", "HashingVectorizer", "TfidfTransformer", "Pipeline",
     "FeatureUnion"]
)  # fmt: skip


def _check_text_transformer(trans: Any) -> None:
    """A text block: scikit-learn's own vectorizers, alone or in a Pipeline / FeatureUnion."""
    for est in nested_estimators(trans):
        module = type(est).__module__
        if type(est).__name__ not in _TEXT_TRANSFORMERS or not module.startswith("sklearn."):
            raise Unsupported(f"text block with {type(est).__name__}")
        if getattr(est, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
            raise Unsupported("text block with set_output")


@dataclass
class _Block:
    kind: str  # "categorical", "numeric" or "text"
    columns: list[int]  # positions in FEATURE_COLUMNS (one for a text block)
    encode: Any  # categorical: the encoder on object columns; text: the fitted transformer
    ops: list[Any]  # float64 -> float64 steps


class Columns:
    """A ColumnTransformer as compiled blocks: rows in, the same matrix scikit-learn makes out."""

    def __init__(self, ct: Any) -> None:
        from sklearn.compose import ColumnTransformer

        if type(ct) is not ColumnTransformer:
            raise Unsupported(f"first step {type(ct).__name__}")
        if getattr(ct, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
            raise Unsupported("ColumnTransformer with set_output")
        self.sparse = bool(getattr(ct, "sparse_output_", False))
        self.blocks: list[_Block] = []
        for _, trans, columns in ct.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            self.blocks.append(self._block(trans, columns, not self.sparse))
        if not self.blocks:
            raise Unsupported("no output columns")

    @staticmethod
    def _block(trans: Any, columns: Any, dense_output: bool) -> _Block:
        scalar = isinstance(columns, str)
        names = [columns] if scalar else list(columns)
        if not names:
            raise Unsupported("a block without columns")
        if not all(isinstance(c, str) and c in FEATURE_COLUMNS for c in names):
            raise Unsupported(f"columns {names!r}")
        positions = [FEATURE_COLUMNS.index(c) for c in names]
        passthrough = isinstance(trans, str) and trans == "passthrough"
        if all(c in TEXT for c in names):
            if not scalar or passthrough:  # a list of text columns gives a 2-D frame, not texts
                raise Unsupported(f"text columns {names!r} not given as one column name")
            _check_text_transformer(trans)
            try:
                fast = _Tfidf(trans)
            except Unsupported:
                fast = None  # another vectorizer: its own transform, still exact
            return _Block("text", positions, fast or trans, [])
        kinds = {c in CATEGORICAL for c in names}
        if len(kinds) > 1 or scalar or any(c in TEXT for c in names):
            raise Unsupported(f"a block mixing kinds of columns: {names!r}")
        steps = [] if passthrough else _flatten(trans)
        if kinds == {True}:
            if not steps:
                raise Unsupported("passthrough of categorical columns")
            first = steps[0]
            if type(first).__name__ == "OneHotEncoder":
                encode = _op_one_hot(first, dense_output)
            else:
                encode = _op_ordinal(first)
            return _Block("categorical", positions, encode, [_numeric_op(s) for s in steps[1:]])
        return _Block("numeric", positions, None, [_numeric_op(s) for s in steps])

    def transform(self, columns: list[Sequence[Any]]) -> Any:
        parts = []
        for block in self.blocks:
            if block.kind == "text":
                texts = list(columns[block.columns[0]])
                if not all(isinstance(t, str) for t in texts):
                    raise Fallback("non-string text")
                parts.append(block.encode.transform(texts))
                continue
            if block.kind == "categorical":
                Z = block.encode([columns[p] for p in block.columns])
            else:
                Z = np.array([columns[p] for p in block.columns], dtype=np.float64).T
            for op in block.ops:
                Z = op(Z)
            parts.append(Z)
        from scipy import sparse

        if self.sparse:  # ColumnTransformer._hstack with a sparse output
            if len(parts) == 1 and sparse.isspmatrix_csr(parts[0]) and parts[0].has_sorted_indices:
                return parts[0]  # hstack of one CSR block keeps its data and order
            from sklearn.utils import check_array

            converted = [check_array(X, accept_sparse=True, ensure_all_finite=False) for X in parts]
            return sparse.hstack(converted).tocsr()
        parts = [p.toarray() if sparse.issparse(p) else p for p in parts]
        return np.hstack(parts) if len(parts) > 1 else parts[0]


class _Tfidf:
    """TfidfVectorizer.transform without its per-call validation (the same arithmetic)."""

    def __init__(self, vec: Any) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if type(vec) is not TfidfVectorizer or vec.norm not in (None, "l2"):
            raise Unsupported("text block other than a plain TfidfVectorizer")
        self.analyze = vec.build_analyzer()
        self.vocabulary = vec.vocabulary_
        self.width = len(vec.vocabulary_)
        self.dtype = vec.dtype
        self.binary = vec.binary
        self.sublinear = vec.sublinear_tf
        self.idf = np.asarray(vec.idf_) if vec.use_idf else None
        self.l2 = vec.norm == "l2"

    def transform(self, texts: Sequence[str]) -> Any:
        from scipy import sparse
        from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

        indices: list[int] = []
        values: list[int] = []
        indptr = [0]
        vocabulary = self.vocabulary
        for doc in texts:
            counts: dict[int, int] = {}
            for feature in self.analyze(doc):
                idx = vocabulary.get(feature)
                if idx is not None:
                    counts[idx] = counts.get(idx, 0) + 1
            for idx in sorted(counts):
                indices.append(idx)
                values.append(counts[idx])
            indptr.append(len(indices))
        X = sparse.csr_matrix(
            (np.asarray(values, dtype=self.dtype), np.asarray(indices, dtype=np.int32),
             np.asarray(indptr, dtype=np.int32)),
            shape=(len(texts), self.width), dtype=self.dtype,
        )  # fmt: skip
        if self.binary:
            X.data.fill(1)
        if self.sublinear:
            np.log(X.data, X.data)
            X.data += 1.0
        if self.idf is not None:
            X.data *= self.idf[X.indices]
        if self.l2:
            inplace_csr_row_normalize_l2(X)
        return X
