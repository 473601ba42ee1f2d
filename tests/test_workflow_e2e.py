"""The workflow's own commands, run locally (issue 19): the `run:` scripts of the jobs of
.github/workflows/ml-pipeline.yml, their `env:` filled in by a tiny evaluator of `${{ vars.* /
secrets.* / inputs.* / needs.*.outputs.* / steps.*.outputs.* / github.* }}`, run with bash as
GitHub runs them, against a local `mlflow server` (basic auth, as production) and a running model
service. Each job runs in a project copy of its own, as on a fresh GitHub runner: production
lives only in the server, the service and the prediction store.

In order: the pipeline job decides `auto` and the deploy job deploys it (the first champion); the
pipeline job decides `manual` (forced through PIPELINE_DECISION, a config variable) and parks the
candidate in the registry's tags; the dispatch job approves it from a SECOND fresh copy that has
no models/ (the state comes from the registry); the dispatch job rolls it back. The job summary
and the job outputs come from the real runs (decision, score, every reason)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lib import registry
from lib.delivery.service_process import ServiceProcess
from lib.pipeline import synth
from lib.watch import run_summary
from tests.support.deploy import make_runner_project
from tests.support.mlflow_server import MlflowServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ml-pipeline.yml"
NAME = "playstore-rating"  # pipeline.yaml's model_name
USER, PASSWORD = "ci-admin", "Ci-s3cret-7e1f00d"
TOKEN = "ci-admin-token-0123456789"
# small and quick: two folds, one model family, two short canary steps judged on labels
FAST = {
    "PIPELINE_CV_FOLDS": "2",
    "PIPELINE_CANDIDATES": '["logistic_regression"]',
    "PIPELINE_SMOKE_ROWS": "20",
    "PIPELINE_CANARY_STEPS": "[50, 100]",
    "PIPELINE_ANALYSIS_SECONDS": "1",
    "PIPELINE_CHECK_EVERY_SECONDS": "0.5",
    "PIPELINE_MAX_WAIT_SECONDS": "120",
    "PIPELINE_REPLAY_RATE": "150",
    "PIPELINE_REPLAY_LABEL_SHARE": "1.0",
    "PIPELINE_REPLAY_LABEL_DELAY_SECONDS": "[0, 0]",
    "PIPELINE_LEASE_SECONDS": "60",
    "PIPELINE_CANARY_ANALYSIS": '{"min_requests": 40, "min_feedback": 30, "alpha": 0.01, '
    '"p99_floor_ms": 150, "max_p99_ms": 1500}',
    "PIPELINE_PROGRESS": "0",
}
AUTO = '{"gate": {"enabled": false}, "verdicts": {"auto": -1000, "manual": -2000}}'
MANUAL = '{"gate": {"enabled": false}, "verdicts": {"auto": 1000, "manual": -1000}}'

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
PATH_EXPRESSION = re.compile(r"[a-z_]+(\.[A-Za-z0-9_-]+)+")


def evaluate(text: Any, context: dict[str, Any]) -> str:
    """`${{ a.b.c }}` replaced by context[a][b][c] ('' when absent, as GitHub does); anything
    beyond a dotted path is not ours to evaluate: the test says so."""

    def one(match: re.Match[str]) -> str:
        path = match.group(1)
        assert PATH_EXPRESSION.fullmatch(path), f"expression not supported here: {path!r}"
        value: Any = context
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return str(value).lower()
        return "" if value is None else str(value)

    return EXPRESSION.sub(one, str(text))


@dataclass
class Job:
    """What one job left: its steps' exit codes, outputs, and the job summary it wrote."""

    codes: dict[str, int] = field(default_factory=dict)
    steps: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    stdout: str = ""


