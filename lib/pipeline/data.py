"""Reading, parsing and validating Google Play Store app listings.

One code path serves every source: the raw scrape (`"1,000+"`, `"$4.99"`, `19M`), the cleaned file
(numeric MB, `10000.0`, `0.0`), the hand-made batches (`1000000000+`, `March-20-2025`) and single
requests of the model service. Rows are read with the csv module (pandas would silently pad a row
with a missing field), parsed column by column, then checked by one pandera schema. Invalid rows are
never dropped silently: each one lands in a quarantine frame with a readable reason.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib import values as grammar
from lib.atomic_files import atomic_open
from lib.config import is_url
from lib.errors import DataError, MissingColumnsError
from lib.pipeline.app_identity import app_key
from lib.pipeline.app_schema import E_EMPTY, E_NEGATIVE, E_RATING, E_TYPE, schema_failures
from lib.pipeline.data_sources import (
    MAX_DOWNLOAD_BYTES,
    check_file,
    csv_records,
    fetch_csv,
    open_csv,
    read_db,
    read_header,
    source_name,
)

logger = logging.getLogger(__name__)

RAW_COLUMNS: list[str] = [
    "App", "Category", "Rating", "Reviews", "Size", "Installs", "Type", "Price", "Content Rating",
    "Genres", "Last Updated", "Current Ver", "Android Ver",
]  # fmt: skip
REQUIRED_COLUMNS: list[str] = [
    c for c in RAW_COLUMNS if c not in ("Genres", "Current Ver", "Android Ver")
]
TYPED_COLUMNS: list[str] = [
    "app", "app_key", "category", "rating", "reviews", "size_mb", "installs", "type", "price",
    "content_rating", "genres", "last_updated", "current_ver", "android_ver", "source_file",
    "source_row",
]  # fmt: skip
QUARANTINE_COLUMNS: list[str] = ["source_file", "source_row", "reason", *RAW_COLUMNS]

# snake_case (typed) name -> Play Store name; lets the service accept either spelling.
ALIASES: dict[str, str] = {c.lower().replace(" ", "_"): c for c in RAW_COLUMNS} | {
    "size_mb": "Size"
}
# Typed column -> the Play Store column it comes from, to name it in reasons.
_DISPLAY: dict[str, str] = {t: raw for t, raw in ALIASES.items() if t != "size"} | {
    "app_key": "App"
}
# Typed columns parsed by lib.values' grammar: (parser, what a bad value is not).
_PARSED: dict[str, tuple[Callable[[str], Any], str]] = {
    "rating": (grammar.number, "is not a number"),
    "reviews": (grammar.reviews, "is not a count"),
    "size_mb": (grammar.size_mb, "is not a size like 19M, 201k, 19.0 or 'Varies with device'"),
    "installs": (grammar.installs, "is not a count like 1,000+"),
    "price": (grammar.price, "is not a price like 0 or $4.99"),
    "last_updated": (grammar.date, "is not a date like 'January 7, 2018' or 2018-01-07"),
}
_TEXT = ["app", "category", "content_rating", "genres", "current_ver", "android_ver"]


@dataclass
class LoadedApps:
    """Valid typed rows plus every rejected row with its reason, so nothing vanishes unnoticed."""

    apps: pd.DataFrame
    quarantine: pd.DataFrame
    sources: list[str] = field(default_factory=list)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # file: (rows, valid rows)
    digest: str | None = None  # of the records as read (not of where): what 01 detect records

    @property
    def n_quarantined(self) -> int:
        return len(self.quarantine)

    def raise_if_unusable(self, quarantine: str | Path | None = None) -> None:
        """A file none of whose rows is valid is the wrong file or format, not data: stop with
        one line naming it, its first reason and where every reason was written."""
        for source, (n_rows, n_valid) in self.counts.items():
            if n_rows and not n_valid:
                rejected = self.quarantine[self.quarantine["source_file"] == source_name(source)]
                first = ""
                if len(rejected):
                    reason = str(rejected["reason"].iat[0])
                    reason = reason if len(reason) <= 160 else reason[:157] + "..."
                    first = f"; row {rejected['source_row'].iat[0]}: {reason}"
                where = f"; every reason in {quarantine}" if quarantine else ""
                plural = "rows" if n_rows != 1 else "row"
                raise DataError(
                    f"{source}: none of its {n_rows} {plural} is valid (all quarantined{first})"
                    f"{where}"
                )


# --------------------------------------------------------------------------------------------
# reading


def _as_sources(paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """Files as Paths; URLs (HTTP(S), SQLAlchemy) kept as strings, which a Path would mangle."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return [p if is_url(p) else Path(p) for p in items]


