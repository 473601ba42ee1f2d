"""The operator's commands of `runner.py` besides `run`; each takes the config, the project root
and the parsed arguments, prints what a person needs and returns the exit code. Those that change
production or a parked rollout also append to reports/operator_actions.json (the index shows it).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.atomic_files import write_json_atomic
from lib.config import PipelineConfig, data_paths, redact_url
from lib.errors import PipelineError, RunnerBusyError
from lib.pipeline.contracts import STAGES
from lib.pipeline.executors import PapermillExecutor
from lib.pipeline.orchestrator import (
    RunContext,
    champion_version,
    config_values,
    inputs_for,
    lock,
    new_run_id,
    run,
    send,
    service_url,
)
from lib.pipeline.run_record import RunOutputs

log = logging.getLogger(__name__)

Echo = Callable[[str], Any]  # where a command writes what the operator reads (the console)


def simulate_new_apps(cfg: PipelineConfig, root: Path, n: int, seed: int | None) -> int:
    from lib.pipeline import data_sources, synth

    path = cfg.data_files(root)[0]
    if cfg.data_origin is None:  # the untouched default: generated when absent
        synth.ensure_dataset(path, n=cfg.synth_apps, seed=cfg.synth_seed)
    else:  # a path the user gave must exist: new apps are never appended to a new fake file
        data_sources.check_file(path)
    added = synth.append_new_apps(path, n=n, seed=seed)
    return len(added)


def _client(cfg: PipelineConfig, root: Path) -> Any:
    from lib import registry

    return registry.connect(cfg.resolved_tracking_uri(root), cfg.experiment)


def cmd_serve(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """`python runner.py serve`: the production model service, until Ctrl-C (or SIGTERM);
    `--workers N`: N replica processes sharing the port and one routing."""
    from lib.serving.settings import ServingSettings
    from lib.serving.workers import serve_workers

    settings = ServingSettings(
        model_name=cfg.model_name,
        tracking_uri=cfg.resolved_tracking_uri(root),
        store_url=cfg.resolved_store_url(root),
        target_threshold=cfg.target_threshold,
        models_dir=root / cfg.models_dir,
    )
    host, port = args.host or cfg.serving_host, args.port or cfg.serving_port
    serve_workers(settings, host, port, getattr(args, "workers", 1) or 1)
    return 0


def cmd_store_recover(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """`store-recover`: write the rows a dead service answered but did not store (its journal
    segments beside the prediction store), then exit. The service does the same when it starts
    on the store; readers (canary analysis, 06 monitor) never do. A running service's own
    segments are left alone. Exit 1 when a segment could not be replayed (kept for later)."""
    from lib.serving.prediction_store import PredictionStore

    url = cfg.resolved_store_url(root)
    store = PredictionStore(url)  # opening the writer replays the orphaned segments
    try:
        done, journal = store.recovery(), store.journal_dir
    finally:
        store.close()
    if journal is None:
        echo(f"store {redact_url(url)}: no journal (an in-memory database): nothing to do")
        return 0
    echo(
        f"store {redact_url(url)}: {done['recovered']} row(s) recovered, {done['lost']} lost "
        f"(unreadable or refused), from {journal}"
    )
    if done["segments_kept"]:
        echo(
            f"{done['segments_kept']} journal segment(s) not replayed (the database failed, see "
            "the log): kept; run store-recover again once the database answers"
        )
        return 1
    return 0


def _record(cfg: PipelineConfig, root: Path, action: str, **fields: Any) -> None:
    """An operator action in reports/operator_actions.json and the index; a failure to write it
    is said, never fatal (production already changed, and deployments.json has the record)."""
    from lib.watch import report_index

    try:
        report_index.record_operator_action(root / cfg.reports_dir, action, **fields, **_who())
    except Exception as exc:
        log.warning("could not record the %s in %s: %s", action, cfg.reports_dir, exc)


def _who() -> dict[str, str]:
    """Who acted and from which workflow run, when a GitHub Actions job runs the command:
    ACTED_BY (the workflow's approving reviewer) or GITHUB_ACTOR, and the run's URL."""
    env = os.environ
    who: dict[str, str] = {}
    if env.get("ACTED_BY") or env.get("GITHUB_ACTOR"):
        who["by"] = env.get("ACTED_BY") or env["GITHUB_ACTOR"]
    if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        who["workflow_run"] = (
            f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
        )
    return who


def _champion_now(cfg: PipelineConfig, root: Path) -> str | None:
    """The champion after an action, for its record; None when the registry cannot say."""
    try:
        return champion_version(cfg, cfg.resolved_tracking_uri(root))
    except Exception as exc:  # the record is a convenience; the action itself is done
        log.warning("champion unknown for the operator record: %s", exc)
        return None


def _delivered(deliveries: list[dict[str, Any]]) -> str:
    return f"{sum(bool(d['ok']) for d in deliveries)}/{len(deliveries)} delivered"


def cmd_status(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """Champion, canary, weight, the last event and the rollout state, consistent with the
    registry, models/production, the service and deployments.json. A registry that cannot
    answer raises RegistryUnavailable (one line, exit 4 from runner.main), never "v None"."""
    from lib.delivery import operations
    from lib.delivery.operations import named

    info = operations.status(
        _client(cfg, root), cfg.model_name, root / cfg.models_dir, service_url(cfg)
    )
    aliases = info["aliases"]
    echo(
        f"model {info['model']}: champion {named(aliases['champion'])}, previous "
        f"{named(aliases['previous'])}, candidate {named(aliases['candidate'])}, canary "
        f"{named(aliases['canary'])}"
    )
    echo(f"models/production: {named(info['production_copy'])}")
    echo(f"last event: {info.get('last_event') or 'none recorded'}")
    ro = info["rollout"]
    if ro:
        flag = " (INTERRUPTED)" if ro["interrupted"] else ""
        echo(
            f"{'last rollout' if ro['finished'] else 'rollout'} {ro['id']}: v{ro['version']} "
            f"{ro['phase']} at {ro['weight']}%{flag}"
            + (f" - {ro['reason']}" if ro["reason"] else "")
            + (f"; since then {ro['since']}" if ro.get("since") else "")
        )
    else:
        echo("rollout: none")
    if info.get("mismatch"):
        echo(f"MISMATCH: {info['mismatch']}")
    if info.get("next_run"):
        echo(f"next run: {info['next_run']}")
    service = info["service"]
    if isinstance(service, dict):
        canary, champion = service.get("canary") or {}, service.get("champion") or {}
        serving, source = named(champion.get("version")), champion.get("source")
        weight = f" at {canary.get('weight', 0)}%" if canary.get("version") else ""
        where = f" (from {source})" if source and source != "registry" else ""
        echo(
            f"service {service_url(cfg)}: {service.get('status')}, champion {serving}{where}, "
            f"canary {named(canary.get('version'))}{weight}"
        )
        if service.get("warning"):
            echo(f"service warning: {service['warning']}")
    else:
        echo(f"service: {service}")
    return 0


def cmd_rollback(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """The mission's `deploy.py --rollback`: previous -> champion everywhere, within seconds.
    During a live runner's rollout it never waits for the runner's lock: a canary is stopped
    through the rollout state, a promotion under way is let finish, then rolled back."""
    from lib.delivery import operations, rollout

    store = rollout.RolloutStore(root / cfg.models_dir / "rollout.json")
    state = store.load()
    if state is not None and state.active and rollout.pid_alive(state.owner_pid):
        if state.phase != rollout.Phase.PROMOTING:
            if _stop_rollout(cfg, root, args, echo) is not None:
                return 0
            # it entered `promoting` just before the stop landed and is champion now
            echo(f"v{state.candidate_version} was promoted before the stop: rolling it back")
        else:
            echo(f"v{state.candidate_version} is being promoted: waiting, then rolling back")
            _await_promotion(store, cfg, f"the promotion of v{state.candidate_version}")
        held = None  # the runner lives on (06 monitor); the rollback wins over it
    else:
        held = lock(root, cfg.lock_timeout)
    try:
        record = operations.manual_rollback(
            _client(cfg, root),
            cfg.model_name,
            root / cfg.models_dir,
            root / cfg.logs_dir,
            args.reason,
            service_url(cfg),
        )
    finally:
        if held is not None:
            held.release()
    echo(f"canary: {record['canary_routing']}")  # canary_off always says what it did
    if record.get("rollout_closed"):
        echo(f"open rollout {record['rollout_closed']} closed (the operator's rollback wins)")
    deliveries = send(
        "rolled_back",
        version=record.get("rolled_back_version"),
        reason=args.reason,
        details={"champion now": record.get("version")},
    )
    echo(f"notifications: {_delivered(deliveries)}")
    echo(
        f"rolled back: champion is v{record.get('version')} again "
        f"(was v{record.get('rolled_back_version')}); {record['service']}"
    )
    _record(
        cfg, root, "rollback", version=record.get("rolled_back_version"),
        champion=record.get("version"), result="done", reason=args.reason,
        detail=record["service"], notifications=_delivered(deliveries),
    )  # fmt: skip
    return 0


def _await_promotion(store: Any, cfg: PipelineConfig, what: str) -> None:
    """A promotion under way takes seconds: wait for it, or say to try again."""
    from lib.delivery import rollout

    if not rollout.wait_until_settled(store, cfg.stop_wait_seconds).finished:
        raise RunnerBusyError(
            f"{what} has not finished after {cfg.stop_wait_seconds:g} s; run rollback again in a "
            "moment"
        )


def _stop_rollout(
    cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo
) -> int | None:
    """`rollback` while a runner drives a rollout: stop it through the rollout state. None when
    the rollout had entered `promoting` just before the stop and succeeded: production must then
    be rolled back like any promotion."""
    from lib.delivery import operations, rollout

    state, routing = operations.stop_rollout(
        root / cfg.models_dir, root / cfg.logs_dir, args.reason, service_url(cfg),
        cfg.stop_wait_seconds,
    )  # fmt: skip
    v, kept, phase = state.candidate_version, operations.named(state.champion_version), state.phase
    echo(f"canary: {routing}")
    if phase == rollout.Phase.PROMOTING:  # it got there just before the stop
        store = rollout.RolloutStore(root / cfg.models_dir / "rollout.json")
        _await_promotion(store, cfg, f"v{v} was being promoted when the stop came and")
        phase = store.load().phase
    if phase == rollout.Phase.SUCCEEDED:
        return None
    if state.finished:
        result, detail = "done", f"rollout {state.rollout_id} {phase}: {state.reason}"
        echo(f"stopped: the rollout of v{v} is {phase}; production stays on {kept}")
    else:
        result = "requested"
        if rollout.pid_alive(state.owner_pid):
            detail = f"stop recorded; v{v} can no longer be promoted; the running deployer "
            detail += "finishes the rollback at its next look"
        else:
            detail = f"the deployer of v{v} died; the next run rolls the rollout back"
        echo(f"stop requested: {detail}; production stays on {kept}")
    _record(
        cfg, root, "rollback", version=v, champion=state.champion_version, result=result,
        reason=args.reason, detail=detail, rollout=state.rollout_id,
    )  # fmt: skip
    return 0


def cmd_promote(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """`promote V --reason TEXT`: a registered version into production through the staging
    smoke tests and the all-or-nothing promotion (no canary steps): the way back to a known
    good version when `rollback` has nothing left to go back to. Refuses (exit 2, nothing
    changed) a missing reason, an unknown version, the current champion or an open rollout."""
    from lib import registry
    from lib.delivery import operations
    from lib.pipeline.stages import deploy

    reason = (args.reason or "").strip()
    if not reason:
        raise PipelineError(
            f'promote: say why with --reason "..." (it goes to {cfg.models_dir}/deployments.json '
            f"and {cfg.logs_dir}/deployment.log); nothing was changed"
        )
    version = str(args.version).strip().removeprefix("v")
    if not version.isdigit():
        raise PipelineError(f"promote: {args.version!r} is not a version number; nothing changed")
    client = _client(cfg, root)
    if registry.model_version(client, cfg.model_name, version) is None:
        raise PipelineError(
            f"promote: {cfg.model_name} v{version} is not in the registry; nothing was changed"
        )
    if registry.alias_version(client, cfg.model_name, "champion") == version:
        raise PipelineError(f"promote: v{version} is already the champion; nothing was changed")
    run_id = f"promote-{new_run_id()}"
    held = lock(root, cfg.lock_timeout)
    try:
        ctx = RunContext(run_id, root, root / cfg.reports_dir / run_id,
                         cfg.resolved_tracking_uri(root), candidate_version=version)  # fmt: skip
        plan = deploy.plan(inputs_for("deploy", cfg, ctx, RunOutputs()), root)
        echo(f"promoting v{version} (champion: {operations.named(plan.champion)}): staging ...")
        done = operations.promote_version(
            root, plan.client, cfg.model_name, plan.tracking_uri, version, plan.holdout,
            plan.settings, root / cfg.models_dir, root / cfg.logs_dir, service_url(cfg),
            reason, run_id,
        )  # fmt: skip
    finally:
        held.release()
    fields = dict(version=version, champion=done["champion"], reason=reason, run_id=run_id)
    if done["outcome"] != "promoted":
        kept = operations.named(done["champion"])
        echo(f"NOT promoted: {done['reason']}; production unchanged on {kept}")
        _record(cfg, root, "promote", result="failed", detail=done["reason"], **fields)
        return 1
    deliveries = send(
        "deployed",
        version=version,
        reason=f"promoted by an operator: {reason}",
        details={"previous champion": done["champion_before"], "how": "runner.py promote"},
    )
    echo(f"notifications: {_delivered(deliveries)}")
    echo(f"promoted: champion is v{version} (was {operations.named(done['champion_before'])})")
    if done["note"]:
        echo(f"NOTE: {done['note']}")
    detail = f"smoke tests passed; {done['note'] or 'service reloaded'}"
    _record(cfg, root, "promote", result="done", detail=detail,
            notifications=_delivered(deliveries), **fields)  # fmt: skip
    return 1 if done["note"] else 0


def _deploy_run(
    cfg: PipelineConfig,
    root: Path,
    args: argparse.Namespace,
    echo: Echo,
    action: str,
    fields: dict[str, Any],
) -> int:
    """05 deploy then 06 monitor for `args.version` (approve, deploy), recorded as `action`."""
    try:
        result = run(
            cfg, root, stages=["deploy", "monitor"], echo=echo,
            candidate_version=str(args.version), run_id=getattr(args, "run_id", None),
        )  # fmt: skip
    except PipelineError as exc:
        done = getattr(exc, "result", None)
        _record(
            cfg, root, action, result="failed", detail=str(exc),
            champion=_champion_now(cfg, root), run_id=None if done is None else done.run_id,
            **fields,
        )  # fmt: skip
        raise
    _record(
        cfg, root, action, result="done" if result.exit_code == 0 else "failed",
        detail=f"run outcome: {result.outcome}", run_id=result.run_id,
        champion=_champion_now(cfg, root), **fields,
    )  # fmt: skip
    return result.exit_code


def _version_arg(command: str, value: Any) -> str:
    version = str(value).strip().removeprefix("v")
    if not version.isdigit():
        raise PipelineError(f"{command}: {value!r} is not a version number; nothing changed")
    return version


def cmd_approve(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """Resume a parked rollout from staging through the 05 deploy stage: parked here
    (models/rollout.json) or, on a machine without it, as recorded in the version's tags."""
    from lib.delivery import operations, releases

    args.version = version = _version_arg("approve", args.version)
    client = _client(cfg, root)
    where = operations.parked_where(client, cfg.model_name, root / cfg.models_dir, version)
    reason = (getattr(args, "reason", None) or "").strip() or "approved by a person"
    who = _who()
    operations.tag_approval(
        client, cfg.model_name, version, "approved", reason=reason, by=who.get("by"),
        workflow_run=who.get("workflow_run"),
    )  # fmt: skip
    releases.log_transition(root / cfg.logs_dir, "approved", version=version, reason=reason)
    if where == "registry":
        echo(f"v{version} awaits approval in the registry (no local rollout here): deploying")
    return _deploy_run(cfg, root, args, echo, "approve", {"version": version, "reason": reason})


def cmd_deploy(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """`deploy V`: 05 deploy and 06 monitor for a version whose recorded 04 decision (its
    `decision` tag) is `auto` and that is not champion: the GitHub deploy job after the pipeline
    job's decision. Anything else is refused (exit 2), nothing changed."""
    from lib import registry

    version = args.version = _version_arg("deploy", args.version)
    client = _client(cfg, root)
    tags = registry.version_tags(client, cfg.model_name, version)
    if tags is None:
        raise PipelineError(f"deploy: {cfg.model_name} v{version} is not in the registry; nothing "
                            "was changed")  # fmt: skip
    decision = tags.get("decision")
    if decision != "auto":
        hint = f" (approve it: runner.py approve {version})" if decision == "manual" else ""
        raise PipelineError(
            f"deploy: v{version}'s recorded 04 decision is {decision or 'none'}, not auto"
            f"{hint}; nothing was changed"
        )
    if registry.alias_version(client, cfg.model_name, "champion") == version:
        raise PipelineError(f"deploy: v{version} is already the champion; nothing was changed")
    reason = f"04 decision auto (score {tags.get('decision.score', '?')})"
    return _deploy_run(cfg, root, args, echo, "deploy", {"version": version, "reason": reason})


def cmd_reject(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    from lib.delivery import operations

    version = args.version = _version_arg("reject", args.version)
    operations.reject_anywhere(
        _client(cfg, root), cfg.model_name, root / cfg.models_dir, root / cfg.logs_dir, version,
        args.reason, by=_who().get("by"),
    )  # fmt: skip
    echo(f"v{version} rejected; production unchanged")
    _record(cfg, root, "reject", version=version, result="done", reason=args.reason,
            detail="production unchanged", champion=_champion_now(cfg, root))  # fmt: skip
    return 0


def cmd_notify(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """`notify --test`: a test message to every configured target; `notify --rollback` is the
    mission's `notify.py --rollback --reason ...` (a rollback notice without rolling back)."""
    from lib.watch import notify

    if args.test:
        deliveries = [d.to_dict() for d in notify.notify("test")]
    elif args.rollback:
        deliveries = send("rolled_back", reason=args.reason or "rollback")
    else:
        raise PipelineError("notify: say what to send: --test, or --rollback --reason TEXT")
    if not deliveries:
        echo(
            "no notification targets configured (SLACK_WEBHOOK, EMAIL_SMTP, TEAMS_WEBHOOK, "
            "PAGERDUTY_KEY, NOTIFY_URLS)"
        )
    for d in deliveries:
        echo(
            f"{'ok    ' if d['ok'] else 'FAILED'} {d['kind']:<10} {d['target']}"
            + (f"  {d['error']}" if d.get("error") else "")
        )
    return 0 if all(d["ok"] for d in deliveries) else 1


BACKTEST_DATA = "../shared/data/playstore/googleplaystore.csv"  # the raw real file, if present


def cmd_backtest(cfg: PipelineConfig, root: Path, args: argparse.Namespace, echo: Echo) -> int:
    """Replay the decision policy over time-ordered batches (notebook 07), without touching the
    registry or models/; the executed notebook, its HTML and backtest.json go to reports/."""
    from lib.pipeline import data_sources

    if args.data:  # a file the user names must exist (no silent fallback to generated data)
        data_path = str(data_sources.check_file(Path(args.data).resolve()))
    else:  # the raw real file when present, else 07 falls back to the generated default data
        data_path = BACKTEST_DATA
    run_id = f"backtest-{new_run_id()}"
    run_dir = root / cfg.reports_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    groups = [g for g in cfg.features if args.with_name_text or g != "name_text"]
    stage = STAGES["backtest"]
    params = {
        **config_values(stage.inputs, cfg),
        "data_path": data_path,
        "n_batches": args.batches,
        "initial_share": args.initial_share,
        "family": args.family,
        "cv_folds": args.cv_folds,
        "features": groups,
        "noise": not args.no_noise,
        "fallback_data_path": data_paths(cfg.data_path)[0],
        "run_id": run_id,
    }
    echo(f"{run_id}: backtest of the decision policy on {data_path} ({args.batches} batches) ...")
    inputs = stage.check_inputs(params)
    result = PapermillExecutor(root, cfg.stage_timeout).execute(stage, inputs, run_dir)
    outputs = result.outputs.model_dump(mode="json") if result.outputs else {}
    record = {
        "run_id": run_id,
        "status": result.status,
        "error": result.error,
        "seconds": round(result.seconds, 1),
        "parameters": inputs.model_dump(mode="json"),
        **outputs,
    }
    write_json_atomic(run_dir / "backtest.json", record)
    if result.status != "ok":
        echo(f"backtest failed: {result.error}; see {os.path.relpath(result.notebook, root)}")
        return 1
    summary = outputs.get("backtest_summary") or {}
    for key, value in summary.items():
        if not isinstance(value, (dict, list)):
            echo(f"  {key}: {value}")
    echo(f"report: {os.path.relpath(run_dir / 'backtest.json', root)}, {result.html}")
    return 0


OPERATIONS = {
    "backtest": cmd_backtest,
    "notify": cmd_notify,
    "serve": cmd_serve,
    "store-recover": cmd_store_recover,
    "status": cmd_status,
    "rollback": cmd_rollback,
    "promote": cmd_promote,
    "approve": cmd_approve,
    "deploy": cmd_deploy,
    "reject": cmd_reject,
}
