"""One pipeline run: stages in order, each given exactly what its contract asks, and the
decisions between them (stop when nothing is new, park or reject after 04 decide, stop after a
rollback); then report.json, the run index and the notifications.

The executor is a parameter: Papermill (the record: executed notebooks and HTML) for runs and
CI, in-process for fast tests of this control flow.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib.atomic_files import write_json_atomic
from lib.config import PipelineConfig, data_paths, redact_url
from lib.errors import PipelineError, RunnerBusyError, StageError
from lib.pipeline import report_html, run_record
from lib.pipeline.contracts import (
    PIPELINE,
    STAGES,
    CompareOutputs,
    Contract,
    DecideOutputs,
    DeployOutputs,
    DetectOutputs,
    MonitorOutputs,
    TrainOutputs,
)
from lib.pipeline.executors import Executor, PapermillExecutor, StageResult
from lib.pipeline.run_record import RunOutputs

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def service_url(cfg: PipelineConfig) -> str:
    """The production service every stage and command talks to."""
    return cfg.serving_url or f"http://{cfg.serving_host}:{cfg.serving_port}"


@dataclass
class RunContext:
    """What the runner knows besides the config: the run, and values given from outside
    (e.g. `approve` resumes a parked rollout with its candidate version)."""

    run_id: str
    root: Path
    run_dir: Path
    tracking_uri: str
    trigger: str = "manual"
    force: bool = False
    candidate_version: str | None = None


def config_values(contract: type[Contract], cfg: PipelineConfig) -> dict[str, Any]:
    """The contract's config fields (declared with `setting`), taken from `cfg` by their key."""
    data = cfg.model_dump(mode="json")
    return {name: data[key] for name, key in contract.config_keys().items()}


def run_values(stage: str, cfg: PipelineConfig, ctx: RunContext, outputs: RunOutputs) -> dict:
    """What a stage gets besides the config: the run, its resolved paths and URLs, and what
    earlier stages gave; each stage takes the ones its contract names."""
    rel = os.path.relpath
    paths = data_paths(cfg.data_path)
    train: TrainOutputs | None = outputs.get("train")  # type: ignore[assignment]
    compared: CompareOutputs | None = outputs.get("compare")  # type: ignore[assignment]
    decided: DecideOutputs | None = outputs.get("decide")  # type: ignore[assignment]
    latest = (o.candidate_version for o in (decided, compared, train) if o and o.candidate_version)
    version = next(latest, ctx.candidate_version)
    values: dict[str, Any] = {
        "run_id": ctx.run_id,
        "tracking_uri": ctx.tracking_uri,
        "data_path": paths[0] if len(paths) == 1 else paths,
        "force": ctx.force,
        "trigger": ctx.trigger,
        "state_path": rel(ctx.root / cfg.models_dir / "training_state.json", ctx.root),
        "quarantine_path": rel(ctx.run_dir / "quarantine.csv", ctx.root),
        "log_to_mlflow": True,
        "register_candidate": True,  # the runner moves @candidate; a notebook alone does not
        "act_on_production": True,  # the runner deploys and rolls back; a notebook alone not
        "candidate_version": version,
        "holdout_digest": train.holdout_digest if train else None,
        "parent_run_id": train.parent_run_id if train else None,
        "store_url": cfg.resolved_store_url(ctx.root),
        # 05 deploy starts a service when none is configured; 06 monitor watches production
        "serving_url": service_url(cfg) if stage == "monitor" else cfg.serving_url,
    }
    if compared is not None:
        values.update(
            improvement_interval=compared.improvement_interval,
            candidate_interval=compared.candidate_interval,
            gate_inputs=compared.gate_inputs,
            cv_std=compared.stability.get("cv_std"),
            reference_label=compared.reference_label,
        )
    return values


def inputs_for(stage: str, cfg: PipelineConfig, ctx: RunContext, outputs: RunOutputs) -> Contract:
    """The stage's typed inputs, each field by its name: the config's keys (`setting` fields),
    then the run's values (run_values) over them."""
    if stage not in PIPELINE:
        raise PipelineError(f"unknown stage {stage!r}; stages are {', '.join(PIPELINE)}")
    contract = STAGES[stage].inputs
    values = {**config_values(contract, cfg), **run_values(stage, cfg, ctx, outputs)}
    return STAGES[stage].check_inputs(
        {k: v for k, v in values.items() if k in contract.model_fields}
    )


