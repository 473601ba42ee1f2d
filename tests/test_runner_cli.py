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


@pytest.mark.component
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


@pytest.mark.component
def test_an_unknown_nested_key_in_the_file_names_the_file(project: Path) -> None:
    text = (project / "pipeline.yaml").read_text()
    (project / "pipeline.yaml").write_text(text + "\ncanary_analysis:\n  min_request: 5\n")
    done = runner(project, "status")
    assert done.returncode == 2
    assert "pipeline.yaml" in done.stderr and "canary_analysis.min_request" in done.stderr


@pytest.mark.component
def test_help_lists_every_command(project: Path) -> None:
    done = runner(project, "--help")
    assert done.returncode == 0
    for command in (
        "serve",
        "status",
        "rollback",
        "approve",
        "reject",
        "deploy",
        "notify",
        "backtest",
        "store-recover",
    ):
        assert command in done.stdout


# --- the data a run reads: generated only for the untouched default path ---------------------

HEADER = "App,Category,Rating,Reviews,Size,Installs,Type,Price,Content Rating,Genres,Last Updated,Current Ver,Android Ver\n"  # noqa: E501


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def nothing_started(project: Path) -> None:
    written = {p.name for p in project.iterdir()}
    assert not {"mlflow.db", "mlruns", "predictions.db"} & written
    assert list((project / "data").iterdir()) == [] and list((project / "models").iterdir()) == []


@pytest.mark.component
def test_a_data_path_that_does_not_exist_is_an_error_not_generated_data(
    project: Path, tmp_path: Path
) -> None:
    absent = tmp_path / "nowhere" / "apps.csv"
    line = one_error_line(runner(project, "--data", str(absent)))
    assert str(absent) in line and "not found" in line
    assert not absent.parent.exists()
    nothing_started(project)


@pytest.mark.component
@pytest.mark.parametrize(
    "how",
    ["--set", "env", "file"],
)
def test_every_way_of_naming_the_data_is_checked(project: Path, how: str) -> None:
    import os

    args, env = [], dict(os.environ)
    if how == "--set":
        args = ["--set", "data_path=data/typo.csv"]
    elif how == "env":
        env["PIPELINE_DATA_PATH"] = "data/typo.csv"
    else:
        text = (project / "pipeline.yaml").read_text()
        text = text.replace("data_path: data/googleplaystore_clean.csv", "data_path: data/typo.csv")
        (project / "pipeline.yaml").write_text(text)
    done = subprocess.run(
        [sys.executable, "runner.py", *args], cwd=project, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = one_error_line(done)
    assert "typo.csv" in line and "not found" in line
    nothing_started(project)


@pytest.mark.component
def test_the_default_path_named_on_the_command_line_is_not_generated(project: Path) -> None:
    line = one_error_line(runner(project, "--data", "data/googleplaystore_clean.csv"))
    assert "googleplaystore_clean.csv" in line and "not found" in line
    nothing_started(project)


@pytest.mark.component
def test_a_relative_data_path_is_relative_to_the_working_directory(project: Path) -> None:
    here = project.parent / "elsewhere"
    here.mkdir()
    (here / "apps.csv").write_text(HEADER)  # what the user means: unusable (no rows)
    (project / "apps.csv").write_text(HEADER)  # the project root's namesake
    done = subprocess.run(
        [sys.executable, str(project / "runner.py"), "--data", "apps.csv"],
        cwd=here, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = one_error_line(done)
    assert f"{here / 'apps.csv'}: no rows" in line


@pytest.mark.component
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (HEADER, r"apps\.csv: no rows"),
        ("", r"apps\.csv: empty file \(0 bytes\)"),
        (None, r"data: is a directory, not a CSV file"),
    ],
    ids=["header-only", "zero-bytes", "directory"],
)
def test_unusable_data_is_one_line_and_exit_2(project: Path, content, expected) -> None:
    import re

    target = "data"
    if content is not None:
        (project / "data" / "apps.csv").write_text(content)
        target = "data/apps.csv"
    line = one_error_line(runner(project, "--data", target))
    assert re.search(expected, line), line
    assert not {"mlflow.db", "mlruns"} & {p.name for p in project.iterdir()}


@pytest.mark.component
def test_all_rows_quarantined_is_exit_2_with_the_quarantine_written(project: Path) -> None:
    rows = "".join(
        f"App {i},GAME,high,1,1M,1+,Free,0,Everyone,,2018-01-0{i + 1},,\n" for i in range(4)
    )
    (project / "data" / "apps.csv").write_text(HEADER + rows)
    line = one_error_line(runner(project, "--data", "data/apps.csv", "--run-id", "r1"))
    assert "apps.csv: none of its 4 rows is valid" in line and "quarantine.csv" in line
    quarantine = project / "reports" / "r1" / "quarantine.csv"
    assert len(quarantine.read_text().splitlines()) == 5  # header + every row with its reason
    assert not {"mlflow.db", "mlruns"} & {p.name for p in project.iterdir()}


@pytest.mark.component
def test_a_config_file_is_relative_to_the_working_directory(project: Path) -> None:
    here = project.parent / "elsewhere-config"
    here.mkdir()
    (here / "mine.yaml").write_text("cv_folds: 1\n")  # what the user means: invalid
    done = subprocess.run(
        [sys.executable, str(project / "runner.py"), "--config", "mine.yaml", "status"],
        cwd=here, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "mine.yaml" in done.stderr and "cv_folds" in done.stderr


@pytest.mark.component
def test_simulate_new_apps_never_creates_a_user_named_file(project: Path, tmp_path: Path) -> None:
    absent = tmp_path / "typo" / "apps.csv"
    line = one_error_line(runner(project, "--data", str(absent), "simulate-new-apps", "--n", "5"))
    assert str(absent) in line and "not found" in line
    assert not absent.parent.exists()


@pytest.mark.component
def test_backtest_with_a_missing_file_is_an_error_not_a_fallback(
    project: Path, tmp_path: Path
) -> None:
    absent = tmp_path / "raw.csv"
    line = one_error_line(runner(project, "backtest", "--data", str(absent)))
    assert str(absent) in line and "not found" in line
    assert not list((project / "reports").glob("backtest-*"))


# --- a registry outage inside a notebook stage (issue 15) -------------------------------------


@pytest.mark.e2e  # one kernel
def test_a_registry_outage_in_05_deploy_exits_4_on_one_line(project: Path) -> None:
    """The kernel's RegistryUnavailable reaches the CLI as its documented exit 4, not the 1 of
    any failed stage, with the outage's message on one line."""
    import nbformat

    from lib.pipeline.contracts import STAGES

    path = project / "notebooks" / f"{STAGES['deploy'].notebook}.ipynb"
    book = nbformat.read(path, as_version=4)
    (params,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    outage = ("http://127.0.0.1:5000", "looking up playstore-rating@champion", "connection refused")
    body = f"from lib.errors import RegistryUnavailable\n\nraise RegistryUnavailable(*{outage!r})\n"
    book.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(book, path)
    done = runner(project, "--stages", "deploy", "--set", "synth_apps=300", "--run-id", "r1")
    assert done.returncode == 4, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: stage deploy failed: cell "), lines[0]
    assert (
        "RegistryUnavailable: MLflow registry at http://127.0.0.1:5000 is unavailable while "
        "looking up playstore-rating@champion: connection refused" in lines[0]
    ), lines[0]
    assert (project / "reports" / "r1" / "05_deploy.ipynb").exists()  # the record is kept
