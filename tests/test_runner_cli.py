"""runner.py as a user types it: bad configuration stops at start with exit 2 and the key's path,
before anything is written; --help lists every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def runner(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "runner.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("canary_analysis.min_request=5", "canary_analysis.min_request"),
        ("canary_analysis={min_requests: 5, max_p99_ms: fast}", "canary_analysis.max_p99_ms"),
        ("serving_port=eighty", "serving_port"),
        ("cv_folds=1", "cv_folds"),
        ("monitoring.min_feedbak=3", "monitoring.min_feedbak"),
    ],
)
def test_a_bad_key_or_value_fails_at_start_naming_its_path(
    project: Path, setting: str, path: str
) -> None:
    done = runner(project, "--set", setting)
    assert done.returncode == 2, done.stderr
    assert path in done.stderr and "Traceback" not in done.stderr
    written = {p.name for p in project.iterdir()}
    assert not {"mlflow.db", "mlruns", "predictions.db"} & written
    assert list((project / "reports").iterdir()) == [] and list((project / "data").iterdir()) == []


def test_an_unknown_nested_key_in_the_file_names_the_file(project: Path) -> None:
    text = (project / "pipeline.yaml").read_text()
    (project / "pipeline.yaml").write_text(text + "\ncanary_analysis:\n  min_request: 5\n")
    done = runner(project, "status")
    assert done.returncode == 2
    assert "pipeline.yaml" in done.stderr and "canary_analysis.min_request" in done.stderr


def test_help_lists_every_command(project: Path) -> None:
    done = runner(project, "--help")
    assert done.returncode == 0
    for command in ("serve", "status", "rollback", "approve", "reject", "notify", "backtest"):
        assert command in done.stdout
