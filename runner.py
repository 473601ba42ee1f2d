"""Run the pipeline's notebooks in order with Papermill and keep the record of every run.

    python runner.py                       # detect -> train -> compare -> decide -> deploy
    python runner.py --force-retrain       # train whatever the new-app count
    python runner.py --stages train,compare --set cv_folds=3
    python runner.py simulate-new-apps --n 150
    python runner.py serve                 # the model service (champion + canary)
    python runner.py status | rollback [--reason TEXT] | approve V | reject V

Each stage's executed notebook and its HTML land in reports/<run-id>/, with report.json, the run's
summary. Values travel between stages as scraps only. 05 deploy runs only after an `auto`
decision (or `approve`). Exit codes: 0 done (nothing to do, deployed, rolled back automatically,
awaiting approval or rejected: see the summary), 1 a stage failed, 2 a known error (bad data,
bad config, nothing to roll back), 3 another runner is busy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib.config import STAGES, PipelineConfig, load_config, parse_set_options
from lib.errors import PipelineError, RunnerBusyError, StageError

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = {
    "detect": "01_detect",
    "train": "02_train",
    "compare": "03_compare",
    "decide": "04_decide",
    "deploy": "05_deploy",
    "monitor": "06_monitor",
    "backtest": "07_backtest",  # not a pipeline stage: `python runner.py backtest`
}
log = logging.getLogger("runner")


@dataclass
class StageResult:
    name: str
    status: str  # "ok" | "failed"
    seconds: float
    notebook: str
    html: str | None
    parameters: dict[str, Any]
    scraps: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunResult:
    run_id: str
    report_dir: Path
    outcome: str  # "no_training" | "decided" | "completed" | "failed"
    stages: list[StageResult]
    summary: dict[str, Any]
    exit_code: int = 0

    @property
    def scraps(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for stage in self.stages:
            merged.update(stage.scraps)
        return merged


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _data_paths(cfg: PipelineConfig) -> list[str]:
    return [p.strip() for p in cfg.data_path.split(",") if p.strip()]


def _data_param(cfg: PipelineConfig) -> str | list[str]:
    paths = _data_paths(cfg)
    return paths[0] if len(paths) == 1 else paths


def stage_parameters(
    stage: str, cfg: PipelineConfig, ctx: dict[str, Any], root: Path, run_dir: Path, force: bool
) -> dict[str, Any]:
    """The parameters each notebook receives: config values, run paths and earlier scraps."""
    rel = os.path.relpath
    common = {"run_id": ctx["run_id"]}
    quarantine = rel(run_dir / "quarantine.csv", root)
    state = rel(root / cfg.models_dir / "training_state.json", root)
    mlflow_params = {
        "model_name": cfg.model_name,
        "experiment": cfg.experiment,
        "tracking_uri": ctx["tracking_uri"],
    }
    if stage == "detect":
        return {
            **common,
            "data_path": _data_param(cfg),
            "threshold": cfg.threshold,
            "force": force,
            "state_path": state,
            "quarantine_path": quarantine,
            "synth_apps": cfg.synth_apps,
            "synth_seed": cfg.synth_seed,
        }
    if stage == "train":
        return {
            **common,
            **mlflow_params,
            "data_path": _data_param(cfg),
            "target_threshold": cfg.target_threshold,
            "candidates": list(cfg.candidates),
            "cv_folds": cfg.cv_folds,
            "test_size": cfg.test_size,
            "seed": cfg.seed,
            "rf_trees": cfg.rf_trees,
            "model_seed": cfg.model_seed,
            "features": list(cfg.features),
            "calibration": list(cfg.calibration),
            "label_objective": cfg.label_objective,
            "error_costs": dict(cfg.error_costs),
            "selection_metric": cfg.selection_metric,
            "models_dir": cfg.models_dir,
            "state_path": state,
            "quarantine_path": quarantine,
            "trigger": ctx.get("trigger", "manual"),
        }
    split = {
        "data_path": _data_param(cfg),
        "target_threshold": cfg.target_threshold,
        "test_size": cfg.test_size,
        "seed": cfg.seed,
    }
    if stage == "compare":
        return {
            **common,
            **mlflow_params,
            **split,
            "candidate_version": ctx.get("candidate_version"),
            "selection_metric": cfg.selection_metric,
            "holdout_digest": ctx.get("holdout_digest"),
            "parent_run_id": ctx.get("parent_run_id"),
        }
    if stage == "decide":
        stability = ctx.get("stability") or {}
        return {
            **common,
            **mlflow_params,
            **split,
            "candidate_version": ctx.get("candidate_version"),
            "improvement": ctx.get("improvement"),
            "candidate_value": ctx.get("candidate_value"),
            "improvement_interval": ctx.get("improvement_interval"),
            "candidate_interval": ctx.get("candidate_interval"),
            "gate_inputs": ctx.get("gate_inputs"),
            "cv_std": stability.get("cv_std"),
            "reference_label": ctx.get("reference_label"),
            "selection_metric": cfg.selection_metric,
            "decision_table": cfg.decision,
            "parent_run_id": ctx.get("parent_run_id"),
        }
    if stage == "deploy":
        return {
            **common,
            **mlflow_params,
            **split,
            "candidate_version": ctx.get("candidate_version"),
            "steps": list(cfg.canary_steps),
            "analysis_seconds": cfg.analysis_seconds,
            "max_wait_seconds": cfg.max_wait_seconds,
            "check_every_seconds": cfg.check_every_seconds,
            "replay_rate": cfg.replay_rate,
            "replay": cfg.replay,
            "smoke_rows": cfg.smoke_rows,
            "smoke_max_p95_ms": cfg.smoke_max_p95_ms,
            "lease_seconds": cfg.lease_seconds,
            "serving_url": cfg.serving_url,
            "store_url": cfg.resolved_store_url(root),
            "analysis": dict(cfg.canary_analysis),
            "models_dir": cfg.models_dir,
            "logs_dir": cfg.logs_dir,
        }
    if stage == "monitor":
        return {
            **common,
            **mlflow_params,
            **split,
            "window_seconds": cfg.monitor_window_seconds,
            "monitoring_config": dict(cfg.monitoring),
            "auto_rollback": cfg.auto_rollback,
            "serving_url": cfg.serving_url,
            "store_url": cfg.resolved_store_url(root),
            "models_dir": cfg.models_dir,
            "logs_dir": cfg.logs_dir,
        }
    raise ValueError(f"unknown stage {stage!r}")


def check_parameters(notebook: Path, params: dict[str, Any]) -> None:
    """Fail before running when the runner and the notebook disagree on parameter names."""
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    passed = set(params)
    missing, unknown = sorted(declared - passed), sorted(passed - declared)
    if missing or unknown:
        raise PipelineError(
            f"{notebook.name}: parameters out of step with the runner "
            f"(not passed: {missing or 'none'}; unknown to the notebook: {unknown or 'none'}). "
            "Add them to the notebook's `parameters` cell or to runner.stage_parameters."
        )


def render_html(notebook: Path) -> Path:
    """HTML beside the executed notebook, rendered in-process (a subprocess costs ~3 s)."""
    import warnings

    import nbformat
    from nbconvert import HTMLExporter

    with warnings.catch_warnings():  # scrapbook's own mimetype has no HTML form: expected
        warnings.filterwarnings("ignore", message=".*is not able to be represented")
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    html = notebook.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def execute_stage(
    stage: str,
    params: dict[str, Any],
    root: Path,
    run_dir: Path,
    timeout: int,
    kernels: Any = None,  # lib.pipeline.kernels.KernelPool
) -> StageResult:
    """Execute one notebook; the executed copy and its HTML are kept even when it fails.

    With `kernels`, the notebook runs in a fresh kernel that the pool started (and warmed up)
    while the previous stage ran, instead of one papermill starts cold; the pool shuts it down.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from lib.pipeline import scraps

    source = root / "notebooks" / f"{NOTEBOOKS[stage]}.ipynb"
    target = run_dir / source.name
    check_parameters(source, params)
    started = time.perf_counter()
    error: str | None = None
    km = None
    try:
        if kernels is not None:
            try:
                km = kernels.acquire()
            except Exception as exc:  # the pool only saves time: papermill can start a kernel
                log.warning("no pre-started kernel for %s (%s); starting one", stage, exc)
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=params,
            cwd=str(root),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
            km=km,  # None: papermill starts (and shuts down) a kernel itself
        )
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, timeout...: still a failed stage with a record
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if km is not None:
            kernels.release(km)
    seconds = time.perf_counter() - started
    html = None
    if target.exists():
        try:
            html = str(render_html(target))
        except Exception as exc:  # the .ipynb is the record; HTML is a convenience
            log.warning("could not render %s to HTML: %s", target.name, exc)
    values = scraps.read(target) if target.exists() and error is None else {}
    return StageResult(
        stage,
        "failed" if error else "ok",
        seconds,
        str(target),
        html,
        params,
        values,
        error,
    )


