"""Shared fixtures: small generated data, real data location, an isolated project copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data" / "playstore"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Play Store files; CI has them (read-only), so their absence is a failure there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code in tmp_path: runs there never touch the real reports/models."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("lib", "notebooks"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("runner.py", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, root / name)
    for name in ("data", "models", "reports"):
        (root / name).mkdir()
    return root
