"""The value grammar of Play Store listings: one definition for the CSV reader and the service.

lib.pipeline.data and lib.serving.schemas read values through these parsers, so a spelling that
trains also serves. A parser returns the value, None (NaN for a size) when missing, or raises a
`ValueError` whose text completes "<value> ...".
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd

# Spellings of "no value" met in the files (the raw scrape writes the string "NaN").
MISSING = frozenset(["", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "None", "none", "null", "NULL"])
VARIES = "varies with device"

NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
SIZE_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([kKmMgG])?[bB]?", re.ASCII)
SIZE_UNIT_MB = {None: 1.0, "k": 1e-3, "K": 1e-3, "m": 1.0, "M": 1.0, "g": 1e3, "G": 1e3}
ISO_DATE_RE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?", re.ASCII
)
_WORD_SEPARATORS = re.compile(r"[,\-\s]+")
_DAY_RE = re.compile(r"3[01]|[12]\d|0[1-9]|[1-9]", re.ASCII)
_YEAR_RE = re.compile(r"\d{4}", re.ASCII)
_MONTH_NAMES = [
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
]  # fmt: skip
_MONTHS = {key: i for i, name in enumerate(_MONTH_NAMES, 1) for key in (name, name[:3])}
EPOCH = datetime(1970, 1, 1)
FIRST_DAY = datetime(1677, 9, 22)  # datetime64[ns] bounds, in whole days
LAST_DAY = datetime(2262, 4, 11)

HINT_NUMBER = "is not a number"
HINT_REVIEWS = 'is not a number like 159 or "1,000"'
HINT_INSTALLS = 'is not a number like "1,000+"'
HINT_PRICE = 'is not a price like 0 or "$4.99"'
HINT_SIZE = 'is not a size like "19M", "201k", 19.0 or "Varies with device"'
HINT_DATE = 'is not a date like "January 7, 2018", "March-20-2025" or "2018-01-07"'
HINT_RANGE = "is outside the supported years 1678..2261"


def number(text: str, junk: re.Pattern[str] | None = None, hint: str = HINT_NUMBER) -> float | None:
    """A finite number after removing `junk` (thousands commas, "+", "$"); None if missing."""
    text = text.strip()
    if junk is not None:
        text = junk.sub("", text)
    if text in MISSING:
        return None
    if NUMBER_RE.fullmatch(text) is None or not math.isfinite(value := float(text)):
        raise ValueError(hint)
    return value


# the count and price columns: `number` after dropping their thousands commas, "+" and "$"
reviews = functools.partial(number, junk=re.compile(r"[,\s]"), hint=HINT_REVIEWS)
installs = functools.partial(number, junk=re.compile(r"[,+\s]"), hint=HINT_INSTALLS)
price = functools.partial(number, junk=re.compile(r"[$,\s]"), hint=HINT_PRICE)


def size_mb(text: str) -> float:
    """Size in MB; missing and "Varies with device" are NaN (the model imputes them)."""
    text = text.strip().replace(",", "")
    if text in MISSING or text.lower() == VARIES:
        return math.nan
    match = SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(HINT_SIZE)
    return float(match[1]) * SIZE_UNIT_MB[match[2]]


def date(text: str) -> datetime | None:
    """A date in the Play Store's styles or ISO 8601; None if missing."""
    text = text.strip()
    if text in MISSING:
        return None
    iso = ISO_DATE_RE.fullmatch(text)
    try:
        if iso is not None:
            fraction = (iso[7] or "0")[:6].ljust(6, "0")
            when = datetime(
                int(iso[1]), int(iso[2]), int(iso[3]),
                int(iso[4] or 0), int(iso[5] or 0), int(iso[6] or 0), int(fraction),
            )  # fmt: skip
        else:
            parts = _WORD_SEPARATORS.sub(" ", text).strip().split(" ")
            if len(parts) != 3:
                raise ValueError(text)
            month = _MONTHS.get(parts[0].lower())
            day, year = parts[1], parts[2]
            if month is None or not _DAY_RE.fullmatch(day) or not _YEAR_RE.fullmatch(year):
                raise ValueError(text)
            when = datetime(int(year), month, int(day))
    except ValueError:
        raise ValueError(HINT_DATE) from None
    if not FIRST_DAY <= when <= LAST_DAY:
        raise ValueError(HINT_RANGE)
    return when


def days_since_epoch(when: datetime) -> float:
    """The model's date input: fractional days since 1970-01-01."""
    return (when - EPOCH).total_seconds() / 86400.0


def free_or_paid(text: str) -> str | None:
    """ "Free" or "Paid" in any case and padding; None for anything else."""
    low = text.strip().lower()
    return "Free" if low == "free" else "Paid" if low == "paid" else None


def parse_column(series: pd.Series, parse: Callable[[str], Any]) -> tuple[pd.Series, pd.Series]:
    """`parse` on a column of strings, each distinct value once (listings repeat them a lot):
    (values, NaN/NaT where missing or bad; mask of bad ones)."""
    parsed: dict[str, Any] = {}
    bad_values: set[str] = set()
    for value in series.unique():
        try:
            parsed[value] = parse(value)
        except ValueError:
            bad_values.add(value)
    bad = series.isin(bad_values)
    values = series.map(parsed).where(~bad)
    if parse is date:
        return pd.to_datetime(values, errors="coerce").astype("datetime64[ns]"), bad
    return values.astype("float64"), bad
