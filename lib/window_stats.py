"""Statistics and their wording shared by canary analysis and production monitoring, so both
speak the same language. The sequential tests return always-valid p-values (Ville's inequality)
for windows checked again as they grow, vectorised so simulations run a live check's code.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special, stats


def failed_requests(frame: pd.DataFrame) -> pd.Series:
    """True for a request with an error message, or that produced no label at all."""
    error_text = frame["error"].astype("object").where(frame["error"].notna(), "")
    label = pd.to_numeric(frame["label"], errors="coerce")
    return (error_text.astype(str).str.strip() != "") | label.isna()


def estimated_correct(frame: pd.DataFrame) -> pd.Series:
    """Each answer's chance of being right by its own model (CBPE): the calibrated probability
    of the label it gave. Its mean estimates accuracy without a single label."""
    probability = pd.to_numeric(frame["probability"], errors="coerce")
    return probability.where(pd.to_numeric(frame["label"], errors="coerce") == 1, 1 - probability)


def error_rate_p_value(errors: int, requests: int, bound: float) -> float:
    """Exact one-sided binomial P(at least `errors` | true rate = bound), small when the error
    rate is significantly above the bound; NaN without requests."""
    return float(stats.binom.sf(errors - 1, requests, bound)) if requests else math.nan


# ---------------------------------------------------------------------------- sequential tests


def _log_upper_beta(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log of the integral of p^(a-1) (1-p)^(b-1) over [x, 1]."""
    with np.errstate(divide="ignore"):
        return special.betaln(a, b) + np.log(special.betainc(b, a, 1.0 - x))


def sequential_binomial_p(k: np.ndarray | int, n: np.ndarray | int, bound: np.ndarray | float):
    """Always-valid p-value of H0 "rate <= bound" after k events in n trials (vectorised): the
    inverse of a mixture of likelihood ratios over rates above the bound (Beta(1, b), mean about
    three times the bound), exact, so it also judges a handful of requests that all failed."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    p0 = np.asarray(bound, dtype=float)
    a = np.ones_like(p0)
    b = np.maximum(1.0, 1.0 / (3.0 * p0) - 1.0)
    log_m = (
        _log_upper_beta(k + a, n - k + b, p0)
        - _log_upper_beta(a, b, p0)
        - k * np.log(p0)
        - (n - k) * np.log1p(-p0)
    )
    with np.errstate(over="ignore"):
        p = np.exp(-np.nan_to_num(log_m, nan=0.0, neginf=-np.inf))
    return np.where(n > 0, np.clip(p, 0.0, 1.0), 1.0)


def _solve_one_sided(rhs: np.ndarray) -> np.ndarray:
    """u with u^2/2 + log(Phi(u)) = rhs (the left side increases with u, from -inf)."""
    positive = np.maximum(rhs, 0.0)
    lo = np.where(rhs >= 0, np.sqrt(2.0 * positive), -10.0)  # alpha > 0.5: u may be negative
    hi = np.sqrt(2.0 * (positive + math.log(2.0)))
    for _ in range(48):  # bisection: 2^-48 of a width below 11
        mid = (lo + hi) / 2
        above = mid * mid / 2 + special.log_ndtr(mid) > rhs
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return (lo + hi) / 2


def sequential_excess_test(
    estimate: np.ndarray | float,
    variance: np.ndarray | float,
    bound: float,
    alpha: float,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided mixture SPRT of H0 "true value <= bound" for an asymptotically normal estimate:
    the Gaussian likelihood ratio mixed over a half-normal prior of scale `scale` (the excess it
    finds fastest) on the excess (Robbins; Johari et al.; Waudby-Smith et al.). Returns the
    always-valid (1 - alpha) lower bound and p-value; lower > bound is the same as p <= alpha.
    """
    est = np.asarray(estimate, dtype=float)
    var = np.maximum(np.asarray(variance, dtype=float), 1e-12)
    tau2 = scale * scale
    c = 1.0 + tau2 / var  # 1 + tau^2 * information
    u_star = _solve_one_sided(math.log(1.0 / alpha) - math.log(2.0) + 0.5 * np.log(c))
    half_width = u_star * np.sqrt(c) * var / scale
    lower = est - half_width
    u = scale * (est - bound) / var / np.sqrt(c)
    log_m = math.log(2.0) - 0.5 * np.log(c) + u * u / 2 + special.log_ndtr(u)
    with np.errstate(over="ignore"):
        p = np.clip(np.exp(-log_m), 0.0, 1.0)
    return lower, p


def sequential_two_sided_p(
    estimate: np.ndarray | float, variance: np.ndarray | float, scale: float
) -> np.ndarray:
    """Always-valid p-value of H0 "true value = 0" (normal mixture SPRT, prior N(0, scale^2))."""
    est = np.asarray(estimate, dtype=float)
    var = np.maximum(np.asarray(variance, dtype=float), 1e-12)
    c = 1.0 + scale * scale / var
    log_m = -0.5 * np.log(c) + (scale * est / var) ** 2 / (2 * c)
    with np.errstate(over="ignore"):
        return np.clip(np.exp(-log_m), 0.0, 1.0)


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
