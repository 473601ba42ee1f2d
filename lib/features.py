"""Model inputs and the preprocessing half of every candidate pipeline.

The feature set is fixed here, in one place, and never contains `Rating` or anything computed from
it: the system this project replaces leaked the target into its features and reported 100%.
Everything is built from scikit-learn's own classes so the saved model loads with skops without
trusting any code of ours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

CATEGORICAL = ["category", "content_rating", "type"]
SKEWED = ["reviews", "installs", "size_mb", "price"]  # heavy right tails: log1p first
LINEAR = ["last_updated_days"]
FEATURE_COLUMNS = CATEGORICAL + SKEWED + LINEAR
EPOCH = pd.Timestamp("1970-01-01")


def model_inputs(apps: pd.DataFrame) -> pd.DataFrame:
    """The model's input frame from typed apps (lib.data): exactly FEATURE_COLUMNS.

    `last_updated_days` is days since 1970-01-01 rather than "days since update": that needs no
    reference date at serving time, and for the models here the two differ by a constant.
    """
    out = pd.DataFrame(index=apps.index)
    for col in CATEGORICAL:
        out[col] = apps[col].astype("string").fillna("unknown").astype(object)
    for col in SKEWED:
        out[col] = pd.to_numeric(apps[col], errors="coerce").astype(float)
    updated = pd.to_datetime(apps["last_updated"], errors="coerce")
    out["last_updated_days"] = ((updated - EPOCH).dt.total_seconds() / 86400.0).astype(float)
    return out[FEATURE_COLUMNS]


def labels(apps: pd.DataFrame, target_threshold: float) -> pd.Series:
    """Binary target: 1 when the rating is above the threshold (4.0 by default)."""
    return (apps["rating"] > target_threshold).astype(int)


def _numeric(scale: bool) -> Pipeline:
    steps = [
        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
    ]
    if scale:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps)


def _skewed(scale: bool) -> Pipeline:
    steps = [
        ("log", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
    ]
    if scale:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps)


def preprocessor(kind: str) -> ColumnTransformer:
    """Preprocessing for a model family: one-hot + scaling for linear models, ordinal for trees."""
    if kind == "linear":
        categorical = OneHotEncoder(handle_unknown="ignore", min_frequency=20)
        scale = True
    elif kind == "tree":
        categorical = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
        )
        scale = False
    else:
        raise ValueError(f"unknown preprocessor kind {kind!r}; use 'linear' or 'tree'")
    return ColumnTransformer(
        [
            ("categorical", categorical, CATEGORICAL),
            ("skewed", _skewed(scale), SKEWED),
            ("linear", _numeric(scale), LINEAR),
        ],
        verbose_feature_names_out=False,
    )
