"""The project installed without ``-e`` (issue 16): `python runner.py` and the service, run from
the project directory, write mlflow.db, predictions.db, models/ and reports/ there and nothing
where lib is installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lib.delivery.service_process import free_port

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[1]
SMALL = [
    "synth_apps=1500",
    "cv_folds=3",
    "candidates=[logistic_regression]",
    "features=[engagement, versions, genres]",
    "calibration=[]",
]


def files_under(path: Path) -> set[str]:
    """Every file below `path` except bytecode caches (Python's, not the project's)."""
    return {
        str(p.relative_to(path))
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """`pip install .` (not editable) of a copy of the project into tmp_path/site."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copytree(PROJECT / "lib", source / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT / name, source / name)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return site


def test_runner_and_service_write_in_the_project_not_in_site_packages(
    installed: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"  # the user's directory: the runner, notebooks, the config
    project.mkdir()
    shutil.copytree(PROJECT / "notebooks", project / "notebooks")
    for name in ("runner.py", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, project / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_ROOT", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(installed), PIPELINE_PROGRESS="0", PYTHONDONTWRITEBYTECODE="1")
    # lib comes from the install, not from this checkout (an editable install or the tests' path)
    where = subprocess.run(
        [sys.executable, "-c", "import lib; print(lib.__file__)"],
        cwd=project, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    before = files_under(installed)

    sets = [arg for item in SMALL for arg in ("--set", item)]
    run = subprocess.run(
        [sys.executable, "runner.py", "--stages", "detect,train,compare,decide", *sets],
        cwd=project, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

    # the service with its defaults only: the store and the registry of the working directory
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "lib.serving", "--port", str(port), "--log-level", "WARNING",
         "--registry-start-seconds", "5", "--registry-check-seconds", "0"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        answered = False
        for _ in range(300):
            if service.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    answered = True
            except urllib.error.HTTPError:
                answered = True  # up, though without a champion
            except OSError:
                time.sleep(0.3)
                continue
            break
        if answered:  # feedback for an unknown id: the store opens its tables, then says 404
            feedback = urllib.request.Request(
                f"http://127.0.0.1:{port}/feedback",
                data=json.dumps({"request_id": "nobody", "rating": 4.5}).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {os.environ['SERVING_FEEDBACK_TOKEN']}",
                },
            )
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(feedback, timeout=30)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGTERM)
        output = service.communicate(timeout=60)[0].decode(errors="replace")
    assert answered, output

    for name in ("mlflow.db", "predictions.db"):
        assert (project / name).is_file(), f"{name} not in the project"
    assert (project / "models" / "candidate" / "MLmodel").is_file()
    assert (project / "models" / "training_state.json").is_file()
    assert list((project / "reports").glob("report_*.json"))
    assert files_under(installed) == before, "written where lib is installed"
