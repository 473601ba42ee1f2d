"""Shared fixtures: small generated data, real data location, an isolated project copy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
# ../shared/data/playstore beside the project; PLAYSTORE_DATA points elsewhere if needed.
SHARED_DATA = Path(os.environ.get("PLAYSTORE_DATA", PROJECT.parent / "shared/data/playstore"))


def require_shared_data() -> Path:
    """The real Play Store files. On a developer machine without them the tests are skipped; in
    CI (CI=true) they must be there, so their absence fails instead of silently skipping, unless
    the run declares it by design with PLAYSTORE_DATA_ABSENT=<reason> (the GitHub pull-request
    job, where nothing provides them): then they skip with that reason."""
    if not SHARED_DATA.is_dir():
        message = f"real data not found at {SHARED_DATA} (set PLAYSTORE_DATA)"
        by_design = os.environ.get("PLAYSTORE_DATA_ABSENT", "").strip()
        if by_design:
            pytest.skip(f"{message}; absent by design: {by_design}")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture(autouse=True)
def no_inherited_mlflow_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow exports the URI it was last pointed at to the environment (mlflow.set_tracking_uri
    sets MLFLOW_TRACKING_URI): every test starts without it, so a run never lands in an earlier
    test's store. Tests that want a server set it themselves."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code in tmp_path: runs there never touch the real reports/models.

    (`no_inherited_mlflow_uri` keeps it on its own mlflow.db.)
    """
    root = tmp_path / "project"
    root.mkdir()
    for name in ("lib", "notebooks"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("runner.py", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, root / name)
    for name in ("data", "models", "reports"):
        (root / name).mkdir()
    return root


TIERS = ("unit", "component", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Exactly one tier per test: an unmarked test is `unit`; `component` and `e2e` are marked on
    the module (pytestmark) or the test. A test marked with two tiers fails the collection."""
    doubled = []
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(tiers) > 1:
            doubled.append(f"{item.nodeid}: {', '.join(sorted(tiers))}")
        elif not tiers:
            item.add_marker(pytest.mark.unit)
    if doubled:
        raise pytest.UsageError(
            "tests with more than one tier (unit, component, e2e; mark exactly one):\n  "
            + "\n  ".join(doubled)
        )