def _require_columns(name: str, header: list[str], has_rows: bool, need_rows: bool) -> None:
    """Name every missing required column; with `need_rows`, refuse a header without rows."""
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise MissingColumnsError(name, missing, header)
    if need_rows and not has_rows:
        raise DataError(f"{name}: no rows (only a header)")


def check_columns(path: str | Path, need_rows: bool = False) -> list[str]:
    """Read only the header and fail early, naming every missing required column; with
    `need_rows`, also a file without data rows (a header alone is no data to learn from)."""
    path = check_file(path)
    header, has_rows = read_header(path)
    _require_columns(str(path), header, has_rows, need_rows)
    return header


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Return the header and (1-based data-row number, fields) for every non-blank record."""
    with open_csv(path) as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader, [])]
            rows = [(number, fields) for number, fields in enumerate(reader, start=1) if fields]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
    return header, rows


def read_source(
    source: str | Path, max_bytes: int = MAX_DOWNLOAD_BYTES
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and numbered records of any source as CSV text fields: a file, an HTTP(S)
    CSV (`max_bytes` caps it) or a database table or query (columns by Play Store or snake_case
    name), so every kind goes through the same validation and quarantine."""
    if not is_url(source):
        return read_rows(Path(source))
    name = source_name(source)
    if str(source).lower().startswith(("http://", "https://")):
        header, rows = csv_records(fetch_csv(str(source), max_bytes), name)
    else:
        columns, values = read_db(str(source))
        header = [c if c in RAW_COLUMNS else ALIASES.get(c.strip().lower(), c) for c in columns]
        rows = [(number, [_cell_to_str(v) for v in row]) for number, row in values]
    _require_columns(name, header, bool(rows), need_rows=True)
    return header, rows


def _to_raw_fields(header: list[str], fields: list[str]) -> list[str]:
    """Map a record onto RAW_COLUMNS by header name (positionally, padded, if its length is off)."""
    by_name: dict[str, str] = {}
    for name, value in zip(header, fields, strict=False):
        by_name.setdefault(name, value)
    return [by_name.get(name, "") for name in RAW_COLUMNS]


def _field_count_reason(n_fields: int, expected: int) -> str:
    why = (
        "a column is missing,"
        if n_fields < expected
        else "extra values, probably an unquoted comma;"
    )
    return f"row has {n_fields} fields, expected {expected} ({why} values are shifted)"


def read_apps(
    paths: str | Path | Sequence[str | Path], max_bytes: int = MAX_DOWNLOAD_BYTES
) -> LoadedApps:
    """Read, parse and validate Play Store rows from CSV files, HTTP(S) CSVs or database tables
    and queries, in any of the known styles.

    Every local file is checked (found, a CSV, its header, at least one row) before any source
    is read, so a bad file fails fast. Rows are checked, not files: see `raise_if_unusable`.
    """
    sources = _as_sources(paths)
    if not sources:
        raise DataError("read_apps: no data file given")
    for source in sources:
        if not is_url(source):
            check_columns(source, need_rows=True)

    apps_parts: list[pd.DataFrame] = []
    quarantine_parts: list[pd.DataFrame] = []
    counts: dict[str, tuple[int, int]] = {}
    content = hashlib.sha256()
    for source in sources:
        name = source_name(source)
        header, rows = read_source(source, max_bytes)
        content.update(_digest_text(header, rows))
        apps, quarantine = _validate_records(header, rows, name)
        logger.info(
            "%s: %d rows read, %d valid, %d quarantined",
            name,
            len(rows),
            len(apps),
            len(quarantine),
        )
        apps_parts.append(apps)
        quarantine_parts.append(quarantine)
        counts[name if is_url(source) else str(source)] = (len(rows), len(apps))

    return LoadedApps(
        apps=_concat(apps_parts),
        quarantine=_fix_quarantine_types(_concat(quarantine_parts)),
        sources=[source_name(s) if is_url(s) else str(s) for s in sources],
        counts=counts,
        digest=content.hexdigest()[:16],
    )


