"""The pandera schema every typed Play Store row must satisfy, built once (per request it would
slow the service), and its failures as (row, column, check, value) for readable reasons."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa

from lib.errors import DataError

# pandera check errors are used as keys to turn failure cases into sentences.
E_EMPTY = "empty"
E_RATING = "rating_range"
E_NEGATIVE = "negative"
E_TYPE = "free_or_paid"

_non_empty = pa.Check(lambda s: s.str.strip().str.len() > 0, error=E_EMPTY)
_non_negative = pa.Check.ge(0, error=E_NEGATIVE)
APPS_SCHEMA = pa.DataFrameSchema(
    {
        "app": pa.Column(str, _non_empty),
        "app_key": pa.Column(str),
        "category": pa.Column(str, _non_empty),
        "rating": pa.Column(float, pa.Check.in_range(1.0, 5.0, error=E_RATING), nullable=True),
        "reviews": pa.Column(float, _non_negative),
        "size_mb": pa.Column(float, _non_negative, nullable=True),
        "installs": pa.Column(float, _non_negative),
        "type": pa.Column(str, pa.Check.isin(["Free", "Paid"], error=E_TYPE)),
        "price": pa.Column(float, _non_negative),
        "content_rating": pa.Column(str),
        "genres": pa.Column(str),
        "last_updated": pa.Column("datetime64[ns]"),
        "current_ver": pa.Column(str),
        "android_ver": pa.Column(str),
        "source_file": pa.Column(str),
        "source_row": pa.Column(int),
    },
    strict=True,
    ordered=True,
)


def schema_failures(typed: pd.DataFrame, source_file: str) -> list[tuple[int, str, str, object]]:
    """Run the schema lazily; return (row position, column, check, value) for every failure."""
    try:
        APPS_SCHEMA.validate(typed, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return []
    failures = []
    for column, check, value, index in zip(
        cases["column"], cases["check"], cases["failure_case"], cases["index"], strict=True
    ):
        if index is None or pd.isna(index):  # a whole-column failure means a bug in _parse
            raise DataError(f"{source_file}: schema failure on column {column}: {check}")
        failures.append((int(index), str(column), str(check), value))
    return failures
