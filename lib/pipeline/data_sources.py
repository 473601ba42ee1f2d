"""Where the apps come from: a local CSV, an HTTP(S) CSV or a database table or query. Checks
name the source and what is wrong in one line (not found and the likely intended name, a
directory, a spreadsheet, 0 bytes, not UTF-8, an HTTP status, an HTML page, a missing table), a URL
always without its credentials. `lib.pipeline.data` validates the rows of every kind alike."""

from __future__ import annotations

import base64
import csv
import difflib
import io
from contextlib import closing
from pathlib import Path
from typing import IO

import httpx
import sqlalchemy as sa

from lib.config import is_url, redact_source, redact_url
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
    naming it and what is wrong (not found, a directory, a spreadsheet, 0 bytes, a URL)."""
    if is_url(path):
        raise DataError(f"{source_name(path)}: a URL, not a local file")
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


# --- sources that are not files: an HTTP(S) CSV, a database table or query ----------------------
#
# A database source is one string, an SQLAlchemy URL whose fragment names what to read:
# ``postgresql://user@host/db#table=apps`` (or ``#table=schema.apps``) or
# ``sqlite:///apps.db#query=SELECT * FROM apps WHERE ...``. One string, unlike separate config keys,
# is usable as it is with ``--data`` and in a list of sources, and the fragment is never sent to
# the database driver. A query may hold commas: `lib.config.data_paths` keeps it whole.

MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024  # cap of an HTTP(S) CSV; read_apps(max_bytes=) sets it
HTTP_TIMEOUT_S = 30.0


def source_name(source: str | Path) -> str:
    """How a source is shown in logs, messages and reports: a file by its name, a URL without
    its credentials (``user:password@`` and token-like query parameters become ``***``)."""
    if not is_url(source):
        return Path(source).name
    return redact_source(str(source))


def _get(url: str, transport: httpx.HTTPTransport) -> httpx.Response:
    """GET through the transport itself, following up to 5 redirects: httpx's client would log
    the full URL, credentials and token included. ``user:password@`` becomes Basic auth."""
    for _ in range(6):
        target = httpx.URL(url)
        headers = {}
        if target.username:
            pair = f"{target.username}:{target.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        timeout = httpx.Timeout(HTTP_TIMEOUT_S).as_dict()
        request = httpx.Request("GET", target, headers=headers, extensions={"timeout": timeout})
        answer = transport.handle_request(request)
        if answer.status_code not in (301, 302, 303, 307, 308) or "location" not in answer.headers:
            return answer
        answer.close()
        url = str(target.join(answer.headers["location"]))
    raise DataError(f"{source_name(url)}: too many redirects")


def fetch_csv(url: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> str:
    """The text of an HTTP(S) CSV, streamed with a size cap; one-line DataErrors naming the
    redacted URL for a bad status, no connection, a body over the cap, or an HTML page."""
    name = source_name(url)
    chunks: list[bytes] = []
    size = 0
    try:
        with httpx.HTTPTransport() as transport, closing(_get(url, transport)) as answer:
            if answer.status_code != 200:
                raise DataError(f"{name}: HTTP {answer.status_code} {answer.reason_phrase}")
            if "html" in answer.headers.get("content-type", "").lower():
                raise DataError(f"{name}: an HTML page, not a CSV file")
            for chunk in answer.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DataError(f"{name}: larger than the {max_bytes} bytes allowed")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise DataError(f"{name}: cannot download ({_why(exc)})") from None
    try:
        text = b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not a UTF-8 CSV file ({exc.reason})") from None
    if text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        raise DataError(f"{name}: an HTML page, not a CSV file")
    if not text.strip():
        raise DataError(f"{name}: empty (0 bytes)")
    return text


def _why(exc: httpx.HTTPError) -> str:
    """The cause of a failed download in a few words (never the URL: it may hold credentials)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "TLS certificate not trusted; a private CA's file goes in SSL_CERT_FILE"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {HTTP_TIMEOUT_S:g} s"
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    return type(exc).__name__


def csv_records(text: str, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (1-based data-row number, fields) of every non-blank record of CSV text."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [field.strip() for field in next(reader, [])]
        rows = [(number, fields) for number, fields in enumerate(reader, start=1) if fields]
    except csv.Error as exc:
        raise DataError(f"{name}: not a readable CSV file ({exc})") from None
    return header, rows


def split_db_url(url: str) -> tuple[str, str, str]:
    """(URL for the driver, ``table`` or ``query``, its value) of a database source."""
    base, _, fragment = url.partition("#")
    kind, sep, value = fragment.partition("=")
    if not sep or kind.strip() not in ("table", "query") or not value.strip():
        raise DataError(
            f"{source_name(url)}: a database source names a table or a query after '#', "
            "e.g. postgresql://user@host/db#table=apps or sqlite:///apps.db#query=SELECT ..."
        )
    return base, kind.strip(), value.strip()


def read_db(url: str) -> tuple[list[str], list[tuple[int, list[object]]]]:
    """The column names and (row number, values) of a table or query, read with SQLAlchemy Core
    in a transaction that is rolled back (read-only on PostgreSQL); DataErrors name the
    missing table, a failed query or the connection, never the credentials."""
    name = source_name(url)
    base, kind, value = split_db_url(url)
    try:
        engine = sa.create_engine(base)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DataError(f"{name}: not a usable database URL ({redact_url(str(exc))})") from None
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(postgresql_readonly=True)
            if kind == "table":
                schema, _, table_name = value.rpartition(".")
                table = sa.Table(
                    table_name, sa.MetaData(), schema=schema or None, autoload_with=conn
                )
                result = conn.execute(sa.select(table))
            else:
                result = conn.execute(sa.text(value))
            header = [str(column) for column in result.keys()]
            rows = [(number, list(row)) for number, row in enumerate(result, start=1)]
    except sa.exc.NoSuchTableError:
        raise DataError(f"{name}: no table {value!r} in the database") from None
    except sa.exc.DBAPIError as exc:
        first = redact_url(str(exc.orig or exc)).strip().splitlines()[0]
        raise DataError(f"{name}: cannot read the {kind} ({first})") from None
    finally:
        engine.dispose()
    return header, rows
