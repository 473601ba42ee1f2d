"""The runner's control flow, run in-process (no kernels): what each stage is given, where a
run stops, what it records and notifies. One test trains for real on small generated data; the
others replace stage functions to reach every branch quickly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.config import load_config
from lib.delivery import rollout
from lib.errors import StageError
from lib.pipeline import contracts as c
from lib.pipeline.executors import InProcessExecutor
from lib.pipeline.orchestrator import RunContext, inputs_for, run
from lib.pipeline.run_record import RunOutputs

# Whole runs in-process: stages train real models on generated data.
pytestmark = pytest.mark.component

SMALL = {
    "synth_apps": 800,
    "cv_folds": 2,
    "candidates": ["logistic_regression"],
    "features": ["engagement"],
    "calibration": [],
}


def detect(should_train: bool = True):
    def fn(inputs: c.DetectInputs, root: Path) -> c.DetectOutputs:
        return c.DetectOutputs(
            new_apps=150, updated_apps=0, total_apps=900, should_train=should_train,
            reason="150 new apps >= 100" if should_train else "3 new apps < 100",
            quarantined_rows=0,
        )  # fmt: skip

    return fn


def train(inputs: c.TrainInputs, root: Path) -> c.TrainOutputs:
    return c.TrainOutputs(
        candidate_version="7", candidate_name="logistic_regression",
        metrics={"roc_auc": 0.8, "accuracy": 0.75}, cv_std=0.01, mlflow_run_id="r",
        parent_run_id="p", holdout_digest="d", candidates={}, label_threshold=0.5,
        calibration="none",
    )  # fmt: skip


def compare(inputs: c.CompareInputs, root: Path) -> c.CompareOutputs:
    interval = {"estimate": 0.03, "low": 0.01, "high": 0.05, "n": 400, "method": "bootstrap"}
    return c.CompareOutputs(
        candidate_version=inputs.candidate_version or "?", champion_version=None,
        reference_label="majority-class baseline", candidate_metrics={}, champion_metrics=None,
        improvement=0.03, candidate_value=0.8, stability={"cv_mean": 0.8, "cv_std": 0.01},
        improvement_interval=interval, candidate_interval=interval, gate_inputs={},
        comparison={},
    )  # fmt: skip


def decide(verdict: str, seen: list | None = None):
    def fn(inputs: c.DecideInputs, root: Path) -> c.DecideOutputs:
        if seen is not None:
            seen.append(inputs)
        return c.DecideOutputs(
            candidate_version=inputs.candidate_version or "?", score=55, decision=verdict,
            reasons=[f"because {verdict}"], decision_detail={},
        )  # fmt: skip

    return fn


def failing(inputs: c.Contract, root: Path) -> c.Contract:
    raise RuntimeError("the data server went away")


DECIDING = ["detect", "train", "compare", "decide"]


def project(tmp_path: Path, **overrides):
    root = tmp_path / "project"
    root.mkdir(parents=True)
    (root / "runner.py").write_text("")
    return root, load_config(root, None, {**SMALL, **overrides})


def test_a_real_run_in_process_trains_compares_and_decides(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)
    stages = ["detect", "train", "compare", "decide"]
    result = run(cfg, root, stages, executor=InProcessExecutor(root))
    decided = result.outputs["decide"]
    assert decided.candidate_version == result.outputs["train"].candidate_version
    assert decided.decision in {"auto", "manual", "reject"} and decided.reasons
    # the verdict is acted upon without 05 deploy too: parked or rejected, else just decided
    acted = {"auto": "decided", "manual": "awaiting_approval", "reject": "rejected"}
    assert result.outcome == acted[decided.decision] and result.exit_code == 0
    report = json.loads((result.report_dir / "report.json").read_text())
    assert report["results"]["decision"] == decided.decision
    assert [s["name"] for s in report["stages"]] == ["detect", "train", "compare", "decide"]
    assert report["stages"][3]["outputs"]["score"] == decided.score


def test_compare_evidence_reaches_decide_exactly(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)
    seen: list = []
    fns = {"detect": detect(), "train": train, "compare": compare, "decide": decide("auto", seen)}
    run(cfg, root, ["detect", "train", "compare", "decide"], executor=InProcessExecutor(root, fns))
    (inputs,) = seen
    assert inputs.candidate_version == "7" and inputs.parent_run_id == "p"
    assert inputs.improvement_interval["low"] == 0.01 and inputs.cv_std == 0.01


def test_nothing_new_stops_after_detect(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)
    fns = {"detect": detect(False), "train": failing}
    result = run(cfg, root, executor=InProcessExecutor(root, fns))
    assert result.outcome == "no_training" and [s.name for s in result.stages] == ["detect"]


def test_manual_parks_the_rollout_and_deploy_does_not_run(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)
    fns = {"detect": detect(), "train": train, "compare": compare, "decide": decide("manual"),
           "deploy": failing}  # fmt: skip
    result = run(cfg, root, executor=InProcessExecutor(root, fns))
    assert result.outcome == "awaiting_approval" and result.exit_code == 0
    state = rollout.RolloutStore(root / "models" / "rollout.json").load()
    assert state.phase == rollout.Phase.AWAITING_APPROVAL and state.candidate_version == "7"


def test_reject_is_logged_and_production_untouched(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)
    fns = {"detect": detect(), "train": train, "compare": compare, "decide": decide("reject"),
           "deploy": failing}  # fmt: skip
    result = run(cfg, root, executor=InProcessExecutor(root, fns))
    assert result.outcome == "rejected"
    assert "rejected" in (root / "logs" / "deployment.log").read_text()
    assert not (root / "models" / "production").exists()


def test_a_failed_stage_fails_the_run_with_its_record(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)
    fns = {"detect": detect(), "train": failing}
    with pytest.raises(StageError, match="data server went away") as info:
        run(cfg, root, executor=InProcessExecutor(root, fns))
    assert info.value.exit_code == 1
    report = json.loads(next((root / "reports").glob("*/report.json")).read_text())
    assert report["outcome"] == "failed" and report["stages"][-1]["status"] == "failed"


OUTAGE = ("http://127.0.0.1:5000", "looking up playstore-rating@champion", "connection refused")


@pytest.mark.parametrize("stage", ["train", "decide"])
def test_a_registry_outage_in_a_stage_fails_the_run_with_exit_4(tmp_path: Path, stage: str) -> None:
    """The documented exit code of a registry outage, not 1, and its one-line message."""
    from lib.errors import RegistryUnavailable

    def outage(inputs: c.Contract, root: Path) -> c.Contract:
        raise RegistryUnavailable(*OUTAGE)

    root, cfg = project(tmp_path)
    fns = {"detect": detect(), "train": train, "compare": compare, "decide": decide("auto")}
    fns[stage] = outage
    with pytest.raises(StageError) as info:
        run(cfg, root, DECIDING, executor=InProcessExecutor(root, fns))
    assert info.value.exit_code == RegistryUnavailable.exit_code == 4
    assert info.value.result.exit_code == 4  # type: ignore[attr-defined]
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"stage {stage} failed: RegistryUnavailable")
    assert "MLflow registry at http://127.0.0.1:5000 is unavailable while looking up " in message
    assert "playstore-rating@champion: connection refused" in message


def test_outputs_that_break_the_contract_fail_the_stage(tmp_path: Path) -> None:
    root, cfg = project(tmp_path)

    def sloppy(inputs: c.DetectInputs, root: Path) -> dict:
        return {"new_apps": 3, "should_train": True}  # reason, totals... missing

    with pytest.raises(StageError, match="outputs break the contract.*reason"):
        run(cfg, root, ["detect"], executor=InProcessExecutor(root, {"detect": sloppy}))


def test_serving_port_reaches_the_stages_that_talk_to_the_service(tmp_path: Path) -> None:
    root, cfg = project(tmp_path, serving_port=9191)
    ctx = RunContext("r", root, root / "reports" / "r", "sqlite:///x.db")
    monitor = inputs_for("monitor", cfg, ctx, RunOutputs())
    assert monitor.serving_url == "http://127.0.0.1:9191"
    deploy = inputs_for("deploy", cfg, ctx, RunOutputs())
    assert deploy.serving_url is None  # the stage starts (and stops) its own instance
    root2, cfg2 = project(tmp_path / "b", serving_url="http://127.0.0.1:7000")
    assert inputs_for("monitor", cfg2, ctx, RunOutputs()).serving_url == "http://127.0.0.1:7000"
    assert inputs_for("deploy", cfg2, ctx, RunOutputs()).serving_url == "http://127.0.0.1:7000"


@pytest.mark.parametrize(
    ("outcome", "event"),
    [("promoted", "deployed"), ("rolled_back", "rolled_back"), ("superseded", None)],
)
def test_a_recovery_is_notified_as_what_it_did(outcome: str, event: str | None) -> None:
    """A finished interrupted promotion is a deployment, not a rollback; a rollout an operator
    superseded was notified when the operator acted."""
    from lib.delivery.rollout_end import Recovery
    from lib.pipeline.run_record import RunResults, notifications

    recovery = Recovery(outcome, "4", "4" if outcome == "promoted" else "3", f"recovery: {outcome}")
    events = notifications(RunOutputs(), "no_training", "reports/r/report.json", recovery)
    assert [e for e, _ in events] == ([event] if event else [])
    if event:
        assert events[0][1]["version"] == "4"
    assert RunResults.collect(RunOutputs(), recovery).recovered["outcome"] == outcome


# --- a decision acted upon whatever stages run (issue 15) -------------------------------------


def test_manual_without_the_deploy_stage_parks_and_approve_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--stages detect,train,compare,decide` with a `manual` verdict parks the rollout, so
    `runner.py approve 7` finds it (it said "not awaiting approval" before)."""
    import argparse

    from lib import commands
    from lib.delivery import operations

    root, cfg = project(tmp_path)
    fns = {"detect": detect(), "train": train, "compare": compare, "decide": decide("manual")}
    result = run(cfg, root, DECIDING, executor=InProcessExecutor(root, fns))
    assert result.outcome == "awaiting_approval" and result.exit_code == 0
    assert operations.awaiting_version(root / "models") == "7"
    assert "awaiting_approval" in (root / "logs" / "deployment.log").read_text()

    deployed: list[str | None] = []

    def deploy(inputs: c.DeployInputs, root: Path) -> c.DeployOutputs:
        deployed.append(inputs.candidate_version)
        return c.DeployOutputs(
            outcome="promoted", deployed_version=inputs.candidate_version or "?",
            champion_before=None, rollback_reason=None, timeline=[], steps=[],
        )  # fmt: skip

    def in_process(*args, **kwargs):  # approve's run, without kernels or a service
        return run(*args, **kwargs, executor=InProcessExecutor(root, {"deploy": deploy}))

    monkeypatch.setattr(commands, "run", in_process)
    code = commands.cmd_approve(cfg, root, argparse.Namespace(version="7"), lambda msg: None)
    assert code == 0 and deployed == ["7"]


def test_reject_without_the_deploy_stage_is_logged_and_auto_only_decides(tmp_path: Path) -> None:
    """A `reject` is logged whatever stages run; an `auto` verdict without 05 deploy deploys
    nothing and parks nothing."""
    root, cfg = project(tmp_path / "reject")
    fns = {"detect": detect(), "train": train, "compare": compare, "decide": decide("reject")}
    result = run(cfg, root, DECIDING, executor=InProcessExecutor(root, fns))
    assert result.outcome == "rejected" and result.exit_code == 0
    assert "rejected" in (root / "logs" / "deployment.log").read_text()
    assert not (root / "models" / "rollout.json").exists()

    root, cfg = project(tmp_path / "auto")
    fns = {**fns, "decide": decide("auto")}
    result = run(cfg, root, DECIDING, executor=InProcessExecutor(root, fns))
    assert result.outcome == "decided" and result.exit_code == 0
    assert not (root / "models" / "rollout.json").exists()
    assert not (root / "models" / "production").exists()
