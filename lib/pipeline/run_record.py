"""What a run leaves for people: one-line headlines, report.json, and the notification events.

Everything here reads the stages' typed outputs (lib.pipeline.contracts); `RunResults` is the
run's headline figures as one typed model, which report.json stores under "results".
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from lib.pipeline.contracts import (
    CompareOutputs,
    Contract,
    DecideOutputs,
    DeployOutputs,
    DetectOutputs,
    MonitorOutputs,
    TrainOutputs,
)
from lib.pipeline.executors import StageResult

# Every `outcome` a run's report.json can hold (lib.pipeline.orchestrator sets them): the index
# (lib.watch.report_index) labels each; a test checks the orchestrator uses no other.
RUN_OUTCOMES = (
    "running",  # written after each stage while the run goes on
    "cancelled",  # Ctrl-C or SIGTERM
    "failed",  # a stage failed
    "no_training",  # 01 detect: nothing new enough
    "decided",  # stages up to 04 decide only
    "awaiting_approval",  # 04 decide: manual
    "rejected",  # 04 decide: reject
    "promoted",  # 05 deploy
    "rolled_back",  # 05 deploy
    "planned",  # 05 deploy told not to act on production (only a notebook run alone is)
    "monitored",  # 06 monitor ran (alone, or after a run that deployed nothing)
    "monitor_rolled_back",  # 06 monitor rolled production back
    "completed",  # anything else that ran to its end
)


class RunOutputs(dict[str, Contract]):
    """Typed outputs of the stages that ran, by stage name."""

    def of(self, kind: type[Contract]) -> Any:
        return next((value for value in self.values() if isinstance(value, kind)), None)


# Stage output fields that report.json keeps in the stage's record only, not in "results".
NOT_IN_RESULTS = {
    "holdout_digest", "candidates", "candidate_metrics", "champion_metrics", "candidate_value",
    "stability", "candidate_interval", "outcome", "timeline", "steps",
}  # fmt: skip


class ResultsBase(BaseModel):
    """The figures a reviewer looks for first; None where the stage did not run."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def collect(cls, outputs: RunOutputs, recovered: Any = None) -> ResultsBase:
        """Each stage contributes the fields it declares; the latest stage's version wins for
        `candidate_version` (03 and 04 resolve it when run alone)."""
        # recovered: lib.delivery's Recovery (a dataclass: outcome, version, champion, reason)
        values: dict[str, Any] = {"recovered": recovered and dataclasses.asdict(recovered)}
        for out in outputs.values():
            for name in type(out).model_fields:
                if name in cls.model_fields:
                    values[name] = getattr(out, name)
        return cls.model_validate(values)

    def flat(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def results_fields() -> dict[str, Any]:
    """Every stage output field not in NOT_IN_RESULTS, optional, in report.json's order (which
    predates the contracts: `recovered` leads 06 monitor's fields, `healthy` first)."""
    fields: dict[str, Any] = {}
    for kind in (DetectOutputs, TrainOutputs, CompareOutputs, DecideOutputs, DeployOutputs):
        fields.update({k: f.annotation for k, f in kind.model_fields.items()})
    fields["recovered"] = dict[str, Any]  # what recovery of an interrupted rollout did
    fields["healthy"] = bool
    fields.update({k: f.annotation for k, f in MonitorOutputs.model_fields.items()})
    return {k: (kind | None, None) for k, kind in fields.items() if k not in NOT_IN_RESULTS}


RunResults = create_model("RunResults", __base__=ResultsBase, **results_fields())


def headline(out: Contract) -> str:
    """One line per stage for the console."""
    if isinstance(out, DetectOutputs):
        return f": {out.new_apps} new, {out.updated_apps} updated of {out.total_apps} apps"
    if isinstance(out, TrainOutputs):
        m = out.metrics
        return (
            f": v{out.candidate_version} {out.candidate_name} "
            f"roc_auc={m.get('roc_auc') or 0:.4f} accuracy={m.get('accuracy') or 0:.4f} "
            f"brier={m.get('brier') or 0:.4f} threshold={out.label_threshold:.3f}"
        )
    if isinstance(out, CompareOutputs):
        i = out.improvement_interval
        return (
            f": improvement {i['estimate']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}] "
            f"vs {out.reference_label} (n={i.get('n')})"
        )
    if isinstance(out, DecideOutputs):
        return f": score {out.score} -> {out.decision}"
    if isinstance(out, DeployOutputs):
        why = f" ({out.rollback_reason})" if out.rollback_reason else ""
        note = f"; NOTE: {out.note}" if out.note else ""
        return f": v{out.deployed_version} {out.outcome}{why}{note}"
    if isinstance(out, MonitorOutputs):
        if out.alerts:
            state = f"unhealthy, {len(out.alerts)} alert(s)"
        elif out.verdict == "not_judged":
            state = f"not judged ({out.verdict_reason})"
        else:
            state = out.verdict
        note = f"; {out.rollback_note}" if out.rollback_note else ""
        return f": v{out.monitored_version} {state}{note}"
    return ""


def summary(
    *,
    run_id: str,
    model_name: str,
    tracking_uri: str,
    trigger: str,
    root: Path,
    run_dir: Path,
    started: datetime,
    results: list[StageResult],
    outcome: str,
    outputs: RunOutputs,
    recovered: Any,
    failure: Exception | None,
    serving_url: str | None = None,
) -> dict[str, Any]:
    """report.json: the run, its outcome, its headline results and every stage's record.
    `serving_url`: the production service configured (None: 05 deploy starts its own)."""
    from lib.config import redact_url

    quarantine = run_dir / "quarantine.csv"

    def rel(path: str | None) -> str | None:
        return os.path.relpath(path, root) if path else None

    return {
        "run_id": run_id,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "trigger": trigger,
        "outcome": outcome,
        "error": str(failure) if failure else None,
        "tracking_uri": redact_url(tracking_uri),
        "model_name": model_name,
        "production": production(tracking_uri, serving_url),
        "quarantine_csv": rel(str(quarantine)) if quarantine.exists() else None,
        "results": RunResults.collect(outputs, recovered).flat(),
        "stages": [
            {
                "name": r.name,
                "status": r.status,
                "seconds": round(r.seconds, 2),
                "notebook": rel(r.notebook),
                "html": rel(r.html),
                "error": r.error,
                "outputs": r.outputs.model_dump(mode="json") if r.outputs else None,
            }
            for r in results
        ],
    }


def production(tracking_uri: str, serving_url: str | None) -> dict[str, Any]:
    """Where production lived: `external` (a configured service that outlives the run) or
    `self-contained` (no serving URL: 05 deploy starts its own service and stops it)."""
    from lib.config import redact_url

    return {
        "mode": "external" if serving_url else "self-contained",
        "tracking_uri": redact_url(tracking_uri),
        "serving_url": redact_url(serving_url) if serving_url else None,
    }


def notifications(
    outputs: RunOutputs, outcome: str, report: str, recovered: Any
) -> list[tuple[str, dict[str, Any]]]:
    """The events of one run and their fields: deployed, awaiting approval, rejected, rolled
    back (by the canary, by recovery or by the monitor), alert."""
    train: TrainOutputs | None = outputs.of(TrainOutputs)
    compared: CompareOutputs | None = outputs.of(CompareOutputs)
    decided: DecideOutputs | None = outputs.of(DecideOutputs)
    deployed: DeployOutputs | None = outputs.of(DeployOutputs)
    watched: MonitorOutputs | None = outputs.of(MonitorOutputs)
    latest = deployed or decided or compared or train
    common = {
        "version": latest.deployed_version if deployed else latest and latest.candidate_version,
        "metrics": train.metrics if train else (compared.candidate_metrics if compared else None),
        "improvement": compared.improvement if compared else None,
        "report": report,
    }
    events: list[tuple[str, dict[str, Any]]] = []
    # "superseded": an operator acted after the interruption and was notified then
    if recovered is not None and recovered.outcome in ("promoted", "rolled_back"):
        fields = {"version": recovered.version, "report": report}
        if recovered.outcome == "promoted":  # an interrupted promotion, finished
            events.append(("deployed", {**fields, "details": {"recovered": recovered.reason}}))
        else:
            events.append(("rolled_back", {**fields, "reason": recovered.reason}))
    if outcome == "awaiting_approval" and decided:
        details = {"score": decided.score, "decision": decided.decision}
        events.append(("awaiting_approval", {**common, "details": details}))
    elif outcome == "rejected" and decided:
        events.append(("rejected", {**common, "reason": "; ".join(decided.reasons)}))
    elif outcome == "rolled_back" and deployed:
        events.append(("rolled_back", {**common, "reason": deployed.rollback_reason}))
    elif deployed and deployed.outcome == "promoted":
        details = {"previous champion": deployed.champion_before}
        events.append(("deployed", {**common, "details": details}))
    if watched and (watched.rolled_back or watched.alerts):
        if watched.rolled_back:
            reason = f"monitor: {watched.monitor_rollback_reason}"
        else:
            reason = "; ".join(a["message"] for a in watched.alerts)
        fields = {"version": watched.monitored_version, "report": report, "reason": reason}
        fields["metrics"] = watched.live_metrics
        events.append(("rolled_back" if watched.rolled_back else "alert", fields))
    return events
