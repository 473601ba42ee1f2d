"""Run the pipeline's notebooks in order with Papermill and keep the record of every run.

    python runner.py                       # detect -> train -> compare -> decide
    python runner.py --force-retrain       # train whatever the new-app count
    python runner.py --stages train,compare --set cv_folds=3
    python runner.py simulate-new-apps --n 150

Each stage's executed notebook and its HTML land in reports/<run-id>/, with report.json, the run's
summary. Values travel between stages as scraps only. Exit codes: 0 done (or nothing to do),
1 a stage failed, 2 a known error (bad data, bad config), 3 another runner is busy.
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
            "cv_std": stability.get("cv_std"),
            "reference_label": ctx.get("reference_label"),
            "selection_metric": cfg.selection_metric,
            "decision_table": cfg.decision,
            "parent_run_id": ctx.get("parent_run_id"),
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
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    html = notebook.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def execute_stage(
    stage: str, params: dict[str, Any], root: Path, run_dir: Path, timeout: int
) -> StageResult:
    """Execute one notebook; the executed copy and its HTML are kept even when it fails."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from lib import scraps

    source = root / "notebooks" / f"{NOTEBOOKS[stage]}.ipynb"
    target = run_dir / source.name
    check_parameters(source, params)
    started = time.perf_counter()
    error: str | None = None
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=params,
            cwd=str(root),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, timeout...: still a failed stage with a record
        error = f"{type(exc).__name__}: {exc}"
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
) -> RunResult:
    """Run the pipeline and return its result; the CLI is a thin wrapper around this."""
    from lib import data, registry, synth

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
            json.dumps({"pid": os.getpid(), "run_id": run_id, "started": datetime.now(UTC).isoformat()})
        )
        first = root / _data_paths(cfg)[0]
        if synth.ensure_dataset(first, n=cfg.synth_apps, seed=cfg.synth_seed):
            say(f"generated {cfg.synth_apps} apps into {os.path.relpath(first, root)} (no data found)")
        for path in _data_paths(cfg):
            data.check_columns(root / path)  # missing columns stop here, before MLflow or models/
        run_dir.mkdir(parents=True, exist_ok=True)
        tracking_uri = cfg.resolved_tracking_uri(root)
        ctx: dict[str, Any] = {"run_id": run_id, "tracking_uri": tracking_uri}
        ctx["trigger"] = _trigger(force)
        started = datetime.now(UTC)
        say(f"run {run_id}: stages {', '.join(stages)}; MLflow {registry.redact_uri(tracking_uri)}")
        results: list[StageResult] = []
        outcome, exit_code, failure = "completed", 0, None
        for i, stage in enumerate(stages, 1):
            params = stage_parameters(stage, cfg, ctx, root, run_dir, force)
            say(f"[{i}/{len(stages)}] {stage} ...")
            result = execute_stage(stage, params, root, run_dir, cfg.stage_timeout)
            results.append(result)
            if result.status == "failed":
                outcome, exit_code = "failed", 1
                failure = StageError(stage, result.error or "unknown error", result.notebook)
                say(f"[{i}/{len(stages)}] {stage} FAILED after {result.seconds:.1f}s: {result.error}")
                break
            ctx.update(result.scraps)
            say(f"[{i}/{len(stages)}] {stage} ok ({result.seconds:.1f}s){_headline(stage, result.scraps)}")
            if stage == "detect" and not result.scraps.get("should_train", False):
                outcome = "no_training"
                say(f"stopping: {result.scraps.get('reason')}")
                break
        if outcome == "completed" and "decide" in stages:
            outcome = "decided"
        summary = _summary(run_id, cfg, root, run_dir, started, results, outcome, ctx, failure)
        _write_json(run_dir / "report.json", summary)
        _write_json(root / cfg.reports_dir / f"report_{run_id}.json", summary)
        say(f"report: {os.path.relpath(run_dir / 'report.json', root)}")
        run_result = RunResult(run_id, run_dir, outcome, results, summary, exit_code)
        if failure is not None:
            failure.result = run_result  # type: ignore[attr-defined]
            raise failure
        return run_result
    finally:
        (root / ".runner.lock.json").unlink(missing_ok=True)
        lock.release()


def _headline(stage: str, s: dict[str, Any]) -> str:
    if stage == "detect":
        return f": {s.get('new_apps')} new, {s.get('updated_apps')} updated of {s.get('total_apps')} apps"
    if stage == "train":
        m = s.get("metrics") or {}
        return f": v{s.get('candidate_version')} {s.get('candidate_name')} roc_auc={m.get('roc_auc', 0):.4f}"
    if stage == "compare":
        return f": improvement {s.get('improvement', 0):+.4f} vs {s.get('reference_label')}"
    if stage == "decide":
        return f": score {s.get('score')} -> {s.get('decision')}"
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

    keys = ("new_apps", "updated_apps", "total_apps", "should_train", "reason", "quarantined_rows",
            "candidate_version", "candidate_name", "metrics", "cv_std", "mlflow_run_id",
            "parent_run_id", "champion_version", "reference_label", "improvement", "score",
            "decision", "reasons")  # fmt: skip
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
    from lib import synth

    path = root / _data_paths(cfg)[0]
    synth.ensure_dataset(path, n=cfg.synth_apps, seed=cfg.synth_seed)
    added = synth.append_new_apps(path, n=n, seed=seed)
    return len(added)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config file (default: pipeline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set threshold=50 (repeatable)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="run the pipeline (the default command)")
    for p in (parser, run_p):
        p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
        p.add_argument("--force-retrain", action="store_true", help="train whatever the count")
        p.add_argument("--data", help="data CSV(s), comma-separated (config key data_path)")
        p.add_argument("--threshold", type=int, help="new apps needed to retrain")
        p.add_argument("--run-id", help="name of the run (default: timestamp + random suffix)")
        p.add_argument("--wait", type=float, help="seconds to wait for another runner to finish")
    sim = sub.add_parser("simulate-new-apps", help="append generated new apps to the data file")
    sim.add_argument("--n", type=int, default=150, help="number of new apps (default 150)")
    sim.add_argument("--seed", type=int, help="seed of the batch (default: derived from the file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        overrides: dict[str, Any] = parse_set_options(args.set)
        if getattr(args, "data", None):
            overrides["data_path"] = args.data
        if getattr(args, "threshold", None) is not None:
            overrides["threshold"] = args.threshold
        if getattr(args, "wait", None) is not None:
            overrides["lock_timeout"] = args.wait
        cfg = load_config(ROOT, args.config, overrides)
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
