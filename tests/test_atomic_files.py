"""lib.atomic_files: a reader sees the old or the new file, never half, and no stray temporary."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lib.atomic_files import (
    STAGING_PREFIX,
    atomic_open,
    copy_dir_atomic,
    replace_dir,
    write_json_atomic,
    write_text_atomic,
)


def test_write_text_replaces_the_file_and_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "page.html"
    write_text_atomic(target, "old")
    assert write_text_atomic(target, "new") == target
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["page.html"]


def test_a_failure_while_writing_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_permissions_are_applied_and_default_to_owner_only(tmp_path: Path) -> None:
    served = write_text_atomic(tmp_path / "index.html", "x", permissions=0o644)
    private = write_text_atomic(tmp_path / "state.json", "x")
    assert stat.S_IMODE(served.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_write_json_writes_indented_json_and_strings_for_unknown_types(tmp_path: Path) -> None:
    target = write_json_atomic(tmp_path / "d.json", {"path": tmp_path, "n": 1})
    assert json.loads(target.read_text()) == {"path": str(tmp_path), "n": 1}
    assert target.read_text().startswith('{\n  "path"')
    compact = write_json_atomic(tmp_path / "c.json", [1, 2], indent=None)
    assert compact.read_text() == "[1, 2]"


def test_copy_dir_into_place_replaces_the_target_after_prepare(tmp_path: Path) -> None:
    source = tmp_path / "kept" / "v3"
    source.mkdir(parents=True)
    (source / "model.bin").write_text("v3 weights")
    target = tmp_path / "production"
    target.mkdir()
    (target / "model.bin").write_text("v4 weights")
    (target / "stale.txt").write_text("only in v4")

    def prepare(staged: Path) -> None:
        assert staged.name == f"{STAGING_PREFIX}production"
        assert not (staged / "stale.txt").exists() and (target / "stale.txt").exists()
        (staged / "deployment.json").write_text('{"version": "3"}')

    copy_dir_atomic(source, target, prepare)
    assert sorted(p.name for p in target.iterdir()) == ["deployment.json", "model.bin"]
    assert (target / "model.bin").read_text() == "v3 weights"
    assert (source / "model.bin").exists() and not (source / "deployment.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "production"]


def test_copy_dir_clears_a_leftover_of_an_interrupted_copy(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_text("a")
    leftover = tmp_path / f"{STAGING_PREFIX}dst"
    leftover.mkdir()
    (leftover / "junk").write_text("half a copy")
    copy_dir_atomic(source, tmp_path / "dst")
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["a"]
    assert not leftover.exists()


def test_replace_dir_swaps_in_the_staged_directory(tmp_path: Path) -> None:
    staged, target = tmp_path / ".new", tmp_path / "live"
    staged.mkdir()
    (staged / "f").write_text("new")
    target.mkdir()
    (target / "f").write_text("old")
    replace_dir(staged, target)
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]
