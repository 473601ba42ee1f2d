"""Statistics and their wording shared by canary analysis and production monitoring.

Both judge a window of logged predictions (lib.delivery.canary the canary against the champion,
lib.watch.monitoring the champion against its own validation): what counts as a failed request,
the error-rate test, and how numbers are written in their messages must be one definition, so a
canary that passed and the monitor that watches it afterwards speak the same language.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats


def failed_requests(frame: pd.DataFrame) -> pd.Series:
    """True for a request with an error message, or that produced no label at all."""
    error_text = frame["error"].astype("object").where(frame["error"].notna(), "")
    label = pd.to_numeric(frame["label"], errors="coerce")
    return (error_text.astype(str).str.strip() != "") | label.isna()


def error_rate_p_value(errors: int, requests: int, bound: float) -> float:
    """Exact one-sided binomial P(at least `errors` | true rate = bound); NaN without requests.

    Small means the error rate is significantly above the bound.
    """
    return float(stats.binom.sf(errors - 1, requests, bound)) if requests else math.nan


# ---------------------------------------------------------------------------- message wording


def fmt_count(value: int) -> str:
    """A count with thousands separators."""
    return f"{value:,}"


def fmt_p(value: float) -> str:
    """A p-value with two significant digits below 0.01, two decimals above; NaN is n/a."""
    if value != value:
        return "n/a"
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


def fmt_percent(value: float | None) -> str:
    """A share as a percentage with one decimal; None or NaN is n/a."""
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def fmt_ms(value: float | None) -> str:
    """Milliseconds, rounded; None or NaN is n/a."""
    return "n/a" if value is None or value != value else f"{value:,.0f} ms"


def is_nan(value: float | None) -> bool:
    """None or NaN: a figure that could not be computed (too few samples, one class only)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
