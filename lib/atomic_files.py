"""Files and directories replaced in one step: a reader sees the old or the new, never half.

Written under a hidden temporary name in the same directory (a rename is atomic only within one
file system), fsynced, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

STAGING_PREFIX = ".tmp-"  # a directory copy is built under this hidden name beside its target


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX only; elsewhere the open fails and is skipped)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_open(
    path: str | Path, *, newline: str | None = None, permissions: int | None = None
) -> Iterator[IO[str]]:
    """A text handle whose content replaces `path` only when the block ends without error;
    `permissions` (0o644 for a served page) replaces the temporary file's owner-only mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if permissions is not None:
            os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str, *, permissions: int | None = None) -> Path:
    """Replace `path` by `text` in one step."""
    with atomic_open(path, permissions=permissions) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """Replace `path` by `data` as JSON in one step; unknown types are written as strings."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=indent, default=str)
    return Path(path)


def replace_dir(staged: str | Path, target: str | Path) -> None:
    """Replace the directory `target` by `staged` (built beside it) with renames, the old one
    moved to a hidden `.<name>.old` first and removed last."""
    staged, target = Path(staged), Path(target)
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)  # a crashed swap's leftover
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)


def copy_dir_atomic(
    source: str | Path, target: str | Path, prepare: Callable[[Path], None] | None = None
) -> Path:
    """Copy the directory `source` into place as `target` (replacing it) in one step, built under
    a hidden name (a leftover marks an interrupted copy); `prepare` may edit it before the swap."""
    target = Path(target)
    staged = target.parent / f"{STAGING_PREFIX}{target.name}"
    shutil.rmtree(staged, ignore_errors=True)  # an interrupted copy
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staged)
    if prepare is not None:
        prepare(staged)
    replace_dir(staged, target)
    return target
