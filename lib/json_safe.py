"""Values made plain JSON (no NaN or infinity, no NumPy types): one converter for every report,
state file and scrap, so they all write the same JSON for the same value."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """NumPy scalars/arrays to Python, NaN/inf to None, tuples to lists, dict keys to strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())  # NumPy scalars and arrays (np.bool_ included)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