def _digest_text(header: list[str], rows: list[tuple[int, list[str]]]) -> bytes:
    """The records as read, unambiguously joined: what the data digest fingerprints."""
    lines = ["\x1f".join(header), *("\x1f".join(fields) for _, fields in rows)]
    return ("\x1e".join(lines) + "\x1d").encode("utf-8", "surrogatepass")


def _validate_records(
    header: list[str], rows: list[tuple[int, list[str]]], name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Valid typed apps and quarantined rows (a record with the wrong field count included)."""
    good_numbers: list[int] = []
    good_fields: list[list[str]] = []
    bad_records: list[dict[str, object]] = []
    for number, fields in rows:
        if len(fields) == len(header):
            good_numbers.append(number)
            good_fields.append(_to_raw_fields(header, fields))
        else:
            reason = _field_count_reason(len(fields), len(header))
            named = dict(zip(RAW_COLUMNS, _to_raw_fields(header, fields), strict=True))
            bad_records.append(
                {**named, "source_file": name, "source_row": number, "reason": reason}
            )
    raw = pd.DataFrame(good_fields, columns=RAW_COLUMNS, dtype="str")
    apps, quarantine = _validate(raw, name, np.asarray(good_numbers, dtype="int64"))
    if bad_records:
        quarantine = pd.concat(
            [quarantine, pd.DataFrame(bad_records, columns=QUARANTINE_COLUMNS)],
            ignore_index=True,
        )
        quarantine = quarantine.sort_values("source_row", kind="stable")
    return apps, quarantine


def _cell_to_str(value: object) -> str:
    """Render one in-memory value the way a CSV field would hold it."""
    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, NaT, NA
        return ""
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        if value.hour == value.minute == value.second == 0:
            return value.strftime("%Y-%m-%d")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (np.floating, float)):
        return repr(float(value))
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def parse_records(frame: pd.DataFrame, source: str = "request") -> LoadedApps:
    """Parse and validate in-memory records (raw or clean values, Play Store or snake_case names)
    exactly as rows of a file: the reference the model service's own parser is tested against."""
    renamed: dict[str, pd.Series] = {}
    for column in frame.columns:
        name = str(column).strip()
        target = name if name in RAW_COLUMNS else ALIASES.get(name)
        if target is not None and target not in renamed:
            renamed[target] = frame[column]
    missing = [name for name in REQUIRED_COLUMNS if name not in renamed]
    if missing:
        raise MissingColumnsError(source, missing, [str(c) for c in frame.columns])
    n = len(frame)
    raw = pd.DataFrame(
        {
            name: (
                [_cell_to_str(v) for v in renamed[name].tolist()] if name in renamed else [""] * n
            )
            for name in RAW_COLUMNS
        },
        dtype="str",
    )
    apps, quarantine = _validate(raw, source, np.arange(1, n + 1, dtype="int64"))
    return LoadedApps(apps=apps, quarantine=_fix_quarantine_types(quarantine), sources=[source])


# --------------------------------------------------------------------------------------------
# parsing


def _type(series: pd.Series) -> pd.Series:
    text = series.str.strip()
    canonical = text.map(grammar.free_or_paid)
    return canonical.fillna(text).where(text.ne(""), None).astype("str")


def _parse(
    raw: pd.DataFrame, source_file: str, source_row: np.ndarray
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Turn raw string fields into the typed frame; return it with a per-column unparseable mask."""
    parsed = {c: grammar.parse_column(raw[_DISPLAY[c]], p) for c, (p, _) in _PARSED.items()}
    columns = {c: raw[_DISPLAY[c]].str.strip().astype("str") for c in _TEXT}
    typed = pd.DataFrame(
        {
            **columns,
            **{c: values for c, (values, _) in parsed.items()},
            "app_key": columns["app"].map(app_key).astype("str"),
            "type": _type(raw["Type"]),
            "source_file": pd.Series([source_file] * len(raw), index=raw.index, dtype="str"),
            "source_row": pd.Series(source_row, index=raw.index, dtype="int64"),
        },
        columns=TYPED_COLUMNS,
    )
    return typed, {c: bad for c, (_, bad) in parsed.items()}


# pandera check -> reason; {value} is the parsed value, {raw} the field as written.
_SCHEMA_REASONS = {
    "not_nullable": "missing (empty field)",
    E_EMPTY: "empty",
    E_RATING: "{value} is outside 1..5",
    E_NEGATIVE: "{value} is negative",
    E_TYPE: "{raw} is not Free or Paid",
}


def _schema_message(column: str, check: str, value: object, raw_value: str) -> str:
    shown = repr(value) if isinstance(value, float) else repr(str(value))
    reason = _SCHEMA_REASONS.get(check, "{raw} fails {check}")
    return f"{_DISPLAY.get(column, column)}: " + reason.format(
        value=shown, raw=repr(raw_value), check=check
    )


def _validate(
    raw: pd.DataFrame, source_file: str, source_row: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse then schema-check; split into valid typed rows and quarantined raw rows."""
    raw = raw.reset_index(drop=True)
    typed, bad = _parse(raw, source_file, source_row)
    problems: list[tuple[int, int, str]] = []  # (row position, column order, message)
    flagged: set[tuple[int, str]] = set()
    order = {name: i for i, name in enumerate(TYPED_COLUMNS)}
    for column, mask in bad.items():
        raw_column = raw[_DISPLAY[column]]
        for pos in np.flatnonzero(mask.to_numpy()):
            flagged.add((int(pos), column))
            message = f"{_DISPLAY[column]}: {raw_column.iat[pos]!r} {_PARSED[column][1]}"
            problems.append((int(pos), order[column], message))

    for pos, column, check, value in schema_failures(typed, source_file):
        if (pos, column) in flagged:
            continue  # already explained by the parser, with the raw value
        raw_value = raw[_DISPLAY[column]].iat[pos] if column in _DISPLAY else ""
        message = _schema_message(column, check, value, raw_value)
        problems.append((pos, order.get(column, len(order)), message))

    reasons: dict[int, list[str]] = {}
    for pos, _, message in sorted(problems, key=lambda p: (p[0], p[1])):
        if message not in reasons.setdefault(pos, []):
            reasons[pos].append(message)
    rejected = np.zeros(len(raw), dtype=bool)
    rejected[list(reasons)] = True

    apps = typed.loc[~rejected].reset_index(drop=True)
    quarantine = raw.loc[rejected].copy()
    quarantine.insert(0, "reason", ["; ".join(reasons[p]) for p in np.flatnonzero(rejected)])
    quarantine.insert(0, "source_row", source_row[rejected])
    quarantine.insert(0, "source_file", source_file)
    return apps, quarantine.reset_index(drop=True)[QUARANTINE_COLUMNS]


def _fix_quarantine_types(quarantine: pd.DataFrame) -> pd.DataFrame:
    out = quarantine.reset_index(drop=True)
    out["source_row"] = out["source_row"].astype("int64")
    for column in QUARANTINE_COLUMNS:
        if column != "source_row":
            out[column] = out[column].fillna("").astype("str")
    return out[QUARANTINE_COLUMNS]


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The non-empty parts (one per file) together, else the first: empty, typed and named."""
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)


# --------------------------------------------------------------------------------------------
# writing


def write_quarantine(quarantine: pd.DataFrame, path: str | Path) -> Path:
    """Write the quarantine CSV atomically; header-only when empty so a reviewer sees 'none'."""
    path = Path(path)
    frame = quarantine if len(quarantine.columns) else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    with atomic_open(path, newline="") as out:
        frame.to_csv(out, index=False)
    logger.info("quarantine: %d row(s) written to %s", len(frame), path)
    return path