def _lock(root: Path, timeout: float) -> Any:
    """One runner per project: a second one waits `timeout` seconds, then says who holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(root / ".runner.lock"))
    holder_file = root / ".runner.lock.json"
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        holder = "another runner"
        try:
            info = json.loads(holder_file.read_text())
            holder = f"runner pid {info['pid']} (run {info['run_id']}, since {info['started']})"
        except (OSError, ValueError, KeyError):
            pass
        raise RunnerBusyError(
            f"{holder} is using this project; wait for it to finish or pass --wait SECONDS"
        ) from None
    return lock


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _trigger(force: bool) -> str:
    if force:
        return "forced"
    return {"schedule": "schedule", "push": "push", "workflow_dispatch": "manual"}.get(
        os.environ.get("GITHUB_EVENT_NAME", ""), "manual"
    )


def run(
    cfg: PipelineConfig,
    root: Path = ROOT,
    stages: list[str] | None = None,
    force: bool = False,
    run_id: str | None = None,
    echo: Any = None,
    kernel_pool: bool = True,
    context: dict[str, Any] | None = None,
) -> RunResult:
    """Run the pipeline and return its result; the CLI is a thin wrapper around this.

    `kernel_pool`: start each stage's kernel while the previous stage runs (pipeline/kernels.py).
    """
    from lib import registry
    from lib.pipeline import data, synth

    say = echo or (lambda msg: None)
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    run_id = run_id or new_run_id()
    run_dir = root / cfg.reports_dir / run_id
    lock = _lock(root, cfg.lock_timeout)
    try:
        (root / ".runner.lock.json").write_text(
            json.dumps(
                {"pid": os.getpid(), "run_id": run_id, "started": datetime.now(UTC).isoformat()}
            )
        )
        first = root / _data_paths(cfg)[0]
        if synth.ensure_dataset(first, n=cfg.synth_apps, seed=cfg.synth_seed):
            say(
                f"generated {cfg.synth_apps} apps into {os.path.relpath(first, root)} "
                "(no data found)"
            )
        for path in _data_paths(cfg):
            data.check_columns(root / path)  # missing columns stop here, before MLflow or models/
        run_dir.mkdir(parents=True, exist_ok=True)
        tracking_uri = cfg.resolved_tracking_uri(root)
        recovered = recover_rollout(cfg, root, tracking_uri)
        if recovered:
            say(f"recovered: {recovered}")
        ctx: dict[str, Any] = {**(context or {}), "run_id": run_id, "tracking_uri": tracking_uri}
        ctx["trigger"] = _trigger(force)
        if recovered:
            ctx["recovered"] = recovered
        started = datetime.now(UTC)
        say(f"run {run_id}: stages {', '.join(stages)}; MLflow {registry.redact_uri(tracking_uri)}")
        results: list[StageResult] = []
        outcome, exit_code, failure = "completed", 0, None
        from contextlib import nullcontext

        from lib.pipeline.kernels import KernelPool

        # one fresh kernel per stage; leaving the block shuts down any started ahead (no training,
        # a failure, Ctrl-C) and waits until every kernel process is gone
        pool = KernelPool(cwd=root, total=len(stages)) if kernel_pool else nullcontext()
        with pool as kernels:
            for i, stage in enumerate(stages, 1):
                tag = f"[{i}/{len(stages)}] {stage}"
                params = stage_parameters(stage, cfg, ctx, root, run_dir, force)
                if stage == "monitor" and not _has_champion(cfg, tracking_uri):
                    say(f"{tag} skipped: no champion in production yet, nothing to monitor")
                    continue
                say(f"{tag} ...")
                if kernels is not None:  # detect is short and may end the run: warm only the
                    # next kernel then, at full priority; later ones warm up in idle CPU time
                    kernels.ahead, kernels.idle = (1, False) if stage == "detect" else (2, True)
                result = execute_stage(stage, params, root, run_dir, cfg.stage_timeout, kernels)
                results.append(result)
                if result.status == "failed":
                    outcome, exit_code = "failed", 1
                    failure = StageError(stage, result.error or "unknown error", result.notebook)
                    say(f"{tag} FAILED after {result.seconds:.1f}s: {result.error}")
                    break
                ctx.update(result.scraps)
                say(f"{tag} ok ({result.seconds:.1f}s){_headline(stage, result.scraps)}")
                if stage == "detect" and not result.scraps.get("should_train", False):
                    outcome = "no_training"
                    say(f"stopping: {result.scraps.get('reason')}")
                    break
                if stage == "decide" and "deploy" in stages:  # a decision acted upon
                    gate = _after_decision(cfg, root, ctx, say)
                    if gate is not None:
                        outcome = gate
                        break
                if stage == "deploy":
                    outcome = ctx.get("outcome", "completed")
                    if outcome != "promoted":  # rolled back: production is the old champion
                        break
                if stage == "monitor":
                    outcome = (
                        "monitor_rolled_back"
                        if ctx.get("rolled_back")
                        else (outcome if outcome != "completed" else "monitored")
                    )
        if outcome == "completed" and stages[-1] == "decide":
            outcome = "decided"
        deliveries = notify_run(ctx, outcome, run_dir, root)
        summary = _summary(run_id, cfg, root, run_dir, started, results, outcome, ctx, failure)
        summary["notifications"] = deliveries
        _write_json(run_dir / "report.json", summary)
        _write_json(root / cfg.reports_dir / f"report_{run_id}.json", summary)
        _write_index(root / cfg.reports_dir)
        failed = [d for d in deliveries if not d["ok"]]
        if failed:
            say(
                f"{len(failed)} notification(s) failed (see report.json): "
                + ", ".join(d["target"] for d in failed)
            )
        say(f"report: {os.path.relpath(run_dir / 'report.json', root)}")
        run_result = RunResult(run_id, run_dir, outcome, results, summary, exit_code)
        if failure is not None:
            failure.result = run_result  # type: ignore[attr-defined]
            raise failure
        return run_result
    finally:
        (root / ".runner.lock.json").unlink(missing_ok=True)
        lock.release()


def _has_champion(cfg: PipelineConfig, tracking_uri: str) -> bool:
    from lib import registry

    client = registry.connect(tracking_uri, cfg.experiment)
    return registry.alias_version(client, cfg.model_name, "champion") is not None


def _write_index(reports_dir: Path) -> None:
    from lib.watch import report_index

    try:
        report_index.write_index(reports_dir)
    except Exception as exc:  # the index is a convenience; the run's own record is written
        log.warning("could not write %s/index.html: %s", reports_dir, exc)


def send(event: str, **fields: Any) -> list[dict[str, Any]]:
    """Notify every configured target; failures are returned, never raised."""
    from lib.watch import notify

    try:
        return [d.to_dict() for d in notify.notify(event, **fields)]
    except Exception as exc:  # a notification must never fail the pipeline
        return [{"kind": "all", "target": "notify", "ok": False, "error": notify.redact(str(exc))}]


def notify_run(
    ctx: dict[str, Any], outcome: str, run_dir: Path, root: Path
) -> list[dict[str, Any]]:
    """The events of one run: deployed, awaiting approval, rejected, rolled back, alert."""
    report = os.path.relpath(run_dir / "report.json", root)
    common = {
        "metrics": ctx.get("metrics") or ctx.get("candidate_metrics"),
        "improvement": ctx.get("improvement"),
        "report": report,
    }
    version = ctx.get("deployed_version") or ctx.get("candidate_version")
    out: list[dict[str, Any]] = []
    if ctx.get("recovered"):
        out += send("rolled_back", version=version, reason=ctx["recovered"], report=report)
    if outcome == "awaiting_approval":
        out += send(
            "awaiting_approval",
            version=version,
            **common,
            details={"score": ctx.get("score"), "decision": ctx.get("decision")},
        )
    elif outcome == "rejected":
        out += send(
            "rejected", version=version, **common, reason="; ".join(ctx.get("reasons") or [])
        )
    elif outcome == "rolled_back":
        out += send("rolled_back", version=version, **common, reason=ctx.get("rollback_reason"))
    elif ctx.get("outcome") == "promoted":
        out += send(
            "deployed",
            version=version,
            **common,
            details={"previous champion": ctx.get("champion_before")},
        )
    if ctx.get("rolled_back"):
        out += send(
            "rolled_back",
            version=ctx.get("monitored_version"),
            report=report,
            reason=f"monitor: {ctx.get('monitor_rollback_reason')}",
            metrics=ctx.get("live_metrics"),
        )
    elif ctx.get("alerts"):
        out += send(
            "alert",
            version=ctx.get("monitored_version"),
            report=report,
            metrics=ctx.get("live_metrics"),
            reason="; ".join(a["message"] for a in ctx["alerts"]),
        )
    return out


def recover_rollout(cfg: PipelineConfig, root: Path, tracking_uri: str) -> str | None:
    """A rollout whose runner died is finished (rolled back) before anything else happens."""
    from lib.delivery import rollout

    state = rollout.RolloutStore(root / cfg.models_dir / "rollout.json").load()
    if state is None or not rollout.interrupted(state):
        return None
    from lib import registry
    from lib.delivery import progressive as deployer

    client = registry.connect(tracking_uri, cfg.experiment)
    return deployer.recover_interrupted(
        root, client, cfg.model_name, root / cfg.models_dir, root / cfg.logs_dir
    )


def _after_decision(cfg: PipelineConfig, root: Path, ctx: dict[str, Any], say: Any) -> str | None:
    """`auto` goes on to 05 deploy; `manual` parks the rollout for approval; `reject` stops."""
    decision = ctx.get("decision")
    version = ctx.get("candidate_version")
    if decision == "auto":
        return None
    from lib.delivery import progressive as deployer
    from lib.delivery import releases as deployments

    reasons = "; ".join(ctx.get("reasons") or [])
    if decision == "manual":
        deployer.park_for_approval(
            root / cfg.models_dir,
            root / cfg.logs_dir,
            cfg.model_name,
            str(version),
            ctx.get("champion_version"),
            ctx["run_id"],
            f"score {ctx.get('score')}: {reasons}",
        )
        say(f"v{version} awaits approval: python runner.py approve {version} (or reject {version})")
        return "awaiting_approval"
    deployments.log_transition(
        root / cfg.logs_dir,
        "rejected",
        version=version,
        reason=f"score {ctx.get('score')}: {reasons}",
    )
    say(f"v{version} rejected by the decision (score {ctx.get('score')}); production unchanged")
    return "rejected"


def _headline(stage: str, s: dict[str, Any]) -> str:
    if stage == "detect":
        new, updated, total = s.get("new_apps"), s.get("updated_apps"), s.get("total_apps")
        return f": {new} new, {updated} updated of {total} apps"
    if stage == "train":
        m = s.get("metrics") or {}
        name = f"v{s.get('candidate_version')} {s.get('candidate_name')}"
        return (
            f": {name} roc_auc={m.get('roc_auc', 0):.4f} accuracy={m.get('accuracy', 0):.4f} "
            f"brier={m.get('brier', 0):.4f} threshold={s.get('label_threshold', 0.5):.3f}"
        )
    if stage == "compare":
        i = s.get("improvement_interval") or {}
        if i:
            return (
                f": improvement {i['estimate']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}] "
                f"vs {s.get('reference_label')} (n={i.get('n')})"
            )
        return f": improvement {s.get('improvement', 0):+.4f} vs {s.get('reference_label')}"
    if stage == "decide":
        return f": score {s.get('score')} -> {s.get('decision')}"
    if stage == "deploy":
        why = f" ({s.get('rollback_reason')})" if s.get("rollback_reason") else ""
        return f": v{s.get('deployed_version')} {s.get('outcome')}{why}"
    if stage == "monitor":
        state = "healthy" if s.get("healthy") else f"{len(s.get('alerts') or [])} alert(s)"
        return f": v{s.get('monitored_version')} {state}" + (
            f"; {s.get('rollback_note')}" if s.get("rollback_note") else ""
        )
    return ""


def _summary(
    run_id: str,
    cfg: PipelineConfig,
    root: Path,
    run_dir: Path,
    started: datetime,
    results: list[StageResult],
    outcome: str,
    ctx: dict[str, Any],
    failure: Exception | None,
) -> dict[str, Any]:
    from lib import registry

    keys = (
        "new_apps",
        "updated_apps",
        "total_apps",
        "should_train",
        "reason",
        "quarantined_rows",
        "candidate_version",
        "candidate_name",
        "metrics",
        "cv_std",
        "mlflow_run_id",
        "parent_run_id",
        "champion_version",
        "reference_label",
        "improvement",
        "improvement_interval",
        "gate_inputs",
        "label_threshold",
        "calibration",
        "comparison",
        "score",
        "decision",
        "reasons",
        "decision_detail",
        "deployed_version",
        "champion_before",
        "rollback_reason",
        "recovered",
        "healthy",
        "alerts",
        "drift",
        "rolled_back",
        "monitor_rollback_reason",
        "rollback_note",
        "monitored_version",
        "live_metrics",
    )
    quarantine = run_dir / "quarantine.csv"
    return {
        "run_id": run_id,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "trigger": ctx.get("trigger"),
        "outcome": outcome,
        "error": str(failure) if failure else None,
        "tracking_uri": registry.redact_uri(ctx["tracking_uri"]),
        "model_name": cfg.model_name,
        "quarantine_csv": os.path.relpath(quarantine, root) if quarantine.exists() else None,
        "results": {k: ctx[k] for k in keys if k in ctx},
        "stages": [
            {
                "name": r.name,
                "status": r.status,
                "seconds": round(r.seconds, 2),
                "notebook": os.path.relpath(r.notebook, root),
                "html": os.path.relpath(r.html, root) if r.html else None,
                "error": r.error,
                "scraps": r.scraps,
            }
            for r in results
        ],
    }


def simulate_new_apps(cfg: PipelineConfig, root: Path, n: int, seed: int | None) -> int:
    from lib.pipeline import synth

    path = root / _data_paths(cfg)[0]
    synth.ensure_dataset(path, n=cfg.synth_apps, seed=cfg.synth_seed)
    added = synth.append_new_apps(path, n=n, seed=seed)
    return len(added)


def _client(cfg: PipelineConfig, root: Path) -> Any:
    from lib import registry

    return registry.connect(cfg.resolved_tracking_uri(root), cfg.experiment)


def _service_url(cfg: PipelineConfig) -> str:
    from lib.delivery import progressive as deployer

    return deployer.service_url(cfg.serving_url, cfg.serving_host, cfg.serving_port)


def cmd_serve(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    """`python runner.py serve`: the production model service, until Ctrl-C."""
    from lib.serving import service as serving

    settings = serving.ServingSettings(
        model_name=cfg.model_name,
        tracking_uri=cfg.resolved_tracking_uri(root),
        store_url=cfg.resolved_store_url(root),
        target_threshold=cfg.target_threshold,
    )
    serving.serve(settings, host=args.host or cfg.serving_host, port=args.port or cfg.serving_port)
    return 0


def cmd_status(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    from lib.delivery import progressive as deployer

    info = deployer.status(
        _client(cfg, root), cfg.model_name, root / cfg.models_dir, _service_url(cfg)
    )
    aliases = info["aliases"]
    print(
        f"model {info['model']}: champion v{aliases['champion']}, previous v{aliases['previous']}, "
        f"candidate v{aliases['candidate']}, canary v{aliases['canary']}"
    )
    print(f"models/production: v{info['production_copy']}")
    ro = info["rollout"]
    if ro:
        flag = " (INTERRUPTED: the next run rolls it back)" if ro["interrupted"] else ""
        print(
            f"rollout {ro['id']}: v{ro['version']} {ro['phase']} at {ro['weight']}%{flag}"
            + (f" - {ro['reason']}" if ro["reason"] else "")
        )
    else:
        print("rollout: none")
    service = info["service"]
    if isinstance(service, dict):
        canary = service.get("canary") or {}
        print(
            f"service {_service_url(cfg)}: {service.get('status')}, champion "
            f"v{(service.get('champion') or {}).get('version')}, canary "
            f"v{canary.get('version')} at {canary.get('weight', 0)}%"
        )
    else:
        print(f"service: {service}")
    return 0


def cmd_rollback(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    """The mission's `deploy.py --rollback`: previous -> champion everywhere, within seconds."""
    from lib.delivery import progressive as deployer

    lock = _lock(root, cfg.lock_timeout)
    try:
        record = deployer.manual_rollback(
            _client(cfg, root),
            cfg.model_name,
            root / cfg.models_dir,
            root / cfg.logs_dir,
            args.reason,
            _service_url(cfg),
        )
    finally:
        lock.release()
    deliveries = send(
        "rolled_back",
        version=record.get("rolled_back_version"),
        reason=args.reason,
        details={"champion now": record.get("version")},
    )
    print(f"notifications: {sum(d['ok'] for d in deliveries)}/{len(deliveries)} delivered")
    print(
        f"rolled back: champion is v{record.get('version')} again "
        f"(was v{record.get('rolled_back_version')}); {record['service']}"
    )
    return 0