@dataclass
class Production:
    home: Path
    mlflow: MlflowServer
    service: ServiceProcess
    data: Path
    store_url: str
    workflow: dict[str, Any]
    bin_dir: Path

    def client(self) -> Any:
        return registry.client_for(self.mlflow.url)

    def champion(self) -> str | None:
        return registry.alias_version(self.client(), NAME, "champion")

    def served(self) -> str:
        health = httpx.get(f"{self.service.url}/health", timeout=10).json()
        return str((health.get("champion") or {}).get("version"))

    def context(self, inputs: dict[str, Any], needs: dict[str, Any]) -> dict[str, Any]:
        return {
            "vars": {
                "MLFLOW_TRACKING_URI": self.mlflow.url,
                "SERVING_URL": self.service.url,
                "PIPELINE_DATA": str(self.data),
                "PIPELINE_STORE_URL": self.store_url,
            },
            "secrets": {
                "MLFLOW_TRACKING_USERNAME": USER,
                "MLFLOW_TRACKING_PASSWORD": PASSWORD,
                "SERVING_ADMIN_TOKEN": TOKEN,
            },
            "inputs": inputs,
            "needs": {job: {"outputs": outputs} for job, outputs in needs.items()},
            "github": {"run_id": "4242", "run_attempt": "1", "actor": "octo-operator"},
        }

    def run_job(
        self,
        name: str,
        project: Path,
        run_id: str,
        inputs: dict[str, Any] | None = None,
        needs: dict[str, dict[str, str]] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Job:
        """The job's `run:` steps in order, as a runner would: a failed step skips the next
        ones except `if: always()`; `uses:` steps (checkout, setup-python, cache, upload) and
        the dependency install are the runner's, not the project's."""
        job_def = self.workflow["jobs"][name]
        context = self.context(inputs or {}, needs or {})
        temp = self.home / f"runner-{name}-{run_id}"
        temp.mkdir()
        summary = temp / "step_summary.md"
        summary.touch()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "PIPELINE_", "GITHUB_", "SERVING_"))
            and k != "PYTHONPATH"
        }
        env.update(
            {
                "PATH": f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
                "GITHUB_RUN_ID": run_id,
                "GITHUB_RUN_ATTEMPT": "1",
                "GITHUB_ACTOR": "octo-operator",
                "GITHUB_REPOSITORY": "acme/playstore",
                "GITHUB_SERVER_URL": "https://github.com",
                "GITHUB_STEP_SUMMARY": str(summary),
                "RUNNER_TEMP": str(temp),
                "CI": "true",
                "GITHUB_ACTIONS": "true",
                **FAST,
                **(extra_env or {}),
            }
        )
        for scope in (self.workflow.get("env") or {}, job_def.get("env") or {}):
            env.update({k: evaluate(v, context) for k, v in scope.items()})
        job, failed = Job(), False
        context["steps"] = job.steps
        for i, step in enumerate(job_def["steps"]):
            if "run" not in step or step["run"].startswith("pip install"):
                continue
            condition = step.get("if")
            assert condition in (None, "always()"), f"{name}: condition not evaluated: {condition}"
            if failed and condition is None:
                continue
            output = temp / f"output-{i}"
            output.touch()
            step_env = {**env, "GITHUB_OUTPUT": str(output)}
            step_env.update({k: evaluate(v, context) for k, v in (step.get("env") or {}).items()})
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                cwd=project, env=step_env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            key = step.get("id") or step.get("name", str(i))
            job.codes[key] = done.returncode
            job.stdout += done.stdout + done.stderr
            lines = output.read_text().splitlines()
            job.steps[key] = {"outputs": dict(line.split("=", 1) for line in lines if "=" in line)}
            failed = failed or done.returncode != 0
        job.outputs = {k: evaluate(v, context) for k, v in (job_def.get("outputs") or {}).items()}
        job.summary = summary.read_text()
        return job


def _project(home: Path, name: str) -> Path:
    """A fresh checkout: the code and pipeline.yaml, nothing of any earlier run."""
    project = home / name
    project.mkdir()
    make_runner_project(project)
    return project


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    home = tmp_path_factory.mktemp("workflow")
    # `python` in the scripts: this interpreter's environment, as setup-python gives one
    bin_dir = Path(sys.executable).parent
    data = home / "apps.csv"
    synth.write_default_dataset(data, n=800, seed=19)
    store_url = f"sqlite:///{home / 'predictions.db'}"
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    server = MlflowServer(home / "mlflow", auth=(USER, PASSWORD))
    service = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", USER)  # the service's own credentials
        patch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        try:
            server.start()
            serving = _project(home, "serving")  # the service's machine: no registry, no data
            service = ServiceProcess(
                serving, NAME, server.url, store_url, admin_token=TOKEN,
                log_path=home / "service.log", models_dir=serving / "models",
                extra_args=["--routing-poll-seconds", "0.5", "--registry-check-seconds", "2"],
            ).start()  # fmt: skip
            yield Production(home, server, service, data, store_url, workflow, bin_dir)
        finally:
            if service is not None:
                service.stop()
            server.stop()


