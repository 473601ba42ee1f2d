"""lib.window_stats: the failed-request rule, the error-rate test and the wording of numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib.window_stats import (
    error_rate_p_value,
    failed_requests,
    fmt_count,
    fmt_ms,
    fmt_p,
    fmt_percent,
    is_nan,
)


def test_a_request_failed_with_an_error_message_or_without_a_label() -> None:
    frame = pd.DataFrame(
        {
            "error": [None, "boom", "  ", np.nan, ""],
            "label": [1, 1, 0, None, "x"],
        }
    )
    assert failed_requests(frame).tolist() == [False, True, False, True, True]


def test_error_rate_p_value_is_the_exact_binomial_tail() -> None:
    assert error_rate_p_value(3, 100, 0.01) == pytest.approx(stats.binom.sf(2, 100, 0.01))
    assert error_rate_p_value(0, 100, 0.01) == pytest.approx(1.0)
    assert error_rate_p_value(20, 100, 0.01) < 1e-10  # far above the bound: significant
    assert math.isnan(error_rate_p_value(0, 0, 0.01))


@pytest.mark.parametrize(
    ("formatted", "expected"),
    [
        (fmt_count(1234567), "1,234,567"),
        (fmt_p(0.0012), "0.0012"),
        (fmt_p(0.2345), "0.23"),
        (fmt_p(math.nan), "n/a"),
        (fmt_percent(0.0123), "1.2%"),
        (fmt_percent(None), "n/a"),
        (fmt_ms(1234.4), "1,234 ms"),
        (fmt_ms(math.nan), "n/a"),
    ],
)
def test_numbers_are_worded_the_same_in_every_message(formatted: str, expected: str) -> None:
    assert formatted == expected


def test_is_nan_means_a_figure_that_could_not_be_computed() -> None:
    assert is_nan(None) and is_nan(math.nan)
    assert not is_nan(0.0) and not is_nan(1)