@dataclass
class RunResult:
    run_id: str
    report_dir: Path
    outcome: str  # no_training | decided | awaiting_approval | rejected | promoted | ...
    stages: list[StageResult]
    exit_code: int = 0
    outputs: RunOutputs = field(default_factory=RunOutputs)

    @property
    def scraps(self) -> dict[str, Any]:
        """Every output of every stage in one flat mapping (later stages win): a convenience
        for people and tests; the pipeline itself reads `outputs`."""
        merged: dict[str, Any] = {}
        for out in self.outputs.values():
            merged.update(out.model_dump(mode="json"))
        return merged


def lock(root: Path, timeout: float) -> Any:
    """One runner per project: a second one waits `timeout` seconds, then says who holds it."""
    from filelock import FileLock, Timeout

    held = FileLock(str(root / ".runner.lock"))
    try:
        held.acquire(timeout=timeout)
    except Timeout:
        holder = "another runner"
        try:
            info = json.loads((root / ".runner.lock.json").read_text())
            holder = f"runner pid {info['pid']} (run {info['run_id']}, since {info['started']})"
        except (OSError, ValueError, KeyError):
            pass
        raise RunnerBusyError(
            f"{holder} is using this project; wait for it to finish or pass --wait SECONDS"
        ) from None
    return held


def trigger(force: bool) -> str:
    if force:
        return "forced"
    return {"schedule": "schedule", "push": "push", "workflow_dispatch": "manual"}.get(
        os.environ.get("GITHUB_EVENT_NAME", ""), "manual"
    )


def recover_rollout(cfg: PipelineConfig, root: Path, tracking_uri: str) -> Any:
    """A rollout whose runner died is settled first (lib.delivery.rollout_end: finished,
    rolled back or superseded; a Recovery or None), then every production service the project
    knows of serves the champion, and no canary unless a rollout is open."""
    from lib.delivery import rollout

    state = rollout.RolloutStore(root / cfg.models_dir / "rollout.json").load()
    if state is None and not cfg.serving_url:
        return None  # nothing ever rolled out here and no service configured
    from lib import registry
    from lib.delivery import rollout_end

    client = registry.connect(tracking_uri, cfg.experiment)
    models, logs = root / cfg.models_dir, root / cfg.logs_dir
    recovered = None
    if state is not None:
        recovered = rollout_end.recover_interrupted(root, client, cfg.model_name, models, logs)
        state = rollout.RolloutStore(models / "rollout.json").load()
    urls = [None if state is None else state.serving_url, service_url(cfg)]
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    done = rollout_end.reconcile_services(client, cfg.model_name, models, logs, urls, token)
    if done is None:
        return recovered
    if recovered is None:
        champion = registry.alias_version(client, cfg.model_name, "champion")
        return rollout_end.Recovery("reconciled", str(champion), champion, done)
    return replace(recovered, reason=f"{recovered.reason}; {done}")


def champion_version(cfg: PipelineConfig, tracking_uri: str) -> str | None:
    from lib import registry

    client = registry.connect(tracking_uri, cfg.experiment)
    return registry.alias_version(client, cfg.model_name, "champion")


def send(event: str, **fields: Any) -> list[dict[str, Any]]:
    """Notify every configured target; failures are returned, never raised."""
    from lib.watch import notify, redaction

    try:
        return [d.to_dict() for d in notify.notify(event, **fields)]
    except Exception as exc:  # a notification must never fail the pipeline
        return [
            {"kind": "all", "target": "notify", "ok": False, "error": redaction.redact(str(exc))}
        ]


