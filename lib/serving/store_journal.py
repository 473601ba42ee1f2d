"""The prediction store's write-ahead journal: answered predictions that a kill -9 must not lose.

`submit` appends each row (a length-prefixed record) to this process's flock-ed segment before
the service answers: one `os.write`, no fsync, so the kernel keeps it when the process dies (not
when the machine does). Segments are emptied once their rows are in the database. The next
`PredictionStore` opened on the database replays the segments whose lock is free (their process
is gone). Records are pickles (JSON costs several times more on the request path) read back by
an unpickler that resolves only float/int/str/bool: a journal file cannot make it run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import struct
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from lib import settings
from lib.errors import ConfigError
from lib.serving.store_rows import clean_prediction

try:
    import fcntl
except ImportError:  # not POSIX: no journal (PredictionStore runs without one)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SUFFIX = ".journal"
_LENGTH = struct.Struct("<I")  # each record: its length, then the pickle
# Past this size a new segment is started: under steady load the open one never empties, and
# a replay re-reads at most this much of rows already written.
SEGMENT_BYTES = 1 << 20
JOURNAL_DIR_ENV = "SERVING_JOURNAL_DIR"
MACHINE_DIR = ".prediction-journal"  # in the project, for a store on a database server


def available() -> bool:
    return fcntl is not None


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL given as a path; None for other databases, in-memory
    SQLite and `file:` URIs (where the journal and the read-only reader cannot find it)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return None if database.startswith("file:") else Path(database).expanduser().absolute()


def default_dir(url: str, root: Path | None = None) -> Path | None:
    """Where the journal of the store at `url` lives: SERVING_JOURNAL_DIR when set; else
    `<database file>.pending/` beside a SQLite file, and for a server database (PostgreSQL)
    `<project>/.prediction-journal/<database>/`: one folder per machine and database, so a
    replica's segments are replayed by the next store opened on that machine (another replica
    starting, the restarted one, `runner.py store-recover`), never into another database.
    None for in-memory SQLite, or when no project is found (then say where: the variable)."""
    configured = os.environ.get(JOURNAL_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().absolute()
    path = sqlite_file(url)
    if path is not None:
        return path.with_name(path.name + ".pending")
    if make_url(url).get_backend_name() == "sqlite":
        return None
    try:
        base = root or settings.project_root()
    except ConfigError as exc:
        logger.warning("prediction store: no journal (%s; set %s)", exc, JOURNAL_DIR_ENV)
        return None
    return base / MACHINE_DIR / database_key(url)


def database_key(url: str) -> str:
    """A folder name for a database: readable, and unique per server, database and user (a
    digest of the URL without its password)."""
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    digest = hashlib.sha256(shown.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{parsed.get_backend_name()}-{parsed.database or ''}")
    return f"{name}-{digest}"


_PLAIN_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


class _Pickler(pickle.Pickler):
    """Pickles plain values only: anything else (numpy scalars, dates, ...) as its plain value
    or its text, so that the restricted unpickler can read every record back."""

    def reducer_override(self, obj: Any) -> Any:
        # not called for exact None/bool/int/float/str/bytes/dict/list/tuple (pickled natively)
        value = obj
        if hasattr(obj, "item"):  # numpy scalars
            with contextlib.suppress(Exception):
                value = obj.item()
        if value is None:
            return float, ("nan",)  # stored as null
        if type(value) not in (float, int, str, bool):
            value = str(value)
        return type(value), (value,)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _PLAIN_TYPES:
            return _PLAIN_TYPES[name]
        raise pickle.UnpicklingError(f"journal record refers to {module}.{name}")


def encode(rows: list[dict[str, Any]]) -> bytes:
    """Rows as journal records, as they were submitted (this runs on the request path: the
    writer thread and the replay clean the rows)."""
    buffer = io.BytesIO()
    for row in rows:
        try:
            data = _dumps(row)
        except Exception:  # a cycle, an object that cannot be pickled: the clean row always can
            data = _dumps(clean_prediction(row))
        buffer.write(_LENGTH.pack(len(data)))
        buffer.write(data)
    return buffer.getvalue()


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5).dump(value)
    return buffer.getvalue()


class Journal:
    """This process's segments in `directory` (not thread-safe: called under the queue's lock).
    Rows are numbered in submit order; a segment goes once every row up to its end is done."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._bytes = 0
        self._closed: deque[tuple[int, Path, int]] = deque()  # (end sequence, path, fd)
        self._count = 0
        self.broken = False

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.directory / f"{os.getpid()}-{time.time_ns()}-{self._count}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: nobody else holds it
        self._fd, self._path, self._bytes = fd, path, 0

    def append(self, data: bytes, end: int) -> None:
        """Write the lines of rows numbered up to `end` (exclusive). A failing disk disables
        the journal (logged) instead of failing the request."""
        if self.broken or not data:
            return
        try:
            if self._fd is None:
                self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._bytes += len(data)
            if self._bytes >= self.segment_bytes:
                self._closed.append((end, self._path, self._fd))
                self._fd, self._path, self._bytes = None, None, 0
        except OSError:
            self.broken = True
            logger.exception(
                "prediction store journal in %s failed: answered rows are no longer protected "
                "against a crash of the service",
                self.directory,
            )

    def park(self, data: bytes) -> None:
        """Rows the database kept failing on: a segment of their own that no process holds,
        for the next store opened on the database to write. Written whole, then renamed, so a
        replay never sees half of it. Thread-safe (touches no state of the journal)."""
        if self.broken or not data:
            return
        name = f"{os.getpid()}-{time.time_ns()}-parked"
        temporary = self.directory / f".{name}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(data)
            os.replace(temporary, self.directory / f"{name}{SUFFIX}")
        except OSError:
            logger.exception("prediction store journal: failed rows not kept in %s", self.directory)

    def release(self, done: int, idle: bool) -> None:
        """Every row numbered below `done` is done: drop the segments that hold only such rows;
        `idle` (nothing pending at all) empties the open segment too."""
        while self._closed and self._closed[0][0] <= done:
            _end, path, fd = self._closed.popleft()
            discard(path, fd)
        if idle and self._fd is not None and self._bytes:
            try:
                os.ftruncate(self._fd, 0)
                self._bytes = 0
            except OSError:
                logger.exception("prediction store journal: could not empty %s", self._path)

    def close(self, complete: bool) -> None:
        """Release the locks; `complete` (every row is done) also deletes the segments, else
        they stay for the next store opened on the database to replay."""
        segments = [(p, fd) for _end, p, fd in self._closed]
        if self._fd is not None:
            segments.append((self._path, self._fd))
        self._closed.clear()
        self._fd, self._path = None, None
        for path, fd in segments:
            if complete:
                discard(path, fd)
            else:
                os.close(fd)


