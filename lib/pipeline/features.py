"""Model inputs and the preprocessing half of every candidate model.

The features never contain `Rating` or anything computed from it (the system this project replaces
leaked the target and reported 100%). Derived inputs are computed by :func:`derived_values` for the
training frame and for one request of the model service alike; everything learned is made of
scikit-learn's own classes, so the saved model loads with skops without trusting our code.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

from lib.config import check_groups

CATEGORICAL = ["category", "content_rating", "type"]
SKEWED = ["reviews", "installs", "size_mb", "price"]  # heavy right tails: log1p first
LINEAR = ["last_updated_days"]
# Derived from the listing itself (see derived_values), grouped so each group can be measured;
# the names (and "name_text", the stacked text score) are lib.config.FEATURE_GROUPS.
GROUP_COLUMNS: dict[str, list[str]] = {
    "engagement": ["reviews_per_install"],
    "versions": ["android_min", "android_varies", "current_major", "current_varies"],
    "genres": ["genre_count"],
    "name_stats": [
        "name_length",
        "name_words",
        "name_upper_share",
        "name_digits",
        "name_non_ascii",
    ],
}
DERIVED = [c for cols in GROUP_COLUMNS.values() for c in cols]
NUMERIC = SKEWED + LINEAR + DERIVED
TEXT = ["name"]  # the app's name, for the out-of-fold text score (group "name_text")
FEATURE_COLUMNS = CATEGORICAL + NUMERIC + TEXT
EPOCH = pd.Timestamp("1970-01-01")

_LEADING_NUMBER = re.compile(r"^\D{0,3}?(\d+)(?:\.(\d+))?")
_VARIES = "varies with device"


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def version_number(value: object) -> float:
    """The leading `major.minor` of a version text ("4.0.3 and up" -> 4.0, "v2.1" -> 2.1).

    NaN when there is none ("Varies with device", "", "NaN"). A date-like build number is capped
    at 10,000 so one odd listing does not dominate a linear model.
    """
    text = _text(value)
    if not text or text.casefold() == _VARIES:
        return math.nan
    match = _LEADING_NUMBER.match(text)
    if match is None:
        return math.nan
    major = min(int(match.group(1)), 10_000)
    minor = match.group(2)
    return float(major) + (float(f"0.{minor[:4]}") if minor else 0.0)


def derived_values(
    name: object, genres: object, current_ver: object, android_ver: object,
    reviews: float, installs: float,
) -> tuple[float, ...]:  # fmt: skip
    """The derived inputs of one listing, in DERIVED order (shared by training and serving)."""
    if reviews is None or installs is None or math.isnan(reviews) or math.isnan(installs):
        per_install = math.nan
    else:
        per_install = math.log10((reviews + 1.0) / (installs + 1.0))
    android = _text(android_ver)
    current = _text(current_ver)
    genre_text = _text(genres)
    title = unicodedata.normalize("NFKC", _text(name))
    letters = [c for c in title if c.isalpha()]
    return (
        per_install,
        version_number(android),
        1.0 if android.casefold() == _VARIES else 0.0,
        version_number(current),
        1.0 if current.casefold() == _VARIES else 0.0,
        float(len([g for g in genre_text.split(";") if g.strip()])) if genre_text else math.nan,
        float(len(title)),
        float(len(title.split())),
        sum(c.isupper() for c in letters) / len(letters) if letters else 0.0,
        float(sum(c.isdigit() for c in title)),
        float(sum(ord(c) > 127 for c in title)),
    )


def model_inputs(apps: pd.DataFrame) -> pd.DataFrame:
    """The model's input frame from typed apps (lib.pipeline.data): exactly FEATURE_COLUMNS.

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
    texts = [_column(apps, c) for c in ("app", "genres", "current_ver", "android_ver")]
    rows = zip(*texts, out["reviews"].tolist(), out["installs"].tolist(), strict=True)
    derived = [derived_values(*row) for row in rows]
    values = np.array(derived, dtype=np.float64).reshape(len(out), len(DERIVED))
    for j, col in enumerate(DERIVED):
        out[col] = values[:, j]
    out["name"] = [_text(v) for v in _column(apps, "app")]
    out["name"] = out["name"].astype(object)
    return out[FEATURE_COLUMNS]


def _column(apps: pd.DataFrame, name: str) -> list[object]:
    return apps[name].tolist() if name in apps else [None] * len(apps)


def labels(apps: pd.DataFrame, target_threshold: float) -> pd.Series:
    """Binary target: 1 when the rating is above the threshold (4.0 by default)."""
    return (apps["rating"] > target_threshold).astype(int)


def _numeric(scale: bool, log: bool = False) -> Pipeline:
    steps = [("impute", SimpleImputer(strategy="median", add_indicator=True))]
    if log:  # heavy right tails
        steps.insert(0, ("log", FunctionTransformer(np.log1p, feature_names_out="one-to-one")))
    if scale:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps)


def preprocessor(kind: str, groups: Sequence[str] = ()) -> ColumnTransformer:
    """Preprocessing for a model family: one-hot + scaling for linear models, ordinal for trees.

    Columns outside the chosen groups (and the name text) are dropped here, so every model takes
    the same FEATURE_COLUMNS frame whatever it uses.
    """
    if kind == "linear":
        categorical = OneHotEncoder(handle_unknown="ignore", min_frequency=20)
    elif kind == "tree":
        categorical = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
        )
    else:
        raise ValueError(f"unknown preprocessor kind {kind!r}; use 'linear' or 'tree'")
    scale = kind == "linear"  # trees need no scaling
    derived = [c for g in check_groups(groups) for c in GROUP_COLUMNS.get(g, [])]
    blocks = [
        ("categorical", categorical, CATEGORICAL),
        ("skewed", _numeric(scale, log=True), SKEWED),
        ("linear", _numeric(scale), LINEAR + derived),
    ]
    return ColumnTransformer(blocks, verbose_feature_names_out=False, sparse_threshold=0.0)


def name_text_model(seed: int) -> Pipeline:
    """P(rated above the threshold | words of the name): TF-IDF of words and word pairs + LR.

    Used as one input of a stack, whose final estimator only ever sees its out-of-fold scores.
    """
    vectorizer = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    return Pipeline(
        [
            ("text", ColumnTransformer([("name", vectorizer, "name")])),
            ("model", LogisticRegression(C=1.0, max_iter=2000, random_state=seed)),
        ]
    )