def _next_step(out: Contract, cfg: PipelineConfig, ctx: RunContext, say: Any) -> str | None:
    """The outcome that ends the run after this stage, or None to go on."""
    if isinstance(out, DetectOutputs) and not out.should_train:
        say(f"stopping: {out.reason}")
        return "no_training"
    if isinstance(out, DecideOutputs) and out.decision != "auto":
        # acted upon whatever stages run: a `manual` verdict parks the rollout so that `approve`
        # finds it, `reject` is logged; `auto` only goes on (to 05 deploy when it runs), so the
        # runner neither imports the stage (scikit-learn, matplotlib) nor opens MLflow for it
        from lib.pipeline.stages import decide

        manual = out.decision == "manual"
        action = decide.act(
            out,
            root=ctx.root,
            models_dir=cfg.models_dir,
            logs_dir=cfg.logs_dir,
            model_name=cfg.model_name,
            champion_version=champion_version(cfg, ctx.tracking_uri) if manual else None,
            run_id=ctx.run_id,
            serving_url=cfg.serving_url,
            tracking_uri=ctx.tracking_uri,
            experiment=cfg.experiment,
        )
        v = out.candidate_version
        if action == "awaiting_approval":
            say(f"v{v} awaits approval: python runner.py approve {v} (or reject {v})")
            return action
        if action == "rejected":
            say(f"v{v} rejected by the decision (score {out.score}); production unchanged")
            return action
    if isinstance(out, DeployOutputs) and out.outcome != "promoted":
        return out.outcome  # rolled back: production is the old champion
    return None


@dataclass
class _Run:
    """One run's state between its stages: what ran, what it gave, what was said."""

    cfg: PipelineConfig
    ctx: RunContext
    recovered: Any
    say: Callable[[str], Any]
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    results: list[StageResult] = field(default_factory=list)
    outputs: RunOutputs = field(default_factory=RunOutputs)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    sent: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def report(self) -> str:
        return os.path.relpath(self.ctx.run_dir / "report.json", self.ctx.root)

    def record(self, outcome: str, failure: Exception | None = None) -> None:
        """report.json (and the index) as the run stands: written after every stage, so a run
        killed later still leaves what it did."""
        ctx, reports = self.ctx, self.ctx.root / self.cfg.reports_dir
        summary = run_record.summary(
            run_id=ctx.run_id, model_name=self.cfg.model_name, tracking_uri=ctx.tracking_uri,
            trigger=ctx.trigger, root=ctx.root, run_dir=ctx.run_dir, started=self.started,
            results=self.results, outcome=outcome, outputs=self.outputs,
            recovered=self.recovered, failure=failure, serving_url=self.cfg.serving_url,
        )  # fmt: skip
        summary["notifications"] = list(self.deliveries)
        write_json_atomic(ctx.run_dir / "report.json", summary)
        write_json_atomic(reports / f"report_{ctx.run_id}.json", summary)
        from lib.watch import report_index, run_summary

        # the summary and the index are conveniences: the run's own record is written
        try:
            run_summary.write(ctx.run_dir, summary)
        except Exception as exc:
            log.warning("could not write %s/summary.md: %s", ctx.run_dir, exc)
        try:
            report_index.write_index(reports)
        except Exception as exc:
            log.warning("could not write %s/index.html: %s", reports, exc)

    def notify_new(self, outcome: str) -> None:
        """Send the run's events not sent yet (deploy's are sent as soon as it ends)."""
        events = run_record.notifications(self.outputs, outcome, self.report, self.recovered)
        for event, fields in events:
            key = (event, str(fields.get("version")), str(fields.get("reason")))
            if key not in self.sent:
                self.sent.add(key)
                self.deliveries += send(event, **fields)

    def stages(self, stages: list[str], runner: Executor) -> tuple[str, int, StageError | None]:
        """Run the stages in order until one fails or a decision ends the run: (outcome, exit
        code, the failure)."""
        outcome, exit_code = "completed", 0
        for i, stage in enumerate(stages, 1):
            tag = f"[{i}/{len(stages)}] {stage}"
            if stage == "monitor" and champion_version(self.cfg, self.ctx.tracking_uri) is None:
                self.say(f"{tag} skipped: no champion in production yet, nothing to monitor")
                continue
            inputs = inputs_for(stage, self.cfg, self.ctx, self.outputs)
            self.say(f"{tag} ...")
            result = runner.execute(STAGES[stage], inputs, self.ctx.run_dir)
            self.results.append(result)
            if not result.ok or result.outputs is None:
                error = result.error or "unknown error"
                self.say(f"{tag} FAILED after {result.seconds:.1f}s: {result.error}")
                failure = StageError(stage, error, result.notebook, result.exit_code)
                return "failed", result.exit_code, failure
            self.outputs[stage] = result.outputs
            self.record("running")
            self.say(f"{tag} ok ({result.seconds:.1f}s){run_record.headline(result.outputs)}")
            if getattr(result.outputs, "note", None):  # promoted/rolled back, but a part
                exit_code = 1  # failed (reload, file swap): an operator must look
            ended = _next_step(result.outputs, self.cfg, self.ctx, self.say)
            if ended is not None:
                return ended, exit_code, None
            if isinstance(result.outputs, DeployOutputs):
                outcome = result.outputs.outcome
                # production changed: say so now, not after 06 monitor (a runner killed while
                # monitoring must not swallow the "deployed")
                self.notify_new(outcome)
                self.record("running")
            if isinstance(result.outputs, MonitorOutputs):
                if result.outputs.rolled_back:
                    outcome = "monitor_rolled_back"
                elif outcome == "completed":
                    outcome = "monitored"
        if outcome == "completed" and stages[-1] == "decide":
            outcome = "decided"
        return outcome, exit_code, None


