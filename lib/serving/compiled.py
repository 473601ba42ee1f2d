"""Compiled estimators: logistic regression, calibration, stacks and thresholded labels, as nodes
that take rows column-wise (`compile_model`); tree ensembles are in lib.serving.compiled_trees."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from lib.serving.compiled_trees import Boosting, Forest
from lib.serving.encoders import Columns, Unsupported


class _Logistic:
    """Binary LogisticRegression's decision_function and predict_proba on a ready matrix."""

    def __init__(self, model: Any) -> None:
        from sklearn.linear_model import LogisticRegression

        if type(model) is not LogisticRegression or len(model.classes_) != 2:
            raise Unsupported("not a binary LogisticRegression")
        self.coef_t = model.coef_.T if model.coef_.ndim == 2 else model.coef_
        self.intercept = model.intercept_
        self.width = model.coef_.shape[-1]

    def decision(self, X: Any) -> np.ndarray:
        if X.shape[1] != self.width:
            raise ValueError(f"X has {X.shape[1]} features, the model {self.width}")
        scores = X @ self.coef_t + self.intercept  # safe_sparse_dot of a matrix and a dense array
        return scores.reshape(-1) if scores.ndim > 1 and scores.shape[1] == 1 else scores

    def proba(self, X: Any) -> np.ndarray:
        from scipy.special import expit

        prob = self.decision(X)
        prob = expit(prob, out=prob)
        return np.stack([1 - prob, prob], axis=1)