def _decided(project: Path, run_id: str) -> dict[str, Any]:
    report = json.loads((project / "reports" / run_id / "report.json").read_text())
    (decide,) = [s for s in report["stages"] if s["name"] == "decide"]
    return decide["outputs"]


def _actions(project: Path) -> list[dict[str, Any]]:
    return json.loads((project / "reports" / "operator_actions.json").read_text())


@pytest.mark.timeout(1800)  # about 2 min on an idle machine; a loaded one is many times slower
def test_manual_decision_approved_then_rolled_back_through_the_workflow(
    production: Production,
) -> None:
    prod = production
    first = _project(prod.home, "checkout-1")
    run = {"action": "run", "force_retrain": True}

    # push: the pipeline job decides `auto`; the deploy job deploys it (the first champion)
    pipeline = prod.run_job("pipeline", first, "101", run, extra_env={"PIPELINE_DECISION": AUTO})
    assert set(pipeline.codes.values()) == {0}, pipeline.stdout
    assert pipeline.outputs["decision"] == "auto", pipeline.stdout
    v1 = pipeline.outputs["version"]
    deploy = prod.run_job("deploy", _project(prod.home, "checkout-deploy"), "101",
                          needs={"pipeline": pipeline.outputs})  # fmt: skip
    assert set(deploy.codes.values()) == {0}, deploy.stdout
    assert prod.champion() == v1

    # the next push: `manual`; the job ends at the decision, the candidate parked in the registry
    pipeline = prod.run_job("pipeline", first, "102", run, extra_env={"PIPELINE_DECISION": MANUAL})
    assert set(pipeline.codes.values()) == {0}, pipeline.stdout
    decided = _decided(first, "gh-102-1-pipeline")
    v2 = decided["candidate_version"]
    assert pipeline.outputs == {"decision": "manual", "version": v2, "outcome": "awaiting_approval"}
    # the job summary is the real run's: its decision, score and every reason in full
    assert "manual" in pipeline.summary and str(decided["score"]) in pipeline.summary
    for reason in decided["reasons"]:  # whole, as markdown writes it (`[`, `*`... escaped)
        assert run_summary.md(reason) in pipeline.summary
    assert "::warning title=Awaiting approval::" in pipeline.stdout
    tags = registry.version_tags(prod.client(), NAME, v2)
    assert tags["approval"] == "pending" and tags["approval.run_id"] == "gh-102-1-pipeline"
    assert prod.champion() == v1

    # "Run workflow" approve, on a fresh runner: no models/, the parked rollout from the registry
    second = _project(prod.home, "checkout-2")
    approve = {"action": "approve", "version": v2, "reason": ""}
    operator = prod.run_job("operator", second, "103", approve)
    assert set(operator.codes.values()) == {0}, operator.stdout
    assert prod.champion() == v2
    assert prod.served() == v2  # the running service, not one the job started
    tags = registry.version_tags(prod.client(), NAME, v2)
    assert tags["approval"] == "approved" and tags["approval.by"] == "octo-operator"
    (action,) = _actions(second)
    assert (action["action"], action["version"], action["result"]) == ("approve", v2, "done")
    assert action["by"] == "octo-operator"
    assert action["workflow_run"] == "https://github.com/acme/playstore/actions/runs/103"
    assert action["run_id"] == "gh-103-1-operator"
    assert "Operator action: approve by octo-operator" in operator.summary

    # "Run workflow" rollback, from that checkout: the first champion is back everywhere
    back = {"action": "rollback", "version": "", "reason": "reviewers saw a drop"}
    operator = prod.run_job("operator", second, "104", back)
    assert set(operator.codes.values()) == {0}, operator.stdout
    assert prod.champion() == v1 and prod.served() == v1
    rollback = _actions(second)[-1]
    assert (rollback["action"], rollback["version"], rollback["champion"]) == ("rollback", v2, v1)
    assert rollback["reason"] == "reviewers saw a drop"
    assert "rolled back" in operator.summary and "reviewers saw a drop" in operator.summary
