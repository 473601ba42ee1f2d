"""Is a path a usable CSV data source? Checks that name the file and what is wrong in one line
(not found and the likely intended name, a directory, a spreadsheet, 0 bytes, unreadable, not
UTF-8), before any row is parsed. `lib.pipeline.data` reads the rows."""

from __future__ import annotations

import csv
import difflib
from pathlib import Path
from typing import IO

from lib.errors import DataError

# Suffixes of formats that are not CSV text: named as such instead of failing to decode.
NOT_CSV_SUFFIXES = (
    ".xlsx", ".xls", ".xlsm", ".ods", ".parquet", ".feather", ".json", ".jsonl", ".pkl",
    ".pickle", ".gz", ".zip", ".bz2", ".xz", ".7z", ".db", ".sqlite",
)  # fmt: skip


def open_csv(path: Path) -> IO[str]:
    """The file as UTF-8 text (a byte-order mark is skipped); DataError when it cannot be read."""
    try:
        return path.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def _near(path: Path) -> str:
    """A hint for a path that does not exist: its missing folder, or a file with a close name."""
    folder = path.parent
    if not folder.is_dir():
        return f" (no directory {folder})"
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f" (did you mean {folder / close[0]}?)" if close else ""


def check_file(path: str | Path) -> Path:
    """The path names a non-empty regular file that is not another format: else one line
    naming it and what is wrong (not found, a directory, a spreadsheet, 0 bytes)."""
    path = Path(path)
    if path.is_dir():
        csvs = sorted(p.name for p in path.glob("*.csv"))
        inside = f"CSV files in it: {', '.join(csvs[:3])}" if csvs else "it holds no .csv file"
        raise DataError(f"{path}: is a directory, not a CSV file ({inside})")
    if not path.exists():
        raise DataError(f"{path}: file not found{_near(path)}")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if path.suffix.lower() in NOT_CSV_SUFFIXES:
        raise DataError(
            f"{path}: not a CSV file ({path.suffix}); export it as a UTF-8 CSV with the "
            "Play Store header"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    return path


def read_header(path: Path) -> tuple[list[str], bool]:
    """The column names of the first record, stripped, and whether a non-blank record follows
    (read only up to it)."""
    with open_csv(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, [])
            return [name.strip() for name in header], any(fields for fields in reader)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