class _Calibrator:
    """The fitted calibrator's predict without its input validation."""

    def __init__(self, calibrator: Any) -> None:
        from sklearn.calibration import _SigmoidCalibration
        from sklearn.isotonic import IsotonicRegression

        self.sigmoid: tuple[float, float] | None = None
        self.isotonic: Any = None
        if type(calibrator) is _SigmoidCalibration:
            self.sigmoid = (calibrator.a_, calibrator.b_)
        elif type(calibrator) is IsotonicRegression and hasattr(calibrator, "X_thresholds_"):
            if calibrator.out_of_bounds != "clip" or calibrator.X_thresholds_.dtype != np.float64:
                raise Unsupported("IsotonicRegression without clipping or float64 thresholds")
            self.isotonic = calibrator
        else:
            raise Unsupported(f"calibrator {type(calibrator).__name__}")

    def __call__(self, T: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        T = np.asarray(T, dtype=np.float64).reshape(-1)
        if self.sigmoid is not None:
            a, b = self.sigmoid
            return expit(-(a * T + b))
        iso = self.isotonic
        T = np.clip(T, iso.X_min_, iso.X_max_)
        return iso.f_(T).astype(T.dtype)


# ------------------------------------------------------------------------ compiled estimators
# Each node answers like the scikit-learn object it stands for, on parsed columns:
# proba(cols) ~ predict_proba(X), decision(cols) ~ decision_function(X) (None: it has none).


class Node:
    """One compiled model part (the Predictor holds the root): `final`, a matrix estimator or an
    inner node, on `matrix(cols)`."""

    classes: np.ndarray
    final: Any
    has_decision = False

    def matrix(self, cols: list[Sequence[Any]]) -> Any:
        return cols

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.final.proba(self.matrix(cols))

    def decision(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.final.decision(self.matrix(cols))


class _PipelineNode(Node):
    """Pipeline(ColumnTransformer, classifier): compiled columns, then the classifier itself."""

    def __init__(self, pipe: Any) -> None:
        steps = pipe.steps
        if len(steps) != 2:
            raise Unsupported("a Pipeline that is not (ColumnTransformer, estimator)")
        self.columns = Columns(steps[0][1])
        final = steps[1][1]
        if not hasattr(final, "predict_proba"):
            raise Unsupported(f"{type(final).__name__} has no predict_proba")
        self.final = _matrix_estimator(final)
        self.classes = np.asarray(final.classes_)
        self.has_decision = hasattr(final, "decision_function")

    def matrix(self, cols: list[Sequence[Any]]) -> Any:
        return self.columns.transform(cols)


class _Plain:
    """Any other classifier: its own methods on the compiled matrix."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def proba(self, X: Any) -> np.ndarray:
        return self.model.predict_proba(X)

    def decision(self, X: Any) -> np.ndarray:
        return self.model.decision_function(X)


class _LogOddsLogistic(Node):
    """Pipeline(clip, logit, LogisticRegression), the stacks' combiner (training.stack_combiner):
    the same two NumPy/SciPy functions on the matrix, then the compiled logistic regression."""

    def __init__(self, model: Any) -> None:
        from scipy.special import logit
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        steps = [step for _, step in model.steps] if type(model) is Pipeline else []
        if len(steps) != 3 or any(type(s) is not FunctionTransformer for s in steps[:2]):
            raise Unsupported("not the log-odds combiner")
        clip, log_odds = steps[:2]
        kw = clip.kw_args or {}
        if clip.func is not np.clip or set(kw) != {"a_min", "a_max"} or log_odds.func is not logit:
            raise Unsupported("not the log-odds combiner")
        if log_odds.kw_args or clip.validate or log_odds.validate:
            raise Unsupported("log-odds combiner with options")
        self.low, self.high = kw["a_min"], kw["a_max"]
        self.logit = logit
        self.final = _Logistic(steps[2])

    def matrix(self, X: Any) -> np.ndarray:
        return self.logit(np.clip(X, a_min=self.low, a_max=self.high))


def _matrix_estimator(model: Any) -> Any:
    """The fastest exact form of a classifier that takes the compiled matrix."""
    from sklearn.ensemble._forest import ForestClassifier

    if isinstance(model, ForestClassifier):
        return Forest(model)
    for fast in (_Logistic, Boosting, _LogOddsLogistic):
        try:
            return fast(model)
        except Unsupported:
            pass
    return _Plain(model)


class _StackNode(Node):
    """StackingClassifier: each estimator's answers side by side, then the final estimator."""

    def __init__(self, stack: Any) -> None:
        if stack.passthrough:
            raise Unsupported("StackingClassifier with passthrough")
        if isinstance(getattr(stack, "_label_encoder", None), list):
            raise Unsupported("multilabel StackingClassifier")
        self.classes = np.asarray(stack.classes_)
        self.binary = len(self.classes) == 2
        # (node, method, key): members whose fitted preprocessing is identical (the same pickled
        # ColumnTransformer) share a key, and their matrix is computed once
        self.members: list[tuple[Node, str, int | None]] = []
        keys: dict[bytes, int] = {}
        for est, method in zip(stack.estimators_, stack.stack_method_, strict=True):
            if isinstance(est, str) and est == "drop":
                continue
            if method not in ("predict_proba", "decision_function"):
                raise Unsupported(f"stack_method {method!r}")
            node = compile_model(est)
            if method == "decision_function" and not node.has_decision:
                raise Unsupported("stack member without decision_function")
            key = None
            if isinstance(node, _PipelineNode):
                key = keys.setdefault(pickle.dumps(est.steps[0][1]), len(keys))
            self.members.append((node, method, key))
        self.final = _matrix_estimator(stack.final_estimator_)
        self.has_decision = hasattr(stack.final_estimator_, "decision_function")

    def matrix(self, cols: list[Sequence[Any]]) -> np.ndarray:
        parts = []
        matrices: dict[int, Any] = {}  # one transform per distinct preprocessing
        for node, method, key in self.members:
            target, data = node, cols
            if isinstance(node, _PipelineNode):
                if key not in matrices:
                    matrices[key] = node.columns.transform(cols)
                target, data = node.final, matrices[key]
            preds = target.proba(data) if method == "predict_proba" else target.decision(data)
            if preds.ndim == 1:
                parts.append(preds.reshape(-1, 1))
            elif method == "predict_proba" and self.binary:
                parts.append(preds[:, 1:])
            else:
                parts.append(preds)
        return np.hstack(parts)


class _CalibratedNode(Node):
    """CalibratedClassifierCV(ensemble=False), binary: _CalibratedClassifier.predict_proba."""

    def __init__(self, model: Any) -> None:
        if len(model.calibrated_classifiers_) != 1:
            raise Unsupported("CalibratedClassifierCV with several calibrated classifiers")
        cc = model.calibrated_classifiers_[0]
        self.classes = np.asarray(model.classes_)
        if len(self.classes) != 2 or cc.method not in ("sigmoid", "isotonic"):
            raise Unsupported(f"calibration {cc.method!r} with {len(self.classes)} classes")
        if len(cc.calibrators) != 1 or not np.array_equal(cc.classes, self.classes):
            raise Unsupported("calibrated classifier with unexpected calibrators or classes")
        inner_classes = np.asarray(cc.estimator.classes_)
        if len(inner_classes) != 2:
            raise Unsupported("calibrated estimator is not binary")
        self.inner = compile_model(cc.estimator)
        self.calibrator = _Calibrator(cc.calibrators[0])
        # _get_response_values: decision_function first, else predict_proba of classes_[-1]
        self.use_decision = hasattr(cc.estimator, "decision_function")
        if self.use_decision and not self.inner.has_decision:
            raise Unsupported("calibrated estimator's decision_function is not compiled")

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        if self.use_decision:
            response = np.ravel(self.inner.decision(cols))
        else:
            response = self.inner.proba(cols)[:, -1]
        proba = np.zeros((len(response), 2))
        proba[:, 1] = self.calibrator(response)
        proba[:, 0] = 1.0 - proba[:, 1]
        proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba


class _DelegateNode(Node):
    """FrozenEstimator (and the probabilities of FixedThresholdClassifier): the inner model."""

    def __init__(self, inner: Any, classes: Any) -> None:
        self.final = compile_model(inner)
        self.classes = np.asarray(classes)
        self.has_decision = self.final.has_decision


def compile_model(model: Any) -> Node:
    """The compiled node of a fitted scikit-learn model, or Unsupported."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import StackingClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline

    kind = type(model)
    if kind is FixedThresholdClassifier:
        return _DelegateNode(getattr(model, "estimator_", model.estimator), model.classes_)
    if kind is FrozenEstimator:
        return _DelegateNode(model.estimator, model.classes_)
    if kind is CalibratedClassifierCV:
        return _CalibratedNode(model)
    if kind is StackingClassifier:
        return _StackNode(model)
    if kind is Pipeline:
        return _PipelineNode(model)
    raise Unsupported(f"{kind.__name__}")


class Labels:
    """How a model turns its answers into labels, exactly as its `predict` does."""

    def __init__(self, model: Any) -> None:
        from sklearn.model_selection import FixedThresholdClassifier

        self.classes = np.asarray(model.classes_)
        self.threshold: float | None = None
        self.use_predict = False
        self.column = 0
        if type(model) is FixedThresholdClassifier:
            inner = getattr(model, "estimator_", model.estimator)
            method = model._get_response_method()
            if isinstance(method, list):
                method = next((m for m in method if hasattr(inner, m)), None)
            pos_label = model.pos_label
            if method != "predict_proba" or len(self.classes) != 2:
                self.use_predict = True  # decision scores: ask the model itself
                return
            self.threshold = 0.5 if model.threshold == "auto" else float(model.threshold)
            inner_classes = np.asarray(inner.classes_)
            target = inner_classes[-1] if pos_label is None else pos_label
            self.column = int(np.flatnonzero(inner_classes == target)[0])
            # (the negative class, the positive one): pos_label's index last
            self.index_map = np.argsort(self.classes == pos_label, kind="stable")
        elif not _argmax_predict(model):
            self.use_predict = True

    def from_proba(self, proba: np.ndarray) -> np.ndarray:
        if self.threshold is not None:  # _threshold_scores_to_class_labels
            positive = (proba[:, self.column] >= self.threshold).astype(int)
            return self.classes[self.index_map[positive]]
        return self.classes[np.argmax(proba, axis=1)]


def _argmax_predict(model: Any) -> bool:
    """True when `model.predict` is the class of highest predict_proba (no decision rule)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.pipeline import Pipeline

    if type(model) is Pipeline:
        return _argmax_predict(model.steps[-1][1])
    if type(model) in (CalibratedClassifierCV, HistGradientBoostingClassifier):
        return True
    return isinstance(model, ForestClassifier) and type(model).predict is ForestClassifier.predict