def _stage_list(stages: list[str] | None) -> list[str]:
    """The stages asked for, in pipeline order (PipelineError for an unknown name)."""
    stages = list(stages or PIPELINE)
    unknown = [s for s in stages if s not in PIPELINE]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; stages are {', '.join(PIPELINE)}")
    return [s for s in PIPELINE if s in stages]


def run(
    cfg: PipelineConfig,
    root: Path,
    stages: list[str] | None = None,
    force: bool = False,
    run_id: str | None = None,
    echo: Callable[[str], Any] | None = None,
    kernel_pool: bool = True,
    candidate_version: str | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """Run the pipeline and return its result; the CLI is a thin wrapper around this."""
    say = echo or (lambda msg: None)
    stages = _stage_list(stages)
    run_id = run_id or new_run_id()
    run_dir = root / cfg.reports_dir / run_id
    held = lock(root, cfg.lock_timeout)
    kernels = None
    try:
        # before any kernel starts: credentials inside the URI move to the environment they
        # inherit (lib.settings.credentials_to_environment)
        tracking_uri = cfg.resolved_tracking_uri(root)
        if executor is None and kernel_pool:
            from lib.pipeline.kernels import KernelPool

            # one fresh kernel per stage; the first ones start now, while the data is checked
            kernels = KernelPool(cwd=root, total=len(stages))
        from lib.pipeline.stages import detect as detect_stage

        started_at = datetime.now(UTC).isoformat()
        (root / ".runner.lock.json").write_text(
            json.dumps({"pid": os.getpid(), "run_id": run_id, "started": started_at})
        )
        # unusable data stops here (exit 2), before MLflow or models/; only the default path,
        # when nobody chose the data, is generated
        if detect_stage.check_data(cfg, root, run_dir / "quarantine.csv"):
            where = detect_stage.DEFAULT_DATA_PATH
            say(f"generated {cfg.synth_apps} apps into {where} (no data found)")
        run_dir.mkdir(parents=True, exist_ok=True)
        recovered = recover_rollout(cfg, root, tracking_uri)
        if recovered:
            say(f"recovered: {recovered}")
        ctx = RunContext(
            run_id, root, run_dir, tracking_uri, trigger(force), force, candidate_version
        )
        state = _Run(cfg, ctx, recovered, say)
        say(f"run {run_id}: stages {', '.join(stages)}; MLflow {redact_url(tracking_uri)}")
        runner = executor or PapermillExecutor(root, cfg.stage_timeout, kernels)
        try:
            outcome, exit_code, failure = state.stages(stages, runner)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: kernels down, then record
            if kernels is not None:
                kernels.close()
            report_html.render_missing(run_dir)  # the partial notebook of the cancelled stage
            state.record("cancelled")
            raise
        if failure is not None:  # before the record, so that summary.html links the page
            report_html.render_missing(run_dir)  # any notebook the executor could not render
        state.notify_new(outcome)
        state.record(outcome, failure)
        failed = [d for d in state.deliveries if not d["ok"]]
        if failed:
            targets = ", ".join(d["target"] for d in failed)
            say(f"{len(failed)} notification(s) failed (see report.json): {targets}")
        say(f"report: {state.report}")
        result = RunResult(run_id, run_dir, outcome, state.results, exit_code, state.outputs)
        if failure is not None:
            failure.result = result  # type: ignore[attr-defined]
            raise failure
        return result
    finally:
        if kernels is not None:  # the last kernel exits while the run's record is written
            kernels.close()
        (root / ".runner.lock.json").unlink(missing_ok=True)
        held.release()
