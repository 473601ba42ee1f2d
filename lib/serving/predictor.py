"""Predictor: a fitted model served through its compiled form when that equals scikit-learn
bit for bit on probe rows, else through scikit-learn itself."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lib.pipeline.features import CATEGORICAL, derived_values
from lib.pipeline.training import nested_estimators
from lib.serving.compiled import Labels, Node, compile_model
from lib.serving.encoders import Fallback, Unsupported
from lib.serving.rows import Row, rows_frame

logger = logging.getLogger(__name__)


class Predictor:
    """A fitted model ready to serve. `predict(rows)` -> (probability of class 1, labels).

    Labels are what the model's own `predict` gives: the tuned cut of a FixedThresholdClassifier,
    else the class with the highest probability (or the estimator's rule, asked of it).
    """

    def __init__(self, model: Any, compile_model: bool = True) -> None:
        self.model = model
        self.classes = np.asarray(model.classes_)
        hits = np.flatnonzero(self.classes == 1)
        self.positive = int(hits[0]) if len(hits) else len(self.classes) - 1
        self.labels = Labels(model)
        self.kind = "sklearn"
        self.reason = "compilation disabled" if not compile_model else ""
        self._root: Node | None = None
        if compile_model:
            self._try_compile()

    # ----------------------------------------------------------------------- compilation

    def _try_compile(self) -> None:
        try:
            self._root = compile_model(self.model)
            if not np.array_equal(self._root.classes, self.classes):
                raise Unsupported("compiled classes differ from the model's")
            self.kind = "compiled"
            problem = self._verify()
        except Unsupported as exc:
            problem = f"unsupported step: {exc}"
        except Exception as exc:  # compiling must never stop a model from being served
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            self.kind, self.reason = "sklearn", problem
            self._root = None
            logger.info("serving with scikit-learn (%s)", problem)
        else:
            self.reason = "matches scikit-learn bit for bit on the probe rows"

    def _probe_rows(self, n: int = 240) -> list[Row]:
        """Deterministic rows: known and unseen categories and words, NaNs, zeros, wide ranges."""
        rng = np.random.default_rng(0)
        choices: list[list[str]] = [["a", "b"], ["a", "b"], ["Free", "Paid"]]
        words: list[str] = []
        for est in nested_estimators(self.model):
            for name, values in zip(
                getattr(est, "feature_names_in_", []), getattr(est, "categories_", []),
                strict=False,
            ):  # fmt: skip
                if name in CATEGORICAL:
                    choices[CATEGORICAL.index(name)] = [str(v) for v in values]
            vocabulary = getattr(est, "vocabulary_", None)
            if isinstance(vocabulary, dict):
                words.extend(sorted(k for k in vocabulary if isinstance(k, str))[:400])
        words = words or ["game", "free", "pro"]
        words += ["ünïcode", "日本語", "X2", "PRO", "zzzunseen", "3d", "-"]
        genres = ["Action", "Action;Adventure", "", "NaN", "Puzzle;Brain Games;Casual", ";"]
        versions = ["4.0.3 and up", "Varies with device", "", "1.2.3", "v2", "NaN", "10.0", "7"]
        rows: list[Row] = []
        for k in range(n):
            text = [str(rng.choice(c)) if rng.random() > 0.05 else "__unseen__" for c in choices]
            nums = []
            for j in range(4):
                r = rng.random()
                if r < 0.08:
                    nums.append(math.nan if j == 2 else 0.0)
                elif r < 0.12:
                    nums.append(0.0)
                else:
                    nums.append(float(np.round(10 ** rng.uniform(-2, 9 if j < 2 else 3), 3)))
            days = math.nan if rng.random() < 0.03 else float(rng.uniform(12_000, 21_000))
            name = "" if k % 37 == 5 else " ".join(rng.choice(words, rng.integers(1, 6)))
            if k % 11 == 3:
                name = name.upper()
            texts = (name, str(rng.choice(genres)), str(rng.choice(versions)),
                     str(rng.choice(versions)))  # fmt: skip
            derived = derived_values(*texts, nums[0], nums[1])
            rows.append((*text, *nums, days, *derived, name))
        return rows

    def _verify(self) -> str:
        """'' when the compiled path equals scikit-learn exactly, else what differed."""
        rows = self._probe_rows()
        frame = rows_frame(rows)
        expected = self.model.predict_proba(frame)
        batched = self._compiled_proba(rows)
        if not np.array_equal(expected, batched):
            diff = float(np.nanmax(np.abs(expected - batched)))
            return f"compiled result differs from scikit-learn (max difference {diff:.3g})"
        # one row at a time too: scikit-learn itself may differ in the last bit between one row
        # and a batch (a matrix-vector product is not a matrix-matrix product), so compare each
        # single row with scikit-learn's answer for that single row
        for i in range(24):
            one = self.model.predict_proba(frame.iloc[i : i + 1].reset_index(drop=True))
            if not np.array_equal(one, self._compiled_proba(rows[i : i + 1])):
                return f"compiled result for probe row {i} alone differs from scikit-learn"
        if not self.labels.use_predict:
            labels = self.labels.from_proba(batched)
            if not np.array_equal(labels, self.model.predict(frame)):
                return "labels from the compiled probabilities differ from the model's predict"
        return ""

    # ------------------------------------------------------------------------ prediction

    def _compiled_proba(self, rows: Sequence[Row]) -> np.ndarray:
        assert self._root is not None
        return self._root.proba(list(zip(*rows, strict=True)))

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray:
        """Class probabilities (columns in `classes` order) for parsed rows."""
        if self._root is not None:
            try:
                return self._compiled_proba(rows)
            except Fallback:
                pass
        return self.model.predict_proba(rows_frame(rows))

    def predict(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray]:
        """Probability of class 1 and the label `model.predict` gives, for parsed rows."""
        proba = self.predict_proba(rows)
        if self.labels.use_predict:
            labels = np.asarray(self.model.predict(rows_frame(rows)))
        else:
            labels = self.labels.from_proba(proba)
        return proba[:, self.positive], labels