def cmd_approve(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    """Resume a parked rollout from staging through the 05 deploy stage."""
    from lib.delivery import progressive as deployer
    from lib.delivery.rollout import RolloutError

    waiting = deployer.awaiting_version(root / cfg.models_dir)
    if waiting != str(args.version):
        raise RolloutError(
            f"v{args.version} is not awaiting approval"
            + (f" (v{waiting} is)" if waiting else " (nothing is)")
        )
    result = run(
        cfg,
        root,
        stages=["deploy", "monitor"],
        echo=print,
        context={"candidate_version": str(args.version)},
    )
    return result.exit_code


def cmd_reject(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    from lib.delivery import progressive as deployer

    deployer.reject(root / cfg.models_dir, root / cfg.logs_dir, args.version, args.reason)
    print(f"v{args.version} rejected; production unchanged")
    return 0


def cmd_notify(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    """`notify --test`: a test message to every configured target; `notify --rollback` is the
    mission's `notify.py --rollback --reason ...` (a rollback notice without rolling back)."""
    from lib.watch import notify

    if args.test:
        deliveries = [d.to_dict() for d in notify.send_test()]
    elif args.rollback:
        deliveries = send("rolled_back", reason=args.reason or "rollback")
    else:
        raise PipelineError("notify: say what to send: --test, or --rollback --reason TEXT")
    if not deliveries:
        print(
            "no notification targets configured (SLACK_WEBHOOK, EMAIL_SMTP, TEAMS_WEBHOOK, "
            "PAGERDUTY_KEY, NOTIFY_URLS)"
        )
    for d in deliveries:
        print(
            f"{'ok    ' if d['ok'] else 'FAILED'} {d['kind']:<10} {d['target']}"
            + (f"  {d['error']}" if d.get("error") else "")
        )
    return 0 if all(d["ok"] for d in deliveries) else 1


BACKTEST_DATA = "../shared/data/playstore/googleplaystore.csv"  # the raw real file, if present


def cmd_backtest(cfg: PipelineConfig, root: Path, args: argparse.Namespace) -> int:
    """Replay the decision policy over time-ordered batches (notebook 07), without touching the
    registry or models/; the executed notebook, its HTML and backtest.json go to reports/."""
    data_path = str(Path(args.data).resolve()) if args.data else BACKTEST_DATA
    run_id = f"backtest-{new_run_id()}"
    run_dir = root / cfg.reports_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    groups = [g for g in cfg.features if args.with_name_text or g != "name_text"]
    params = {
        "data_path": data_path,
        "decision_table": cfg.decision,
        "n_batches": args.batches,
        "initial_share": args.initial_share,
        "seed": cfg.seed,
        "family": args.family,
        "cv_folds": args.cv_folds,
        "features": groups,
        "noise": not args.no_noise,
        "run_id": run_id,
    }
    print(f"{run_id}: backtest of the decision policy on {data_path} ({args.batches} batches) ...")
    result = execute_stage("backtest", params, root, run_dir, cfg.stage_timeout)
    record = {
        "run_id": run_id,
        "status": result.status,
        "error": result.error,
        "seconds": round(result.seconds, 1),
        "parameters": params,
        **result.scraps,
    }
    (run_dir / "backtest.json").write_text(json.dumps(record, indent=2, default=str))
    if result.status != "ok":
        print(f"backtest failed: {result.error}; see {os.path.relpath(result.notebook, root)}")
        return 1
    summary = result.scraps.get("backtest_summary") or {}
    for key, value in summary.items():
        if not isinstance(value, (dict, list)):
            print(f"  {key}: {value}")
    print(f"report: {os.path.relpath(run_dir / 'backtest.json', root)}, {result.html}")
    return 0


OPERATIONS = {
    "backtest": cmd_backtest,
    "notify": cmd_notify,
    "serve": cmd_serve,
    "status": cmd_status,
    "rollback": cmd_rollback,
    "approve": cmd_approve,
    "reject": cmd_reject,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Config options are accepted before or after the command (`runner.py status --set ...`).
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, None), (common, argparse.SUPPRESS)):
        p.add_argument(
            "--config", default=default, help="YAML config file (default: pipeline.yaml)"
        )
        p.add_argument(
            "--set",
            action="append",
            default=[] if default is None else default,
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set threshold=50 (repeatable)",
        )
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=False if default is None else default,
            help="debug logging",
        )
    sub = parser.add_subparsers(dest="command")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    run_p = command("run", "run the pipeline (the default command)")
    for p in (parser, run_p):
        p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
        p.add_argument("--force-retrain", action="store_true", help="train whatever the count")
        p.add_argument("--data", help="data CSV(s), comma-separated (config key data_path)")
        p.add_argument("--threshold", type=int, help="new apps needed to retrain")
        p.add_argument("--run-id", help="name of the run (default: timestamp + random suffix)")
        p.add_argument("--wait", type=float, help="seconds to wait for another runner to finish")
    serve = command("serve", "run the model service (champion, and canary in rollouts)")
    serve.add_argument("--host", help="bind address (default: serving_host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serving_port, 8080)")
    command("status", "champion, canary, weight and rollout state")
    rb = command("rollback", "put the previous champion back (registry, models/, service)")
    rb.add_argument("--reason", default="manual rollback", help="why (logged and recorded)")
    ap = command("approve", "deploy a version that awaits approval (from staging)")
    ap.add_argument("version")
    rj = command("reject", "close a rollout that awaits approval")
    rj.add_argument("version")
    rj.add_argument("--reason", default="rejected by a person")
    nt = command("notify", "send a test message (or a rollback notice) to every target")
    nt.add_argument("--test", action="store_true", help="a test message")
    nt.add_argument("--rollback", action="store_true", help="a rollback notice")
    nt.add_argument("--reason", help="the reason in a rollback notice")
    bt = command("backtest", "replay the decision policy over time-ordered batches (07)")
    bt.add_argument("--data", help=f"raw Play Store CSV (default {BACKTEST_DATA})")
    bt.add_argument("--batches", type=int, default=5, help="later batches (default 5)")
    bt.add_argument("--initial-share", type=float, default=0.4, help="oldest share (default 0.4)")
    bt.add_argument("--family", default="hist_gradient_boosting", help="model family")
    bt.add_argument("--cv-folds", type=int, default=3, help="folds per candidate (default 3)")
    bt.add_argument("--with-name-text", action="store_true", help="include the name-text stack")
    bt.add_argument("--no-noise", action="store_true", help="skip the noise candidates")
    sim = command("simulate-new-apps", "append generated new apps to the data file")
    sim.add_argument("--n", type=int, default=150, help="number of new apps (default 150)")
    sim.add_argument("--seed", type=int, help="seed of the batch (default: derived from the file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # nbconvert's accessibility hints about plots are not actionable here
        logging.getLogger("traitlets").setLevel(logging.ERROR)
    from lib.watch.notify import install_redacting_filter

    install_redacting_filter()  # webhook URLs, SMTP passwords and keys never reach a log
    try:
        overrides: dict[str, Any] = parse_set_options(args.set)
        if getattr(args, "data", None):
            overrides["data_path"] = args.data
        if getattr(args, "threshold", None) is not None:
            overrides["threshold"] = args.threshold
        if getattr(args, "wait", None) is not None:
            overrides["lock_timeout"] = args.wait
        cfg = load_config(ROOT, args.config, overrides)
        if args.command in OPERATIONS:
            return OPERATIONS[args.command](cfg, ROOT, args)
        if args.command == "simulate-new-apps":
            n = simulate_new_apps(cfg, ROOT, args.n, args.seed)
            print(f"appended {n} new apps to {cfg.data_path.split(',')[0]}")
            return 0
        stages = args.stages.split(",") if args.stages else None
        result = run(cfg, ROOT, stages, args.force_retrain, args.run_id, echo=print)
        return result.exit_code
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
