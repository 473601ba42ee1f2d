"""The model's input row: a tuple in FEATURE_COLUMNS order (`schemas.App.row`), read column-wise
by the compiled predictor, and the DataFrame the scikit-learn fallback needs (`rows_frame`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lib.pipeline.features import CATEGORICAL, DERIVED, FEATURE_COLUMNS, TEXT

# FEATURE_COLUMNS in order: 3 categories, 4 skewed numbers, days, the derived numbers, the name
Row = tuple[Any, ...]

_ROW_COLUMNS = [
    *CATEGORICAL, "reviews", "installs", "size_mb", "price", "last_updated_days", *DERIVED, *TEXT,
]  # fmt: skip
if _ROW_COLUMNS != FEATURE_COLUMNS:  # loud, not silently wrong, if the feature set changes
    raise RuntimeError(f"the service parses {_ROW_COLUMNS} but the model wants {FEATURE_COLUMNS}")
OBJECT_POSITIONS = frozenset(FEATURE_COLUMNS.index(c) for c in (*CATEGORICAL, *TEXT))


def rows_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """Rows as the model's input frame, with the dtypes of features.model_inputs."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(FEATURE_COLUMNS)
    data: dict[str, Any] = {}
    for i, name in enumerate(FEATURE_COLUMNS):
        if i in OBJECT_POSITIONS:
            data[name] = pd.Series(list(columns[i]), dtype=object)
        else:
            data[name] = np.asarray(columns[i], dtype=np.float64)
    return pd.DataFrame(data)