def discard(path: Path, fd: int) -> None:
    """Delete a segment, then release its lock."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def orphans(directory: Path) -> Iterator[tuple[Path, int]]:
    """Segments of processes that are gone, each locked for the caller: (path, open fd), to
    replay then `discard` (or close the fd to leave it for later)."""
    if fcntl is None or not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # replayed and deleted by another process meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its process is alive and writing it
            os.close(fd)
            continue
        if not path.exists():  # deleted between our open and our lock
            os.close(fd)
            continue
        yield path, fd


def read(fd: int) -> tuple[list[dict[str, Any]], int]:
    """The rows of a segment, and how many records could not be read (a torn last write; a
    damaged record ends the reading, as the records after it cannot be found)."""
    with os.fdopen(fd, "rb", closefd=False) as file:  # (a fresh fd: read from the start)
        data = file.read()
    rows: list[dict[str, Any]] = []
    torn = 0
    position = 0
    while position < len(data):
        start = position + _LENGTH.size
        end = start + (_LENGTH.unpack_from(data, position)[0] if start <= len(data) else 0)
        if start > len(data) or end > len(data):
            return rows, torn + 1
        try:
            row = _Unpickler(io.BytesIO(data[start:end])).load()
        except Exception:
            return rows, torn + 1
        if isinstance(row, dict) and row.get("request_id") is not None:
            rows.append(row)
        else:
            torn += 1
        position = end
    return rows, torn
