"""The prediction store's write-ahead journal: answered predictions that a kill -9 must not lose.

`PredictionStore.submit` appends each row, as one JSON line, to this process's journal segment
before the service answers: one `os.write`, no fsync. The kernel keeps what was written when
the process dies (kill -9, OOM kill, crash), not when the machine does (power loss, kernel
panic). The writer thread empties the segment whenever every row in it is in the database, so
the journal holds only what is not written yet.

Each segment is locked (flock) by the process writing it. A store opened on the same database
later (the restarted service, or any reader) replays the segments whose lock is free, i.e. of
processes that are gone, inserts the rows not in the database yet, and deletes the segments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from lib.serving.store_rows import clean_prediction

try:
    import fcntl
except ImportError:  # not POSIX: no journal (PredictionStore runs without one)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
SEGMENT_BYTES = 8 * 1024 * 1024  # under a steady backlog, start a new segment past this size


def available() -> bool:
    return fcntl is not None


def default_dir(url: str) -> Path | None:
    """`<database file>.pending/` beside a SQLite file; None for in-memory and other databases
    (give PredictionStore a journal_dir for those)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    path = Path(database).expanduser().absolute()
    return path.with_name(path.name + ".pending")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars, else text


def encode(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSON lines, as they were submitted (one C-level dump each: this runs on the
    request path). NaN and odd text are written as they are; the replay cleans the rows."""
    return b"".join(_line(row) for row in rows)


_ENCODER = json.JSONEncoder(default=_plain, separators=(",", ":"))  # built once: hot path


def _line(row: dict[str, Any]) -> bytes:
    try:
        text = _ENCODER.encode(row)
    except (TypeError, ValueError):  # odd keys, a cycle: the clean row always encodes
        text = json.dumps(clean_prediction(row), default=str, separators=(",", ":"))
    return text.encode() + b"\n"


class Journal:
    """This process's segments in `directory`. Not thread-safe: the store calls it under its lock.

    Rows are numbered in submit order (the store's sequence); a segment can go once every row
    up to its end is done (written, refused or given up on).
    """

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
            _remove(path, fd)
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
                _remove(path, fd)
            else:
                os.close(fd)


def _remove(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def orphans(directory: Path) -> Iterator[tuple[Path, int]]:
    """Segments of processes that are gone, each locked for the caller: (path, open fd).

    The caller replays it, then `discard`s it (or closes the fd to leave it for later).
    """
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
    """The rows of a segment, and how many lines could not be read (a torn last write)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    rows: list[dict[str, Any]] = []
    torn = 0
    for line in b"".join(chunks).split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if isinstance(row, dict) and row.get("request_id") is not None:
            rows.append(row)
        else:
            torn += 1
    return rows, torn


def discard(path: Path, fd: int) -> None:
    """A replayed segment: delete it, then release its lock."""
    _remove(path, fd)
